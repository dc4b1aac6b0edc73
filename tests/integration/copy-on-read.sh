#!/bin/bash
# The copy-on-read filter (issue 14 part 2) against qemu-storage-daemon 7.2:
# the same reads through driver=copy-on-read over a qcow2 overlay leave the
# same clusters copied into the overlay (qemu-img map equal but for host
# offsets; a range no layer defines is not copied) with the base's data;
# guest writes racing copies of the same clusters are never overwritten by
# the stale copy; --drive copy-on-read=on; a bad bottom gets one line.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
cd "$T" || fail "cd"
must qemu-img create -q -f qcow2 base.qcow2 4M
must qemu-io -f qcow2 -c "write -P 0x11 0 1M" -c "write -z 2M 64k" -c "write -P 0x22 3M 4k" base.qcow2 >/dev/null
qpid=
on_exit '[ -z "$qpid" ] || kill -9 $qpid 2>/dev/null'
# overlay DIR: a fresh overlay DIR/ov.qcow2 over a copy of base.qcow2
overlay() { rm -rf "$1"; mkdir -p "$1"; cp base.qcow2 "$1/"; must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$1/ov.qcow2"; }
graph() { echo --blockdev qcow2,node-name=top,file.driver=file,file.filename=$T/$1/ov.qcow2 --blockdev copy-on-read,node-name=cor,file=top; }
maps() { qemu-img map --output=json "$1" | python3 -c "
import json,sys
for e in json.load(sys.stdin): e.pop('offset', None); print(json.dumps(e, sort_keys=True))"; }

step "reads copy the backing's clusters into the overlay, as qemu-storage-daemon"
for p in v q; do
    overlay $p
    S=$T/$p.nbd
    args=($(graph $p) --nbd-server addr.type=unix,addr.path=$S --export type=nbd,id=e0,node-name=cor,name=cor,writable=on)
    if [ $p = v ]; then
        start_daemon "${args[@]}"
    else
        rm -f "$S"; qemu-storage-daemon "${args[@]}" 2>qsd.log & qpid=$!; wait_sock "$S" "$qpid" qsd.log
    fi
    qemu-io -f raw "nbd+unix:///cor?socket=$S" -c "read -P 0x11 0 128k" -c "read -P 0 2M 64k" -c "read -P 0 2500k 64k" \
        -c "read -P 0x11 512k 4k" -c "read -P 0x22 3M 512" >$p.io 2>&1 || fail "qemu-io on $p: $(cat $p.io)"
    grep -q "failed\|Pattern verification" $p.io && fail "reads on $p: $(cat $p.io)"
    if [ $p = v ]; then stop_daemon; else kill $qpid; wait $qpid 2>/dev/null; qpid=; fi
    wait_lock_free $p/ov.qcow2
    maps $p/ov.qcow2 >$p.map
    qcheck $p/ov.qcow2
done
diff -u q.map v.map || fail "the overlays' maps differ (qsd -, vbd +)"
must qemu-img compare -q v/ov.qcow2 base.qcow2
grep -q '"depth": 0, "length": 131072, "present": true, "start": 0,' v.map || fail "the first 128k not copied: $(cat v.map)"
grep -q '"depth": 0, "length": 65536, "present": true, "start": 3145728,' v.map || fail "the cluster at 3M not copied"
! grep '"depth": 0' v.map | grep -q '"start": 2[0-9]\{6\}' || fail "a range the chain does not define was copied"

step "guest writes racing copies of the same clusters win"
overlay r
S=$T/r.nbd
start_daemon $(graph r) --nbd-server addr.type=unix,addr.path=$S --export type=nbd,id=e0,node-name=cor,name=cor,writable=on
cmds=()
for i in $(seq 0 15); do
    cmds+=(-c "aio_read $((i * 65536)) 64k" -c "aio_write -P 0x55 $((i * 65536 + 4096)) 4k")
done
qemu-io -f raw "nbd+unix:///cor?socket=$S" "${cmds[@]}" -c aio_flush >r.io 2>&1 || fail "qemu-io: $(cat r.io)"
grep -q "failed" r.io && fail "racing requests: $(cat r.io)"
vcmds=()
for i in $(seq 0 15); do
    vcmds+=(-c "read -P 0x11 $((i * 65536)) 4k" -c "read -P 0x55 $((i * 65536 + 4096)) 4k" -c "read -P 0x11 $((i * 65536 + 8192)) 56k")
done
stop_daemon
wait_lock_free r/ov.qcow2
qemu-io -f qcow2 "${vcmds[@]}" r/ov.qcow2 >r.io 2>&1 || fail "qemu-io check: $(cat r.io)"
grep -q "failed\|Pattern verification" r.io && fail "a copy overwrote a guest write: $(grep -m3 "fail\|Pattern" r.io)"
qcheck r/ov.qcow2

step "--drive copy-on-read=on"
overlay d
S=$T/d.sock
start_daemon --drive file=$T/d/ov.qcow2,format=qcow2,id=d0,copy-on-read=on --vhost-user "$S"
"$VBD_BENCH" --vhost-user "$S" -w read -b 64k -d 4 -n 16 --json >d.json 2>&1 || fail "vbd-bench: $(cat d.json)"
stop_daemon
wait_lock_free d/ov.qcow2
maps d/ov.qcow2 | python3 -c "
import json,sys
top = sum(e['length'] for e in map(json.loads, sys.stdin) if e['depth'] == 0 and e['start'] < 1 << 20)
sys.exit(0 if top == 1 << 20 else 1)" || fail "--drive copy-on-read=on did not copy the first 1M: $(maps d/ov.qcow2)"

step "hostile options: one-line errors"
overlay h
must_fail_with "Bottom node 'nope' not found" "$VBD_DAEMON" $(graph h),bottom=nope
# QEMU 7.2 takes a bottom outside the chain and spins at 100 % CPU,
# deaf to SIGTERM (bdrv_freeze_backing_chain never meets it): vbd refuses it
must_fail_with "Bottom node 'nn' is not in the backing chain of 'top'" "$VBD_DAEMON" \
    --blockdev null-co,node-name=nn $(graph h),bottom=nn
# a filter as bottom: QEMU's words, checked against qemu-storage-daemon
flt="--object throttle-group,id=g0 --blockdev null-co,node-name=nn --blockdev throttle,node-name=tf,throttle-group=g0,file=nn"
qerr=$(timeout 60 qemu-storage-daemon $flt $(graph h),bottom=tf 2>&1 </dev/null) && fail "qemu-storage-daemon took a filter as bottom"
must_fail_with "${qerr##*: }" "$VBD_DAEMON" $flt $(graph h),bottom=tf
[ "${qerr##*: }" = "Bottom node 'tf' is a filter" ] || fail "qemu-storage-daemon: $qerr"
echo OK
