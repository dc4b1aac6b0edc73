#!/bin/bash
# External snapshots under 64 requests in flight, again and again, with the
# jobs that follow them (block-commit, block-stream): vbd-stress (random
# overlapping writes and write-zeroes on a few hot clusters, every read
# checked against its model) writes while QMP takes blockdev-snapshot-sync
# of the running top, commits it back (active commit, job-complete) or
# keeps it, and streams the middle layers into the top.
#  - the layer a snapshot froze holds, byte for byte, what the writes left
#    at the switch: the last write acknowledged before the command, or one
#    in flight across it, never one issued after the reply (vbd-stress
#    --points: the writes carry their ids, the harness the command's times);
#  - the frozen layer is reopened read-only, as QEMU does: its persistent
#    bitmap is stored (not left in-use) and the qcow2 is clean, so that a
#    later commit into it (reopened read-write) keeps tracking the bitmap;
#    the frozen base is also switched read-write and back with
#    blockdev-reopen under the reads that reach it;
#  - at the end everything is committed down to the base: the image equals
#    the model, qemu-img check is clean on every layer, and p0 (a persistent
#    bitmap of the base) has every sector whose content changed;
#  - SIGKILL after snapshot, commit and snapshot (NBD, crash mode): the base
#    is clean with p0 stored, everything acknowledged before a flush is in
#    the top.
# Cases: qcow2 base over vhost-user-blk (2 queues on an iothread) and raw
# base over NBD (4 connections, main loop). SNAP_STRESS_SEED, _ROUNDS.
. "$(dirname "$0")/lib.sh"
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need qemu-img qemu-nbd nbdinfo python3
SEED=${SNAP_STRESS_SEED:-1717}
ROUNDS=${SNAP_STRESS_ROUNDS:-5}
stress_init 1 2

# covered SECTORS-FILE MAP-FILE WHAT: every touched sector whose content
# changed (init.raw against shadow.raw) lies in a dirty extent of the
# nbdinfo map. A commit writes no zeroes where its base reads zeroes
# already (QEMU's mirror does): there the base did not change, and an
# incremental backup of p0 that skips them is still right.
covered() {
    python3 - "$@" <<'PY'
import sys
touched, mapf, what = open(sys.argv[1], "rb").read(), sys.argv[2], sys.argv[3]
init, final = open("init.raw", "rb").read(), open("shadow.raw", "rb").read()
dirty = []
for line in open(mapf):
    f = line.split()
    if len(f) >= 3 and f[2] == "1":
        dirty.append((int(f[0]), int(f[0]) + int(f[1])))
changed = [i for i, t in enumerate(touched) if t and init[i * 512:i * 512 + 512] != final[i * 512:i * 512 + 512]]
missed = [i for i in changed if not any(a <= i * 512 < b for a, b in dirty)]
if missed:
    sys.exit(f"{what}: {len(missed)} changed sectors not dirty, the first at byte {missed[0] * 512}")
print(f"{what}: all {len(changed)} changed sectors dirty ({sum(touched)} written)")
PY
}

p0_flags() { # IMAGE: bitmap p0's flags as qemu-img info says, comma-separated
    qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
for b in json.load(sys.stdin)["format-specific"]["data"].get("bitmaps", []):
    if b["name"] == "p0":
        print(",".join(b["flags"]))'
}

start() { # FMT TRANSPORT: the daemon; exp and target (stress_transport) set
    rm -f qmp.sock nbd.sock vu.sock
    stress_transport "$2" g base
    "$VBD_DAEMON" --object iothread,id=io0 --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off \
        --monitor chardev=q --blockdev "driver=file,node-name=f0,filename=$PWD/base.$1" \
        --blockdev "driver=$1,node-name=base,file=f0" --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export "$exp" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    [ "$2" = vhost ] && wait_sock "$PWD/vu.sock" "$dpid" daemon.log
}

# drive FMT TRANSPORT MODE: vbd-stress on the export while QMP changes the
# graph; MODE full (rounds, then everything committed into base) or crash
# (snapshot, commit, snapshot, then SIGKILL of the daemon)
drive() {
    # shellcheck disable=SC2086 # $target is words
    python3 - "$@" "$STRESS" "$SEED" "$ROUNDS" "$dpid" $target <<'PY'
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
from stress import Stress, points
fmt, transport, mode, stress_bin, seed, rounds, dpid = sys.argv[1:8]
target = sys.argv[8:]
cwd = os.getcwd()
s = Session("qmp.sock", "vbd")
cmd = [stress_bin, "--seed", seed, "--qd", "64", "--hot", "8", "--hot-move", "64", "--no-discard",
       "--init", "init.raw", "--shadow-out", "shadow.raw"] + target
if mode == "crash":
    cmd += ["--crash-ready", "ready", "--crash-after", "300", "--mask-out", "mask.raw"]
else:
    cmd += ["--ops", str(1 << 40), "--points", "points", "--touched-out", "touched"]
st = Stress(cmd)
pf = open("points", "w")
chain, files = ["base"], {"base": (f"{cwd}/base.{fmt}", fmt)}
monitor_owned = set()  # the overlays blockdev-add made (the monitor's: blockdev-del); blockdev-snapshot-sync's close with their last user

def drop(n):  # a layer out of the chain
    if n in monitor_owned:
        s.run("blockdev-del", **{"node-name": n})
    else:
        s.gone(n)

def job(jid, ready):
    s.status(jid, "created")
    s.status(jid, "running")
    if ready:
        s.status(jid, "ready")
        s.run("job-complete", id=jid)
    s.completed(jid)

def commit(top, base):  # active: the export moves down to base
    jid = f"c-{top}"
    s.run("block-commit", **{"job-id": jid, "device": top, "base-node": base})
    job(jid, True)

def snapshot(r, added=False):
    top, new = chain[-1], f"s{r}"
    path, f = files[top]
    if added:  # blockdev-snapshot of an overlay made beforehand and added with blockdev-add
        sh(f"qemu-img create -q -f qcow2 -b '{path}' -F {f} {new}.qcow2 16M", "qemu-img create")
        s.run("blockdev-add", driver="qcow2", **{"node-name": new}, backing=None,
              file={"driver": "file", "filename": f"{cwd}/{new}.qcow2"})
        monitor_owned.add(new)
    ts = time.monotonic_ns()
    if added:
        s.run("blockdev-snapshot", node=top, overlay=new)
    else:
        s.run("blockdev-snapshot-sync", **{"node-name": top, "snapshot-file": f"{cwd}/{new}.qcow2",
                                           "snapshot-node-name": new, "format": "qcow2"})
    tr = time.monotonic_ns()
    if mode != "crash":
        # what the switch froze, read while the writes go on above it
        sh(f"qemu-img convert -U -f {f} -O raw '{path}' p{r}.raw", f"reading the layer below snapshot {r}")
        pf.write(f"{ts} {tr} {cwd}/p{r}.raw\n")
        pf.flush()
    if f == "qcow2":
        sh(f"qemu-img check -U '{path}'", f"qemu-img check of {top} frozen by snapshot {r}")
        info = sh(f"qemu-img info -U --output=json '{path}'", "qemu-img info")
        if '"in-use"' in info:
            fail(f"{top} frozen by snapshot {r} (read-only below it) left its bitmap in-use: {info}")
    chain.append(new)
    files[new] = (f"{cwd}/{new}.qcow2", "qcow2")

if mode == "crash":
    snapshot(0)
    commit("s0", "base")
    chain.pop()
    drop("s0")
    snapshot(1, added=True)
    st.alive("before the SIGKILL")
    st.crash("ready", dpid)
    sys.exit(0)

for r in range(int(rounds)):
    kind = r % 3
    snapshot(r, added=kind == 1)
    if kind == 0:  # back down at once: the overlay leaves the chain
        top = chain.pop()
        commit(top, chain[-1])
        drop(top)
    elif kind == 1:  # the frozen base read-write and back (blockdev-reopen, libvirt's around a commit)
        for ro in (False, True, False, True):
            s.run("blockdev-reopen", options=[{"driver": fmt, "node-name": "base", "file": "f0", "read-only": ro}])
        if fmt == "qcow2":
            info = sh(f"qemu-img info -U --output=json '{cwd}/base.qcow2'", "qemu-img info")
            if '"in-use"' in info:
                fail(f"base reopened read-only in round {r} left its bitmap in-use: {info}")
    elif kind == 2 and len(chain) > 2:  # the middle layers into the top
        jid = f"st{r}"
        s.run("block-stream", **{"job-id": jid, "device": chain[-1], "base-node": "base"})
        job(jid, False)
        for n in reversed(chain[1:-1]):
            drop(n)
        chain[1:-1] = []
    st.alive(f"in round {r}")
if len(chain) > 1:
    commit(chain[-1], "base")
    for n in reversed(chain[1:]):
        drop(n)
st.alive("before the last commit's end")
points(st.finish(), "the switches")
PY
}

for c in "qcow2 vhost" "raw nbd"; do
    set -- $c
    fmt=$1 tr=$2
    step "$fmt base over $tr: $ROUNDS rounds of snapshot + commit / keep / stream under QD 64 (seed $SEED)"
    rm -f base.* s*.qcow2 p*.raw
    must qemu-img convert -q -f raw -O "$fmt" init.raw "base.$fmt"
    [ "$fmt" = qcow2 ] && must qemu-img bitmap --add base.qcow2 p0
    start "$fmt" "$tr"
    drive "$fmt" "$tr" full || fail "$fmt over $tr: $(tail -20 daemon.log)"
    job_daemon_stop vbd-daemon
    [ "$fmt" = qcow2 ] && qcheck base.qcow2
    out=$(qemu-img compare -f "$fmt" -F raw "base.$fmt" shadow.raw 2>&1) || fail "$fmt over $tr: base differs from the model: $out"
    if [ "$fmt" = qcow2 ]; then
        [ "$(p0_flags base.qcow2)" = auto ] || fail "p0 after a clean stop: flags '$(p0_flags base.qcow2)'"
        rm -f q.sock
        qemu-nbd -t -r -f qcow2 -B p0 --socket="$PWD/q.sock" base.qcow2 &
        qpid=$!
        wait_sock "$PWD/q.sock" "$qpid"
        nbdinfo --map=qemu:dirty-bitmap:p0 "nbd+unix:///?socket=$PWD/q.sock" >p0.map || fail "nbdinfo on qemu-nbd -B p0"
        kill $qpid
        wait $qpid 2>/dev/null
        covered touched p0.map "p0 of the base after commits" || fail "p0 misses writes committed into the base"
    fi
done

step "SIGKILL after snapshot, commit, snapshot (qcow2 base with p0, NBD, crash mode)"
rm -f base.* s*.qcow2 ready
must qemu-img convert -q -f raw -O qcow2 init.raw base.qcow2
must qemu-img bitmap --add base.qcow2 p0
start qcow2 nbd
drive qcow2 nbd crash || fail "crash case: $(tail -20 daemon.log)"
wait $dpid 2>/dev/null
dpid=
wait_lock_free -f qcow2 base.qcow2
qcheck base.qcow2
[ "$(p0_flags base.qcow2)" = auto ] || fail "p0 of the base frozen by the last snapshot: flags '$(p0_flags base.qcow2)' after SIGKILL"
rc=0
out=$(qemu-img check -f qcow2 s1.qcow2 2>&1) || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check of the top after SIGKILL (exit $rc): $out"
must qemu-img convert -f qcow2 -O raw s1.qcow2 q.raw
stress_masked_cmp q.raw shadow.raw mask.raw "the chain after SIGKILL" || fail "durable writes lost"
echo ok
