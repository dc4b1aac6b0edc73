#!/bin/bash
# filter-node-name against qemu-storage-daemon 7.2: tests/qmp/diff-jobfilter.jsonl
# run on both by qmpdiff.py, error texts compared too. Each job's named
# filter (copy-on-read, commit_top, mirror_top, copy-before-write) is in
# query-named-block-nodes while the job runs, the export sits on it
# (query-block-exports), its name collides with other nodes' (and bad ones
# are refused) in QEMU's words, and it is gone when the job ends (completed,
# cancelled, after a pivot), the name free again.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-jobfilter.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"{DIR}/base.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"mid","file":{"driver":"file","filename":"{DIR}/mid.qcow2"},"backing":"base"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"{DIR}/top.qcow2"},"backing":"mid"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"{DIR}/tgt.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt2","file":{"driver":"file","filename":"{DIR}/tgt2.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"sbase","file":{"driver":"file","filename":"{DIR}/sbase.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"stop","file":{"driver":"file","filename":"{DIR}/stop.qcow2"},"backing":"sbase"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"msrc","file":{"driver":"file","filename":"{DIR}/msrc.qcow2"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=top,name=e0,writable=on" \
    --both --export --both "type=nbd,id=e1,node-name=stop,name=e1,writable=on" \
    --both --export --both "type=nbd,id=e2,node-name=msrc,name=e2,writable=on" || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
