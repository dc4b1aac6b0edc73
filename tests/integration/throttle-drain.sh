#!/bin/bash
# A drained section over a throttle node lets its queued requests go, as
# QEMU's throttle_co_drain_begin: two throttle nodes of one group at 1 KiB/s
# (t0 over qcow2 a, exported over NBD on the main loop; t1 over qcow2 b,
# exported over NBD on iothread io0), 8 MiB of writes queued on t0 and 2
# MiB on t1 (hours of waiting at that limit). blockdev-reopen of a's qcow2
# node (drained: every export over it) must answer (vbd waited for the
# group's limits: 8192 s; qsd answers at once) and leave t0's writes done,
# t1's still held (only the drained node's queue goes); the same for b.
# After the drains the limits hold again: a new write to t0 waits until the
# next drain. Every write is on disk at the end, qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
S=$T/qmp.sock
for x in a b; do must qemu-img create -q -f qcow2 $x.qcow2 16M; done
start_daemon --object iothread,id=io0 --object throttle-group,id=g0,limits.bps-total=1024 \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=fa,filename=$T/a.qcow2" --blockdev driver=qcow2,node-name=da,file=fa \
    --blockdev throttle,node-name=t0,throttle-group=g0,file=da \
    --blockdev "driver=file,node-name=fb,filename=$T/b.qcow2" --blockdev driver=qcow2,node-name=db,file=fb \
    --blockdev throttle,node-name=t1,throttle-group=g0,file=db \
    --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" --export type=nbd,id=e0,node-name=t0,name=disk0,writable=on \
    --export type=nbd,id=e1,node-name=t1,name=disk1,writable=on,iothread=io0
wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
writes() { # EXPORT FIRST COUNT PATTERN: COUNT aio writes of 1 MiB from FIRST MiB, then a flush
    local c=() i
    for ((i = $2; i < $2 + $3; i++)); do c+=(-c "aio_write -P $(($4 + i)) ${i}M 1M"); done
    qemu-io -f raw "${c[@]}" -c aio_flush "nbd+unix:///$1?socket=$T/nbd.sock"
}
writes disk0 0 8 0x50 >io0.log 2>&1 &
p0=$!
writes disk1 0 2 0x70 >io1.log 2>&1 &
p1=$!
python3 - <<'PY' || fail_with_daemon_log "drains of a throttle node"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
s = Session("qmp.sock", "vbd")
# a drain that waited for the limits would answer after hours: 90 s is a
# guard against a hang, not a measure
s.m.sock.settimeout(90)


def written(node):
    return sum(b["stats"]["wr_operations"] for b in s.run("query-blockstats") if b.get("node-name") == node)


def drain(fmt):
    """a drained section over the qcow2 node fmt (and the exports over it)"""
    try:
        s.run("blockdev-reopen", options=[{"driver": "qcow2", "node-name": fmt, "file": "f" + fmt[1],
                                           "detect-zeroes": "off"}])
    except TimeoutError:
        fail(f"blockdev-reopen of {fmt} did not answer in 90 s: the drain waits for the throttle group")


def drained_until(node, fmt, n):
    """drains until node has completed n writes (each drain lets go what is
    queued; a request the client sent late may queue after one)"""
    rounds = 0
    while written(node) < n:
        drain(fmt)
        rounds += 1
        if rounds > 200:
            fail(f"{node}: {written(node)} of {n} writes done after {rounds} drains")
        time.sleep(0.02)  # polling for the client's late requests
    return rounds


r = drained_until("t0", "da", 8)
held = written("t1")
print(f"t0: 8 writes done after {r} drains of da; t1: {held} of 2")
if held > 1:  # its first may have gone before the limit was reached
    fail(f"t1's writes went through a drain of da only: {held} done")
r = drained_until("t1", "db", 2)
print(f"t1: 2 writes done after {r} drains of db")
PY
wait $p0 || fail "qemu-io on disk0: $(cat io0.log)"
wait $p1 || fail "qemu-io on disk1: $(cat io1.log)"
step "after the drains the limits hold again"
writes disk0 8 1 0x50 >io2.log 2>&1 &
p2=$!
python3 - <<'PY' || fail_with_daemon_log "a write after the drains"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
s = Session("qmp.sock", "vbd")
s.m.sock.settimeout(90)


def written(node):
    return sum(b["stats"]["wr_operations"] for b in s.run("query-blockstats") if b.get("node-name") == node)


# 10 MiB accounted at 1 KiB/s: the group holds it for hours unless drained
for _ in range(50):
    if written("t0") != 8:
        fail(f"t0: a write went through the group's limits after the drains ({written('t0')} done)")
    time.sleep(0.02)  # a while for the write to arrive and wait (a late arrival only weakens the check)
while written("t0") < 9:
    s.run("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "da", "file": "fa"}])
    time.sleep(0.02)  # polling for the client's request
s.run("qom-set", path="/objects/g0", property="limits", value={"bps-total": 0})
PY
wait $p2 || fail "qemu-io on disk0: $(cat io2.log)"
stop_daemon
qcheck a.qcow2
qcheck b.qcow2
for i in 0 1 2 3 4 5 6 7 8; do must qemu-io -f qcow2 -c "read -q -P $((0x50 + i)) ${i}M 1M" a.qcow2; done
for i in 0 1; do must qemu-io -f qcow2 -c "read -q -P $((0x70 + i)) ${i}M 1M" b.qcow2; done
echo ok
