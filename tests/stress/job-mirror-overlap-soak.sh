#!/bin/bash
# blockdev-mirror while the guest's writes, write-zeroes and discards in
# flight share BYTES (vbd-stress --overlap, 48 requests on 4 NBD
# connections, hot clusters moving to fresh ground), the source opened
# with discard=unmap so that a discard changes it:
#  W. copy-mode=write-blocking, rate-limited: the writes race the
#     background copy, then go on in READY (every write copied to the
#     target before it completes); the writers end, block-job-cancel: the
#     target holds what the source holds;
#  C. the same job, job-complete while the writers run: the pivot under
#     them, the target ends as their model;
#  B. copy-mode=background, job-complete while the writers run.
# Each scenario with the guest's export on the main loop (main), on
# iothread io0 (io0: the NBD export with iothread=io0, the source and the
# job's target on io0, the copy and the writes on that thread) and over
# vhost-user-blk (vu: 4 rings on io0 and io1, the graph on io0, the
# requests of io1's rings hop there). MIRROR_OVERLAP_IO (default
# "main io0 vu"). MIRROR_OVERLAP_TARGET: the target's format (default
# qcow2; vmdk, vhdx, qed, vdi, vpc: the job's copies and, after the pivot
# of C and B, the writers allocate its blocks).
# Each run must have issued mutations over others in flight on the same
# bytes. The images check clean. MIRROR_OVERLAP_SEED. Minutes (the job
# runs rate-limited under the writers; io0 and vu, six scenarios, took 4.5
# minutes under ASan at load 25): `make soak` runs it (SOAK_JOBS=0 leaves
# it out), not make check; alone:
#   tests/stress/job-mirror-overlap-soak.sh [BUILD_DIR]
[ $# -gt 0 ] && VBD_BUILD=$(cd "$1" && pwd)
. "$(dirname "$0")/../integration/lib.sh"
need qemu-img python3
stress_setup init.raw 16 8
SEED=${MIRROR_OVERLAP_SEED:-2477}
TF=${MIRROR_OVERLAP_TARGET:-qcow2}
tgt_opts=
[ "$TF" = vpc ] && tgt_opts=force_size=on # else its CHS geometry rounds 16M

for io in ${MIRROR_OVERLAP_IO:-main io0 vu}; do
for scen in ${MIRROR_OVERLAP_SCENARIOS:-W C B}; do
    step "scenario $scen, export on $io (seed $SEED)"
    scenario_dir "$scen-$io"
    cp ../base.qcow2 src.qcow2 || fail "copy of base.qcow2"
    must qemu-img create -q -f "$TF" ${tgt_opts:+-o $tgt_opts} tgt.$TF 16M
    "$VBD_DAEMON" --object iothread,id=io0 --object iothread,id=io1 --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"src","discard":"unmap","file":{"driver":"file","filename":"'"$PWD"'/src.qcow2","discard":"unmap"}}' \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock"
    python3 - "$scen" "$STRESS" "$SEED" "$io" <<'PY' || fail "scenario $scen on $io: $(tail -40 daemon.log)"
import os, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
scen, stress_bin, seed, io = sys.argv[1:5]
s = Session("qmp.sock", "vbd")
cwd = os.getcwd()
def stress(seed, ops=1 << 40, init="../init.raw", out="shadow.raw"):
    cmd = [stress_bin, "--overlap", "--seed", str(seed), "--ops", str(ops), "--qd", "48", "--hot", "4",
           "--hot-move", "32", "--init", init, "--shadow-out", out]
    if io == "vu":
        cmd += ["--vhost-user", "vu.sock", "--queues", "4"]
    else:
        cmd += ["--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def stress_end(p):
    """SIGUSR1: its requests in flight complete, its checks run"""
    p.send_signal(signal.SIGUSR1)
    out = p.communicate(timeout=300)[0]
    if p.returncode:
        fail(f"vbd-stress: {out[-3000:]}")
    over = [l for l in out.splitlines() if l.startswith("vbd-stress: overlap: ")]
    if not over or over[0].split()[2] == "0":
        fail(f"no mutation met another in flight on the same bytes: {out[-1000:]}")
    print(over[0])
    return out
tf = os.environ.get("MIRROR_OVERLAP_TARGET", "qcow2")
s.run("blockdev-add", driver=tf, **{"node-name": "tgt"}, file={"driver": "file", "filename": f"{cwd}/tgt.{tf}"})
if io == "vu":
    s.run("block-export-add", type="vhost-user-blk", id="guest", **{"node-name": "src"}, writable=True,
          addr={"type": "unix", "path": f"{cwd}/vu.sock"}, **{"num-queues": 4}, iothread=["io0", "io1"])
else:
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": "src"}, name="disk", writable=True,
          **({} if io == "main" else {"iothread": io}))
p = stress(seed)  # until SIGUSR1
def progress(key, more):
    """waits until the job's key ("current-progress": copied; "total-progress":
    grows with what the writes dirty or copy) has grown by `more` bytes, the
    writers still running"""
    j = s.job("m")
    want = j[key] + more
    while j[key] < want:
        if p.poll() is not None:
            fail(f"vbd-stress ended: {p.communicate()[0][-2000:]}")
        time.sleep(0.05)  # polling the job's progress
        j = s.job("m")
        if not j:
            fail("the job is gone")
mode = "background" if scen == "B" else "write-blocking"
# 1 MiB/s: the writes meet the copy of the hot clusters while it runs
s.run("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
                            "copy-mode": mode, "speed": 1 << 20})
s.status("m", "created"); s.status("m", "running")
progress("current-progress", 4 << 20)
j = s.job("m")
if j["status"] != "running":
    fail(f"the mirror was ready after 4 MiB of 16: {j}")
s.run("block-job-set-speed", device="m", speed=0)
s.status("m", "ready")
progress("total-progress", 4 << 20)  # 4 MiB of writes in READY (each copied to the target as it runs)
if scen == "W":
    stress_end(p)
    s.run("block-job-cancel", device="m")
    # in READY: the target a copy of this moment (QEMU: BLOCK_JOB_COMPLETED)
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
    if ev["device"] != "m" or "error" in ev:
        fail(f"BLOCK_JOB_COMPLETED {ev}")
else:
    # the pivot under the writers: they must still run when the job has ended
    s.run("job-complete", id="m")
    s.completed("m")
    if p.poll() is not None:
        fail(f"the writers were done before the job: not tested across it: {p.communicate()[0][-2000:]}")
    stress_end(p)
PY
    kill -TERM $dpid; wait $dpid; rc=$?
    [ $rc = 0 ] || fail "scenario $scen on $io: vbd-daemon exited with $rc: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "scenario $scen on $io: $(cat daemon.log)"
    qcheck src.qcow2
    [ "$TF" = vpc ] || qcheck -f "$TF" tgt.$TF # qemu-img cannot check vpc
    qemu-img compare -f "$TF" -F raw tgt.$TF shadow.raw >cmp.out 2>&1 || fail "scenario $scen on $io: the target is not the writers' model: $(cat cmp.out)"
    if [ $scen = W ]; then
        qemu-img compare -f qcow2 -F raw src.qcow2 shadow.raw >cmp.out 2>&1 || fail "scenario $scen on $io: the source is not the writers' model: $(cat cmp.out)"
    fi
    cd "$T"
done
done
echo ok
