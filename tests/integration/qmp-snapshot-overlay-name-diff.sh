#!/bin/bash
# blockdev-snapshot-sync with a bad snapshot-node-name, against
# qemu-storage-daemon 7.2: tests/qmp/diff-snapshot-overlay-name.jsonl run on
# both by qmpdiff.py (refused in qsd's words once the overlay's image is
# made; the image stays, as qsd leaves it).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-snapshot-overlay-name
echo PASS
