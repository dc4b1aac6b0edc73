#!/bin/bash
# Throttle limits switched on and off (qom-set of a throttle-group's limits)
# again and again under 64 requests in flight through a throttle node:
# requests queued under the old limits must go on under the new ones,
# none lost, none hung, none applied twice. vbd-stress (random overlapping
# writes, write-zeroes and discards on a few hot clusters, every read
# checked against its model) over vhost-user-blk (2 queues on an iothread:
# the group's timer is the main loop's, its members wake across threads)
# and over NBD (4 connections, main loop). Every request completes (the run
# must end within a minute of its SIGUSR1), the image equals the model,
# qemu-img check is clean. THROTTLE_TOGGLE_SEED, THROTTLE_TOGGLE_ROUNDS.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
SEED=${THROTTLE_TOGGLE_SEED:-3131}
ROUNDS=${THROTTLE_TOGGLE_ROUNDS:-40}
stress_init 5 1

for tr in vhost nbd; do
    step "over $tr: $ROUNDS limit changes under QD 64 (seed $SEED)"
    must qemu-img convert -q -f raw -O qcow2 init.raw img.qcow2
    rm -f qmp.sock nbd.sock vu.sock
    stress_transport $tr g t0
    "$VBD_DAEMON" --object iothread,id=io0 --object throttle-group,id=g0 \
        --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "driver=file,node-name=f0,filename=$PWD/img.qcow2,discard=unmap" \
        --blockdev driver=qcow2,node-name=d0,file=f0,discard=unmap --blockdev throttle,node-name=t0,throttle-group=g0,file=d0 \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" --export "$exp" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    python3 - "$STRESS" "$SEED" "$ROUNDS" $target <<'PY' || fail "over $tr: $(tail -20 daemon.log)"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session
from stress import Stress, after_some
stress_bin, seed, rounds = sys.argv[1:4]
target = sys.argv[4:]
s = Session("qmp.sock", "vbd")
st = Stress([stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--init", "init.raw",
             "--shadow-out", "shadow.raw"] + target)
rng = random.Random(int(seed))
# qom-set changes the members given (as QEMU): each setting names them all
off = {"iops-total": 0, "iops-total-max": 0, "iops-total-max-length": 1, "bps-total": 0, "iops-write": 0,
       "bps-read": 0, "iops-size": 0}
limits = [dict(off, **l) for l in ({}, {"iops-total": 300}, {"iops-total": 150, "iops-total-max": 600},
                                   {"bps-total": 2 << 20}, {"iops-write": 100, "bps-read": 1 << 20},
                                   {"iops-total": 1000, "iops-size": 4096})]
for r in range(int(rounds)):
    s.run("qom-set", path="/objects/g0", property="limits", value=rng.choice(limits))
    after_some(s, 16, st, f"in round {r}")  # some requests went through under these limits
    if rng.randrange(2):  # more of them queue and pass under these limits
        after_some(s, 8, st, f"in round {r}")
# requests queued under a low limit (64 in flight, 50 a second: some went
# through it), then none: all must go
s.run("qom-set", path="/objects/g0", property="limits", value=dict(off, **{"iops-total": 50}))
after_some(s, 4, st, "under the last limit")
s.run("qom-set", path="/objects/g0", property="limits", value=off)
st.finish()
PY
    job_daemon_stop vbd-daemon
    qcheck img.qcow2
    out=$(qemu-img compare -f qcow2 -F raw img.qcow2 shadow.raw 2>&1) || fail "over $tr: the image differs from the model: $out"
done
echo ok
