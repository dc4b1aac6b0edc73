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
qmpdiff diff-mirror \
    --blockdev "$(qcow2_node_in {DIR} base null)" \
    --blockdev "$(qcow2_node_in {DIR} top base)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)" \
    --blockdev "$(qcow2_node_in {DIR} tgt2)" \
    --blockdev "$(qcow2_node_in {DIR} small)" \
    --blockdev "$(qcow2_node_in {DIR} lsrc)" \
    --blockdev "$(qcow2_node_in {DIR} tgtk)" \
    --blockdev '{"driver":"qcow2","node-name":"tgtu","discard":"unmap","file":{"driver":"file","filename":"{DIR}/tgtu.qcow2"}}' \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=top,name=e0,writable=on"
