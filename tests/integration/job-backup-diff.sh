#!/bin/bash
# blockdev-backup and in-memory dirty bitmaps against qemu-storage-daemon
# 7.2: tests/qmp/diff-backup.jsonl run on both by qmpdiff.py (bitmap
# commands and their errors, blockdev-backup's argument checks with QEMU's
# words (the text of every error marked '# exact', QMPDIFF_ERROR_TEXT=1), a job's lifecycle and events, a cancelled incremental backup).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-backup.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"{DIR}/src.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"{DIR}/tgt.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt2","file":{"driver":"file","filename":"{DIR}/tgt2.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"small","file":{"driver":"file","filename":"{DIR}/small.qcow2"}}' \
    --both --blockdev --both '{"driver":"raw","node-name":"rawt","file":{"driver":"file","filename":"{DIR}/rawt.raw"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=src,name=src,writable=on" \
    || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
