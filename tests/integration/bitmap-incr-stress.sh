#!/bin/bash
# Incremental backups taken while a guest writes: a missed dirty bit is
# lost backup data. vbd-stress (64 requests in flight, random overlapping
# writes, write-zeroes and discards on hot clusters that move to fresh
# ground, every read checked against its model) drives a vhost-user-blk
# export (2 rings on iothread io0) and an NBD export (4 connections) of a
# qcow2 node over a qed backing file, the whole time, while QMP:
#  - takes a full backup and adds the bitmap in one transaction (the
#    chain's root, inc0);
#  - then, round after round, one of (the seed picks):
#    incr    blockdev-backup sync=incremental of the current bitmap;
#    always  sync=bitmap bitmap-mode=always;
#    ckpt    libvirt's checkpoints: one transaction adds the next bitmap,
#            disables the current one, adds a disabled scratch bitmap,
#            merges the current one into it and backs up sync=bitmap from
#            the scratch one; after the job both old ones are removed;
#    full    a transaction of block-dirty-bitmap-clear and a full backup
#            (a new chain root);
#    snap    libvirt's external snapshot: one transaction of
#            blockdev-snapshot onto a new qcow2 overlay and
#            block-dirty-bitmap-add of the current bitmap's name on the
#            overlay (the old top keeps its own, which the writes no longer
#            reach); the exports move to the overlay and the backups after
#            it are of the new top, their ckpt transactions merging the
#            current bitmap of every layer that has it (no incr or always
#            until a checkpoint or a full backup leaves one bitmap);
#    each target a qcow2 whose backing file is the previous backup, added
#    with backing null (libvirt's way); jobs are rate-limited at random,
#    paused and resumed, and one round in three is cancelled part-way
#    first (its target dropped; ckpt then merges the old bitmap into the
#    new one, block-dirty-bitmap-merge under the writes) and tried again;
#    block-dirty-bitmap-add/-disable/-merge/-remove of an unrelated bitmap
#    between rounds;
#  - after the writes, one last incremental.
# Each backup holds the source at its instant in what its bitmap marked
# and its backing chain holds the rest, so the last one, read through its
# chain, is the source's final content (the model's): qemu-img compare.
# Every image checks clean. The bitmap is persistent (stored in the
# qcow2) or in memory, its granularity 4k to 128k: the seed picks.
# BITMAP_INCR_SEED, BITMAP_INCR_ROUNDS. BITMAP_INCR_OVERLAP=1: the writers
# with --overlap (writes, write-zeroes and discards in flight share bytes;
# the run must have issued some), not in make check.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
need_stress
SEED=${BITMAP_INCR_SEED:-$RANDOM}
ROUNDS=${BITMAP_INCR_ROUNDS:-4}
cd "$T"
echo "seed $SEED"
mixed_disk init.raw 16 1 9
must qemu-img convert -q -f raw -O qed init.raw base.qed
must qemu-img create -q -f qcow2 -b "$T/base.qed" -F qed src.qcow2 16M
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
stress_daemon both src \
    --blockdev "driver=file,node-name=bf,filename=$T/base.qed" --blockdev "driver=qed,node-name=base,file=bf,read-only=on" \
    --blockdev "driver=file,node-name=sf,filename=$T/src.qcow2,discard=unmap" \
    --blockdev "driver=qcow2,node-name=src,file=sf,backing=base,discard=unmap"
T=$T STRESS=$STRESS SEED=$SEED ROUNDS=$ROUNDS python3 - <<'PY' || fail_with_daemon_log "incremental backups under vbd-stress (seed $SEED)"
import os, random, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
from stress import Stress
T, seed, rounds = os.environ["T"], int(os.environ["SEED"]), int(os.environ["ROUNDS"])
rng = random.Random(seed)
s = Session(T + "/qmp.sock", "vbd")
persistent = rng.random() < 0.5
gran = rng.choice([4096, 65536, 131072])
print(f"bitmap persistent={persistent} granularity={gran}", file=sys.stderr)
overlap = ["--overlap"] if os.environ.get("BITMAP_INCR_OVERLAP") == "1" else []
st = Stress([os.environ["STRESS"]] + overlap + ["--seed", str(seed), "--ops", str(1 << 40), "--qd", "64", "--align", "512",
             "--hot", "4", "--hot-move", "32", "--init", T + "/init.raw", "--backing", T + "/init.raw",
             "--shadow-out", T + "/shadow.raw", "--vhost-user", T + "/vu.sock", "--queues", "2",
             "--nbd", f"nbd+unix:///disk?socket={T}/nbd.sock", "--conns", "4"], show_seed=True)
alive = st.alive


def target(name, backing):
    """A fresh qcow2 NAME.qcow2 over BACKING's file (None: a chain root), added with backing null."""
    f = f"{T}/{name}.qcow2"
    if os.path.exists(f):
        os.unlink(f)
    b = f"-b {T}/{backing}.qcow2 -F qcow2" if backing else ""
    sh(f"qemu-img create -q -f qcow2 {b} {f} 16M", f"creating {name}")
    s.run("blockdev-add", driver="qcow2", **{"node-name": name}, file={"driver": "file", "filename": f}, backing=None)


def drive(jid, cancel):
    """The job runs (paused and resumed, maybe slowed) to its end, or is cancelled part-way."""
    if rng.random() < 0.5 and s.on_job(jid, "job-pause", id=jid):
        alive("while the job was paused")
        s.on_job(jid, "job-resume", id=jid)
    if cancel:
        s.on_job(jid, "block-job-cancel", device=jid)
    elif rng.random() < 0.7:
        s.on_job(jid, "block-job-set-speed", device=jid, speed=0)
    return s.job_end(jid)


def speed():
    return rng.choice([0, 0, 8 << 20, 32 << 20])


cur = "b0"
top, layers = "src", ["src"]  # the exports' node; the layers holding bitmap cur (the top last)
target("inc0", None)
s.run("transaction", actions=[
    {"type": "block-dirty-bitmap-add", "data": {"node": "src", "name": cur, "granularity": gran, "persistent": persistent}},
    {"type": "blockdev-backup", "data": {"job-id": "j0", "device": "src", "target": "inc0", "sync": "full",
                                         "speed": 32 << 20}}])
if not drive("j0", False):
    fail("the full backup j0 was cancelled")
s.run("blockdev-del", **{"node-name": "inc0"})
prev, n, kinds = "inc0", 1, []
for r in range(rounds):
    alive(f"before round {r}")
    kind = rng.choice(["incr", "incr", "always", "ckpt", "full", "snap", "snap"])
    if kind in ("incr", "always") and len(layers) > 1:
        kind = "ckpt"  # the writes since the checkpoint are in the bitmaps of several layers
    if kind == "snap":
        ov = f"ov{n}"
        sh(f"qemu-img create -q -f qcow2 -b {T}/{top}.qcow2 -F qcow2 {T}/{ov}.qcow2 16M", "creating the overlay")
        s.run("blockdev-add", driver="qcow2", **{"node-name": ov}, file={"driver": "file", "filename": f"{T}/{ov}.qcow2"},
              backing=None)
        s.run("transaction", actions=[
            {"type": "blockdev-snapshot", "data": {"node": top, "overlay": ov}},
            {"type": "block-dirty-bitmap-add", "data": {"node": ov, "name": cur, "granularity": gran,
                                                        "persistent": persistent}}])
        top = ov
        layers.append(ov)
        kinds.append("snap")
        n += 1
        continue
    cancel_first = rng.random() < 0.34
    for attempt in (0, 1) if cancel_first else (1,):
        cancel = attempt == 0
        name, jid = f"inc{n}", f"j{n}"
        target(name, None if kind == "full" else prev)
        kinds.append(kind + ("/cancelled" if cancel else ""))
        sp = speed() if not cancel else 1 << 20
        every_cur = [{"node": l, "name": cur} for l in layers]
        if kind == "incr":
            s.run("blockdev-backup", **{"job-id": jid, "device": top, "target": name, "sync": "incremental",
                                        "bitmap": cur, "speed": sp})
        elif kind == "always":
            s.run("blockdev-backup", **{"job-id": jid, "device": top, "target": name, "sync": "bitmap",
                                        "bitmap": cur, "bitmap-mode": "always", "speed": sp})
        elif kind == "full":
            s.run("transaction", actions=[
                {"type": "block-dirty-bitmap-clear", "data": {"node": top, "name": cur}},
                {"type": "blockdev-backup", "data": {"job-id": jid, "device": top, "target": name, "sync": "full",
                                                     "speed": sp}}])
        else:
            new, tmp = f"b{n}", f"tmp{n}"
            s.run("transaction", actions=[
                {"type": "block-dirty-bitmap-add", "data": {"node": top, "name": new, "granularity": gran,
                                                            "persistent": persistent}},
                {"type": "block-dirty-bitmap-disable", "data": {"node": top, "name": cur}},
                {"type": "block-dirty-bitmap-add", "data": {"node": top, "name": tmp, "granularity": gran,
                                                            "disabled": True}},
                {"type": "block-dirty-bitmap-merge", "data": {"node": top, "target": tmp, "bitmaps": every_cur}},
                {"type": "blockdev-backup", "data": {"job-id": jid, "device": top, "target": name, "sync": "bitmap",
                                                     "bitmap": tmp, "bitmap-mode": "never", "speed": sp}}])
        ok = drive(jid, cancel)
        s.run("blockdev-del", **{"node-name": name})
        if kind == "full" and ok:
            layers = [top]  # the lower layers' bits are in the full backup
        if kind == "ckpt":
            s.run("block-dirty-bitmap-remove", node=top, name=tmp)
            if not ok:  # the new bitmap takes the old ones' bits: the next try covers them all
                s.run("block-dirty-bitmap-merge", node=top, target=new, bitmaps=every_cur)
            s.run("block-dirty-bitmap-remove", node=top, name=cur)
            cur, layers = new, [top]
        n += 1
        if not ok and not cancel:
            fail(f"job {jid} ({kind}) was cancelled")
        # bitmap-mode=always gave back only what it had not copied: what
        # it had copied stays in its target, which joins the chain
        if ok or kind == "always":
            prev = name
    # an unrelated bitmap comes and goes under the writes
    x = f"x{r}"
    s.run("block-dirty-bitmap-add", node=top, name=x, persistent=persistent and r % 2 == 0)
    s.run("block-dirty-bitmap-disable", node=top, name=x)
    s.run("block-dirty-bitmap-merge", node=top, target=x, bitmaps=[cur])
    s.run("block-dirty-bitmap-remove", node=top, name=x)
alive("before its end")
out = st.finish()
if overlap:
    over = [l for l in out.splitlines() if l.startswith("vbd-stress: overlap: ")]
    if not over or over[0].split()[2] == "0":
        fail(f"no mutation met another in flight on the same bytes: {out[-1000:]}")
# the writes since the last backup
name, jid = f"inc{n}", f"j{n}"
target(name, prev)
if len(layers) == 1:
    s.run("blockdev-backup", **{"job-id": jid, "device": top, "target": name, "sync": "incremental", "bitmap": cur})
else:
    s.run("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": top, "name": "last", "granularity": gran, "disabled": True}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": top, "target": "last",
                                                      "bitmaps": [{"node": l, "name": cur} for l in layers]}},
        {"type": "blockdev-backup", "data": {"job-id": jid, "device": top, "target": name, "sync": "bitmap",
                                             "bitmap": "last", "bitmap-mode": "never"}}])
if not s.job_end(jid):
    fail("the last incremental was cancelled")
s.run("blockdev-del", **{"node-name": name})
print("rounds: " + " ".join(kinds), file=sys.stderr)
open(f"{T}/last", "w").write(name)
open(f"{T}/top", "w").write(top)
PY
stop_daemon
for f in src.qcow2 ov*.qcow2; do [ ! -e "$f" ] || qcheck "$f"; done
top=$(cat top)
must qemu-img compare -q -f qcow2 -F raw "$top.qcow2" shadow.raw
for f in inc*.qcow2; do qcheck "$f"; done
last=$(cat last)
qemu-img compare -q -f qcow2 -F raw "$last.qcow2" shadow.raw ||
    fail "the last backup $last through its chain ($(qemu-img info --backing-chain "$last.qcow2" | grep '^image:' | tr '\n' ' ')) is not the source (seed $SEED)"
echo ok
