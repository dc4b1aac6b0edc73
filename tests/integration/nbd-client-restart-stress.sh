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
    wait_sock "$SRV" "$spid" srv.log
}

srv_restart() { # KIND: SIGKILL, an outage (the client finds no server meanwhile), then a new server
    kill -9 $spid; wait $spid 2>/dev/null
    sleep 0.3
    srv_start "$1"
}

n=0
for kind in qemu-nbd nbdkit-nosr vbd-nbd; do
    n=$((n + 1))
    step "$kind killed and restarted twice under vhost-user (2 queues, iothread) and NBD (4 connections), QD 64 each, seed $((SEED + n))"
    window_stress_disk disk.raw
    : >srv.log
    srv_start $kind
    window_stress_start n0 driver=nbd,node-name=n0,server.type=unix,server.path="$SRV",export=exp,reconnect-delay=60 \
        $((SEED + n)) $((SEED + 100 + n))
    window_stress_rounds disk.raw "srv_restart $kind" "re-established"
    window_stress_finish "$kind restarts" disk.raw
    kill -TERM $spid; wait $spid 2>/dev/null
done
echo PASS
