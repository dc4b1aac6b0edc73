#!/bin/bash
# SIGKILL in the middle of a job whose source takes 64 requests in flight
# (vbd-stress in crash mode over 4 NBD connections, hot clusters that move
# to fresh ground, the job's copy and the guest's copy-before-write on the
# same clusters):
#  backup:   blockdev-backup sync=full, rate-limited, still running;
#            (1 KiB/s, here and for the mirror: the job's budget, the bytes
#            it started over its speed since it began, lets the 32 MiB take
#            9 hours, so it is certainly still copying at the crash however
#            slow the host; at 1 MiB/s it could be done before a starved
#            vbd-stress had its 800 requests in)
#  fleecing: a copy-before-write node over the source (the guest's export
#            on it) into a qcow2 fleecing target, a snapshot-access node
#            over it exported;
#  mirror:   blockdev-mirror copy-mode=write-blocking, still copying.
# Afterwards every image passes qemu-img check (leaks allowed, as after
# any crash of a qcow2 writer) and the source holds every durable byte of
# the model (what completed with FUA or before an acknowledged flush).
. "$(dirname "$0")/lib.sh"
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need qemu-img python3
stress_setup init.raw 32 20
SEED=${JOB_STRESS_SEED:-5151}

crash_check() { # IMG: qemu-img check clean or only leaks (exit 3)
    local out rc=0
    out=$(qemu-img check "$1" 2>&1) || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check $1 after SIGKILL (exit $rc): $out"
}

for scen in backup fleecing mirror; do
    step "SIGKILL during $scen (seed $SEED)"
    job_stress_scenario "$scen" 32
    python3 - "$scen" "$STRESS" "$SEED" "$dpid" <<'PY' || fail "$scen: $(tail -40 daemon.log)"
import os, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
scen, stress_bin, seed, dpid = sys.argv[1:5]
s = Session("qmp.sock", "vbd")
cwd = os.getcwd()
s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"}, file={"driver": "file", "filename": f"{cwd}/tgt.qcow2"})
guest = "src"
if scen != "fleecing":
    # the guest's export first: the job's filter takes it over, as qsd's
    # (which refuses a writer added on a backup's source under its
    # copy-before-write node: 'Permission conflict on node 'src' ...')
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": guest}, name="disk", writable=True)
if scen == "backup":
    s.run("blockdev-backup", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full", "speed": 1 << 10})
elif scen == "mirror":
    s.run("blockdev-mirror", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                                "copy-mode": "write-blocking", "speed": 1 << 10})
else:
    s.run("blockdev-add", driver="qcow2", **{"node-name": "tmp"},
          file={"driver": "file", "filename": f"{cwd}/fleece.qcow2"}, backing="src")
    s.run("blockdev-add", driver="copy-before-write", **{"node-name": "cbw"}, file="src", target="tmp")
    s.run("blockdev-add", driver="snapshot-access", **{"node-name": "fleece"}, file="cbw")
    s.run("block-export-add", type="nbd", id="fl", **{"node-name": "fleece"}, name="fleece")
    guest = "cbw"
    s.run("block-export-add", type="nbd", id="guest", **{"node-name": guest}, name="disk", writable=True)
p = subprocess.Popen([stress_bin, "--seed", seed, "--qd", "64", "--hot", "4", "--hot-move", "32",
                      "--init", "../init.raw", "--shadow-out", "shadow.raw", "--mask-out", "mask.raw",
                      "--crash-ready", "ready", "--crash-after", "800",
                      "--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
while not os.path.exists("ready"):
    if p.poll() is not None:
        fail(f"vbd-stress ended before the crash: {p.communicate()[0][-3000:]}")
    time.sleep(0.02)  # waiting for the ready file
if scen != "fleecing":
    j = s.job("j")
    if not j or j["status"] != "running":
        fail(f"the job is not running at the crash: {j}")
os.kill(int(dpid), signal.SIGKILL)
out = p.communicate()[0]
if p.returncode:
    fail(f"vbd-stress in crash mode: {out[-3000:]}")
PY
    wait $dpid 2>/dev/null
    dpid=
    ! grep -q Sanitizer daemon.log || fail "$scen: the daemon's sanitizer spoke before the kill: $(cat daemon.log)"
    crash_check src.qcow2
    crash_check tgt.qcow2
    crash_check fleece.qcow2
    must qemu-img convert -f qcow2 -O raw src.qcow2 src.raw
    stress_masked_cmp src.raw shadow.raw mask.raw "the source after SIGKILL during $scen" || fail "$scen: durable bytes lost"
    cd "$T"
done
echo ok
