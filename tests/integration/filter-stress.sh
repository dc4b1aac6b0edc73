#!/bin/bash
# Filters under 64 requests in flight (vbd-stress: hot clusters that move
# to fresh ground, every read checked against its model):
#  copy-on-read: through driver=copy-on-read over an empty qcow2 overlay
#    of a filled base (NBD, 4 connections), bottom given: reads
#    and writes of the same unallocated clusters race, and a read's copy of
#    the base's cluster must never land over a newer write (the top would
#    hold stale data); a discard may expose the base (--backing). The
#    overlay checks clean and reads as the model, the base is unchanged;
#  throttle: two throttle nodes of one group, each over its own qcow2 and
#    exported, two runs at once: each image is its own run's model;
#  quorum: three raw children, vote-threshold 2, the third behind blkdebug
#    failing every read and write after its first 300 requests: every read
#    is still right, the two healthy children are the model.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
stress_setup base.raw 32 20
SEED=${FILTER_STRESS_SEED:-6161}

for bottom in base; do
    step "copy-on-read (bottom: $bottom), seed $SEED"
    scenario_dir "$bottom"
    cp ../base.qcow2 base.qcow2
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    b=
    [ $bottom = base ] && b=,bottom=base
    "$VBD_DAEMON" --blockdev qcow2,node-name=base,file.driver=file,file.filename="$PWD/base.qcow2" \
        --blockdev qcow2,node-name=top,file.driver=file,file.filename="$PWD/top.qcow2",backing=base \
        --blockdev copy-on-read,node-name=cor,file=top$b \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export type=nbd,id=e0,node-name=cor,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
    out=$(timeout -k 10 600 "$STRESS" --seed "$SEED" --ops 4000 --qd 64 --hot 4 --hot-move 16 --init ../base.raw \
        --backing ../base.raw --shadow-out shadow.raw --nbd "nbd+unix:///disk?socket=$PWD/nbd.sock" --conns 4 2>&1) ||
        fail "vbd-stress through copy-on-read (bottom: $bottom), seed $SEED: $(echo "$out" | tail -8)"
    job_daemon_stop vbd-daemon
    qcheck top.qcow2
    qcheck base.qcow2
    must qemu-img compare -q -f qcow2 -F raw top.qcow2 shadow.raw
    must qemu-img compare -q -f qcow2 -F raw base.qcow2 ../base.raw
    cd "$T"
done

step "throttle: two nodes of one group, a run on each at once"
scenario_dir thr
cp ../base.qcow2 a.qcow2 && cp ../base.qcow2 b.qcow2
"$VBD_DAEMON" --object throttle-group,id=g0,limits.iops-total=4000,limits.bps-total=200000000 \
    --blockdev qcow2,node-name=a,file.driver=file,file.filename="$PWD/a.qcow2" \
    --blockdev qcow2,node-name=b,file.driver=file,file.filename="$PWD/b.qcow2" \
    --blockdev throttle,node-name=ta,throttle-group=g0,file=a --blockdev throttle,node-name=tb,throttle-group=g0,file=b \
    --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
    --export type=nbd,id=ea,node-name=ta,name=a,writable=on --export type=nbd,id=eb,node-name=tb,name=b,writable=on \
    2>daemon.log &
dpid=$!
wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
n=0
for x in a b; do
    n=$((n + 1))
    timeout -k 10 600 "$STRESS" --seed $((SEED + n)) --ops 2000 --qd 64 --hot 4 --hot-move 16 \
        --init ../base.raw --shadow-out shadow-$x.raw --nbd "nbd+unix:///$x?socket=$PWD/nbd.sock" --conns 2 >stress-$x.log 2>&1 &
    eval spid_$x=\$!
done
wait $spid_a || fail "vbd-stress on throttle node ta: $(tail -8 stress-a.log)"
wait $spid_b || fail "vbd-stress on throttle node tb: $(tail -8 stress-b.log)"
job_daemon_stop vbd-daemon
for x in a b; do
    qcheck $x.qcow2
    must qemu-img compare -q -f qcow2 -F raw $x.qcow2 shadow-$x.raw
done
cd "$T"

step "quorum: a child failing every request after its first 300, under 64 in flight"
scenario_dir q
Q="driver=quorum,vote-threshold=2"
for i in 0 1 2; do cp ../base.raw s$i.raw; done
for i in 0 1; do Q="$Q,children.$i.driver=raw,children.$i.file.driver=file,children.$i.file.filename=$PWD/s$i.raw"; done
D="children.2.file"
Q="$Q,children.2.driver=raw,$D.driver=blkdebug,$D.image.driver=file,$D.image.filename=$PWD/s2.raw"
Q="$Q,$D.inject-error.0.event=read_aio,$D.inject-error.0.errno=5,$D.inject-error.0.x-skip=300"
Q="$Q,$D.inject-error.1.event=write_aio,$D.inject-error.1.errno=5,$D.inject-error.1.x-skip=300"
out=$(timeout -k 10 600 "$STRESS" --seed "$SEED" --ops 2000 --qd 64 --hot 4 --hot-move 16 --init ../base.raw \
    --shadow-out shadow.raw --no-discard --image-opts "$Q" 2>&1) || fail "vbd-stress through quorum: $(echo "$out" | tail -8)"
for i in 0 1; do must qemu-img compare -q -f raw -F raw s$i.raw shadow.raw; done
# the failing child missed writes: otherwise the failure was not tested
! qemu-img compare -q -f raw -F raw s2.raw shadow.raw || fail "the blkdebug child holds every write"
cd "$T"
echo ok
