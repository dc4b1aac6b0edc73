#!/bin/bash
# The image locks of vbd-daemon's command-line --drive nodes (a raw drive
# read-write and read-only, each with its --vhost-user export, and a
# qcow2 drive) against qemu-storage-daemon 7.2 given the same graph as
# --blockdev and --export (tests/qmp/diff-file-locks-drive.jsonl), every
# step equal: a --drive node is locked by its users as a --blockdev one
# is, and lets go of its locks when they go. Fails on the code before
# round 26: a --drive node kept its open's locks (write and resize
# unshared) for the daemon's life, so a second daemon could not serve the
# raw image writable next to it, and nothing could resize it once its
# export was gone.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
vbd=() qsd=()
for x in r ro; do
    ro=off
    [ $x = ro ] && ro=on
    vbd+=(--vbd --drive --vbd "file={DIR}/$x.raw,format=raw,id=$x,readonly=$ro" --vbd --vhost-user --vbd "{DIR}/$x.sock")
    qsd+=(--qsd --blockdev --qsd "driver=file,node-name=f$x,filename={DIR}/$x.raw,read-only=$ro"
          --qsd --blockdev --qsd "driver=raw,node-name=$x,file=f$x,read-only=$ro"
          --qsd --export --qsd "type=vhost-user-blk,id=vhost-user-$x,node-name=$x,addr.type=unix,addr.path={DIR}/$x.sock,writable=$([ $ro = on ] && echo off || echo on)")
done
vbd+=(--vbd --drive --vbd "file={DIR}/q.qcow2,format=qcow2,id=q")
qsd+=(--qsd --blockdev --qsd "driver=file,node-name=fq,filename={DIR}/q.qcow2" --qsd --blockdev --qsd "driver=qcow2,node-name=q,file=fq")
VBD_DAEMON=$VBD_DAEMON QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} \
    "$VBD_ROOT/tests/qmp/diff-file-locks-drive.jsonl" "${vbd[@]}" "${qsd[@]}" ||
    fail "qmpdiff diff-file-locks-drive: vbd-daemon and qemu-storage-daemon differ (above)"
echo ok
