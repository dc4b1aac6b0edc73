#!/bin/bash
# The snapshot, bitmap and transaction commands against qemu-storage-daemon
# 7.2: tests/qmp/diff-snapshot.jsonl run on both by qmpdiff.py; same reply
# structure and error classes, the deliberate differences marked in it.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-snapshot \
    --blockdev "driver=file,node-name=f0,filename={DIR}/a.qcow2" \
    --blockdev "driver=qcow2,node-name=d0,file=f0" \
    --blockdev "driver=file,node-name=r0,filename={DIR}/r.raw" \
    --blockdev "driver=raw,node-name=rr,file=r0" \
    --blockdev "$(qcow2_node_in {DIR} ov2 null)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=d0,writable=on" \
    --export "type=nbd,id=e1,node-name=rr,writable=on"
