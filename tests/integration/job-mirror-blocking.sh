#!/bin/bash
# blockdev-mirror and drive-mirror (mode=existing) copy-mode=write-blocking,
# by vbd-daemon and by
# qemu-storage-daemon 7.2 on copies of the same qcow2: a writer keeps
# writing through the daemon's NBD export (batches of 64 KiB writes all
# over the disk, without a pause) from before the job starts until after
# READY; the job is rate-limited far below the writer, so only the
# synchronous copy of each write lets it converge and reach READY while the
# writes go on. Then job-complete, and one more flushed batch after the
# pivot. The target must equal a raw model to which the same writes were
# applied, the source the model as of the pivot, both check clean.
# Then (vbd): vbd-stress (8 requests in flight on 2 connections, unaligned,
# overlapping on a few hot clusters, zero writes too, every read checked)
# from before the job's start, during the copy (slow: the background copy
# and the guest's writes meet on the same granules), in READY and across
# job-complete: the target must be the stress's model.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
need_stress
cd "$T"
mixed_disk src.raw 16 2
must qemu-img convert -q -f raw -O qcow2 src.raw src.0
on_exit 'kill -9 $dpid 2>/dev/null'
for d in vbd qsd; do
  for cmd in blockdev-mirror drive-mirror; do
    step "$d: write-blocking $cmd under a continuous writer"
    rm -rf "$T/$d$cmd" && mkdir "$T/$d$cmd" && cd "$T/$d$cmd"
    cp ../src.0 src.qcow2
    cp ../src.raw model.raw
    must qemu-img create -q -f qcow2 tgt.qcow2 16M
    job_daemon_start $d src --blockdev "$(qcow2_node src)"
    python3 - "$d" "$cmd" <<'PY' || fail "$d $cmd: $(tail -3 daemon.log)"
import os, random, subprocess, sys, threading
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, cmd = sys.argv[1:3]
D = os.getcwd()
s = Session("qmp.sock", who)
r = random.Random(7)
batches = []
def batch():
    return " ".join(f"-c 'write -P {r.randrange(1, 256)} {r.randrange(256) * 65536} 65536'" for _ in range(64))
def run_batch(cmds, flush=False):
    sh(f"qemu-io -f raw {cmds} {'-c flush' if flush else ''} 'nbd+unix:///disk?socket={D}/nbd.sock'",
       "writes through the export")
    batches.append(cmds)
stop = threading.Event()
during = [0]
def writer():
    while not stop.is_set():
        run_batch(batch())
        during[0] += 1
w = threading.Thread(target=writer, daemon=True)
run_batch(batch())
# 1 B/s until the writer has written during the job (on a loaded host a
# batch may take longer than the whole copy at 4 MiB/s)
args = {"job-id": "j", "device": "src", "sync": "full", "copy-mode": "write-blocking", "speed": 1}
if cmd == "blockdev-mirror":
    s.run("blockdev-add", **{"driver": "qcow2", "node-name": "tgt",
                             "file": {"driver": "file", "filename": f"{D}/tgt.qcow2"}})
    args["target"] = "tgt"
else:
    args.update({"target": f"{D}/tgt.qcow2", "format": "qcow2", "mode": "existing"})
w.start()
s.run(cmd, **args)
while during[0] < 2:
    if not w.is_alive():
        fail("the writer died")
    w.join(0.2)
s.run("block-job-set-speed", device="j", speed=4 << 20)
s.m.wait_event("BLOCK_JOB_READY", timeout=300)
at_ready = during[0]
while during[0] < at_ready + 2:  # the writes go on in READY
    if not w.is_alive():
        fail("the writer died")
    w.join(0.2)
stop.set()
w.join()
if at_ready < 2:
    fail(f"only {at_ready} batches were written before READY: not a continuous load")
s.run("job-complete", id="j")
ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
if "error" in ev or ev["offset"] != ev["len"]:
    fail(f"BLOCK_JOB_COMPLETED {ev}")
for b in batches:
    sh(f"qemu-io -f raw {b} model.raw", "the model")
sh("cp model.raw model-pivot.raw", "the model")
run_batch(batch(), flush=True)
sh(f"qemu-io -f raw {batches[-1]} model.raw", "the model")
print(f"{who} {cmd}: {len(batches)} batches of 64 writes, {at_ready} of them between the job's start and READY")
PY
    job_daemon_stop $d
    qcheck src.qcow2
    qcheck tgt.qcow2
    qemu-img compare -f qcow2 -F raw tgt.qcow2 model.raw >cmp.out 2>&1 || fail "$d: the target: $(cat cmp.out)"
    qemu-img compare -f qcow2 -F raw src.qcow2 model-pivot.raw >cmp.out 2>&1 || fail "$d: the source: $(cat cmp.out)"
    cd "$T"
  done
done

step "vbd: write-blocking blockdev-mirror under vbd-stress, across job-complete"
rm -rf "$T/stress" && mkdir "$T/stress" && cd "$T/stress"
cp ../src.0 src.qcow2
must qemu-img create -q -f qcow2 tgt.qcow2 16M
job_daemon_start vbd src --blockdev "$(qcow2_node src)"
python3 - "$STRESS" <<'PY' || fail "vbd stress: $(tail -3 daemon.log)"
import os, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session
s = Session("qmp.sock", "vbd")
D = os.getcwd()
stress = subprocess.Popen(f"exec {sys.argv[1]} --seed 5 --ops 100000000 --qd 8 --init ../src.raw --no-discard "
                          f"--shadow-out {D}/shadow.raw --nbd 'nbd+unix:///disk?socket={D}/nbd.sock' --conns 2",
                          shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
s.run("blockdev-add", **{"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": f"{D}/tgt.qcow2"}})
s.run("blockdev-mirror", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                            "copy-mode": "write-blocking", "speed": 4 << 20})
s.status("j", "created")
s.status("j", "ready")
if stress.poll() is not None:
    sys.exit(f"vbd-stress ended before READY: {stress.stdout.read()[-2000:]}")
s.complete_across("j", stress)
PY
job_daemon_stop vbd
qcheck src.qcow2
qcheck tgt.qcow2
qemu-img compare -f qcow2 -F raw tgt.qcow2 shadow.raw >cmp.out 2>&1 || fail "the target is not vbd-stress's model: $(cat cmp.out)"
echo ok
