#!/bin/bash
# The backup actions of QMP's 'transaction' (blockdev-backup, drive-backup)
# and completion-mode=grouped against qemu-storage-daemon 7.2:
# tests/qmp/diff-tx-backup.jsonl run on both by qmpdiff.py (the actions'
# argument errors with QEMU's words, an action failing after a backup's
# prepare (nothing started, bitmaps and target as before), libvirt's push
# backup (bitmap-add + full backup, then bitmap-add + incremental backup of
# the first bitmap) with the guest writing during each backup: the chain
# restored with qemu-img equals the source at the transaction's instant;
# pull mode: sync=none into an exported fleecing overlay, read over NBD;
# grouped jobs waiting for each other, one failing or cancelled cancelling
# the other, with QEMU's events).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-tx-backup \
    --blockdev "$(qcow2_node_in {DIR} src)" \
    --blockdev "$(qcow2_node_in {DIR} src2)" \
    --blockdev "$(qcow2_node_in {DIR} full)" \
    --blockdev "$(qcow2_node_in {DIR} inc)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)" \
    --blockdev '{"driver":"qcow2","node-name":"bad","file":{"driver":"blkdebug","image":{"driver":"file","filename":"{DIR}/bad.qcow2"},"inject-error":[{"event":"write_aio","errno":5}]}}' \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=src,name=src,writable=on"
echo ok
