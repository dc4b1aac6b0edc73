#!/bin/bash
# block-dirty-bitmap-merge from a busy (exported) source bitmap, and a
# read-only export of a busy enabled bitmap, against qemu-storage-daemon
# 7.2 word for word (tests/qmp/diff-bitmap-merge-busy.jsonl).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON
qmpdiff diff-bitmap-merge-busy \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock"
echo ok
