#!/bin/bash
# blockdev-reopen of an entry that leaves options out, gives them back
# equal, or moves a raw node's window, against qemu-storage-daemon 7.2
# (tests/qmp/diff-reopen-reset.jsonl: resets refused in qsd's words and
# order, --blockdev's keyval values equal to JSON ones, raw offset/size
# read back over NBD, drivers QEMU cannot reopen).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-reopen-reset \
    --blockdev driver=null-co,node-name=c0,size=1048576,read-zeroes=on \
    --blockdev "driver=file,node-name=cf,filename={DIR}/c.raw,aio=threads"
echo ok
