#!/bin/bash
# Which node's dirty bitmap a backup, the block-dirty-bitmap-* commands and
# an NBD export use when they name a node and a bitmap: every reply equals
# qemu-storage-daemon 7.2's, errors' texts too (tests/qmp/diff-bitmap-lookup.jsonl).
# An incremental backup of a node from a bitmap of its backing file (the
# top before an external snapshot, which saw none of the writes since) or
# of its file node (host offsets) silently missed data; QEMU refuses it.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-bitmap-lookup
echo ok
