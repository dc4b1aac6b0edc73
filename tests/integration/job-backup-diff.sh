#!/bin/bash
# blockdev-backup and in-memory dirty bitmaps against qemu-storage-daemon
# 7.2: tests/qmp/diff-backup.jsonl run on both by qmpdiff.py (bitmap
# commands and their errors, blockdev-backup's argument checks with QEMU's
# words (the text of every error marked '# exact', QMPDIFF_ERROR_TEXT=1), a job's lifecycle and events, a cancelled incremental backup).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-backup \
    --blockdev "$(qcow2_node_in {DIR} src)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)" \
    --blockdev "$(qcow2_node_in {DIR} tgt2)" \
    --blockdev "$(qcow2_node_in {DIR} small)" \
    --blockdev '{"driver":"raw","node-name":"rawt","file":{"driver":"file","filename":"{DIR}/rawt.raw"}}' \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=src,name=src,writable=on"
echo ok
