#!/bin/bash
# A writable export of a qcow2's file node or of a quorum's child is
# refused with qemu-storage-daemon 7.2's permission error (a client would
# write under the qcow2's metadata, or one replica apart from the others);
# read-only ones and a raw node's file are taken, as by qsd
# (tests/qmp/diff-export-owned.jsonl, errors' texts compared). A read-only
# format (bochs, a read-only qcow2) keeps its file's data too: no writable
# export, mirror, backup or blockdev-create onto it; a read-only NBD export
# of its file is taken (diff-export-owned-ro.jsonl). The command line's
# --export is refused as block-export-add is, in qsd's words and exit code
# (vbd-daemon exported all of them).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
export VBD_ROOT
qmpdiff diff-export-owned
qmpdiff diff-export-owned-ro

step "--export of an owned node on the command line: qsd's line and exit code"
cd "$T"
must qemu-img create -q -f qcow2 a.qcow2 4M
for x in c0 c1; do must qemu-img create -q -f raw $x.raw 4M; done
must python3 "$VBD_ROOT/tests/integration/ro-images.py" bochs b.img b.exp
QCOW2=(--blockdev driver=file,node-name=af,filename=a.qcow2 --blockdev driver=qcow2,node-name=a,file=af)
QUORUM=(--blockdev driver=file,node-name=f0,filename=c0.raw --blockdev driver=file,node-name=f1,filename=c1.raw
    --blockdev driver=quorum,node-name=q,children.0=f0,children.1=f1,vote-threshold=1)
BOCHS=(--blockdev driver=file,node-name=bf,filename=b.img --blockdev driver=bochs,node-name=b,file=bf,read-only=on)
same_refusal() { # DESCRIPTION ARGS...: both daemons refuse the command line alike
    local what=$1 i out rc
    shift
    for i in qsd vbd; do
        # a daemon that takes it runs: 60 s, then the difference shows (each
        # is expected to refuse at once; 10 s was short of an ASan daemon's
        # start on a host at load 20-30, which then read as "taken")
        if [ $i = qsd ]; then
            out=$(timeout 60 qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$T/$i.sock" "$@" 2>&1)
        else
            out=$(timeout 60 "$VBD_DAEMON" --nbd-server "addr.type=unix,addr.path=$T/$i.sock" "$@" 2>&1)
        fi
        rc=$?
        printf '%s\n' "$out" | sed 's/^qemu-storage-daemon: //; s/^vbd-daemon: //' >$i.out
        echo "rc $rc" >>$i.out
    done
    diff qsd.out vbd.out || fail "$what: vbd-daemon and qemu-storage-daemon differ (above)"
    grep -q "^rc 1$" vbd.out || fail "$what: not refused: $(cat vbd.out)"
    echo "$what: $(head -1 vbd.out)"
}
same_refusal "qcow2's file, writable" "${QCOW2[@]}" --export type=nbd,id=e1,node-name=af,writable=on
same_refusal "qcow2's file, NBD read-only" "${QCOW2[@]}" --export nbd,id=e1,node-name=af
same_refusal "quorum's child, vhost-user-blk writable" "${QUORUM[@]}" \
    --export type=vhost-user-blk,id=e1,node-name=f1,writable=on,addr.type=unix,addr.path=$T/v.sock
same_refusal "bochs's file, writable" "${BOCHS[@]}" --export type=nbd,id=e1,node-name=bf,writable=on
echo ok
