#!/bin/bash
# A backup's point in time taken while a guest writes on an iothread:
# vbd-stress (64 requests in flight on the two rings of a vhost-user-blk
# export whose graph runs on iothread io0, checked against its model)
# writes the whole time while one transaction adds the in-memory bitmap b0
# and starts two full backups of the source (t1, t2) and a fleecing one
# (sync=none into fl, a qcow2 over the source). QEMU drains the source for
# the transaction: no write is half before and half after its instant. So
# t2 and the fleecing image (over the final source) are the same image, and
# an incremental backup of b0 into t1 after the writes makes t1 the
# source's final content (every write after the instant is in b0, none
# before it was missed by the full copy). While the jobs and the writes
# run, fl is exported over NBD (the fleecing workflow: served on io0, where
# fl lives, nothing moves under the jobs' copies; refused in round 17, when
# the export took the chain to the main loop) and nbdcopy reads it, during
# the writes and after them: both copies are the instant (t2).
. "$(dirname "$0")/lib.sh"
need qemu-img python3 nbdcopy
need_stress
cd "$T"
mixed_disk init.raw 32 3
must qemu-img convert -q -f raw -O qcow2 init.raw src.qcow2
must qemu-img create -q -f qcow2 t1.qcow2 32M
must qemu-img create -q -f qcow2 t2.qcow2 32M
must qemu-img create -q -f qcow2 -b "$T/src.qcow2" -F qcow2 fl.qcow2 32M
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
stress_daemon vhost src --blockdev "$(qcow2_node src null)" --nbd-server addr.type=unix,addr.path="$T/nbd.sock"
T=$T STRESS=$STRESS SEED=${JOB_START_SEED:-$RANDOM} python3 - <<'PY' || fail_with_daemon_log "backup start under vbd-stress on an iothread"
import os, signal, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
T, seed = os.environ["T"], os.environ["SEED"]
s = Session(T + "/qmp.sock", "vbd")
for n in ("t1", "t2"):
    s.run("blockdev-add", driver="qcow2", **{"node-name": n}, file={"driver": "file", "filename": f"{T}/{n}.qcow2"})
s.run("blockdev-add", driver="qcow2", **{"node-name": "fl"}, file={"driver": "file", "filename": f"{T}/fl.qcow2"},
      backing="src")
p = subprocess.Popen([os.environ["STRESS"], "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--align", "512",
                      "--hot", "4", "--hot-move", "32", "--init", T + "/init.raw", "--shadow-out", T + "/shadow.raw",
                      "--vhost-user", T + "/vu.sock", "--queues", "2"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
print(p.stdout.readline().strip(), file=sys.stderr)  # its seed: running, SIGUSR1 handled
s.run("transaction", actions=[
    {"type": "block-dirty-bitmap-add", "data": {"node": "src", "name": "b0"}},
    {"type": "blockdev-backup", "data": {"job-id": "k1", "device": "src", "target": "t1", "sync": "full"}},
    {"type": "blockdev-backup", "data": {"job-id": "k2", "device": "src", "target": "t2", "sync": "full",
                                         "speed": 1 << 20}},
    {"type": "blockdev-backup", "data": {"job-id": "kf", "device": "src", "target": "fl", "sync": "none"}}])
# the fleecing export, served where fl lives (io0) while the jobs copy
s.run("block-export-add", type="nbd", id="f", **{"node-name": "fl"}, name="fl")
fl = f"nbd+unix:///fl?socket={T}/nbd.sock"
sh(f"nbdcopy '{fl}' '{T}/during.raw'", "nbdcopy of the fleecing export during the writes")
if p.poll() is not None:
    fail(f"the writers ended before the copy: {p.communicate()[0][-3000:]}")
s.run("block-job-set-speed", device="k2", speed=0)
done = set()
while len(done) < 2:
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
    if "error" in ev:
        fail(f"BLOCK_JOB_COMPLETED {ev}")
    done.add(ev["device"])
if p.poll() is not None:
    fail(f"the writers ended before the backups: {p.communicate()[0][-3000:]}")
p.send_signal(signal.SIGUSR1)
out = p.communicate()[0]
if p.returncode:
    fail(f"vbd-stress: {out[-3000:]}")
print(out.strip().splitlines()[-1], file=sys.stderr)
sh(f"nbdcopy '{fl}' '{T}/after.raw'", "nbdcopy of the fleecing export after the writes")
s.run("block-export-del", id="f")
s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
s.run("block-job-cancel", device="kf")  # after the last write: fl saved the old data of all of them
s.m.wait_event("BLOCK_JOB_CANCELLED", timeout=300)
# the writes after the instant, from b0, onto the full copy t1
s.run("blockdev-backup", **{"job-id": "k3", "device": "src", "target": "t1", "sync": "incremental", "bitmap": "b0"})
s.status("k3", "created")
s.status("k3", "running")
s.completed("k3")
for n in ("t1", "t2", "fl"):
    s.run("blockdev-del", **{"node-name": n})
PY
stop_daemon
for n in src t1 t2 fl; do qcheck $n.qcow2; done
# fl over the final source reads the instant: the old data of every
# cluster written since is in fl
must qemu-img compare -q -f qcow2 -F qcow2 t2.qcow2 fl.qcow2
must qemu-img compare -q -f raw -F qcow2 during.raw t2.qcow2
must qemu-img compare -q -f raw -F qcow2 after.raw t2.qcow2
must qemu-img compare -q -f qcow2 -F raw src.qcow2 shadow.raw
must qemu-img compare -q -f qcow2 -F raw t1.qcow2 shadow.raw
echo ok
