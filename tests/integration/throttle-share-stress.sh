#!/bin/bash
# One throttle group shared by two nodes on two loops, its limits changed
# and its members leaving and joining, under 64 requests in flight on each:
# throttle node ta (over qcow2 a) is exported over vhost-user-blk (2 rings
# on iothread io0), tb (over qcow2 b) over NBD (4 connections, main loop);
# both start in group g0, whose timer is the main loop's and wakes io0's
# requests across threads. Two vbd-stress runs at once (random overlapping
# writes, write-zeroes and discards on hot clusters that move to fresh
# ground, every read checked against its model), while QMP, round after
# round (the seed picks): qom-set of g0's and g1's limits (some low enough
# that requests queue in the group), blockdev-reopen of ta or tb into the
# other group and back (a member leaves with the other's requests queued
# and the round-robin token maybe on it; the reopen's drain lets the
# moving member's own queue go at once), and a third throttle node (over
# a null-co node nobody writes) added to g0 and deleted again. Every
# request completes (each run ends within a minute of its SIGUSR1: none
# lost in a queue), none applied twice or out of place: each image equals
# its run's model, qemu-img check clean. THROTTLE_SHARE_SEED,
# THROTTLE_SHARE_ROUNDS.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
SEED=${THROTTLE_SHARE_SEED:-5353}
ROUNDS=${THROTTLE_SHARE_ROUNDS:-40}
stress_init 7 2
S=$T/qmp.sock
must qemu-img convert -q -f raw -O qcow2 init.raw a.qcow2
cp a.qcow2 b.qcow2
step "ta (vhost-user, io0) and tb (NBD, main loop) in one group: $ROUNDS rounds of limit changes, members leaving and joining, QD 64 each (seed $SEED)"
start_daemon --object iothread,id=io0 --object throttle-group,id=g0 --object throttle-group,id=g1 \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=fa,filename=$T/a.qcow2,discard=unmap" \
    --blockdev driver=qcow2,node-name=da,file=fa,discard=unmap --blockdev throttle,node-name=ta,throttle-group=g0,file=da,discard=unmap \
    --blockdev "driver=file,node-name=fb,filename=$T/b.qcow2,discard=unmap" \
    --blockdev driver=qcow2,node-name=db,file=fb,discard=unmap --blockdev throttle,node-name=tb,throttle-group=g0,file=db,discard=unmap \
    --blockdev driver=null-co,node-name=nc,size=16777216 \
    --export "type=vhost-user-blk,id=ea,node-name=ta,addr.type=unix,addr.path=$T/vu.sock,writable=on,num-queues=2,iothread=io0" \
    --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" --export type=nbd,id=eb,node-name=tb,name=disk,writable=on
wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
python3 - "$STRESS" "$SEED" "$ROUNDS" <<'PY' || fail_with_daemon_log "the throttle group's members under load"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session
from stress import Stress, after_some
stress_bin, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = Session("qmp.sock", "vbd")
common = ["--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--hot-move", "64", "--init", "init.raw"]
runs = {"a": Stress([stress_bin, "--seed", str(seed)] + common + ["--shadow-out", "shadow-a.raw",
                     "--vhost-user", "vu.sock", "--queues", "2"]),
        "b": Stress([stress_bin, "--seed", str(seed + 1)] + common + ["--shadow-out", "shadow-b.raw",
                     "--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"])}
rng = random.Random(seed)
# qom-set changes the members given (as QEMU): each setting names them all
off = {"iops-total": 0, "iops-total-max": 0, "iops-total-max-length": 1, "bps-total": 0, "iops-write": 0,
       "iops-read": 0, "bps-read": 0, "bps-write": 0, "iops-size": 0}
limits = [dict(off, **l) for l in ({}, {"iops-total": 300}, {"iops-total": 120, "iops-total-max": 500},
                                   {"bps-total": 3 << 20}, {"iops-write": 100, "bps-read": 1 << 20},
                                   {"iops-read": 200, "bps-write": 2 << 20}, {"iops-total": 800, "iops-size": 4096})]
group = {"ta": "g0", "tb": "g0"}
below = {"ta": "da", "tb": "db"}


def alive(what):
    for st in runs.values():
        st.alive(what)


def some(n, what):
    """n more requests went through (either run), both still running"""
    after_some(s, n, runs["a"], what)
    alive(what)


extra = False
counts = {"limits": 0, "moves": 0, "joins": 0}
for r in range(rounds):
    what = f"in round {r}"
    k = rng.randrange(6)
    if k <= 2:
        g = rng.choice(("g0", "g0", "g1"))
        s.run("qom-set", path=f"/objects/{g}", property="limits", value=rng.choice(limits))
        counts["limits"] += 1
    elif k <= 4:
        # a member leaves its group for the other (drained), the other
        # member's requests maybe queued in the group it left
        t = rng.choice(("ta", "tb"))
        group[t] = "g1" if group[t] == "g0" else "g0"
        s.run("blockdev-reopen", options=[{"driver": "throttle", "node-name": t, "throttle-group": group[t],
                                           "file": below[t]}])
        counts["moves"] += 1
    elif not extra:
        s.run("blockdev-add", driver="throttle", **{"node-name": "tc", "throttle-group": "g0", "file": "nc"})
        extra = True
        counts["joins"] += 1
    else:
        s.run("blockdev-del", **{"node-name": "tc"})
        extra = False
    some(24, what)
    if rng.randrange(2):  # more of them queue and pass under the same setting
        some(12, what)
# requests queued under a low limit in both groups, then none: all must go
for g in ("g0", "g1"):
    s.run("qom-set", path=f"/objects/{g}", property="limits", value=dict(off, **{"iops-total": 60}))
some(6, "under the last limits")
for g in ("g0", "g1"):
    s.run("qom-set", path=f"/objects/{g}", property="limits", value=off)
if extra:
    s.run("blockdev-del", **{"node-name": "tc"})
print(f"{counts['limits']} limit changes, {counts['moves']} moves between groups, {counts['joins']} joins of tc")
for x, st in runs.items():
    print(f"{x}: ", end="")
    st.finish(timeout=60)
PY
job_daemon_stop vbd-daemon
for x in a b; do
    qcheck $x.qcow2
    out=$(qemu-img compare -f qcow2 -F raw $x.qcow2 shadow-$x.raw 2>&1) || fail "$x.qcow2 differs from its model: $out"
done
echo ok
