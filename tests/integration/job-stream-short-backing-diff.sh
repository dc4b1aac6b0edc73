#!/bin/bash
# block-stream where a backing file is shorter than the image above it (an
# overlay grown after its snapshot, a null-co backing of 1M under 4M),
# against qemu-storage-daemon 7.2: tests/qmp/diff-stream-short-backing.jsonl
# run on both by qmpdiff.py. Past the backing file's end the image reads
# zeroes: nothing to copy, the job completes and drops the backing chain;
# the streamed image equals the chain's view and checks clean. vbd's stream
# failed there with "Input/output error" and kept the chain.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-stream-short-backing
echo PASS
