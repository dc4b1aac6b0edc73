#!/bin/bash
# Block jobs on a backing chain with a foreign format in it, under a guest
# writing through two exports at once: vbd-stress (64 requests in flight,
# random overlapping writes, write-zeroes and discards on hot clusters
# that move to fresh ground, every read checked against its model) drives
# a vhost-user-blk export (2 rings on iothread io0) and an NBD export (4
# connections) of the chain's top the whole time. The chain starts as
# base (qed) <- mid (qcow2) <- top (qcow2); the seed picks the jobs, one
# after the other:
#  snap    blockdev-snapshot of the top onto a new qcow2 overlay;
#  stream  block-stream of the top down to a lower layer (or all of it);
#  commit  block-commit of an intermediate layer down to a lower one (into
#          the qed base too);
#  active  active block-commit of the top into its backing, job-complete
#          in READY (the exports pivot) or block-job-cancel there;
#  mirror  blockdev-mirror sync=top (onto a qcow2 over the top's backing)
#          or sync=full, copy-mode background or write-blocking,
#          job-complete (pivot) or cancelled while it copies or in READY;
# each job paused and resumed and its speed changed at random points; one
# in three is cancelled part-way first (nothing may change: a cancelled
# commit leaves its data in the base and the layer above it). The nodes a
# job took out of the chain are deleted (blockdev-del), as libvirt does.
# At the end the node the exports are on, read through the backing files
# its image names, equals the model (qemu-img compare), and every image of
# the chain checks clean. JOB_CHAIN_SEED, JOB_CHAIN_OPS.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
need_stress
SEED=${JOB_CHAIN_SEED:-$RANDOM}
OPS=${JOB_CHAIN_OPS:-5}
cd "$T"
echo "seed $SEED"
mixed_disk base.raw 16 1
must qemu-img convert -q -f raw -O qed base.raw base.qed
must qemu-img create -q -f qcow2 -b "$T/base.qed" -F qed mid.qcow2 16M
must qemu-io -f qcow2 -c "write -P 0x5a 8M 3M" -c "write -z 1M 512k" -c "write -P 0x33 12M 64k" mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b "$T/mid.qcow2" -F qcow2 top.qcow2 16M
must qemu-io -f qcow2 -c "write -P 0x77 9M 1M" -c "write -z 13M 64k" top.qcow2 >/dev/null
must qemu-img convert -q -f qcow2 -O raw top.qcow2 init.raw
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
stress_daemon both top \
    --blockdev "driver=file,node-name=base-f,filename=$T/base.qed" --blockdev "driver=qed,node-name=base,file=base-f" \
    --blockdev "driver=file,node-name=mid-f,filename=$T/mid.qcow2" \
    --blockdev "driver=qcow2,node-name=mid,file=mid-f,backing=base" \
    --blockdev "driver=file,node-name=top-f,filename=$T/top.qcow2,discard=unmap" \
    --blockdev "driver=qcow2,node-name=top,file=top-f,backing=mid,discard=unmap"
T=$T STRESS=$STRESS SEED=$SEED OPS=$OPS python3 - <<'PY' || fail_with_daemon_log "block jobs on a chain under vbd-stress (seed $SEED)"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
from stress import Stress
T, seed, ops = os.environ["T"], int(os.environ["SEED"]), int(os.environ["OPS"])
rng = random.Random(seed)
s = Session(T + "/qmp.sock", "vbd")
st = Stress([os.environ["STRESS"], "--seed", str(seed), "--ops", str(1 << 40), "--qd", "64", "--align", "512",
             "--hot", "4", "--hot-move", "32", "--init", T + "/init.raw",
             "--shadow-out", T + "/shadow.raw", "--vhost-user", T + "/vu.sock", "--queues", "2",
             "--nbd", f"nbd+unix:///disk?socket={T}/nbd.sock", "--conns", "4"], show_seed=True)
alive = st.alive
chain = ["base", "mid", "top"]  # bottom to top; each node's image is T/NAME.qcow2 (base: base.qed)
n, done = 0, []


def image(node):
    return f"{T}/{node}." + ("qed" if node == "base" else "qcow2")


def new_node(name, backing, header=None):
    """A fresh qcow2 image for node NAME whose header names HEADER's image
    (default BACKING's; None: none), added with BACKING (None: null)."""
    header = header or backing
    b = f"-b {image(header)} -F {'qed' if header == 'base' else 'qcow2'}" if header else ""
    sh(f"qemu-img create -q -f qcow2 {b} {T}/{name}.qcow2 16M", f"creating {name}")
    s.run("blockdev-add", driver="qcow2", **{"node-name": name}, backing=backing,
          file={"driver": "file", "filename": f"{T}/{name}.qcow2", "discard": "unmap"}, discard="unmap")


def drop(nodes):
    """blockdev-del of nodes that left the chain, top-down (each holds the next as its backing)."""
    for node in reversed(nodes):
        s.run("blockdev-del", **{"node-name": node})
        if node in ("base", "mid", "top"):
            s.run("blockdev-del", **{"node-name": node + "-f"})


def exported():
    nodes = {e["node-name"] for e in s.run("query-block-exports")}
    if len(nodes) != 1:
        fail(f"the exports are on {nodes}")
    return nodes.pop()


def wait_ready(jid):
    while True:
        j = s.job(jid)
        if not j:
            fail(f"job {jid} ended before READY")
        if j["status"] == "ready":
            return
        ev = s.m.wait_event("BLOCK_JOB_READY", timeout=300)["data"]
        if ev["device"] == jid:
            return


def run_job(jid, ready, cancel, where):
    """Drives job jid: maybe paused and resumed, its speed changed; cancel
    'copying' or 'ready' (for a job with READY) or None: to the end
    (job-complete in READY). True if it completed with its graph change."""
    if rng.random() < 0.5 and s.on_job(jid, "job-pause", id=jid):
        alive(f"with {jid} paused")
        s.on_job(jid, "job-resume", id=jid)
    if cancel == "copying" and s.on_job(jid, "block-job-cancel", device=jid):
        ok = s.job_end(jid)
        return ok and not ready  # a mirror in READY already: its cancel completes without a pivot
    # unlimited before READY: a job slower than the writes would never be in sync
    if ready or rng.random() < 0.7:
        s.on_job(jid, "block-job-set-speed", device=jid, speed=0)
    if ready:
        wait_ready(jid)
        alive(f"with {jid} ready")
        if cancel:
            s.run("block-job-cancel", device=jid)
            s.job_end(jid)
            return False
        s.run("job-complete", id=jid)
    if not s.job_end(jid):
        fail(f"job {jid} ({where}) was cancelled")
    return True


for k in range(ops):
    alive(f"before operation {k}")
    kinds = ["snap", "mirror"]
    if len(chain) >= 2:
        kinds += ["active", "stream"]
    if len(chain) >= 3:
        kinds += ["commit", "commit"]
    else:
        kinds += ["snap", "snap"]
    kind = rng.choice(kinds)
    top = chain[-1]
    if exported() != top:
        fail(f"the exports are on {exported()}, the chain's top is {top}: {chain}")
    n += 1
    if kind == "snap":
        name = f"ov{n}"
        new_node(name, None, header=top)  # QEMU's blockdev-snapshot: the overlay added without its backing
        s.run("blockdev-snapshot", node=top, overlay=name)
        chain.append(name)
        done.append(kind)
        continue
    for attempt in ("cancel", "run") if rng.random() < 0.34 else ("run",):
        jid = f"{kind}{n}{attempt[0]}"
        sp = rng.choice([4 << 20, 16 << 20, 0]) if attempt == "run" else 1 << 20
        if kind == "stream":
            i = rng.randrange(-1, len(chain) - 2)  # the new backing of the top: chain[i], or nothing
            args = {"base-node": chain[i]} if i >= 0 else {}
            s.run("block-stream", **{"job-id": jid, "device": top, "speed": sp}, **args)
            if run_job(jid, False, "copying" if attempt == "cancel" else None, "stream"):
                drop(chain[i + 1:-1])
                chain[i + 1:-1] = []
        elif kind == "commit":
            t = rng.randrange(1, len(chain) - 1)  # an intermediate layer
            b = rng.randrange(0, t)               # into a lower one
            s.run("block-commit", **{"job-id": jid, "device": top, "top-node": chain[t], "base-node": chain[b],
                                     "speed": sp})
            if run_job(jid, False, "copying" if attempt == "cancel" else None, "commit"):
                drop(chain[b + 1:t + 1])
                chain[b + 1:t + 1] = []
        elif kind == "active":
            s.run("block-commit", **{"job-id": jid, "device": top, "base-node": chain[-2], "speed": sp})
            if run_job(jid, True, rng.choice(["copying", "ready"]) if attempt == "cancel" else None, "active commit"):
                drop(chain[-1:])
                chain.pop()
        else:
            sync = rng.choice(["top", "full"]) if len(chain) >= 2 else "full"
            name = f"m{n}{attempt[0]}"
            new_node(name, chain[-2] if sync == "top" else None)
            mode = rng.choice(["background", "write-blocking"])
            s.run("blockdev-mirror", **{"job-id": jid, "device": top, "target": name, "sync": sync,
                                        "copy-mode": mode, "speed": sp})
            if run_job(jid, True, rng.choice(["copying", "ready"]) if attempt == "cancel" else None, "mirror"):
                drop(chain[-1:] if sync == "top" else chain)
                chain = chain[:-1] + [name] if sync == "top" else [name]
            else:
                s.run("blockdev-del", **{"node-name": name})
            kind = f"mirror-{sync}-{mode}"
        done.append(kind + ("/cancelled" if attempt == "cancel" else ""))
        alive(f"after {jid}")
print("operations: " + " ".join(done) + "; chain " + " <- ".join(chain), file=sys.stderr)
if exported() != chain[-1]:
    fail(f"the exports are on {exported()}, the chain's top is {chain[-1]}")
st.finish()
open(f"{T}/chain", "w").write(" ".join(image(c) for c in chain))
PY
stop_daemon
read -ra chain <chain
for img in "${chain[@]}"; do qcheck "$img"; done
top=${chain[${#chain[@]} - 1]}
qemu-img compare -q -F raw "$top" shadow.raw ||
    fail "the top $top through its chain ($(qemu-img info --backing-chain "$top" | grep '^image:' | tr '\n' ' ')) is not the model (seed $SEED)"
echo ok
