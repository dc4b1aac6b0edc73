#!/bin/bash
# rbd snap create by another client (the rbd CLI) while an rbd node is
# exported over NBD under 64 requests in flight (4 connections): every
# snapshot should complete, no request hang, and the image equal the model.
# On main this hung for good (rbd17): librbd 16.2 split vbd's unaligned
# thick write-zeroes into parts under one parent request counted in flight;
# the snapshot (run by the lock owner, the daemon) blocked the parts and
# waited for the parent. The driver now sends only aligned write-zeroes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-ceph.sh"
need rbd qemu-img
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || skip "qemu-block-extra (QEMU's rbd driver) not installed"
cd "$T" || exit 1
ceph_start
C=$CEPH_CONF
STRESS=$VBD_BUILD/tests/stress/vbd-stress
S=$T/nbd.sock
head -c 16M /dev/urandom >init.raw
must timeout 60 rbd -c "$C" create --size 16M rbd/snapst
must qemu-img convert -n -f raw -O raw init.raw "rbd:rbd/snapst:conf=$C"

step "rbd snap create x3 under QD 64 over NBD with block status: no hang, data as the model"
start_daemon --blockdev "driver=rbd,node-name=r0,pool=rbd,image=snapst,conf=$C,discard=unmap" \
    --nbd-server "addr.type=unix,addr.path=$S" --export "type=nbd,id=n0,node-name=r0,name=disk,writable=on"
"$STRESS" --seed "${SEED:-501}" --ops 1000000 --qd 64 --range $((8 << 20)) --init init.raw --shadow-out shadow.raw \
    --nbd "nbd+unix:///disk?socket=$S" --conns 4 >stress.log 2>&1 &
spid=$!
on_exit "kill $spid 2>/dev/null"
# the 4 connections are up: requests are in flight before the first snapshot
for _ in $(seq 200); do
    [ "$(ls -l /proc/$spid/fd 2>/dev/null | grep -c socket)" -ge 4 ] && break
    kill -0 $spid 2>/dev/null || fail "vbd-stress ended early: $(tail -5 stress.log)"
    sleep 0.05
done
for i in 1 2 3; do
    timeout 60 rbd -c "$C" snap create "rbd/snapst@cli$i" >snap.out 2>&1 ||
        fail "rbd snap create $i under the requests failed or hung (status $?): $(cat snap.out; tail -3 daemon.log)"
    kill -0 $spid 2>/dev/null || fail "vbd-stress ended during the snapshots: $(tail -5 stress.log)"
done
kill -USR1 $spid
# a request hung inside the daemon would keep vbd-stress waiting forever
for _ in $(seq 1200); do kill -0 $spid 2>/dev/null || break; sleep 0.05; done
kill -0 $spid 2>/dev/null && fail "vbd-stress did not finish its requests within 60 s of SIGUSR1 (a hang)"
wait $spid || fail "vbd-stress across the snapshots: $(tail -5 stress.log)"
stop_daemon
must timeout 60 rbd -c "$C" export rbd/snapst out.raw >/dev/null 2>&1
cmp <(head -c $((8 << 20)) out.raw) <(head -c $((8 << 20)) shadow.raw) || fail "rbd export differs from the model"
echo PASS
