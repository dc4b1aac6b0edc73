#!/bin/bash
# A writable export of a qcow2's file node or of a quorum's child is
# refused with qemu-storage-daemon 7.2's permission error (a client would
# write under the qcow2's metadata, or one replica apart from the others);
# read-only ones and a raw node's file are taken, as by qsd
# (tests/qmp/diff-export-owned.jsonl, errors' texts compared).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-export-owned
echo ok
