#!/bin/bash
# x-debug-block-dirty-bitmap-sha256 answers as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-bitmap-sha256.jsonl): after the same writes, zeroings and
# discards over NBD, every bitmap (in memory and persistent, several
# granularities, a node whose size is no multiple of it) hashes to QEMU's
# value, so its bits are QEMU's; the refusals word for word.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON
qmpdiff diff-bitmap-sha256 \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock"
echo PASS
