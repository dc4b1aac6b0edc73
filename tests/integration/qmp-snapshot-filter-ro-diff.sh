#!/bin/bash
# The read-only state an external snapshot leaves below its overlay, against
# qemu-storage-daemon 7.2: tests/qmp/diff-snapshot-filter-ro.jsonl run on
# both by qmpdiff.py (copy-on-read stays read-write, as QEMU's takes no
# reopen; throttle over raw goes read-only).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-snapshot-filter-ro
echo PASS
