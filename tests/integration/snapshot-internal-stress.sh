#!/bin/bash
# Internal qcow2 snapshots under 64 requests in flight from two exports of
# one node at once: vbd-stress (random overlapping writes and write-zeroes
# on hot clusters that move to fresh ground, every read checked against its
# model) drives a vhost-user-blk export (2 rings on iothread io0) and an NBD
# export (4 connections) of the same qcow2 node, its workers alternating
# between them, while QMP takes blockdev-snapshot-internal-sync and deletes
# older snapshots with blockdev-snapshot-delete-internal-sync.
#  - phase 1 (no discards, vbd-stress --points): each snapshot, read with
#    qemu-img convert -l while the writes go on, holds what the writes left
#    at its instant (the last write acknowledged before the command, or one
#    in flight across it, none issued after the reply);
#  - after a clean stop: qemu-img check clean, qemu-img snapshot -l lists
#    exactly the snapshots kept, each still reads as it did when taken (the
#    writes and deletes after it changed nothing in it), the image equals
#    the model;
#  - phase 1b: the same with the vhost-user export alone (the graph then
#    runs on io0 and the QMP commands enter it there);
#  - in phases 1, 1b and 2 each snapshot is followed by a transaction of two
#    whose second fails (the name in use): the first one's snapshot is
#    deleted again by its abort, under the load;
#  - phase 2: vbd-img snapshot -a of one of them (the image equals that
#    snapshot), -c and -d offline, then the same load with discards and
#    unmapping write-zeroes (which must not free a cluster a snapshot holds)
#    while more snapshots are taken and deleted; each snapshot at the end
#    reads as when it was taken, the image equals the model, check clean;
#  - phase 3: a snapshot taken under the load over NBD (crash mode), then
#    SIGKILL of the daemon: check finds no error (leaks allowed), the
#    snapshot is there and reads as when taken, every write acknowledged
#    before a flush is in the image, and vbd-daemon restarted on it serves
#    the same bytes.
# SNAPI_OVERLAP=1 (tests/stress/snapshot-internal-overlap-soak.sh, make
# soak): the writes, write-zeroes and discards in flight may share bytes
# (vbd-stress --overlap), phases 1, 1b and 2 (crash mode does not go
# with --overlap); each snapshot must then hold, byte for byte, a write
# that may have landed last before it (one completed before the command
# unless another issued after it completed did too, or one in flight
# across it), each phase must have had mutations over others in flight
# on the same bytes, and each snapshot kept is also applied with qemu-img
# snapshot -a to a copy of the image, which then equals it and checks
# clean.
# SNAPI_SEED, SNAPI_ROUNDS.
. "$(dirname "$0")/lib.sh"
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need qemu-img python3
need_stress
SEED=${SNAPI_SEED:-$RANDOM}
ROUNDS=${SNAPI_ROUNDS:-6}
OVERLAP=${SNAPI_OVERLAP:-0}
cd "$T"
echo "seed $SEED${OVERLAP/#1/, --overlap}"
truncate -s 16M init.raw
mixed_data m1 1 && dd if=m1 of=init.raw bs=1M seek=2 conv=notrunc status=none
must qemu-img convert -q -f raw -O qcow2 init.raw img.qcow2
on_exit 'kill -9 $dpid 2>/dev/null'

start() { # EXPORTS: both (vhost-user on io0 + NBD), nbd, or vhost (alone: the graph runs on io0)
    stress_daemon "$1" disk --blockdev "driver=file,node-name=f0,filename=$T/img.qcow2,discard=unmap" \
        --blockdev "driver=qcow2,node-name=disk,file=f0,discard=unmap"
}

# drive PHASE INIT: vbd-stress on the exports while QMP takes and deletes
# internal snapshots; snapshot NAME's content as read right after it was
# taken goes to NAME.raw; the names kept at the end to kept.PHASE
drive() {
    python3 - "$@" "$STRESS" "$SEED" "$ROUNDS" "$dpid" "$OVERLAP" <<'PY'
import os, random, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
from stress import Stress, points
phase, init, stress_bin, seed, rounds, dpid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
overlap = sys.argv[7] == "1"
rng = random.Random(seed * 10 + int(phase))
s = Session("qmp.sock", "vbd")
cmd = [stress_bin, "--seed", str(seed + int(phase)), "--qd", "64", "--hot", "8", "--hot-move", "64",
       "--init", init, "--shadow-out", f"shadow{phase}.raw"]
if phase == "3":
    cmd += ["--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4",
            "--crash-ready", "ready", "--crash-after", "600", "--mask-out", "mask.raw"]
else:
    cmd += ["--vhost-user", "vu.sock", "--queues", "2", "--ops", str(1 << 40)]
    if phase != "4":  # phase 4 (1b): the vhost-user export alone, the graph on io0
        cmd += ["--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"]
    cmd += ["--zero-heavy"] if phase == "2" else ["--no-discard", "--points", "points"]
    if overlap:
        cmd += ["--overlap"]
st = Stress(cmd, show_seed=True)
pf = open("points", "w") if phase in ("1", "4") else None
kept = [l.split()[0] for l in open("kept.in")] if phase in ("2", "4") else []

def snapshot(name):
    ts = time.monotonic_ns()
    s.run("blockdev-snapshot-internal-sync", device="disk", name=name)
    tr = time.monotonic_ns()
    # what the snapshot froze, read while the writes go on
    sh(f"qemu-img convert -U -f qcow2 -l snapshot.name={name} -O raw img.qcow2 {name}.raw", f"reading snapshot {name}")
    if pf:
        pf.write(f"{ts} {tr} {os.getcwd()}/{name}.raw\n")
        pf.flush()
    kept.append(name)
    err = s.error("blockdev-snapshot-internal-sync", device="disk", name=name)
    if "already exists" not in err["desc"]:
        fail(f"a second snapshot {name}: {err}")
    # a transaction whose second action fails: the first one's snapshot,
    # made under the load, is deleted again (its abort)
    err = s.error("transaction", actions=[
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "disk", "name": name + "-aborted"}},
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "disk", "name": name}}])
    if "already exists" not in err["desc"]:
        fail(f"a transaction with a second snapshot {name}: {err}")

def delete():
    name = kept.pop(rng.randrange(len(kept)))
    r = s.run("blockdev-snapshot-delete-internal-sync", device="disk", name=name)
    if r.get("name") != name:
        fail(f"deleting {name}: {r}")

if phase == "3":
    snapshot("c0")
    st.crash("ready", dpid)
    open("kept.3", "w").write("c0\n")
    sys.exit(0)

for r in range(rounds):
    snapshot(f"p{phase}s{r}")
    if r % 3 == 2 or len(kept) > 5:
        delete()
    st.alive(f"in round {r}")
st.alive("at the end")
out = st.finish()
if pf:
    points(out, "the snapshots")
if overlap:  # else the writes never shared bytes and the mode tested nothing new
    over = [l for l in out.splitlines() if l.startswith("vbd-stress: overlap: ")]
    if not over or int(over[0].split()[2]) == 0:
        fail(f"phase {phase}: no mutation was issued over another in flight on the same bytes: {out[-1500:]}")
open(f"kept.{phase}", "w").write("".join(n + "\n" for n in kept))
PY
}

# snapshots_as_taken PHASE: qemu-img snapshot -l lists exactly kept.PHASE,
# each reads (qemu-img convert -l) as it did right after it was taken
snapshots_as_taken() {
    local want got n
    want=$(sort "kept.$1" | tr '\n' ' ')
    got=$(qemu-img snapshot -l img.qcow2 | awk 'NR > 2 { print $2 }' | sort | tr '\n' ' ')
    [ "$want" = "$got" ] || fail "phase $1: qemu-img snapshot -l lists '$got', kept were '$want'"
    for n in $(cat "kept.$1"); do
        must qemu-img convert -f qcow2 -l snapshot.name="$n" -O raw img.qcow2 now.raw
        cmp -s now.raw "$n.raw" || fail "phase $1: snapshot $n changed since it was taken: $(cmp now.raw "$n.raw" | head -1)"
        if [ "$OVERLAP" = 1 ]; then # applied to a copy, QEMU's way back to it
            cp img.qcow2 applied.qcow2
            must qemu-img snapshot -a "$n" applied.qcow2
            out=$(qemu-img compare -f qcow2 -F raw applied.qcow2 "$n.raw" 2>&1) ||
                fail "phase $1: qemu-img snapshot -a $n does not give what the snapshot held when taken: $out"
            qcheck applied.qcow2
        fi
    done
    echo "phase $1: $(wc -l <"kept.$1") snapshots listed and as taken"
}

# run_phase PHASE INIT EXPORTS WHAT: the daemon with EXPORTS (start), the
# load and the snapshots of PHASE from INIT (drive), a clean stop; then
# qemu-img check clean, the snapshots as taken, the image equal to the
# model. WHAT names the phase in failures.
run_phase() {
    start "$3"
    drive "$1" "$2" || fail "$4: $(tail -20 daemon.log)"
    job_daemon_stop vbd-daemon
    qcheck img.qcow2
    snapshots_as_taken "$1"
    must qemu-img compare -q -f qcow2 -F raw img.qcow2 "shadow$1.raw"
}

step "phase 1: $ROUNDS internal snapshots (some deleted) under QD 64 on vhost-user (2 rings, iothread) + NBD (4 connections)"
run_phase 1 init.raw both "phase 1"

step "phase 1b: the same with the vhost-user export alone: the graph runs on io0, the QMP commands enter it there"
must qemu-img convert -q -f qcow2 -O raw img.qcow2 init4.raw
cp kept.1 kept.in
run_phase 4 init4.raw vhost "phase 1b"
cp kept.4 kept.1

step "phase 2: vbd-img snapshot -a/-c/-d offline, then snapshots under the load with discards"
keep=$(head -1 kept.1)
must "$VBD_IMG" snapshot -a "$keep" img.qcow2
must qemu-img compare -q -f qcow2 -F raw img.qcow2 "$keep.raw"
must "$VBD_IMG" snapshot -c applied img.qcow2
cp "$keep.raw" applied.raw
drop=$(tail -1 kept.1)
[ "$drop" != "$keep" ] && must "$VBD_IMG" snapshot -d "$drop" img.qcow2
grep -vx "$drop" kept.1 >kept.in
echo applied >>kept.in
[ "$drop" = "$keep" ] && echo "$keep" >>kept.in
qcheck img.qcow2
run_phase 2 "$keep.raw" both "phase 2"
last=$(tail -1 kept.2)
cp img.qcow2 copy.qcow2
must "$VBD_IMG" snapshot -a "$last" copy.qcow2
must qemu-img compare -q -f qcow2 -F raw copy.qcow2 "$last.raw"
qcheck copy.qcow2

if [ "$OVERLAP" = 1 ]; then # crash mode keeps mutations off each other's bytes
    echo ok
    exit 0
fi

step "phase 3: an internal snapshot under QD 64 over NBD, then SIGKILL"
must qemu-img convert -q -f qcow2 -O raw img.qcow2 init3.raw
start nbd
drive 3 init3.raw || fail "phase 3: $(tail -20 daemon.log)"
wait $dpid 2>/dev/null
dpid=
wait_lock_free -f qcow2 img.qcow2
rc=0
out=$(qemu-img check -f qcow2 img.qcow2 2>&1) || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check after SIGKILL (exit $rc): $out"
qemu-img snapshot -l img.qcow2 | grep -qw c0 || fail "snapshot c0 is gone after SIGKILL"
must qemu-img convert -f qcow2 -l snapshot.name=c0 -O raw img.qcow2 now.raw
cmp -s now.raw c0.raw || fail "snapshot c0 changed after SIGKILL: $(cmp now.raw c0.raw | head -1)"
must qemu-img convert -f qcow2 -O raw img.qcow2 q.raw
stress_masked_cmp q.raw shadow3.raw mask.raw "the image after SIGKILL" || fail "durable writes lost"
# vbd-daemon restarted on what the kill left serves the same bytes
start nbd
must qemu-img convert -f raw -O raw "nbd+unix:///disk?socket=$PWD/nbd.sock" v.raw
job_daemon_stop vbd-daemon
cmp -s v.raw q.raw || fail "vbd-daemon restarted after SIGKILL serves other bytes than qemu-img reads: $(cmp v.raw q.raw | head -1)"
echo ok
