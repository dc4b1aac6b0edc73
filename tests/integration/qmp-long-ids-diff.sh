#!/bin/bash
# Throttle group, export and job ids of 200 characters, against
# qemu-storage-daemon 7.2: tests/qmp/diff-long-ids.jsonl run on both by
# qmpdiff.py (kept whole: found by the whole id, listed and reported whole,
# a prefix is another id).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-long-ids
echo PASS
