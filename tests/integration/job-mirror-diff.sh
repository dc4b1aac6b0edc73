#!/bin/bash
# Mirror jobs against qemu-storage-daemon 7.2: tests/qmp/diff-mirror.jsonl
# run on both by qmpdiff.py (blockdev-mirror and drive-mirror argument
# errors in QEMU's order and classes; pause, resume, complete, cancel before
# and in READY, finalize, dismiss; the events with their values; the export
# after each pivot, read over NBD; the errors' texts where marked; the
# job's length as qsd counts it: the disk, or only the allocated data into a
# target zeroed first or a new image).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-mirror.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"{DIR}/base.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"{DIR}/top.qcow2"},"backing":"base"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"{DIR}/tgt.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt2","file":{"driver":"file","filename":"{DIR}/tgt2.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"small","file":{"driver":"file","filename":"{DIR}/small.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"lsrc","file":{"driver":"file","filename":"{DIR}/lsrc.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgtk","file":{"driver":"file","filename":"{DIR}/tgtk.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgtu","discard":"unmap","file":{"driver":"file","filename":"{DIR}/tgtu.qcow2"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=top,name=e0,writable=on" || fail "vbd-daemon and qemu-storage-daemon differ"
