#!/bin/bash
# Point in time under many requests in flight: vbd-stress (random
# overlapping requests on a few hot clusters that move to fresh ground all
# the time, QD 64 over 4 NBD connections, every read checked against its
# model) writes the source while copy-before-write saves its old data:
#  B. blockdev-backup sync=full to a qcow2 target, rate-limited so that
#     most clusters are first written by the guest while the job copies:
#     the target equals the source at the start, byte for byte;
#  E. the same job, unlimited, started and ended under the writers: its
#     end drops its copy-before-write node while reads look at the block
#     status of the export's node (the NBD server held no gate there);
#  F. fleecing (a copy-before-write node over the source, the guest's
#     export on it, a snapshot-access node exported read-only): nbdcopy
#     with 64 requests in flight reads the point in time while the writes
#     race, and again after them (cbw-timeout and on-cbw-error=break-snapshot
#     given: the guest's copies run in coroutines of their own);
#  M. blockdev-mirror copy-mode=write-blocking, rate-limited: the writes
#     race the background copy (the writers start first and end once the
#     job has copied 4 MiB, so they race it however slow the host), then
#     go on in READY; block-job-cancel there leaves the target equal to the
#     source.
# Two writers meeting on a cluster still to copy must not both copy it:
# the second would read the first one's new data into the target.
# The source ends as the model says; every image checks clean.
. "$(dirname "$0")/lib.sh"
need qemu-img nbdcopy python3
stress_setup init.raw 64 40
SEED=${JOB_STRESS_SEED:-4242}

# M runs as its own test (job-mirror-stress.sh): each stays under a minute
for scen in ${JOB_STRESS_SCENARIOS:-B E F}; do
    step "scenario $scen (seed $SEED)"
    job_stress_scenario "$scen" 64
    python3 - "$scen" "$STRESS" "$SEED" <<'PY' || fail "scenario $scen: $(tail -40 daemon.log)"
import os, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail, stress_running
scen, stress_bin, seed = sys.argv[1:4]
s = Session("qmp.sock", "vbd")
cwd = os.getcwd()
disk = "nbd+unix:///disk?socket=nbd.sock"
def stress(seed, ops=6000, init="../init.raw", out="shadow.raw"):
    cmd = [stress_bin, "--seed", str(seed), "--ops", str(ops), "--qd", "64", "--hot", "4", "--hot-move", "32",
           "--init", init, "--shadow-out", out, "--nbd", disk, "--conns", "4"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def stress_end(p):
    out = p.communicate()[0]
    if p.returncode:
        fail(f"vbd-stress: {out[-3000:]}")
    return out
s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"}, file={"driver": "file", "filename": f"{cwd}/tgt.qcow2"})
if scen == "B":
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": "src"}, name="disk", writable=True)
    # 1 KiB/s: the job is far from done when the writers end (their
    # requests outside the hot clusters alone copy about 80 % of the disk;
    # the job's budget, the bytes it started over its speed since it
    # began, gives each 1 MiB chunk of the rest 1024 s: hours, beyond the
    # test's own time limit, so no slow host can make the writers outlast
    # it; at 64 KiB/s (~200 s) a writer slowed by a loaded host did, and
    # 16 KiB/s (~800 s) was the same race with a longer margin)
    s.run("blockdev-backup", **{"job-id": "b", "device": "src", "target": "tgt", "sync": "full", "speed": 1 << 10})
    s.status("b", "created"); s.status("b", "running")
    out = stress_end(stress(seed))
    j = s.job("b")
    if not j:
        fail(f"the job ended before the writers: {s.m.wait_event('BLOCK_JOB_COMPLETED', timeout=60)['data']}")
    if j["status"] != "running" or j["current-progress"] >= j["total-progress"]:
        fail(f"the job was done before the writers: not tested under them: {j}")
    s.run("block-job-set-speed", device="b", speed=0)
    s.completed("b")
elif scen == "E":
    # the job's end (its copy-before-write node dropped in a drained
    # section) while 64 requests are in flight: reads' block status too
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": "src"}, name="disk", writable=True)
    p = stress(seed, ops=1 << 40)  # until SIGUSR1
    first = p.stdout.readline()  # its seed: running, SIGUSR1 handled
    s.run("blockdev-backup", **{"job-id": "b", "device": "src", "target": "tgt", "sync": "full"})
    s.status("b", "created"); s.status("b", "running")
    s.completed("b")
    if p.poll() is not None:
        fail(f"the writers ended before the job: {p.communicate()[0][-3000:]}")
    p.send_signal(signal.SIGUSR1)
    print(stress_end(p).strip().splitlines()[-1])
elif scen == "M":
    # write-blocking: the writes race the background copy on the same
    # granules, then go on in READY; cancelled there, the target holds
    # what the source holds
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": "src"}, name="disk", writable=True)
    # the writers first, until SIGUSR1: 3000 requests started after the
    # job could end after a loaded host let the mirror reach READY
    p = stress_running(stress(seed, ops=1 << 40, out="shadow1.raw"))
    s.run("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
                                "copy-mode": "write-blocking", "speed": 1 << 20})
    s.status("m", "created"); s.status("m", "running")
    s.under_writers("m", p, 4 << 20)
    s.run("block-job-set-speed", device="m", speed=0)
    s.status("m", "ready")
    stress_end(stress(int(seed) + 1, ops=3000, init="shadow1.raw"))
    s.run("block-job-cancel", device="m")
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
    if ev["device"] != "m" or "error" in ev:
        fail(f"BLOCK_JOB_COMPLETED {ev}")
else:
    s.run("blockdev-add", driver="qcow2", **{"node-name": "tmp"},
          file={"driver": "file", "filename": f"{cwd}/fleece.qcow2"}, backing="src")
    # a time limit far above any copy's: each guest write's copy runs in a
    # coroutine of its own (the timed path), and none may break the snapshot
    s.run("blockdev-add", driver="copy-before-write", **{"node-name": "cbw"}, file="src", target="tmp",
          **{"cbw-timeout": 120, "on-cbw-error": "break-snapshot"})
    s.run("blockdev-add", driver="snapshot-access", **{"node-name": "fleece"}, file="cbw")
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": "cbw"}, name="disk", writable=True)
    s.run("block-export-add", type="nbd", id="fl", **{"node-name": "fleece"}, name="fleece")
    fl = "nbd+unix:///fleece?socket=nbd.sock"
    p = stress(seed)
    n = 0
    while p.poll() is None:  # read the point in time as long as the writes race
        sh(f"nbdcopy --requests=64 --request-size=65536 '{fl}' during.raw", "nbdcopy during the writes")
        sh("cmp during.raw ../init.raw", f"the point in time read during the writes (copy {n})")
        n += 1
    stress_end(p)
    if n == 0:
        fail("the writers were done before the first read of the point in time")
    sh(f"nbdcopy --requests=64 '{fl}' after.raw", "nbdcopy after the writes")
    sh("cmp after.raw ../init.raw", "the point in time read after the writes")
    for e in ("fl", "guest"):
        s.run("block-export-del", id=e, mode="hard")
        s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
    for node in ("fleece", "cbw", "tmp"):
        s.run("blockdev-del", **{"node-name": node})
s.run("blockdev-del", **{"node-name": "tgt"})
PY
    job_daemon_stop vbd-daemon
    qcheck src.qcow2
    qcheck tgt.qcow2
    must qemu-img compare -q -f qcow2 -F raw src.qcow2 shadow.raw
    [ $scen = M ] && must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 shadow.raw
    [ $scen = B ] && must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 ../init.raw
    [ $scen = F ] && qcheck fleece.qcow2
    cd "$T"
done
echo ok
