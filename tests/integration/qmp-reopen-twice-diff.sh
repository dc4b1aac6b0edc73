#!/bin/bash
# blockdev-reopen with a node in two entries, against qemu-storage-daemon
# 7.2: tests/qmp/diff-reopen-twice.jsonl run on both by qmpdiff.py (the
# last entry's options apply and are the ones checked).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-reopen-twice
echo PASS
