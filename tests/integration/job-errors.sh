#!/bin/bash
# Block job error policies, vbd-daemon and qemu-storage-daemon 7.2 side by
# side (same steps, same events expected):
#  S. blockdev-mirror to a raw file on a small tmpfs (8 MiB for a 24 MiB
#     disk), on-target-error=stop: BLOCK_JOB_ERROR (write, stop), the job
#     pauses with io-status nospace; the tmpfs grows (remount), job-resume:
#     the job reaches READY, job-complete pivots, the target holds the disk;
#     on-target-error=enospc does the same on a full tmpfs;
#  R. on-target-error=report on the full tmpfs: the job fails with
#     BLOCK_JOB_COMPLETED's error "No space left on device", the export
#     stays on the source;
#  B. active block-commit into a base whose file fails one write (blkdebug),
#     on-error=stop: BLOCK_JOB_ERROR (write, stop), paused, io-status
#     failed; job-resume retries, READY, job-complete: base is the disk.
# Every image ends qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
cd "$T"
mkdir small
mount -t tmpfs -o size=8M tmpfs small 2>/dev/null || skip "cannot mount a tmpfs (not root?)"
on_exit 'kill -9 $dpid 2>/dev/null; umount "$T/small"'
truncate -s 24M disk.raw
for i in 0 1 2 3; do mixed_data m$i $i && dd if=m$i of=disk.raw bs=1M seek=$((i * 6)) conv=notrunc status=none; done
must qemu-img convert -q -f raw -O qcow2 disk.raw top0.qcow2
mkdir chain
# every cluster of base allocated: the failing write is not an allocating
# one (a qcow2 allocation whose data write fails leaves the next write to
# that range failing with EINVAL in vbd 7b22792: not this test's subject)
must qemu-img convert -q -S 0 -f raw -O qcow2 disk.raw chain/base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 chain/top.qcow2
must qemu-io -f qcow2 -c 'write -P 0x5a 1M 3M' -c 'write -P 0x5b 20M 2M' chain/top.qcow2 >/dev/null
must qemu-img convert -q -O raw chain/top.qcow2 ctop-view.raw


for d in ${DAEMONS:-vbd qsd}; do
    for scen in ${SCENS:-S R B}; do
        step "$d, scenario $scen"
        rm -rf "$T/$d$scen" && mkdir "$T/$d$scen" && cd "$T/$d$scen"
        rm -f "$T"/small/*
        must mount -o remount,size=8M "$T/small"
        if [ $scen = B ]; then
            cp ../chain/*.qcow2 .
            job_daemon_start $d top \
                --blockdev '{"driver":"qcow2","node-name":"base","backing":null,"file":{"driver":"blkdebug","image":{"driver":"file","filename":"'"$PWD"'/base.qcow2"},"inject-error":[{"event":"write_aio","errno":5,"once":true}]}}' \
                --blockdev "$(qcow2_node top base)"
        else
            cp ../top0.qcow2 top.qcow2
            truncate -s 24M "$T/small/tgt.raw"
            job_daemon_start $d top --blockdev "$(qcow2_node top)"
        fi
        python3 - "$d" "$scen" "$T/small" <<'PY' || fail "$d scenario $scen"
import os, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, scen, small = sys.argv[1:4]
s = Session("qmp.sock", who)
def error_event(jid, op, action):
    # each failed request in flight sends one: those of a previous job are skipped
    ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=120)["data"]
    while ev["device"] != jid:
        ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=120)["data"]
    if ev != {"device": jid, "operation": op, "action": action}:
        fail(f"{who}: BLOCK_JOB_ERROR {ev}")
def stopped(jid, iostatus):
    s.status(jid, "paused")
    bj = [j for j in s.run("query-block-jobs") if j["device"] == jid][0]
    if bj["io-status"] != iostatus or not bj["paused"] or bj["status"] != "paused":
        fail(f"{who}: after the error: {bj}")
def finish(jid, jtype):
    s.run("job-resume", id=jid)
    s.status(jid, "running")
    s.status(jid, "ready")
    ev = s.m.wait_event("BLOCK_JOB_READY", timeout=300)["data"]
    if ev["device"] != jid or ev["type"] != jtype:
        fail(f"{who}: BLOCK_JOB_READY {ev}")
    bj = [j for j in s.run("query-block-jobs") if j["device"] == jid][0]
    if bj["io-status"] != "ok":
        fail(f"{who}: io-status after job-resume: {bj}")
    s.run("job-complete", id=jid)
    s.completed(jid)
if scen in "SR":
    s.run("blockdev-add", driver="raw", **{"node-name": "tgt"},
          file={"driver": "file", "filename": small + "/tgt.raw"})
    policy = {"S": "stop", "R": "report"}[scen]
    s.run("blockdev-mirror", **{"job-id": "m0", "device": "top", "target": "tgt", "sync": "full",
                                "on-target-error": policy})
    s.status("m0", "created"); s.status("m0", "running")
    error_event("m0", "write", policy)
    if scen == "R":
        s.status("m0", "aborting")
        ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=120)["data"]
        if ev.get("error") != "No space left on device" or ev["device"] != "m0":
            fail(f"{who}: BLOCK_JOB_COMPLETED {ev}")
        s.status("m0", "concluded"); s.status("m0", "null")
        s.run("blockdev-del", **{"node-name": "tgt"})
        sys.exit(0)
    stopped("m0", "nospace")
    sh(f"mount -o remount,size=64M {small}", "growing the tmpfs")
    finish("m0", "mirror")
    # enospc: the same with the space gone again (a second target)
    sh(f"rm -f {small}/tgt2.raw && mount -o remount,size=24M {small} && truncate -s 24M {small}/tgt2.raw",
       "a second target")
    s.run("blockdev-add", driver="raw", **{"node-name": "tgt2"},
          file={"driver": "file", "filename": small + "/tgt2.raw"})
    s.run("blockdev-mirror", **{"job-id": "m1", "device": "tgt", "target": "tgt2", "sync": "full",
                                "on-target-error": "enospc"})
    s.status("m1", "created"); s.status("m1", "running")
    error_event("m1", "write", "stop")
    stopped("m1", "nospace")
    sh(f"mount -o remount,size=64M {small}", "growing the tmpfs")
    finish("m1", "mirror")
else:
    s.run("block-commit", **{"job-id": "c0", "device": "top", "on-error": "stop"})
    s.status("c0", "created"); s.status("c0", "running")
    error_event("c0", "write", "stop")
    stopped("c0", "failed")
    finish("c0", "commit")
PY
        must qemu-img compare -q -f raw -F raw "nbd+unix:///disk?socket=$PWD/nbd.sock" \
            $( [ $scen = B ] && echo ../ctop-view.raw || echo ../disk.raw )
        job_daemon_stop $d
        case $scen in
        S) qcheck top.qcow2
           must qemu-img compare -q -f raw -F raw "$T/small/tgt.raw" ../disk.raw
           must qemu-img compare -q -f raw -F raw "$T/small/tgt2.raw" ../disk.raw ;;
        R) qcheck top.qcow2 ;;
        B) qcheck top.qcow2; qcheck base.qcow2
           must qemu-img compare -q -f qcow2 -F raw base.qcow2 ../ctop-view.raw ;;
        esac
    done
done
echo ok
