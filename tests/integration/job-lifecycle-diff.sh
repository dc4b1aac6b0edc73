#!/bin/bash
# Block job lifecycle against qemu-storage-daemon 7.2: tests/qmp/diff-job.jsonl
# run on both by qmpdiff.py (block-stream, intermediate and active
# block-commit; pause, resume, set-speed, cancel, complete, finalize,
# dismiss where QEMU takes them and its error classes where not; the keys
# and types of query-jobs and query-block-jobs; the events with their values;
# the errors' texts where the script marks them).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-job.jsonl" \
    --both --blockdev --both "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
    --both --blockdev --both "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"base"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"cbase","file":{"driver":"file","filename":"{DIR}/cbase.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"cmid","file":{"driver":"file","filename":"{DIR}/cmid.qcow2"},"backing":"cbase"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"ctop","file":{"driver":"file","filename":"{DIR}/ctop.qcow2"},"backing":"cmid"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"dbase","file":{"driver":"file","filename":"{DIR}/dbase.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"dtop","file":{"driver":"file","filename":"{DIR}/dtop.qcow2"},"backing":"dbase"}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=ctop,name=e0,writable=on" \
    --both --export --both "type=nbd,id=e1,node-name=top,name=e1,writable=on" \
    --both --export --both "type=nbd,id=e2,node-name=dtop,name=e2,writable=on" || fail "vbd-daemon and qemu-storage-daemon differ"
