#!/bin/bash
# null-co's read-only switch against qemu-storage-daemon 7.2:
# tests/qmp/diff-null-reopen.jsonl run on both by qmpdiff.py (block-stream of
# a null-co below a snapshot, blockdev-reopen read-only on and off).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3
qmpdiff diff-null-reopen
echo PASS
