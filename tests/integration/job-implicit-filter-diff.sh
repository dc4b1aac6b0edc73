#!/bin/bash
# The jobs' implicit filter nodes against qemu-storage-daemon 7.2
# (tests/qmp/diff-job-implicit.jsonl run by qmpdiff.py): mirror_top,
# commit_top and stream's copy-on-read listed by query-named-block-nodes
# while the job runs without filter-node-name, gone after a cancel or the
# end; the data read through the export after the mirror's pivot.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
TMPDIR=$T QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-job-implicit.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"{DIR}/base.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"mid","file":{"driver":"file","filename":"{DIR}/mid.qcow2"},"backing":"base"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"{DIR}/top.qcow2"},"backing":"mid"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"mt","file":{"driver":"file","filename":"{DIR}/mtgt.qcow2"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=top,name=top,writable=on" \
    || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
