#!/bin/bash
# NBD exports' bitmaps against qemu-storage-daemon 7.2: persistent qcow2
# bitmaps named plainly (found down the backing chain) and as {node, name},
# an enabled one refused on a read-only export with qsd's words, the maps
# read back with nbdinfo (tests/qmp/diff-export-bitmaps.jsonl).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdinfo python3
qmpdiff diff-export-bitmaps \
    --blockdev '{"driver":"qcow2","node-name":"base","read-only":true,"file":{"driver":"file","filename":"{DIR}/base.qcow2"},"backing":null}' \
    --blockdev "$(qcow2_node_in {DIR} top base)" \
    --blockdev "$(qcow2_node_in {DIR} other)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock"
echo ok
