#!/bin/bash
# The snapshot, bitmap and transaction commands against qemu-storage-daemon
# 7.2: tests/qmp/diff-snapshot.jsonl run on both by qmpdiff.py; same reply
# structure and error classes, the deliberate differences marked in it.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-snapshot.jsonl" \
    --both --blockdev --both "driver=file,node-name=f0,filename={DIR}/a.qcow2" \
    --both --blockdev --both "driver=qcow2,node-name=d0,file=f0" \
    --both --blockdev --both "driver=file,node-name=r0,filename={DIR}/r.raw" \
    --both --blockdev --both "driver=raw,node-name=rr,file=r0" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"ov2","file":{"driver":"file","filename":"{DIR}/ov2.qcow2"},"backing":null}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=d0,writable=on" \
    --both --export --both "type=nbd,id=e1,node-name=rr,writable=on" || fail "vbd-daemon and qemu-storage-daemon differ"
