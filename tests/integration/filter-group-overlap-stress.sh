#!/bin/bash
# A throttle group whose two members sit on different threads, over
# copy-on-read and over quorum, under guest mutations in flight on the same
# BYTES (vbd-stress --overlap: writes, write-zeroes and discards sharing
# bytes, 48 in flight on a few hot clusters that move to fresh ground, every
# read checked against its model; each byte must end as one of the
# mutations that may have landed last on it left it). One daemon, one
# throttle group g0 (500 IOPS for both: the 800 requests queue in it):
#  ta: throttle(g0) over copy-on-read (bottom: base) over an empty qcow2
#    overlay of a filled qcow2 base, exported over vhost-user-blk (2 rings
#    on iothread io0: the stack moves there);
#  tb: throttle(g0) over quorum of three raw children (vote-threshold 2),
#    exported over NBD (4 connections) on the main loop.
# Two runs at once, one on each export: the group's queue is shared by
# requests of both threads, copy-on-read's copies and quorum's writes to
# its children wait in it with the guest's. Afterwards the overlay checks
# clean and reads as run A's model, the base is unchanged, every quorum
# child is run B's model. Filter-overlap-stress.sh has each filter alone;
# filter-stress.sh a group of two qcow2 nodes without --overlap.
# FILTER_GROUP_SEED; FILTER_GROUP_OPS requests a run (400).
. "$(dirname "$0")/lib.sh"
need qemu-img python3
overlap_stress_setup "${FILTER_GROUP_SEED:-5353}" "${FILTER_GROUP_OPS:-400}"

step "throttle group over copy-on-read (vhost-user, iothread) and quorum (NBD), seeds $SEED and $((SEED + 1))"
scenario_dir grp
cor_stack
quorum_raw_children ,node-name=q 3
S=$PWD/qmp.sock
EA=type=vhost-user-blk,id=ea,node-name=ta,addr.type=unix,addr.path=$PWD/vu.sock,writable=on,num-queues=2,iothread=io0
start_daemon --object iothread,id=io0 --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --object throttle-group,id=g0,limits.iops-total=500,limits.bps-total=20000000 \
    "${COR_NODES[@]}" --blockdev throttle,node-name=ta,throttle-group=g0,file=cor \
    --blockdev "$Q" --blockdev throttle,node-name=tb,throttle-group=g0,file=q \
    --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
    --export "$EA" --export type=nbd,id=eb,node-name=tb,name=disk,writable=on
wait_sock "$PWD/vu.sock" "$dpid" "$T/daemon.log"
wait_sock "$PWD/nbd.sock" "$dpid" "$T/daemon.log"
timeout -k 10 600 "$STRESS" --seed "$SEED" "${COMMON[@]}" --init ../base.raw --backing ../base.raw \
    --shadow-out shadow-a.raw --vhost-user vu.sock --queues 2 >stress-a.log 2>&1 &
apid=$!
timeout -k 10 600 "$STRESS" --seed $((SEED + 1)) "${COMMON[@]}" --init ../base.raw --no-discard \
    --shadow-out shadow-b.raw --nbd "nbd+unix:///disk?socket=$PWD/nbd.sock" --conns 4 >stress-b.log 2>&1 &
bpid=$!
wait $apid || fail "vbd-stress through throttle + copy-on-read, seed $SEED: $(tail -8 stress-a.log)"
wait $bpid || fail "vbd-stress through throttle + quorum, seed $((SEED + 1)): $(tail -8 stress-b.log)"
overlapped stress-a.log
overlapped stress-b.log
stop_daemon
cor_stack_check shadow-a.raw
for i in 0 1 2; do
    qemu-img compare -q -f raw -F raw s$i.raw shadow-b.raw || fail "quorum child $i is not run B's model"
done
echo ok
