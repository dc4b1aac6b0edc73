#!/bin/bash
# Block jobs under a guest whose writes, write-zeroes and discards in
# flight share BYTES (vbd-stress --overlap, 48 requests on 4 NBD
# connections, hot clusters moving to fresh ground), each scenario on the
# main loop, with the guest's NBD export on iothread io0 (iothread=io0:
# the graph and the job's nodes there, the job's requests hop) and with
# the guest over vhost-user-blk instead (vu: 48 requests on 4 rings on io0
# and io1, the graph on io0, the requests of io1's rings hop there):
#  A. active block-commit of the top (an empty qcow2 over the source)
#     into its base, rate-limited so that the writes race the copy, then
#     job-complete while the writers run: the base ends as their model;
#  S. block-stream of the top from its base, rate-limited, ended while the
#     writers run: the top alone (no backing file) ends as their model;
#  F. fleecing (copy-before-write over the source, the guest's export on
#     it, snapshot-access exported read-only): nbdcopy reads the point in
#     time while the writes race and after them: always the start;
#  B. blockdev-backup sync=full, rate-limited, ended at full speed while
#     the writers run: the target is the source at the start.
# Each run must have issued mutations over others in flight on the same
# bytes; every image checks clean. Longer than make check's budget: run
# by `make soak` (SOAK_JOBS=1) or alone:
#   tests/stress/job-overlap-soak.sh [BUILD_DIR]
# JOB_OVERLAP_SEED (default: random, printed), JOB_OVERLAP_SCENARIOS
# (default "A S F B"), JOB_OVERLAP_IO (default "main io0 vu").
# JOB_OVERLAP_TARGET: the format of B's backup target (default qcow2;
# vmdk, vhdx, qed, vdi, vpc: the copy-before-write copies and the
# background copy allocate its blocks at once).
# JOB_OVERLAP_REOPEN=1: while each job runs, blockdev-reopen of its qcow2
# nodes (the top and the source in A and S, the source and the target in
# B, the source in F) again and again with other l2/refcount cache sizes
# (small ones evict dirty tables all the time) and lazy refcounts on or
# off, each under the writers; every reopen must succeed (QEMU takes
# them) and the data checks are the same.
# JOB_OVERLAP_RESIZE=1: beside the job, a raw node "side" (8 MiB) over
# vhost-user-blk (2 rings, on the guest's thread: io0 or the main loop)
# with a second vbd-stress (--overlap, QD 16) in its first 4 MiB, and
# block_resize of side between 4 and 12 MiB again and again while the job
# runs: each resize refreshes every node's size (the job's too, on its
# thread) and tells every export, under both writers; side ends as its
# writers' model in its first 4 MiB.
[ $# -gt 0 ] && VBD_BUILD=$(cd "$1" && pwd)
. "$(dirname "$0")/../integration/lib.sh"
need qemu-img nbdcopy python3
stress_setup init.raw 16 8
SEED=${JOB_OVERLAP_SEED:-$RANDOM}
echo "seed $SEED"
TF=${JOB_OVERLAP_TARGET:-qcow2}
tgt_opts=
[ "$TF" = vpc ] && tgt_opts=force_size=on # else its CHS geometry rounds 16M
# a failed comparison keeps the scenario's directory in JOB_OVERLAP_KEEP (if set)
same() { # IMAGE RAW WHAT [FORMAT]
    local out
    out=$(qemu-img compare -f "${4:-qcow2}" -F raw "$1" "$2" 2>&1) && return 0
    [ -n "${JOB_OVERLAP_KEEP:-}" ] && rm -rf "$JOB_OVERLAP_KEEP" && cp -a "$PWD" "$JOB_OVERLAP_KEEP"
    fail "scenario $scen on $io (seed $SEED): $3: $out"
}

for io in ${JOB_OVERLAP_IO:-main io0 vu}; do
for scen in ${JOB_OVERLAP_SCENARIOS:-A S F B}; do
    step "scenario $scen, export on $io (seed $SEED)"
    scenario_dir "$scen-$io"
    cp ../base.qcow2 src.qcow2 || fail "copy of base.qcow2"
    must qemu-img create -q -f qcow2 -b "$PWD/src.qcow2" -F qcow2 top.qcow2 16M
    must qemu-img create -q -f "$TF" ${tgt_opts:+-o $tgt_opts} tgt.$TF 16M
    must qemu-img create -q -f qcow2 -b "$PWD/src.qcow2" -F qcow2 fleece.qcow2 16M
    "$VBD_DAEMON" --object iothread,id=io0 --object iothread,id=io1 --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"src","discard":"'"${JOB_OVERLAP_DISCARD:-unmap}"'","file":{"driver":"file","node-name":"fsrc","filename":"'"$PWD"'/src.qcow2","discard":"unmap"}}' \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock"
    python3 - "$scen" "$STRESS" "$((SEED + ${#scen}))" "$io" <<'PY' || fail "scenario $scen on $io: $(tail -40 daemon.log)"
import os, random, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
scen, stress_bin, seed, io = sys.argv[1:5]
s = Session("qmp.sock", "vbd")
cwd = os.getcwd()
# vu: the guest's rings on io0 and io1; side's export on io0 (the graph's thread)
ioarg = {} if io == "main" else {"iothread": "io0" if io == "vu" else io}
def stress(seed):
    cmd = [stress_bin] + os.environ.get("JOB_OVERLAP_STRESS", "--overlap").split() + ["--seed", str(seed), "--ops", str(1 << 40), "--qd", "48", "--hot", "4",
           "--hot-move", "32", "--init", "../init.raw", "--shadow-out", "shadow.raw"]
    if io == "vu":
        cmd += ["--vhost-user", "guest.sock", "--queues", "4"]
    else:
        cmd += ["--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p.stdout.readline()  # its seed: running, SIGUSR1 handled
    return p
def alive(p, what):
    if p.poll() is not None:
        fail(f"vbd-stress ended {what}: {p.communicate()[0][-2000:]}")
def stress_end(p):
    p.send_signal(signal.SIGUSR1)
    out = p.communicate(timeout=300)[0]
    if p.returncode:
        fail(f"vbd-stress: {out[-3000:]}")
    over = [l for l in out.splitlines() if l.startswith("vbd-stress: overlap: ")]
    if "--overlap" not in os.environ.get("JOB_OVERLAP_STRESS", "--overlap"):
        print(out.strip().splitlines()[-1]); return
    if not over or over[0].split()[2] == "0":
        fail(f"no mutation met another in flight on the same bytes: {out[-1000:]}")
    print(over[0])
reopen_nodes = []  # (node-name, its blockdev-add options with the children named)
reopens = [0]
rng = random.Random(int(seed))
def reopen_one():
    if not reopen_nodes or os.environ.get("JOB_OVERLAP_REOPEN") != "1":
        return
    name, opts = rng.choice(reopen_nodes)
    o = dict(opts)
    if rng.randrange(4) == 0:
        o["cache-size"] = rng.choice([16384, 65536, 1 << 20])
    else:
        for k in ("l2-cache-size", "refcount-cache-size"):
            v = rng.choice([None, 8192, 16384, 65536, 1 << 20])
            if v:
                o[k] = v
    if rng.randrange(2):
        o["lazy-refcounts"] = rng.randrange(2) == 1
    s.run("blockdev-reopen", options=[o])
    reopens[0] += 1
def progress(p, jid, key, more, may_end=False):
    """waits until the job's key has grown by more bytes, the writers
    running; False if the job ended first (may_end: a backup whose
    copy-before-write copied the rest, its events checked by the caller)"""
    j = s.job(jid)
    want = j[key] + more
    while j[key] < want:
        alive(p, f"while job {jid} ran")
        reopen_one()
        resize_one()
        time.sleep(0.05)  # polling the job's progress
        j = s.job(jid)
        if not j:
            if may_end:
                return False
            fail(f"job {jid} is gone")
    return True
def guest(node):
    if io == "vu":
        s.run("block-export-add", type="vhost-user-blk", id="guest", **{"node-name": node}, writable=True,
              addr={"type": "unix", "path": f"{cwd}/guest.sock"}, **{"num-queues": 4}, iothread=["io0", "io1"])
    else:
        s.run("block-export-add", type="nbd", id="guest", **{"node-name": node}, name="disk", writable=True, **ioarg)
side = [None]
resizes = [0]
def side_start():
    if os.environ.get("JOB_OVERLAP_RESIZE") != "1":
        return
    sh("truncate -s 8M side.raw", "side.raw")
    s.run("blockdev-add", driver="raw", **{"node-name": "side"},
          file={"driver": "file", "node-name": "fside", "filename": f"{cwd}/side.raw"})
    s.run("block-export-add", type="vhost-user-blk", id="sidex", **{"node-name": "side"}, writable=True,
          addr={"type": "unix", "path": f"{cwd}/side.sock"}, **{"num-queues": 2}, **ioarg)
    cmd = [stress_bin, "--overlap", "--seed", str(int(seed) + 7), "--ops", str(1 << 40), "--qd", "16",
           "--range", str(4 << 20), "--shadow-out", "side-shadow.raw", "--vhost-user", "side.sock", "--queues", "2"]
    side[0] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    side[0].stdout.readline()
def resize_one():
    if not side[0]:
        return
    alive(side[0], "on side while the job ran")
    s.run("block_resize", **{"node-name": "side", "size": rng.choice([4, 6, 8, 12]) << 20})
    resizes[0] += 1
def side_end():
    if not side[0]:
        return
    stress_end(side[0])
    s.run("block-export-del", id="sidex", mode="hard")
    s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
    s.run("blockdev-del", **{"node-name": "side"})
    sh("head -c 4194304 side.raw | cmp - side-shadow.raw", "side's first 4 MiB are not its writers' model")
    print(f"{resizes[0]} resizes of side under the job")
side_start()
src_opts = {"driver": "qcow2", "node-name": "src", "discard": os.environ.get("JOB_OVERLAP_DISCARD", "unmap"), "file": "fsrc"}
reopen_nodes.append(("src", src_opts))
if scen in ("A", "S"):
    s.run("blockdev-add", driver="qcow2", **{"node-name": "top", "discard": "unmap"}, backing="src",
          file={"driver": "file", "node-name": "ftop", "filename": f"{cwd}/top.qcow2", "discard": "unmap"})
    reopen_nodes.append(("top", {"driver": "qcow2", "node-name": "top", "discard": "unmap", "file": "ftop", "backing": "src"}))
    guest("top")
    p = stress(seed)
    if scen == "A":
        s.run("block-commit", **{"job-id": "c", "device": "top", "speed": 1 << 20})
        s.status("c", "created"); s.status("c", "running")
        progress(p, "c", "current-progress", 2 << 20)
        s.run("block-job-set-speed", device="c", speed=0)
        s.status("c", "ready")
        progress(p, "c", "total-progress", 2 << 20)
        s.run("job-complete", id="c")
        s.completed("c")
    else:
        s.run("block-stream", **{"job-id": "st", "device": "top", "speed": 1 << 20})
        s.status("st", "created"); s.status("st", "running")
        progress(p, "st", "current-progress", 2 << 20)
        s.run("block-job-set-speed", device="st", speed=0)
        s.completed("st")
    alive(p, "before the job's end: not tested across it")
    stress_end(p)
elif scen == "B":
    tf = os.environ.get("JOB_OVERLAP_TARGET", "qcow2")
    s.run("blockdev-add", driver=tf, **{"node-name": "tgt"}, file={"driver": "file", "node-name": "ftgt", "filename": f"{cwd}/tgt.{tf}"})
    if tf == "qcow2":  # the cache options are qcow2's
        reopen_nodes.append(("tgt", {"driver": "qcow2", "node-name": "tgt", "file": "ftgt"}))
    guest("src")
    # the point in time is the job's start: the writers start after it
    s.run("blockdev-backup", **{"job-id": "b", "device": "src", "target": "tgt", "sync": "full", "speed": 256 << 10})
    s.status("b", "created"); s.status("b", "running")
    p = stress(seed)
    # a target of 1-2 MiB clusters (vdi, vhdx, vpc): each guest write
    # copies a whole one first, and the writers' moving hot clusters may
    # have the job copy everything before it has 2 MiB more to show
    if progress(p, "b", "current-progress", 2 << 20, may_end=True):
        s.run("block-job-set-speed", device="b", speed=0)
    s.completed("b")
    alive(p, "before the backup's end")
    stress_end(p)
    s.run("blockdev-del", **{"node-name": "tgt"})
else:
    s.run("blockdev-add", driver="qcow2", **{"node-name": "tmp"},
          file={"driver": "file", "filename": f"{cwd}/fleece.qcow2"}, backing="src")
    s.run("blockdev-add", driver="copy-before-write", **{"node-name": "cbw"}, file="src", target="tmp")
    s.run("blockdev-add", driver="snapshot-access", **{"node-name": "fleece"}, file="cbw")
    guest("cbw")
    s.run("block-export-add", type="nbd", id="fl", **{"node-name": "fleece"}, name="fleece")
    fl = "nbd+unix:///fleece?socket=nbd.sock"
    p = stress(seed)
    for n in range(4):  # read the point in time while the writes race
        sh(f"nbdcopy --requests=64 --request-size=65536 '{fl}' during.raw", "nbdcopy during the writes")
        sh("cmp during.raw ../init.raw", f"the point in time read during the writes (copy {n})")
        alive(p, "during the reads of the point in time")
        reopen_one()
        resize_one()
    stress_end(p)
    sh(f"nbdcopy --requests=64 '{fl}' after.raw", "nbdcopy after the writes")
    sh("cmp after.raw ../init.raw", "the point in time read after the writes")
    for e in ("fl", "guest"):
        s.run("block-export-del", id=e, mode="hard")
        s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
    for node in ("fleece", "cbw", "tmp"):
        s.run("blockdev-del", **{"node-name": node})
side_end()
if os.environ.get("JOB_OVERLAP_REOPEN") == "1":
    print(f"{reopens[0]} reopens under the job")
PY
    kill -TERM $dpid; wait $dpid; rc=$?
    [ $rc = 0 ] || fail "scenario $scen on $io: vbd-daemon exited with $rc: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "scenario $scen on $io: $(cat daemon.log)"
    qcheck src.qcow2
    case $scen in
    A) same src.qcow2 shadow.raw "the source is not the writers' model" ;;
    S) qcheck top.qcow2
       qemu-img info top.qcow2 | grep -q "backing file" && fail "scenario S: top.qcow2 still names a backing file"
       same top.qcow2 shadow.raw "the streamed top is not the writers' model" ;;
    B) [ "$TF" = vpc ] || qcheck -f "$TF" tgt.$TF # qemu-img cannot check vpc
       same src.qcow2 shadow.raw "the source is not the writers' model"
       same tgt.$TF ../init.raw "the backup is not the source at its start" "$TF" ;;
    F) qcheck fleece.qcow2
       same src.qcow2 shadow.raw "the source is not the writers' model" ;;
    esac
    echo "ok $scen on $io"
    cd "$T"
done
done
echo ok
