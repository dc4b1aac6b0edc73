#!/bin/bash
# Persistent bitmaps of a read-only qcow2 read (hashes, an NBD export's
# bitmaps), the node reopened read-write, written, reopened read-only: no
# memory error, and the bitmaps' hashes equal qemu-storage-daemon 7.2's at
# every step (tests/qmp/diff-bitmap-reopen.jsonl, errors' texts compared).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-bitmap-reopen \
    --blockdev "driver=file,node-name=f,filename={DIR}/bm.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"bm","file":"f","read-only":true}'
echo ok
