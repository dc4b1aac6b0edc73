#!/bin/bash
# The nbd client under 64 requests in flight while its server is killed
# (SIGKILL) and started again, twice in the middle of the run: with
# reconnect-delay set, every request in flight is sent again on the new
# connection and none fails; afterwards the server's image holds exactly
# what the model says (an acknowledged write is in the server's page cache
# when it dies). vbd-daemon's node is the nbd client; two raw windows of it
# are served at once: one over vhost-user-blk (2 queues on an iothread: the
# node stays on the main loop, requests hop), one over NBD (4 connections),
# each driven by its own vbd-stress (QD 64, mixed sizes, overlapping
# clusters, reads checked against the model). Servers: qemu-nbd (replies out
# of order from its coroutines, structured replies), nbdkit's file plugin
# with --no-sr (parallel threads, simple replies only) and vbd-nbd.
. "$(dirname "$0")/lib.sh"
need qemu-nbd nbdkit qemu-img
need_stress
cd "$T"
SEED=${NBD_RESTART_SEED:-7117}
WIN=$((8 << 20))
SRV=$T/srv.sock
S=$T/nbd.sock
VU=$T/vu.sock

srv_start() { # KIND: the server of disk.raw on $SRV, pid in spid
    rm -f "$SRV"
    case $1 in
    qemu-nbd) qemu-nbd -f raw -k "$SRV" -x exp --persistent --shared=2 --discard=unmap disk.raw 2>>srv.log & ;;
    nbdkit-nosr) nbdkit -f --no-sr -U "$SRV" -e exp file disk.raw 2>>srv.log & ;;
    vbd-nbd) "$VBD_NBD" -f raw -k "$SRV" -x exp --persistent --shared=2 --discard=unmap disk.raw 2>>srv.log & ;;
    esac
    spid=$!
    on_exit "kill -9 $spid 2>/dev/null"
    wait_sock "$SRV"
}

n=0
for kind in qemu-nbd nbdkit-nosr vbd-nbd; do
    n=$((n + 1))
    step "$kind killed and restarted twice under vhost-user (2 queues, iothread) and NBD (4 connections), QD 64 each, seed $((SEED + n))"
    head -c $((2 * WIN)) /dev/urandom >disk.raw
    cp disk.raw init.raw
    head -c $WIN disk.raw >a.init
    tail -c $WIN disk.raw >b.init
    : >srv.log
    srv_start $kind
    rm -f "$S" "$VU"
    "$VBD_DAEMON" --object iothread,id=io0 \
        --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$SRV",export=exp,reconnect-delay=60 \
        --blockdev driver=raw,node-name=a,file=n0,offset=0,size=$WIN \
        --blockdev driver=raw,node-name=b,file=n0,offset=$WIN,size=$WIN \
        --export type=vhost-user-blk,id=e0,node-name=a,addr.type=unix,addr.path="$VU",writable=on,num-queues=2,iothread=io0 \
        --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e1,node-name=b,name=b,writable=on \
        2>daemon.log &
    dpid=$!
    on_exit "kill -9 $dpid 2>/dev/null"
    wait_sock "$S"
    wait_sock "$VU"
    "$STRESS" --seed $((SEED + n)) --ops 1000000 --qd 64 --align 512 --init a.init --shadow-out a.shadow \
        --vhost-user "$VU" --queues 2 >a.log 2>&1 &
    apid=$!
    "$STRESS" --seed $((SEED + 100 + n)) --ops 1000000 --qd 64 --init b.init --shadow-out b.shadow \
        --nbd "nbd+unix:///b?socket=$S" --conns 4 >b.log 2>&1 &
    bpid=$!
    for round in 1 2; do
        # the writes reach the server (then the kill falls among requests in flight)
        for _ in $(seq 400); do cmp -s disk.raw init.raw || break; sleep 0.05; done
        sleep 0.5
        kill -0 $apid 2>/dev/null || fail "vbd-stress (vhost-user) ended before the kill: $(tail -5 a.log)"
        kill -0 $bpid 2>/dev/null || fail "vbd-stress (NBD) ended before the kill: $(tail -5 b.log)"
        kill -9 $spid; wait $spid 2>/dev/null
        sleep 0.3 # the outage: the client finds no server meanwhile
        srv_start $kind
        wait_log daemon.log "re-established" $round || fail "no reconnect $round: $(tail -5 daemon.log)"
    done
    sleep 0.5 # requests on the last connection too
    kill -USR1 $apid $bpid
    wait $apid || fail "vbd-stress over vhost-user across $kind restarts: $(tail -8 a.log)"
    wait $bpid || fail "vbd-stress over NBD across $kind restarts: $(tail -8 b.log)"
    kill -TERM $dpid; wait $dpid || fail "vbd-daemon exited with $?: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
    kill -TERM $spid; wait $spid 2>/dev/null
    grep -h " ops (" a.log b.log
    cmp <(head -c $WIN disk.raw) a.shadow || fail "$kind: the vhost-user window differs from its model"
    cmp <(tail -c $WIN disk.raw) b.shadow || fail "$kind: the NBD window differs from its model"
done
echo PASS
