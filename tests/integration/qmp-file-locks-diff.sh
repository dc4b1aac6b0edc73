#!/bin/bash
# The image lock bytes (/proc/locks) of file nodes under qcow2, raw,
# exports and a mirror, against qemu-storage-daemon 7.2
# (tests/qmp/diff-file-locks.jsonl): a qcow2's file node equal, read-write
# and read-only; what QEMU's permission model does otherwise is marked
# (a file node nothing uses holds no locks there).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-file-locks
echo ok
