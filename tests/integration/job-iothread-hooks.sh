#!/bin/bash
# Block jobs start and end while a guest writes on an iothread: vbd-stress
# (random overlapping requests checked against its model, 64 in flight on
# the two rings of a vhost-user-blk export whose graph runs on iothread io0)
# writes the whole time while, one after the other:
#  - blockdev-mirror sync=full (to null-co), cancelled 40 times, in READY
#    and while it copies (no pivot: the writes go on into the source while
#    the job's write hook comes off; a cancelled job aborts, with no
#    drained graph change before);
#  - blockdev-mirror sync=full, completed (the export pivots to the target);
#  - blockdev-snapshot-sync, then block-stream of the new overlay, cancelled
#    half-way ten times, then run to its end (the writes go on into the
#    overlay while the stream's hook comes off).
# A job's hook is loaded by a write on io0 and entered on the main loop
# after a hop: taking it off must wait for such a write (a drain), else the
# write enters freed memory (ASan). Every read matches the model; at the
# end the node the export is on holds the model's content and every image
# checks clean.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
need_stress
cd "$T"
must qemu-img create -q -f qcow2 src.qcow2 32M
ROUNDS=${JOB_HOOK_ROUNDS:-2}
for i in $(seq 0 $((ROUNDS - 1))); do
    must qemu-img create -q -f qcow2 p$i.qcow2 32M
done
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
stress_daemon vhost src --blockdev "$(qcow2_node src null)"
T=$T STRESS=$STRESS ROUNDS=$ROUNDS SEED=${JOB_HOOK_SEED:-$RANDOM} python3 - <<'PY' || fail_with_daemon_log "jobs under vbd-stress on an iothread"
import os, signal, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
T, rounds, seed = os.environ["T"], int(os.environ["ROUNDS"]), os.environ["SEED"]
cancels = int(os.environ.get("JOB_HOOK_CANCELS", "40"))
s = Session(T + "/qmp.sock", "vbd")
p = subprocess.Popen([os.environ["STRESS"], "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--align", "512",
                      "--hot", "4", "--hot-move", "32", "--shadow-out", T + "/shadow.raw",
                      "--vhost-user", T + "/vu.sock", "--queues", "2"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
print(p.stdout.readline().strip(), file=sys.stderr)  # its seed: running, SIGUSR1 handled


def writers_alive(what):
    if p.poll() is not None:
        fail(f"vbd-stress ended during {what}: {p.communicate()[0][-3000:]}")


def add(node):
    s.run("blockdev-add", driver="qcow2", **{"node-name": node},
          file={"driver": "file", "filename": f"{T}/{node}.qcow2"})


def export_node():
    return s.run("query-block-exports")[0]["node-name"]


def until_null(jid):
    while True:
        ev = s.m.wait_event("JOB_STATUS_CHANGE", timeout=300)["data"]
        if ev["id"] == jid and ev["status"] == "null":
            return


cur = "src"
s.run("blockdev-add", driver="null-co", **{"node-name": "nul"}, size=32 << 20)
for i in range(rounds):
    # mirrors cancelled in READY: the writes stay on cur (a null-co target:
    # quick rounds, each a hook taken off under the writes)
    for k in range(cancels):
        # every other one cancelled while it copies (rate-limited): the job
        # aborts, with no drained graph change before its hook comes off
        jid, running = f"mc{i}.{k}", k % 8 != 0
        s.run("blockdev-mirror", **{"job-id": jid, "device": cur, "target": "nul", "sync": "full",
                                    "speed": (1 << 20) if running else 0})
        for st in ("created", "running") if running else ("created", "running", "ready"):
            s.status(jid, st)
        s.run("block-job-cancel", device=jid)
        ev = s.m.wait_event("BLOCK_JOB_CANCELLED" if running else "BLOCK_JOB_COMPLETED", timeout=300)["data"]
        if ev["device"] != jid or "error" in ev:
            fail(f"{jid}: {ev}")
        until_null(jid)
        writers_alive(f"mirror {jid}")
    # a mirror completed: the export pivots onto the target
    add(f"p{i}")
    s.run("blockdev-mirror", **{"job-id": f"mp{i}", "device": cur, "target": f"p{i}", "sync": "full"})
    for st in ("created", "running", "ready"):
        s.status(f"mp{i}", st)
    s.run("job-complete", id=f"mp{i}")
    s.completed(f"mp{i}")
    writers_alive(f"mirror mp{i}")
    if export_node() != f"p{i}":
        fail(f"after mirror mp{i} the export is on {export_node()}")
    if cur != "src":  # the overlay the export left closes with it (as qsd's)
        s.gone(cur)
    cur = f"p{i}"
    # an overlay streamed full: the writes stay on it after the stream
    s.run("blockdev-snapshot-sync", **{"node-name": cur, "snapshot-file": f"{T}/o{i}.qcow2",
                                       "snapshot-node-name": f"o{i}", "format": "qcow2"})
    # streams cancelled half-way (they abort), then one to the end
    for k in range(cancels // 4):
        jid = f"sc{i}.{k}"
        s.run("block-stream", **{"job-id": jid, "device": f"o{i}", "speed": 1 << 20})
        s.status(jid, "created")
        s.status(jid, "running")
        s.run("block-job-cancel", device=jid)
        ev = s.m.wait_event("BLOCK_JOB_CANCELLED", timeout=300)["data"]
        if ev["device"] != jid:
            fail(f"{jid}: {ev}")
        until_null(jid)
        writers_alive(f"stream {jid}")
    s.run("block-stream", **{"job-id": f"st{i}", "device": f"o{i}"})
    s.status(f"st{i}", "created")
    s.status(f"st{i}", "running")
    s.completed(f"st{i}")
    writers_alive(f"stream st{i}")
    if export_node() != f"o{i}":
        fail(f"after stream st{i} the export is on {export_node()}")
    cur = f"o{i}"
p.send_signal(signal.SIGUSR1)
out = p.communicate()[0]
if p.returncode:
    fail(f"vbd-stress: {out[-3000:]}")
print(out.strip().splitlines()[-1], file=sys.stderr)
open(T + "/final", "w").write(cur)
PY
stop_daemon
final=$(cat final)
qcheck src.qcow2
for i in $(seq 0 $((ROUNDS - 1))); do qcheck p$i.qcow2; qcheck o$i.qcow2; done
must qemu-img compare -q -f qcow2 -F raw "$final.qcow2" shadow.raw
echo ok
