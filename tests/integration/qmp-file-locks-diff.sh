#!/bin/bash
# The image lock bytes (/proc/locks) of file nodes as their users come and
# go (qcow2 and raw parents, NBD exports, a mirror's and a backup's
# targets, a reopen), against qemu-storage-daemon 7.2
# (tests/qmp/diff-file-locks.jsonl), every step equal: a file node nothing
# uses holds none, a second file node on a held image is added, a user
# whose locks conflict (another node's on the same image, another
# process's) is refused as qsd refuses it, and allowed where qsd allows it.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-file-locks
echo ok
