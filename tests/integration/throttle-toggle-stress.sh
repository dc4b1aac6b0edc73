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
    if [ $tr = vhost ]; then
        exp=type=vhost-user-blk,id=g,node-name=t0,addr.type=unix,addr.path=$PWD/vu.sock,writable=on,num-queues=2,iothread=io0
        target="--vhost-user vu.sock --queues 2"
    else
        exp=type=nbd,id=g,node-name=t0,name=disk,writable=on
        target="--nbd nbd+unix:///disk?socket=nbd.sock --conns 4"
    fi
    "$VBD_DAEMON" --object iothread,id=io0 --object throttle-group,id=g0 \
        --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "driver=file,node-name=f0,filename=$PWD/img.qcow2,discard=unmap" \
        --blockdev driver=qcow2,node-name=d0,file=f0,discard=unmap --blockdev throttle,node-name=t0,throttle-group=g0,file=d0 \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" --export "$exp" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock"
    python3 - "$STRESS" "$SEED" "$ROUNDS" $target <<'PY' || fail "over $tr: $(tail -20 daemon.log)"
import os, random, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
stress_bin, seed, rounds = sys.argv[1:4]
target = sys.argv[4:]
s = Session("qmp.sock", "vbd")
cmd = [stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--init", "init.raw",
       "--shadow-out", "shadow.raw"] + target
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
p.stdout.readline()  # its seed: running
rng = random.Random(int(seed))
# qom-set changes the members given (as QEMU): each setting names them all
off = {"iops-total": 0, "iops-total-max": 0, "iops-total-max-length": 1, "bps-total": 0, "iops-write": 0,
       "bps-read": 0, "iops-size": 0}
limits = [dict(off, **l) for l in ({}, {"iops-total": 300}, {"iops-total": 150, "iops-total-max": 600},
                                   {"bps-total": 2 << 20}, {"iops-write": 100, "bps-read": 1 << 20},
                                   {"iops-total": 1000, "iops-size": 4096})]
def completed():
    st = s.run("query-blockstats")
    return sum(b["stats"]["rd_operations"] + b["stats"]["wr_operations"] + b["stats"]["unmap_operations"] +
               b["stats"]["flush_operations"] for b in st)
for r in range(int(rounds)):
    s.run("qom-set", path="/objects/g0", property="limits", value=rng.choice(limits))
    c0 = completed()
    while completed() < c0 + 16:  # some requests went through under these limits
        if p.poll() is not None:
            fail(f"vbd-stress ended in round {r}: {p.communicate()[0][-3000:]}")
        time.sleep(0.005)
    if rng.randrange(2):
        time.sleep(0.05)  # let requests queue behind the limits
s.run("qom-set", path="/objects/g0", property="limits", value=dict(off, **{"iops-total": 50}))
time.sleep(0.1)  # requests queued under a low limit, then none: all must go
s.run("qom-set", path="/objects/g0", property="limits", value=off)
p.send_signal(signal.SIGUSR1)
try:
    out = p.communicate(timeout=60)[0]
except subprocess.TimeoutExpired:
    p.kill()
    fail(f"vbd-stress did not end within 60 s of its SIGUSR1: requests hung ({p.communicate()[0][-2000:]})")
if p.returncode:
    fail(f"vbd-stress: {out[-4000:]}")
print(out.strip().splitlines()[-1])
PY
    job_daemon_stop vbd-daemon
    qcheck img.qcow2
    out=$(qemu-img compare -f qcow2 -F raw img.qcow2 shadow.raw 2>&1) || fail "over $tr: the image differs from the model: $out"
done
echo ok
