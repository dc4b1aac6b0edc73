#!/bin/bash
# NBD exports' bitmaps against qemu-storage-daemon 7.2: persistent qcow2
# bitmaps named plainly (found down the backing chain) and as {node, name},
# an enabled one refused on a read-only export with qsd's words, the maps
# read back with nbdinfo (tests/qmp/diff-export-bitmaps.jsonl).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdinfo python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-export-bitmaps.jsonl" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","read-only":true,"file":{"driver":"file","filename":"{DIR}/base.qcow2"},"backing":null}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"{DIR}/top.qcow2"},"backing":"base"}' \
    --both --blockdev --both '{"driver":"qcow2","node-name":"other","file":{"driver":"file","filename":"{DIR}/other.qcow2"}}' \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
