#!/bin/bash
# Two backups of one source at once against qemu-storage-daemon 7.2
# (tests/qmp/diff-backup-stack.jsonl run by qmpdiff.py): the second stacks
# its copy-before-write node as qsd's (query-named-block-nodes and the
# export's node while both run, after either ends first), busy-node errors
# in qsd's words, and each target equal to the source at its own job's
# start (qemu-img compare) with writes racing through the source's export.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
TMPDIR=$T QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-backup-stack.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"{DIR}/src.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"{DIR}/tgt.qcow2"}}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt2","file":{"driver":"file","filename":"{DIR}/tgt2.qcow2"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=src,name=src,writable=on" \
    || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
