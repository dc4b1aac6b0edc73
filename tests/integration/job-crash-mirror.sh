#!/bin/bash
# Crash safety of blockdev-mirror (issue 13 part 7): vbd-daemon exports a
# qcow2 source over NBD and mirrors it (sync=full) to a blockdev-add'ed
# local qcow2 target; qemu-io writes known patterns through the export and
# flushes them, then the daemon is killed with SIGKILL:
#  copy:     during the copy (after a few MiB were copied);
#  ready:    in READY, before job-complete;
#  pivoted:  after job-complete has ended (BLOCK_JOB_COMPLETED) and more
#            flushed writes went through the export;
#  complete: at once after job-complete returns (the pivot may or not have
#            happened: the source holds every write flushed before it);
#  blocking: copy-mode=write-blocking, during the copy (the guest's writes
#            are copied to the target synchronously when the kill comes).
# A second client keeps writing (never flushing) to the last 4 MiB the
# whole time, so the kill also hits allocations and copies in flight.
# Afterwards both images pass qemu-img check (leaks allowed, as after any
# crash of a qcow2 writer), and the image the export served at the kill
# holds every flushed write: the source before the pivot, the target after
# (compared with a raw model to which the same writes were applied; in the
# last 4 MiB each sector holds its old content or one of the patterns).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
mixed_disk src.raw 24 1 14
must qemu-img convert -q -f raw -O qcow2 src.raw src.0

on_exit 'kill -9 $dpid 2>/dev/null'
checked() { # $1: what, $2: image
    local out rc
    out=$(qemu-img check "$2" 2>&1); rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "$1: qemu-img check $2 exit $rc: $out"
    [ $rc = 0 ] || echo "$2: $(echo "$out" | grep -m1 leaked)"
}
same() { # $1: what, $2: image, $3: raw model: every flushed write is there
    must qemu-img convert -q -f qcow2 -O raw "$2" got.raw
    python3 - got.raw "$3" <<'PY' || fail "$1 lost flushed writes"
import sys
got, want = (open(f, "rb").read() for f in sys.argv[1:3])
tail = 20 << 20
for i in range(0, tail, 512):
    if got[i:i + 512] != want[i:i + 512]:
        sys.exit(f"sector at {i} differs")
# the unflushed writer's area: old content or one of its patterns, per sector
for i in range(tail, len(want), 512):
    g = got[i:i + 512]
    if g != want[i:i + 512] and not (0xa0 <= g[0] <= 0xaf and g == bytes([g[0]]) * 512):
        sys.exit(f"sector at {i} is neither its old content nor a pattern")
print(f"{sum(got[i:i + 512] != want[i:i + 512] for i in range(tail, len(want), 512))} sectors "
      f"of the unflushed writer's area were written")
PY
}
for when in copy ready pivoted complete blocking; do
    step "SIGKILL of a mirror: $when"
    rm -f nbd.sock qmp.sock
    cp src.0 src.qcow2
    cp src.raw model.raw
    must qemu-img create -q -f qcow2 tgt.qcow2 24M
    "$VBD_DAEMON" --chardev socket,id=q,path="$T/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$T"'/src.qcow2"}}' \
        --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
        --export type=nbd,id=e0,node-name=src,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$T/nbd.sock" "$dpid" daemon.log
    python3 - "$when" "$dpid" <<'PY' || fail "$when: $(tail -3 daemon.log)"
import os, random, signal, subprocess, sys, threading, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
when, dpid = sys.argv[1], int(sys.argv[2])
T = os.getcwd()
s = Session("qmp.sock", "vbd")
r = random.Random(when)
def flushed_writes(n):
    """n pattern writes through the export, then a flush; the same on the model"""
    cmds = []
    for _ in range(n):
        off = r.randrange(0, 20 << 20, 512)
        ln = min(r.choice([512, 4096, 65536, 200704, 1 << 20]), (20 << 20) - off)
        cmds.append(f"-c 'write -P {r.randrange(1, 256)} {off} {ln}'")
    cmds = " ".join(cmds)
    sh(f"qemu-io -f raw {cmds} -c flush 'nbd+unix:///disk?socket={T}/nbd.sock'", "writes through the export")
    sh(f"qemu-io -f raw {cmds} model.raw", "the model of the writes")
stop = threading.Event()
def unflushed_writer():
    """64 KiB writes of patterns 0xa0..0xaf over [20M, 24M), no flush"""
    w = random.Random(when + "w")
    while not stop.is_set():
        cmds = " ".join(f"-c 'write -P {0xa0 + w.randrange(16)} {(20 << 20) + w.randrange(64) * 65536} 65536'"
                        for _ in range(200))
        subprocess.run(f"qemu-io -f raw {cmds} 'nbd+unix:///disk?socket={T}/nbd.sock'", shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
writer = threading.Thread(target=unflushed_writer, daemon=True)
writer.start()
def kill():
    os.kill(dpid, signal.SIGKILL)
    stop.set()
    writer.join()
s.run("blockdev-add", **{"driver": "qcow2", "node-name": "tgt",
                         "file": {"driver": "file", "filename": f"{T}/tgt.qcow2"}})
s.run("blockdev-mirror", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                            "speed": 2 << 20,
                            "copy-mode": "write-blocking" if when == "blocking" else "background"})
flushed_writes(4)
if when in ("copy", "blocking"):
    while True:
        j = s.job("j")
        if not j or j["status"] != "running":
            fail(f"job not running: {j}")
        if j["current-progress"] >= 4 << 20:
            break
        time.sleep(0.02)  # polling the progress
    flushed_writes(4)
    kill()
    sys.exit(0)
s.run("block-job-set-speed", device="j", speed=0)
s.m.wait_event("BLOCK_JOB_READY", timeout=300)
flushed_writes(6)
if when == "ready":
    kill()
    sys.exit(0)
s.run("job-complete", id="j")
if when == "complete":
    kill()
    sys.exit(0)
ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
if "error" in ev:
    fail(f"BLOCK_JOB_COMPLETED {ev}")
sh("cp model.raw model-pivot.raw", "copy")
flushed_writes(6)
kill()
PY
    { wait $dpid; } 2>/dev/null; dpid=
    wait_lock_free src.qcow2
    wait_lock_free tgt.qcow2
    checked "$when" src.qcow2
    checked "$when" tgt.qcow2
    if [ $when = pivoted ]; then
        same "$when: the source (served before the pivot)" src.qcow2 model-pivot.raw
        same "$when: the target (served after the pivot)" tgt.qcow2 model.raw
    else
        same "$when: the source" src.qcow2 model.raw
    fi
done
echo ok
