#!/bin/bash
# Permission conflicts among nodes that share one node below them, against
# qemu-storage-daemon 7.2: tests/qmp/diff-perm-shared-node.jsonl run on
# both by qmpdiff.py (a resize through raw under a qcow2 node and a backup
# between two raw nodes over one file node refused in qsd's words; a
# sync=none backup of a qcow2 node's file node taken; a resize of a qcow2
# node under a vhost-user-blk export of a raw node over it taken, under an
# NBD export refused).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-perm-shared-node
echo PASS
