#!/bin/bash
# blockdev-reopen of a qcow2 node's caches and overlap-check under 64
# requests in flight: each round reopens the node with another
# l2-cache-size / refcount-cache-size / cache-size (2 tables up to the
# whole image; the image has 8 L2 tables and 3 refcount blocks of 4 KiB,
# so the small caches evict dirty tables all the time), another
# overlap-check (template or per-kind flags) and lazy refcounts on or off,
# while vbd-stress --overlap (writes, write-zeroes and discards sharing bytes
# on a few hot clusters, every read checked against its model) runs over
# vhost-user-blk (2 queues on an iothread: the node lives there) and over
# NBD (4 connections, main loop). Each reopen writes the caches back and
# makes them anew at the commit, drained. Every request completes, the
# image equals the model and qemu-img check is clean; qemu-io reads it.
# QCOW2_CACHE_STRESS_SEED, QCOW2_CACHE_STRESS_ROUNDS. (vbd took the options
# and kept the caches as opened.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
SEED=${QCOW2_CACHE_STRESS_SEED:-2525}
ROUNDS=${QCOW2_CACHE_STRESS_ROUNDS:-40}
stress_init 5 1

for tr in vhost nbd; do
    step "over $tr: $ROUNDS cache reopens under QD 64 (seed $SEED)"
    must qemu-img convert -q -f raw -O qcow2 -o cluster_size=4k init.raw top.qcow2
    rm -f qmp.sock nbd.sock vu.sock
    stress_transport $tr e top
    "$VBD_DAEMON" --object iothread,id=io0 \
        --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "driver=file,node-name=ftop,filename=$PWD/top.qcow2,discard=unmap" \
        --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","discard":"unmap","l2-cache-size":8192}' \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" --export "$exp" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    python3 - "$STRESS" "$SEED" "$ROUNDS" $target <<'PY' || fail "over $tr: $(tail -20 daemon.log)"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
from stress import Stress, after_some
stress_bin, seed, rounds = sys.argv[1:4]
target = sys.argv[4:]
s = Session("qmp.sock", "vbd")
st = Stress([stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--overlap", "--init", "init.raw",
             "--shadow-out", "shadow.raw"] + target)
rng = random.Random(int(seed))
sizes = [None, 8192, 16384, 32768, 1 << 20]
checks = [None, "none", "constant", "cached", "all", {"template": "none", "refcount-block": True},
          {"template": "cached", "active-l2": False, "refcount-block": False}]
for r in range(int(rounds)):
    top = {"driver": "qcow2", "node-name": "top", "file": "ftop", "discard": "unmap"}
    if rng.randrange(4) == 0:
        top["cache-size"] = rng.choice([16384, 65536, 1 << 20])
    else:
        for k in ("l2-cache-size", "refcount-cache-size"):
            v = rng.choice(sizes)
            if v:
                top[k] = v
    oc = rng.choice(checks)
    if oc is not None:
        top["overlap-check"] = oc
    if rng.randrange(2):
        top["lazy-refcounts"] = rng.randrange(2) == 1
    s.run("blockdev-reopen", options=[top])
    after_some(s, 16, st, f"in round {r} ({top})")  # some requests went through after it
st.finish()
PY
    job_daemon_stop vbd-daemon
    qcheck top.qcow2
    out=$(qemu-img compare -f qcow2 -F raw top.qcow2 shadow.raw 2>&1) || fail "over $tr: the image differs from the model: $out"
    must qemu-io -r -f qcow2 -c 'read 0 16M' top.qcow2
done
echo ok
