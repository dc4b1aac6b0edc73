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
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-tx-backup.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"{DIR}/src.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"src2","file":{"driver":"file","filename":"{DIR}/src2.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"full","file":{"driver":"file","filename":"{DIR}/full.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"inc","file":{"driver":"file","filename":"{DIR}/inc.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"{DIR}/tgt.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"bad","file":{"driver":"blkdebug","image":{"driver":"file","filename":"{DIR}/bad.qcow2"},"inject-error":[{"event":"write_aio","errno":5}]}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=src,name=src,writable=on" \
    || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
