#!/bin/bash
# x-debug-block-dirty-bitmap-sha256 answers as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-bitmap-sha256.jsonl): after the same writes, zeroings and
# discards over NBD, every bitmap (in memory and persistent, several
# granularities, a node whose size is no multiple of it) hashes to QEMU's
# value, so its bits are QEMU's; the refusals word for word.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-bitmap-sha256.jsonl" \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" || fail "qmpdiff found differences (above)"
echo PASS
