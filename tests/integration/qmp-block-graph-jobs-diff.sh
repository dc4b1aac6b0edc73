#!/bin/bash
# x-debug-query-block-graph with a running mirror, stream, commit and active
# commit job answers as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-block-graph-jobs.jsonl, run by tests/qmp/qmpdiff.py).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
TMPDIR=$T qmpdiff diff-block-graph-jobs
echo PASS
