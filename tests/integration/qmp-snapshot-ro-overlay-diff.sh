#!/bin/bash
# The overlay of a read-only node's external snapshot, against
# qemu-storage-daemon 7.2: tests/qmp/diff-snapshot-ro-overlay.jsonl run on
# both by qmpdiff.py (read-only as the node it is put over; its lock bytes
# compared; a writable export on it refused).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-snapshot-ro-overlay
echo PASS
