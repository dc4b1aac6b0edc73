#!/bin/bash
# block-commit while the guest writes through the daemon's NBD export, by
# vbd-daemon (writers: vbd-stress, random overlapping requests checked
# against its model) and by qemu-storage-daemon 7.2 (writers: qemu-io
# patterns, see writers() in tests/qmp/jobs.py) on copies of the same chain
# base <- mid <- top (top exported):
#  I. intermediate: mid into base (rate-limited, vbd-stress writing to top
#     meanwhile: started before the job and ended once the job has copied
#     512 KiB, so the job certainly ran under it however slow the host;
#     then the speed is lifted), top re-pointed to base with the
#     backing-file string given;
#     mid removed afterwards (blockdev-del); top reads what the writers'
#     model says, base holds what mid over base showed;
#  A. active: top into base; writers during the copy and while READY, then
#     job-complete switches the export to base with no request lost (for
#     vbd-daemon, vbd-stress runs across the switch: its reads and final
#     check span it), and writers go on against base; top and mid removed; base equals the
#     model. Every image ends qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
need_stress
cd "$T"
mixed_disk base.raw 32 2 20
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
must qemu-io -f qcow2 -c 'write -P 0x61 1M 6M' -c 'write -z 9M 1M' -c 'write -P 0x62 17M 5M' -c 'write -P 0x63 30M 2M' mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c 'write -P 0x71 0 2M' -c 'write -P 0x72 15M 4M' -c 'write -z 29M 1M' top.qcow2 >/dev/null
must qemu-img convert -q -O raw top.qcow2 top-view.raw
must qemu-img convert -q -O raw mid.qcow2 mid-view.raw

on_exit 'kill -9 $dpid 2>/dev/null'

for d in vbd qsd; do
    for scen in I A; do
        step "$d, scenario $scen"
        scenario_dir "$d$scen"
        cp ../base.qcow2 ../mid.qcow2 ../top.qcow2 .
        job_daemon_start $d top --blockdev "$(qcow2_node base null)" \
            --blockdev "$(qcow2_node mid base)" --blockdev "$(qcow2_node top mid)"
        python3 - "$d" "$scen" "$STRESS" <<'PY' || fail "$d scenario $scen"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail, stress_writes, stress_running
import jobs
who, scen, stress = sys.argv[1:4]
s = Session("qmp.sock", who)
def writers(seed, secs, init, out):
    jobs.writers(who, stress, seed, secs, init, out)
def commit_under_writers(jid, seed, init, out, **args):
    """block-commit (256 KiB/s) with writers on the export during its copy.
    vbd: vbd-stress starts first and runs until the job has copied 512 KiB
    (Session.under_writers); a fixed 2 s of it was a race with the job's
    own pace (a starved writer could outlast the whole commit). qsd:
    qemu-io's fixed writes once the job runs (not checked to overlap)."""
    p = stress_running(stress_writes(stress, seed, None, init, out, wait=False)) if who == "vbd" else None
    s.run("block-commit", **{"job-id": jid, "speed": 256 << 10}, **args)
    s.status(jid, "created"); s.status(jid, "running")
    if p:
        s.under_writers(jid, p, 512 << 10)
    else:
        writers(seed, None, init, out)
    s.on_job(jid, "block-job-set-speed", device=jid, speed=0)
if scen == "I":
    commit_under_writers("c0", 21, "../top-view.raw", "shadow.raw", device="top", **{"top-node": "mid",
                         "base-node": "base", "backing-file": "base.qcow2"})
    s.completed("c0")
    s.run("blockdev-del", **{"node-name": "mid"})
else:
    commit_under_writers("c1", 31, "../top-view.raw", "shadow1.raw", device="top")
    s.status("c1", "ready")
    ev = s.m.wait_event("BLOCK_JOB_READY", timeout=300)["data"]
    if ev["device"] != "c1" or ev["type"] != "commit":
        fail(f"{who}: BLOCK_JOB_READY {ev}")
    if who == "vbd":
        # writers across the switch: job-complete comes once their writes
        # reach the job (its total grows with the dirty chunks it copies),
        # and they are still running when the job has ended
        s.complete_across("c1", stress_writes(stress, 32, None, "shadow1.raw", "shadow2.raw", wait=False))
    else:
        # mirrored while READY
        writers(32, 1, "shadow1.raw", "shadow2.raw")
        s.run("job-complete", id="c1")
        s.completed("c1")
    # the export now writes to base
    writers(33, 1, "shadow2.raw", "shadow.raw")
    s.run("blockdev-del", **{"node-name": "top"})
    s.run("blockdev-del", **{"node-name": "mid"})
PY
        must qemu-img compare -q -f raw -F raw "nbd+unix:///disk?socket=$PWD/nbd.sock" shadow.raw
        job_daemon_stop $d
        for i in base mid top; do qcheck $i.qcow2; done
        if [ $scen = I ]; then
            qemu-img info top.qcow2 | grep -q '^backing file: base.qcow2$' || fail "$d: top.qcow2 not re-pointed: $(qemu-img info top.qcow2)"
            must qemu-img compare -q -f qcow2 -F raw top.qcow2 shadow.raw
            must qemu-img compare -q -f qcow2 -F raw base.qcow2 ../mid-view.raw
        else
            must qemu-img compare -q -f qcow2 -F raw base.qcow2 shadow.raw
        fi
    done
done
echo ok
