#!/bin/bash
# Raw, throttle and blkdebug nodes over a node they reference, read-only
# against read-write, against qemu-storage-daemon 7.2:
# tests/qmp/diff-filter-ro-child.jsonl run on both by qmpdiff.py (a
# snapshot's backing goes read-only without the node it references; a
# reopen read-write over a read-only node is taken, writers above refused).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-filter-ro-child
echo PASS
