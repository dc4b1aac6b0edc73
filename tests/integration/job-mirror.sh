#!/bin/bash
# blockdev-mirror and drive-mirror while writers go through the daemon's NBD
# export, by vbd-daemon and by qemu-storage-daemon 7.2 on copies of the same
# chain base <- top (top exported):
#  F. blockdev-mirror sync=full to a local qcow2 (blockdev-add'ed): writers
#     during the copy and in READY (vbd: vbd-stress, checking every read
#     against its model, running across job-complete), job-complete, then
#     writes go to the target; the source is removed; the target is the model;
#  N. blockdev-mirror sync=full to an NBD target (qemu-nbd serving a raw
#     file), granularity and buf-size given, fixed qemu-io writers (the same
#     for both daemons): the two targets are equal and are the model;
#  D. drive-mirror sync=top mode=absolute-paths (format qcow2, node-name):
#     the new image's backing is base.qcow2; equal to qsd's result;
#  C. cancel: forced before READY (BLOCK_JOB_CANCELLED, the export still on
#     the source), and block-job-cancel in READY (BLOCK_JOB_COMPLETED, no
#     pivot: later writes go to the source, the target keeps the copy).
# Every image ends qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io qemu-nbd python3
need_stress
cd "$T"
mixed_disk base.raw 32 2 20
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c 'write -P 0x71 0 2M' -c 'write -P 0x72 15M 4M' -c 'write -z 29M 1M' top.qcow2 >/dev/null
must qemu-img convert -q -O raw top.qcow2 top-view.raw

on_exit 'kill -9 $dpid $npid 2>/dev/null'

for d in vbd qsd; do
    for scen in F N D C; do
        step "$d, scenario $scen"
        scenario_dir "$d$scen"
        cp ../base.qcow2 ../top.qcow2 .
        npid=
        case $scen in
        F|C) must qemu-img create -q -f qcow2 tgt.qcow2 32M ;;
        N) truncate -s 32M tgt.raw
           qemu-nbd -f raw -t -k "$PWD/tgt.sock" -x tgt tgt.raw 2>qnbd.log &
           npid=$!
           wait_sock "$PWD/tgt.sock" "$npid" qnbd.log ;;
        esac
        job_daemon_start $d top --blockdev "$(qcow2_node base null)" --blockdev "$(qcow2_node top base)"
        python3 - "$d" "$scen" "$STRESS" <<'PY' || fail "$d scenario $scen"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail, qemu_io_writes, stress_writes, stress_running
import jobs
who, scen, stress_bin = sys.argv[1:4]
s = Session("qmp.sock", who)
def stress(seed, secs, init, out, wait=True):
    return stress_writes(stress_bin, seed, secs, init, out, wait)
def writers(seed, secs, init, out):
    jobs.writers(who, stress_bin, seed, secs, init, out)
def ready(jid):
    s.status(jid, "ready")
    ev = s.m.wait_event("BLOCK_JOB_READY", timeout=300)["data"]
    if ev["device"] != jid or ev["type"] != "mirror":
        fail(f"{who}: BLOCK_JOB_READY {ev}")
def cancelled(jid):
    ev = s.m.wait_event("BLOCK_JOB_CANCELLED", timeout=300)["data"]
    if ev["device"] != jid or ev["type"] != "mirror":
        fail(f"{who}: BLOCK_JOB_CANCELLED {ev}")
    while s.job(jid):
        time.sleep(0.02)  # auto-dismiss comes right after the event

if scen == "F":
    s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
          file={"driver": "file", "filename": os.path.abspath("tgt.qcow2")})
    if who == "vbd":
        # vbd-stress during the copy: started before the job, ended (SIGUSR1)
        # once the job has copied 8 MiB (2 s at 4 MiB/s), so the copy ran
        # under it however slow the host. (It ran 2 s from after the start,
        # the job slowed to 1 B/s once at three quarters: a poller starved
        # past the last quarter let the job reach READY first.)
        p = stress_running(stress(41, None, "../top-view.raw", "shadow1.raw", wait=False))
    s.run("blockdev-mirror", **{"job-id": "m0", "device": "top", "target": "tgt", "sync": "full",
                                "speed": 4 << 20})
    s.status("m0", "created"); s.status("m0", "running")
    if who == "vbd":
        s.under_writers("m0", p, 8 << 20)
    else:
        writers(41, 2, "../top-view.raw", "shadow1.raw")
    s.run("block-job-set-speed", device="m0", speed=0)
    ready("m0")
    if who == "vbd":
        # writers across the pivot: job-complete once their writes reach
        # the job (its total grows), and they still run when it has ended
        s.complete_across("m0", stress(42, None, "shadow1.raw", "shadow2.raw", wait=False))
    else:
        writers(42, 1, "shadow1.raw", "shadow2.raw")
        s.run("job-complete", id="m0")
        s.completed("m0")
    writers(43, 1, "shadow2.raw", "shadow.raw")  # on the target now
    s.run("blockdev-del", **{"node-name": "top"})
elif scen == "N":
    s.run("blockdev-add", driver="nbd", **{"node-name": "tgt"}, export="tgt",
          server={"type": "unix", "path": os.path.abspath("tgt.sock")})
    s.run("blockdev-mirror", **{"job-id": "m1", "device": "top", "target": "tgt", "sync": "full",
                                "granularity": 32768, "buf-size": 2 << 20, "speed": 4 << 20})
    s.status("m1", "created"); s.status("m1", "running")
    qemu_io_writes(51, "../top-view.raw", "shadow1.raw")
    s.run("block-job-set-speed", device="m1", speed=0)
    ready("m1")
    qemu_io_writes(52, "shadow1.raw", "shadow2.raw")
    s.run("job-complete", id="m1")
    s.completed("m1")
    qemu_io_writes(53, "shadow2.raw", "shadow.raw")
elif scen == "D":
    s.run("drive-mirror", **{"job-id": "m2", "device": "top", "target": os.path.abspath("new.qcow2"),
                             "format": "qcow2", "node-name": "new", "sync": "top", "mode": "absolute-paths",
                             "speed": 4 << 20})
    s.status("m2", "created"); s.status("m2", "running")
    qemu_io_writes(61, "../top-view.raw", "shadow1.raw")
    s.run("block-job-set-speed", device="m2", speed=0)
    ready("m2")
    s.run("job-complete", id="m2")
    s.completed("m2")
    qemu_io_writes(63, "shadow1.raw", "shadow.raw")
    names = [n["node-name"] for n in s.run("query-named-block-nodes")]
    if "new" not in names:
        fail(f"{who}: the target node 'new' is not listed: {names}")
else:  # C
    s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
          file={"driver": "file", "filename": os.path.abspath("tgt.qcow2")})
    # forced cancel before READY (1 MiB/s: far from done)
    s.run("blockdev-mirror", **{"job-id": "m3", "device": "top", "target": "tgt", "sync": "full",
                                "speed": 1 << 20})
    s.status("m3", "created"); s.status("m3", "running")
    s.run("job-cancel", id="m3")
    cancelled("m3")
    qemu_io_writes(71, "../top-view.raw", "shadow1.raw")  # still the source
    # cancel in READY: the job completes, nothing moves
    s.run("blockdev-mirror", **{"job-id": "m4", "device": "top", "target": "tgt", "sync": "full"})
    s.status("m4", "created"); s.status("m4", "running")
    ready("m4")
    s.run("block-job-cancel", device="m4")
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
    if ev["device"] != "m4" or "error" in ev:
        fail(f"{who}: BLOCK_JOB_COMPLETED {ev}")
    while s.job("m4"):
        time.sleep(0.02)  # auto-dismiss comes right after the event
    qemu_io_writes(72, "shadow1.raw", "shadow.raw")  # the source still
    s.run("blockdev-del", **{"node-name": "tgt"})
PY
        must qemu-img compare -q -f raw -F raw "nbd+unix:///disk?socket=$PWD/nbd.sock" shadow.raw
        job_daemon_stop $d
        if [ -n "$npid" ]; then kill -TERM $npid; wait $npid; npid=; fi
        for i in base top; do qcheck $i.qcow2; done
        case $scen in
        F) qcheck tgt.qcow2; must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 shadow.raw ;;
        N) must qemu-img compare -q -f raw -F raw tgt.raw shadow.raw ;;
        D) qcheck new.qcow2
           qemu-img info new.qcow2 | grep -q "^backing file: $T/$d$scen/base.qcow2" ||
               fail "$d: new.qcow2's backing: $(qemu-img info new.qcow2)"
           must qemu-img compare -q -f qcow2 -F raw new.qcow2 shadow.raw ;;
        C) qcheck tgt.qcow2
           must qemu-img compare -q -f qcow2 -F raw top.qcow2 shadow.raw
           must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 shadow1.raw ;;
        esac
    done
done
step "vbd-daemon's results equal qemu-storage-daemon's"
cd "$T"
must qemu-img compare -q -f raw -F raw vbdN/tgt.raw qsdN/tgt.raw
must qemu-img compare -q -f qcow2 -F qcow2 vbdD/new.qcow2 qsdD/new.qcow2
must qemu-img compare -q -f qcow2 -F qcow2 vbdC/tgt.qcow2 qsdC/tgt.qcow2
echo ok
