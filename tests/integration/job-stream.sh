#!/bin/bash
# block-stream, the seed's case: the base is on an NBD server (qemu-nbd, a
# slow remote source), the VM runs from a local qcow2 overlay exported by
# the daemon, and streaming pulls the whole image into the overlay while
# the guest writes; at the end the overlay has no backing file and the NBD
# server can be stopped. Done by vbd-daemon and by qemu-storage-daemon 7.2
# on copies:
#  A. vbd-stress (random overlapping writes, zeroes, reads checked against
#     its model) over the NBD export during a rate-limited stream: the
#     overlay ends equal to the model, read through the export after the
#     NBD server stopped and from the file, qemu-img check clean;
#  B. qemu-io pattern writes through the export during the stream: the
#     overlays of both daemons equal each other and a model made offline;
#  E. the NBD server stops during the stream: on-error=stop sends
#     BLOCK_JOB_ERROR (read, stop) and pauses the job (io-status failed), it
#     is cancelled; the default policy (report) fails the next job with
#     BLOCK_JOB_COMPLETED carrying the error. The overlay stays consistent.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io qemu-nbd python3
need_stress
cd "$T"
mixed_disk base.raw 32 0 12 26
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
# B's writes: fixed patterns at fixed places (some across the streamed chunks)
IOW=(-c 'write -P 0xa1 0 64k' -c 'write -P 0xa2 500k 100k' -c 'write -P 0xa3 13M 3M' -c 'write -z 20M 1M'
     -c 'write -P 0xa4 31M 1M' -c 'write -P 0xa5 1000 3000' -c 'write -P 0xa6 16M 4k' -c 'write -P 0xa7 13500k 1k')
cp base.raw model.raw
must qemu-io -f raw "${IOW[@]}" model.raw >/dev/null

nbd_start() {
    qemu-nbd -r -f qcow2 -x base -t -e 8 -k "$PWD/base.sock" ../base.qcow2 2>nbd.log &
    npid=$!
    wait_sock "$PWD/base.sock" "$npid" nbd.log
    must qemu-img create -q -f qcow2 -b "nbd+unix:///base?socket=$PWD/base.sock" -F raw top.qcow2 32M
}
on_exit 'kill -9 $dpid $npid 2>/dev/null'

for d in vbd qsd; do
    for scen in A B E; do
        step "$d, scenario $scen"
        rm -rf "$T/$d$scen" && mkdir "$T/$d$scen" && cd "$T/$d$scen"
        nbd_start
        job_daemon_start $d top --blockdev "$(qcow2_node top)"
        python3 - "$d" "$scen" "$STRESS" $npid <<'PY' || fail "$d scenario $scen"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, scen, stress, npid = sys.argv[1:5]
s = Session("qmp.sock", who)
if scen == "E":
    s.run("block-stream", **{"job-id": "s0", "device": "top", "speed": 1, "on-error": "stop"})
    s.status("s0", "created"); s.status("s0", "running")
    # one chunk copied, the job sleeps for its rate: the server goes away
    sh(f"kill -TERM {npid}; while kill -0 {npid} 2>/dev/null; do sleep 0.05; done", "stopping qemu-nbd")
    s.run("block-job-set-speed", device="s0", speed=0)
    ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=60)["data"]
    if ev != {"device": "s0", "operation": "read", "action": "stop"}:
        fail(f"{who}: BLOCK_JOB_ERROR {ev}")
    s.status("s0", "paused")
    bj = s.run("query-block-jobs")[0]
    if bj["io-status"] != "failed" or not bj["paused"] or bj["status"] != "paused":
        fail(f"{who}: after the error: {bj}")
    s.run("job-cancel", id="s0")
    s.status("s0", "aborting")
    if s.m.wait_event("BLOCK_JOB_CANCELLED", timeout=60)["data"]["device"] != "s0":
        fail("BLOCK_JOB_CANCELLED")
    s.status("s0", "concluded"); s.status("s0", "null")
    s.run("block-stream", **{"job-id": "s1", "device": "top"})
    s.status("s1", "created"); s.status("s1", "running")
    ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=60)["data"]
    if ev != {"device": "s1", "operation": "read", "action": "report"}:
        fail(f"{who}: BLOCK_JOB_ERROR {ev}")
    s.status("s1", "aborting")
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=60)["data"]
    if ev.get("error") != "Input/output error":
        fail(f"{who}: BLOCK_JOB_COMPLETED {ev}")
    s.status("s1", "concluded"); s.status("s1", "null")
    sys.exit(0)
# 256 KiB/s: the job copies beside the writers and is still copying when
# they (400 requests) are done, however slow the host (32 MiB take 128 s;
# the speed is lifted right after them, so a slow rate costs no time)
s.run("block-stream", **{"job-id": "s0", "device": "top", "speed": 256 << 10})
s.status("s0", "created"); s.status("s0", "running")
nbd = "nbd+unix:///disk?socket=nbd.sock"
if scen == "A":
    sh(f"{stress} --seed 11 --ops 400 --qd 4 --init ../base.raw --no-discard "
       f"--shadow-out shadow.raw --nbd '{nbd}' --conns 2", "vbd-stress during the stream")
else:
    sh("qemu-io -f raw -c 'write -P 0xa1 0 64k' -c 'write -P 0xa2 500k 100k' -c 'write -P 0xa3 13M 3M' "
       "-c 'write -z 20M 1M' -c 'write -P 0xa4 31M 1M' -c 'write -P 0xa5 1000 3000' -c 'write -P 0xa6 16M 4k' "
       f"-c 'write -P 0xa7 13500k 1k' '{nbd}'", "qemu-io during the stream")
j = s.job("s0")
# ours paces every chunk it copies, zeroes too: still copying after the
# writers. (qemu-storage-daemon skips what reads as zero over NBD and may
# be done already: its pace is not ours to check.)
if who == "vbd":
    if not j or j["status"] != "running" or j["current-progress"] >= j["total-progress"]:
        fail(f"{who}: the job was not running while the guest wrote: {j}")
    bj = s.run("query-block-jobs")[0]
    if bj["speed"] != 256 << 10 or bj["type"] != "stream" or bj["len"] != 32 << 20:
        fail(f"{who}: query-block-jobs {bj}")
if j:  # (qsd's may end meanwhile: then the verb is refused)
    r = s.m.cmd("block-job-set-speed", {"device": "s0", "speed": 0})
    if "error" in r and who == "vbd":
        fail(f"{who}: block-job-set-speed: {r}")
s.completed("s0")
PY
        kill -TERM $npid 2>/dev/null; wait $npid 2>/dev/null; npid=
        if [ $scen = E ]; then # (its backing, the NBD server, is gone)
            job_daemon_stop $d
            qcheck 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"'"$PWD"'/top.qcow2"}}'
            continue
        fi
        [ $scen = A ] && exp=shadow.raw || exp=../model.raw
        # the NBD server is gone: everything is local now
        must qemu-img compare -q -f raw -F raw "nbd+unix:///disk?socket=$PWD/nbd.sock" $exp
        job_daemon_stop $d
        qcheck top.qcow2
        ! qemu-img info top.qcow2 | grep -q 'backing file' || fail "$d: top.qcow2 still has a backing file"
        must qemu-img compare -q -f qcow2 -F raw top.qcow2 $exp
    done
done
must qemu-img compare -q -f qcow2 -F qcow2 "$T/vbdB/top.qcow2" "$T/qsdB/top.qcow2"
echo ok
