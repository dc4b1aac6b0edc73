#!/bin/bash
# Block job lifecycle against qemu-storage-daemon 7.2: tests/qmp/diff-job.jsonl
# run on both by qmpdiff.py (block-stream, intermediate and active
# block-commit; pause, resume, set-speed, cancel, complete, finalize,
# dismiss where QEMU takes them and its error classes where not; the keys
# and types of query-jobs and query-block-jobs; the events with their values;
# the errors' texts where the script marks them).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-job \
    --blockdev "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
    --blockdev "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"base"}' \
    --blockdev "$(qcow2_node_in {DIR} cbase null)" \
    --blockdev "$(qcow2_node_in {DIR} cmid cbase)" \
    --blockdev "$(qcow2_node_in {DIR} ctop cmid)" \
    --blockdev "$(qcow2_node_in {DIR} dbase null)" \
    --blockdev "$(qcow2_node_in {DIR} dtop dbase)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=ctop,name=e0,writable=on" \
    --export "type=nbd,id=e1,node-name=top,name=e1,writable=on" \
    --export "type=nbd,id=e2,node-name=dtop,name=e2,writable=on"
