#!/bin/bash
# The iscsi client under 64 requests in flight while tgtd is killed (-9)
# and restarted (the LUN away and back), twice in the middle of the run:
# libiscsi's reconnect and the driver's retries (UNIT ATTENTION of the new
# session) carry every request over, none fails or hangs, and afterwards
# the LUN's file holds exactly what the model says. vbd-daemon's node is
# the iscsi client; two raw windows of it are served at once: one over
# vhost-user-blk (2 queues on an iothread: the session stays on the main
# loop, requests hop), one over NBD (4 connections), each driven by its own
# vbd-stress (QD 64, mixed sizes, overlapping clusters, writes, zeroes,
# discards through UNMAP and the allocation cache, flushes).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-tgt.sh"
need qemu-img
need_stress
cd "$T"
SEED=${ISCSI_RESTART_SEED:-8221}
WIN=$((8 << 20))
S=$T/nbd.sock
VU=$T/vu.sock
# libiscsi 1.19 leaks a login PDU of its reconnect (in the library): only that is skipped
printf 'leak:libiscsi.so\n' >lsan.supp

head -c $((2 * WIN)) /dev/urandom >disk.img
cp disk.img init.raw
head -c $WIN disk.img >a.init
tail -c $WIN disk.img >b.init
tgt_start "$T/disk.img"
step "tgtd killed and restarted twice under vhost-user (2 queues, iothread) and NBD (4 connections), QD 64 each, seed $SEED"
LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$T/lsan.supp "$VBD_DAEMON" --object iothread,id=io0 \
    --blockdev "driver=iscsi,node-name=i0,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1" \
    --blockdev driver=raw,node-name=a,file=i0,offset=0,size=$WIN \
    --blockdev driver=raw,node-name=b,file=i0,offset=$WIN,size=$WIN \
    --export type=vhost-user-blk,id=e0,node-name=a,addr.type=unix,addr.path="$VU",writable=on,num-queues=2,iothread=io0 \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e1,node-name=b,name=b,writable=on \
    2>daemon.log &
dpid=$!
on_exit "kill -9 $dpid 2>/dev/null"
wait_sock "$S"
wait_sock "$VU"
"$STRESS" --seed $SEED --ops 1000000 --qd 64 --align 512 --init a.init --shadow-out a.shadow \
    --vhost-user "$VU" --queues 2 >a.log 2>&1 &
apid=$!
"$STRESS" --seed $((SEED + 1)) --ops 1000000 --qd 64 --align 512 --init b.init --shadow-out b.shadow \
    --nbd "nbd+unix:///b?socket=$S" --conns 4 >b.log 2>&1 &
bpid=$!
for round in 1 2; do
    # the writes reach the LUN (then the kill falls among requests in flight)
    for _ in $(seq 400); do cmp -s disk.img init.raw || break; sleep 0.05; done
    sleep 0.5
    kill -0 $apid 2>/dev/null || fail "vbd-stress (vhost-user) ended before the kill: $(tail -5 a.log)"
    kill -0 $bpid 2>/dev/null || fail "vbd-stress (NBD) ended before the kill: $(tail -5 b.log)"
    tgt_kill9
    sleep 0.3 # the outage
    tgt_restart
    wait_log daemon.log "session re-established" $round || fail "no reconnect $round: $(tail -5 daemon.log)"
done
sleep 0.5 # requests on the last session too
kill -USR1 $apid $bpid
for _ in $(seq 1200); do kill -0 $apid 2>/dev/null || kill -0 $bpid 2>/dev/null || break; sleep 0.1; done
kill -0 $apid 2>/dev/null && fail "vbd-stress (vhost-user) still runs 120 s after its end was asked: $(tail -5 daemon.log)"
kill -0 $bpid 2>/dev/null && fail "vbd-stress (NBD) still runs 120 s after its end was asked: $(tail -5 daemon.log)"
wait $apid || fail "vbd-stress over vhost-user across tgtd restarts: $(tail -8 a.log)"
wait $bpid || fail "vbd-stress over NBD across tgtd restarts: $(tail -8 b.log)"
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exited with $?: $(tail -5 daemon.log)"
! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
grep -h " ops (" a.log b.log
cmp <(head -c $WIN disk.img) a.shadow || fail "the vhost-user window differs from its model"
cmp <(tail -c $WIN disk.img) b.shadow || fail "the NBD window differs from its model"
echo PASS
