#!/bin/bash
# The other formats vbd writes, with 64 requests in flight from two exports
# of one node at once: vbd-stress drives a vhost-user-blk export (2 rings on
# iothread io0) and an NBD export (4 connections) of the same format node,
# its workers alternating between them (one model for both), with writes,
# write-zeroes, discards and reads overlapping on hot blocks that move to
# fresh (unallocated) ground every 64 requests, so that requests from both
# exports allocate the same new block/grain at once. Kinds: vmdk
# monolithicSparse and streamOptimized (whole grains, each written once:
# a second write is refused, as QEMU refuses it), vhdx dynamic (1 MiB blocks), vpc
# dynamic, vdi dynamic, qed (4k clusters: new L2 tables on the way). Then:
# every read matched the model, the final read-back through each export
# too, qemu-img check clean (where QEMU checks the format), the image
# identical to the model and to qemu-img's own convert of the model.
# qed also grows (block_resize, 64 KiB at a time; it cannot shrink, as in
# QEMU) under the load, over the vhost-user export alone (an NBD export
# holds the size, as QEMU's): the grown part reads as zeroes.
# A run takes every other kind (the seed picks which half: ~45 s at load 3,
# 2.5 min at load 25 under ASan); FMT_MIXED_KINDS names them,
# FMT_MIXED_ALL=1 takes all six. FMT_MIXED_OPS, FMT_MIXED_SEED.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need_stress
OPS=${FMT_MIXED_OPS:-400}
SEED=${FMT_MIXED_SEED:-$RANDOM}
KINDS=${FMT_MIXED_KINDS:-}
if [ -z "$KINDS" ]; then
    i=0
    for k in vmdk-sparse vmdk-stream vhdx-1m vpc-dynamic vdi-dynamic qed-c4k; do
        [ "${FMT_MIXED_ALL:-0}" = 1 ] || [ $(((i + SEED) % 2)) = 0 ] && KINDS="$KINDS $k"
        i=$((i + 1))
    done
fi
S=$T/qmp.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
echo "seed $SEED"

daemon() { # IMAGE FMT EXPORTS (both | vhost)
    stress_daemon "$3" d0 --blockdev "driver=file,node-name=f0,filename=$1,discard=unmap" \
        --blockdev "driver=$2,node-name=d0,file=f0,discard=unmap"
}

# same_as_model KIND: qemu-img check clean (a format QEMU cannot check
# passes), identical to the model and to qemu-img's convert of it
same_as_model() {
    stress_check "$1" mixed "$seed" || fail "$1: qemu-img check"
    out=$(qemu-img compare -f "$fmt" -F raw "$img" "$T/shadow.raw" 2>&1) || fail "$1: the image differs from the model: $out"
    local o=
    case $1 in vmdk-stream) o=subformat=streamOptimized ;; vhdx-1m) o=block_size=1M ;; vpc-dynamic) o=subformat=dynamic ;; qed-c4k) o=cluster_size=4k ;; esac
    must qemu-img convert -q -f raw -O "$fmt" ${o:+-o "$o"} "$T/shadow.raw" "$T/ref.$fmt"
    out=$(qemu-img compare -f "$fmt" -F "$fmt" "$img" "$T/ref.$fmt" 2>&1) || fail "$1: differs from qemu-img's convert of the model: $out"
}

n=0
for kind in $KINDS; do
    n=$((n + 1))
    seed=$((SEED + 11 * n))
    step "$kind: $OPS requests, QD 64, vhost-user (2 rings on io0) + NBD (4 connections) on one node (seed $seed)"
    rm -rf "$T/case" && mkdir "$T/case"
    stress_make "$kind" "$T/case" "$seed" || fail "cannot make $kind"
    daemon "$img" "$fmt" both
    "$STRESS" --seed "$seed" --ops "$OPS" --qd 64 --cluster-size "$cs" --hot 6 --hot-move "$hot_move" \
        --init "$T/case/init.raw" ${backraw:+--backing "$backraw"} $([ "$once" = 1 ] && echo --write-once) --shadow-out "$T/shadow.raw" \
        --vhost-user "$T/vu.sock" --queues 2 --nbd "nbd+unix:///disk?socket=$T/nbd.sock" --conns 4 >"$T/stress.log" 2>&1 ||
        { tail -30 "$T/stress.log"; fail "$kind: vbd-stress (seed $seed)"; }
    tail -1 "$T/stress.log"
    stop_daemon
    same_as_model "$kind"
done

step "qed: block_resize (grows) under QD 64 on vhost-user (2 rings on io0)"
seed=$((SEED + 7))
rm -rf "$T/case" && mkdir "$T/case"
stress_make qed-c64k "$T/case" "$seed" || fail "cannot make qed-c64k"
R=$size
daemon "$img" qed vhost
"$STRESS" --seed "$seed" --ops "$OPS" --qd 64 --cluster-size "$cs" --hot 6 --hot-move "$hot_move" --range $R \
    --init "$T/case/init.raw" --shadow-out "$T/shadow.raw" --vhost-user "$T/vu.sock" --queues 2 >"$T/stress.log" 2>&1 &
spid=$!
qmp_py "$S" <<PY || fail "block_resize under the load"
n = 0
while True:
    try:  # ended (a zombie until the shell reaps it)
        if open("/proc/$spid/stat").read().split()[2] == "Z":
            break
    except (FileNotFoundError, ProcessLookupError):
        break
    n += 1
    ok("block_resize", **{"node-name": "d0", "size": $R + 65536 * n})
print(f"{n} resizes")
PY
wait $spid || { tail -30 "$T/stress.log"; fail "qed resize: vbd-stress (seed $seed)"; }
tail -1 "$T/stress.log"
stop_daemon
qcheck "$img"
out=$(qemu-img compare -f qed -F raw "$img" "$T/shadow.raw" 2>&1) || fail "qed resize: the image differs from the model: $out"
echo ok
