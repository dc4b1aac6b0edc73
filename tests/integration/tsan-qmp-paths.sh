#!/bin/bash
# test-slow: vbd-daemon built with ThreadSanitizer (make build-tsan),
# TSAN_OPTIONS halt_on_error=1: the first report kills the daemon and fails
# the test. The threaded paths tsan-iothreads.sh does not walk, served to
# real clients at once while QMP changes the graph under them:
#  A: qcow2 over a file with aio=threads (the thread pool) behind throttle
#     node tA, NBD export on io0, written by qemu-img convert -m 16 -W;
#  B: qcow2 behind throttle node tB of the same group, NBD export on io1:
#     the group is shared by two iothreads; written by nbdcopy (4 x 64);
#  C: copy-on-read over an empty overlay of a full base, NBD export on io0,
#     read whole by nbdcopy (2 x 64) while block-stream runs into the overlay;
#  Q: quorum of three raw files (bound to the main loop: its export asks
#     for io1 and stays; requests hop), written by qemu-img convert;
#  V: raw over a file behind throttle node tV of the same group,
#     vhost-user-blk with 2 rings on io0 and io1 (the group's member taken
#     from both at once), vbd-bench --verify.
# Meanwhile, 48 QMP steps (each client runs again until they are done):
# the group's limits changed (qom-set) so requests queue on both iothreads,
# A moved io0 <-> io1 (its connections and the mirror job's target follow),
# B reopened (discard toggled), an export of A added and deleted (image
# locks from the main loop while the iothreads serve), a mirror of A
# started and cancelled, a backup of B run (copy-before-write on io1),
# block_resize of V under its rings, block-stream into C's overlay under
# its copy-on-read reads, running jobs paused, re-paced and resumed, the
# queries of nodes, exports, jobs, blockstats and iothreads (the main loop
# reading what the iothreads change), io1's poll-max-ns set. After the
# load, a mirror of A reaches ready and is cancelled (the target a copy),
# and the daemon ends.
# Data: A, B, the mirror target, every quorum child and C's overlay equal
# their sources (qemu-img compare), every qcow2 qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdcopy
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
TBENCH=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-bench
[ -x "$TSAN_DAEMON" ] || skip "no ThreadSanitizer build (make build-tsan)"
[ -x "$TBENCH" ] || TBENCH=$VBD_BENCH
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1"
cd "$T" || fail "cd $T"
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'

tsan_report() { # WHAT: fail with the first report if the daemon's log has one
    if grep -q "ThreadSanitizer" daemon.log; then
        grep -A40 "WARNING: ThreadSanitizer" daemon.log | head -80
        fail "ThreadSanitizer report ($1)"
    fi
}
client_fail() { # WHAT LOG
    cat "$2"
    tsan_report "$1"
    tail -20 daemon.log
    fail "$1"
}

python3 - <<'PY'
import random
r = random.Random(2525)
def image(name, mib, data_share):
    with open(name, "wb") as f:
        for _ in range(mib * 4):  # 256 KiB pieces: data, zeroes or a hole
            k = r.random()
            if k < data_share:
                f.write(r.randbytes(256 << 10))
            elif k < data_share + 0.1:
                f.write(bytes(256 << 10))
            else:
                f.seek(256 << 10, 1)
        f.truncate(mib << 20)
image("srcA.raw", 32, 0.7)
image("srcB.raw", 32, 0.7)
image("srcC.raw", 16, 0.8)
image("srcQ.raw", 16, 0.7)
PY
for x in a b tgt bk; do must qemu-img create -q -f qcow2 $x.qcow2 32M; done
must qemu-img convert -q -f raw -O qcow2 srcC.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
for i in 1 2 3; do truncate -s 16M q$i.raw; done
truncate -s 16M v.raw

rm -f qmp.sock nbd.sock vu.sock
"$TSAN_DAEMON" --object iothread,id=io0 --object iothread,id=io1 \
    --chardev socket,id=mon,path="$T/qmp.sock",server=on,wait=off --monitor chardev=mon \
    --object throttle-group,id=tg,limits.iops-total=100000,limits.bps-total=1000000000 \
    --blockdev driver=file,node-name=fa,filename="$T/a.qcow2",aio=threads \
    --blockdev driver=qcow2,node-name=A,file=fa --blockdev throttle,node-name=tA,throttle-group=tg,file=A \
    --blockdev driver=file,node-name=fb,filename="$T/b.qcow2" \
    --blockdev driver=qcow2,node-name=B,file=fb --blockdev throttle,node-name=tB,throttle-group=tg,file=B \
    --blockdev driver=file,node-name=ftgt,filename="$T/tgt.qcow2" --blockdev driver=qcow2,node-name=T,file=ftgt \
    --blockdev driver=file,node-name=fbk,filename="$T/bk.qcow2" --blockdev driver=qcow2,node-name=BK,file=fbk \
    --blockdev qcow2,node-name=base,file.driver=file,file.filename="$T/base.qcow2",read-only=on \
    --blockdev qcow2,node-name=top,file.driver=file,file.filename="$T/top.qcow2",backing=base \
    --blockdev copy-on-read,node-name=C,file=top \
    --blockdev '{"driver":"quorum","node-name":"Q","vote-threshold":2,"children":[{"driver":"raw","file":{"driver":"file","filename":"'"$T"'/q1.raw"}},{"driver":"raw","file":{"driver":"file","filename":"'"$T"'/q2.raw"}},{"driver":"raw","file":{"driver":"file","filename":"'"$T"'/q3.raw"}}]}' \
    --blockdev driver=file,node-name=fv,filename="$T/v.raw",cache.direct=on --blockdev driver=raw,node-name=V,file=fv \
    --blockdev throttle,node-name=tV,throttle-group=tg,file=V \
    --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
    --export type=nbd,id=eA,node-name=tA,name=a,writable=on,iothread=io0 \
    --export type=nbd,id=eB,node-name=tB,name=b,writable=on,iothread=io1 \
    --export type=nbd,id=eC,node-name=C,name=c,iothread=io0 \
    --export type=nbd,id=eQ,node-name=Q,name=q,writable=on,iothread=io1 \
    --export type=vhost-user-blk,id=eV,node-name=tV,addr.type=unix,addr.path="$T/vu.sock",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1 \
    2>daemon.log &
dpid=$!
wait_sock "$T/qmp.sock" "$dpid" daemon.log
wait_sock "$T/nbd.sock" "$dpid" daemon.log
wait_sock "$T/vu.sock" "$dpid" daemon.log
nbd() { echo "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$T/nbd.sock,file.export=$1"; }

# each client runs again until the QMP loop is done (its writes the same
# data each time): no client ends before the graph changes it waits for
again() { # LOG CMD...: CMD at least once, then again until $T/stop exists
    local log=$1
    shift
    while :; do
        # one vhost-user front end at a time: the daemon must have seen the
        # last one hang up, or the next one is refused
        if [ "$log" = benchV.log ]; then
            for _ in $(seq 1200); do
                [ "$(grep -c 'front end connected' daemon.log)" = "$(grep -c 'front end disconnected' daemon.log)" ] && break
                sleep 0.05
            done
        fi
        "$@" >"$log" 2>&1 || return 1
        [ -e "$T/stop" ] && return 0
    done
}
rm -f stop
again convA.log qemu-img convert -n -m 16 -W -f raw srcA.raw --target-image-opts "$(nbd a)" &
apid=$!
again copyB.log nbdcopy --connections=4 --requests=64 srcB.raw "nbd+unix:///b?socket=$T/nbd.sock" &
bpid=$!
again copyC.log nbdcopy --connections=2 --requests=64 "nbd+unix:///c?socket=$T/nbd.sock" readC.raw &
cpid=$!
again convQ.log qemu-img convert -n -m 16 -f raw srcQ.raw --target-image-opts "$(nbd q)" &
qpid=$!
again benchV.log "$TBENCH" --vhost-user "$T/vu.sock" -q 2 -d 16 --verify --size 16M &
vpid=$!

step "QMP changes while qemu-img, nbdcopy and vbd-bench run"
T=$T PIDS="$apid $bpid $cpid $qpid $vpid" python3 - "$T/qmp.sock" <<'PY' || { tsan_report "QMP under load"; tail -20 daemon.log; fail "QMP under load"; }
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP, alive
m = QMP(sys.argv[1], negotiate=True)
ok, job, wait_job = m.ok, m.job_status, m.wait_job
pids = [int(p) for p in os.environ["PIDS"].split()]
limits = [{"iops-total": 2000, "bps-total": 32 << 20}, {"iops-total": 100000, "bps-total": 1 << 30}]
i = 0
stream = False
pauses = 0
STEPS = 48  # 6 rounds of the 8 kinds of change
while i < STEPS:
    assert all(alive(p) for p in pids), "a client ended early (its log says why)"
    step = i % 8
    if step == 0:
        ok("qom-set", path="/objects/tg", property="limits", value=limits[(i // 8) % 2])
    elif step == 1:
        ok("x-blockdev-set-iothread", **{"node-name": "tA", "iothread": ["io1", "io0"][(i // 8) % 2], "force": True})
    elif step == 2:
        ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "B", "file": "fb",
                                        "discard": ["unmap", "ignore"][(i // 8) % 2]}])
    elif step == 3:
        ok("block-export-add", type="nbd", id="eX", **{"node-name": "A"}, name="x", writable=False)
        ok("block-export-del", id="eX")
    elif step == 4:
        if job("m0") is None:
            ok("blockdev-mirror", **{"job-id": "m0", "device": "tA", "target": "T", "sync": "full", "auto-dismiss": False})
        else:
            if job("m0") not in ("concluded",):
                ok("block-job-cancel", device="m0", force=True)
            wait_job("m0", ("concluded",))
            ok("job-dismiss", id="m0")
    elif step == 5:
        ok("block_resize", **{"node-name": "V", "size": (16 << 20) + (i // 8 + 1) * 65536})
    elif step == 6:
        if not stream:
            ok("block-stream", **{"job-id": "s0", "device": "top"})
            stream = True
        if job("k0") is None:
            ok("blockdev-backup", **{"job-id": "k0", "device": "tB", "target": "BK", "sync": "full", "auto-dismiss": False})
        elif job("k0") == "concluded":
            ok("job-dismiss", id="k0")
    else:
        # what the main loop reads of nodes, exports, jobs and iothreads that
        # other threads are changing; a running job paused, re-paced, resumed
        ok("query-named-block-nodes")
        ok("query-block-exports")
        ok("query-blockstats", **{"query-nodes": True})
        ok("query-iothreads")
        ok("qom-set", path="/objects/io1", property="poll-max-ns", value=[0, 64000][(i // 8) % 2])
        for j in ok("query-block-jobs"):
            if j["status"] == "running":
                # a job that was done with its work may still end (and the
                # stream, auto-dismissed, go) after the pause, as QEMU's
                done = False
                for cmd, args in (("block-job-pause", {}), ("block-job-set-speed", {"speed": [64 << 20, 0][(i // 8) % 2]}),
                                  ("query-block-jobs", None), ("block-job-resume", {})):
                    r = m.cmd(cmd, {} if args is None else dict(args, device=j["device"]))
                    if "error" in r:
                        assert job(j["device"]) in (None, "waiting", "pending", "concluded"), (cmd, j, r)
                        done = True
                        break
                pauses += not done
    i += 1
ok("qom-set", path="/objects/tg", property="limits", value=limits[1])
open(os.environ["T"] + "/stop", "w").close()
print(f"{i} QMP steps under load, {pauses} running jobs paused and resumed", file=sys.stderr)
PY
wait $apid || client_fail "qemu-img convert into A over NBD (io0, aio=threads, throttled)" convA.log
wait $bpid || client_fail "nbdcopy into B over NBD (io1, throttled)" copyB.log
wait $cpid || client_fail "nbdcopy out of C (copy-on-read) over NBD" copyC.log
wait $qpid || client_fail "qemu-img convert into Q (quorum) over NBD" convQ.log
wait $vpid || client_fail "vbd-bench --verify over vhost-user (V)" benchV.log

step "the load done: a mirror of A to ready, cancelled (the target is A's copy), the jobs ended"
python3 - "$T/qmp.sock" <<'PY' || { tsan_report "final jobs"; tail -20 daemon.log; fail "final jobs"; }
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
ok, job, wait_job = m.ok, m.job_status, m.wait_job
if job("m0") is not None:
    if job("m0") != "concluded":
        ok("block-job-cancel", device="m0", force=True)
    wait_job("m0", ("concluded",))
    ok("job-dismiss", id="m0")
ok("blockdev-mirror", **{"job-id": "m1", "device": "tA", "target": "T", "sync": "full", "auto-dismiss": False})
wait_job("m1", ("ready",))
ok("block-job-cancel", device="m1")
wait_job("m1", ("concluded",))
ok("job-dismiss", id="m1")
if job("s0") is None:
    ok("block-stream", **{"job-id": "s0", "device": "top"})
wait_job("s0", (None,))
if job("k0") is not None:
    wait_job("k0", ("concluded",))
    ok("job-dismiss", id="k0")
PY
kill -TERM $dpid
wait $dpid
rc=$?
dpid=
tsan_report "the daemon's end"
[ $rc = 0 ] || { tail -30 daemon.log; fail "daemon exit status $rc"; }

step "data: every image against its source"
for x in a b tgt bk top base; do qcheck $x.qcow2; done
must qemu-img compare -q -f raw -F qcow2 srcA.raw a.qcow2
must qemu-img compare -q -f raw -F qcow2 srcA.raw tgt.qcow2
must qemu-img compare -q -f raw -F qcow2 srcB.raw b.qcow2
must qemu-img compare -q -f raw -F raw srcC.raw readC.raw
must qemu-img compare -q -f raw -F qcow2 srcC.raw top.qcow2
[ -z "$(qemu-img info --output=json top.qcow2 | grep '"backing-filename"')" ] || fail "block-stream left top.qcow2 with a backing file"
for i in 1 2 3; do must qemu-img compare -q -f raw -F raw srcQ.raw q$i.raw; done
echo OK
