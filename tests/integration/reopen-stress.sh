#!/bin/bash
# blockdev-reopen again and again under 64 requests in flight: lists that
# change top's detect-zeroes (off/on/unmap), cache.no-flush and backing
# (base <-> base2, the same data), the throttle node's group (g0 unlimited
# <-> g1 at 800 IOPS, requests queued in it), the file's cache.no-flush
# and cache.direct (O_DIRECT on and off: the alignment requests to the file
# need changes with it, and NBD's unaligned writes become read-modify-writes
# of the file), and lists whose last entry fails (nothing of them may happen). Each list
# is made drained, as one. vbd-stress (random overlapping writes,
# write-zeroes and discards on a few hot clusters, every read checked
# against its model) over vhost-user-blk (2 queues on an iothread) and over
# NBD (4 connections, main loop). Every request completes, each failed
# list left the nodes as they were (query-named-block-nodes), the image
# equals the model, qemu-img check is clean. REOPEN_STRESS_SEED,
# REOPEN_STRESS_ROUNDS. (vbd's blockdev-reopen changed read-only only; a
# file's cache.direct was refused.)
. "$(dirname "$0")/lib.sh"
need qemu-img python3
SEED=${REOPEN_STRESS_SEED:-1818}
ROUNDS=${REOPEN_STRESS_ROUNDS:-60}
stress_init 5 1

for tr in vhost nbd; do
    step "over $tr: $ROUNDS reopen lists under QD 64 (seed $SEED)"
    must qemu-img convert -q -f raw -O qcow2 init.raw base.qcow2
    cp base.qcow2 base2.qcow2
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    rm -f qmp.sock nbd.sock vu.sock
    stress_transport $tr e t0
    "$VBD_DAEMON" --object iothread,id=io0 --object throttle-group,id=g0 \
        --object throttle-group,id=g1,x-iops-total=800 \
        --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "driver=file,node-name=fbase,filename=$PWD/base.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
        --blockdev "driver=file,node-name=fbase2,filename=$PWD/base2.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"base2","file":"fbase2","backing":null}' \
        --blockdev "driver=file,node-name=ftop,filename=$PWD/top.qcow2,discard=unmap" \
        --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"base","discard":"unmap"}' \
        --blockdev throttle,node-name=t0,throttle-group=g0,file=top \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" --export "$exp" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    python3 - "$STRESS" "$SEED" "$ROUNDS" "$tr" "$PWD" $target <<'PY' || fail "over $tr: $(tail -20 daemon.log)"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
from stress import Stress, after_some
stress_bin, seed, rounds, tr, d = sys.argv[1:6]
target = sys.argv[6:]
s = Session("qmp.sock", "vbd")
if tr == "vhost":  # the export took its chain to io0: base2 goes there too
    s.run("x-blockdev-set-iothread", **{"node-name": "base2", "iothread": "io0"})
st = Stress([stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--init", "init.raw",
             "--shadow-out", "shadow.raw"] + target)
rng = random.Random(int(seed))
def state():
    return sorted((n["node-name"], n["detect_zeroes"], n["cache"]["no-flush"], n["cache"]["direct"],
                   n.get("backing_file_depth", 0))
                  for n in s.run("query-named-block-nodes", flat=True))
backings = ["base", "base2"]
changes = 0
for r in range(int(rounds)):
    top = {"driver": "qcow2", "node-name": "top", "file": "ftop", "backing": rng.choice(backings), "discard": "unmap",
           "detect-zeroes": rng.choice(["off", "on", "unmap"]), "cache": {"no-flush": rng.randrange(2) == 1}}
    thr = {"driver": "throttle", "node-name": "t0", "file": "top", "throttle-group": rng.choice(["g0", "g1"])}
    ftop = {"driver": "file", "node-name": "ftop", "filename": d + "/top.qcow2", "discard": "unmap",
            "cache": {"no-flush": rng.randrange(2) == 1, "direct": rng.randrange(2) == 1}}
    opts = rng.sample([top, thr, ftop], rng.randrange(1, 4))
    if rng.randrange(4) == 0:  # a failing last entry: none of the list may happen
        before = state()
        opts.append(dict(thr, **{"throttle-group": "nosuch"}))
        e = s.error("blockdev-reopen", options=opts)
        if "nosuch" not in e["desc"]:
            fail(f"round {r}: {e}")
        if state() != before:
            fail(f"round {r}: a failed list changed the nodes: {before} -> {state()}")
    else:
        s.run("blockdev-reopen", options=opts)
        changes += len(opts)
    after_some(s, 16, st, f"in round {r}")  # some requests went through after it
# the last state back to unlimited, then every request must end
s.run("blockdev-reopen", options=[{"driver": "throttle", "node-name": "t0", "file": "top", "throttle-group": "g0"}])
st.finish()
print(f"{changes} node changes")
PY
    job_daemon_stop vbd-daemon
    qcheck top.qcow2
    qcheck base.qcow2
    must qemu-img compare -q base.qcow2 base2.qcow2
    out=$(qemu-img compare -f qcow2 -F raw top.qcow2 shadow.raw 2>&1) || fail "over $tr: the image differs from the model: $out"
done
echo ok
