#!/bin/bash
# The drain users on a block job's nodes while the job runs and a guest
# writes: vbd-stress (QD 64 over 4 NBD connections, every read checked
# against its model) on the guest's export, and in a loop until the job is
# done, on the job's source and target (or top and base): blockdev-reopen
# changing discard/detect-zeroes of the node and of its file node, a
# persistent and an in-memory dirty bitmap added and removed, a read-only
# NBD export of the target (of the source for a mirror: its target is
# refused, as qsd refuses it) added and deleted (block_resize and snapshots
# of a job's node are refused, as qsd refuses them). Each drain pauses the job with its
# requests ended and resumes it (QEMU's drain, child_job). Then:
#  M. blockdev-mirror, job-complete under the writers: the target holds
#     what the model says;
#  B. blockdev-backup sync=full started before the writers: the target is
#     the source at the start, byte for byte, the source the model;
#  S. block-stream into the written top: top as the model;
#  C. block-commit of the middle layer into base under the written top:
#     the chain as the model.
# Every image checks clean (qemu-img check), qemu-img compare is the judge.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
stress_setup init.raw 16 10
SEED=${JOB_DRAIN_SEED:-2020}

for scen in ${JOB_DRAIN_SCENARIOS:-M B S C}; do
    step "scenario $scen (seed $SEED)"
    scenario_dir "$scen"
    case $scen in
    M | B)
        cp ../base.qcow2 src.qcow2 || fail "copy of base.qcow2"
        must qemu-img create -q -f qcow2 tgt.qcow2 16M
        nodes=(--blockdev "driver=file,node-name=fsrc,filename=$PWD/src.qcow2"
               --blockdev "driver=qcow2,node-name=src,file=fsrc"
               --blockdev "driver=file,node-name=ftgt,filename=$PWD/tgt.qcow2"
               --blockdev "driver=qcow2,node-name=tgt,file=ftgt")
        guest=src ;;
    S)
        cp ../base.qcow2 base.qcow2 || fail "copy of base.qcow2"
        must qemu-img create -q -f qcow2 -b "$PWD/base.qcow2" -F qcow2 top.qcow2 16M
        nodes=(--blockdev "driver=file,node-name=fbase,filename=$PWD/base.qcow2"
               --blockdev "driver=qcow2,node-name=base,file=fbase"
               --blockdev "driver=file,node-name=ftop,filename=$PWD/top.qcow2"
               --blockdev "driver=qcow2,node-name=top,file=ftop,backing=base")
        guest=top ;;
    C)
        must qemu-img create -q -f qcow2 base.qcow2 16M
        cp ../base.qcow2 mid.qcow2 || fail "copy of base.qcow2"
        must qemu-img rebase -q -u -b "$PWD/base.qcow2" -F qcow2 mid.qcow2
        must qemu-img create -q -f qcow2 -b "$PWD/mid.qcow2" -F qcow2 top.qcow2 16M
        nodes=(--blockdev "driver=file,node-name=fbase,filename=$PWD/base.qcow2"
               --blockdev "driver=qcow2,node-name=base,file=fbase"
               --blockdev "driver=file,node-name=fmid,filename=$PWD/mid.qcow2"
               --blockdev "driver=qcow2,node-name=mid,file=fmid,backing=base"
               --blockdev "driver=file,node-name=ftop,filename=$PWD/top.qcow2"
               --blockdev "driver=qcow2,node-name=top,file=ftop,backing=mid")
        guest=top ;;
    esac
    "$VBD_DAEMON" --object iothread,id=io0 --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q "${nodes[@]}" \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export "type=nbd,id=guest,node-name=$guest,name=disk,writable=on" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
    python3 - "$scen" "$STRESS" "$SEED" <<'PY' || fail "scenario $scen: $(tail -40 daemon.log)"
import os, signal, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
scen, stress_bin, seed = sys.argv[1:4]
s = Session("qmp.sock", "vbd")
cwd = os.getcwd()
stress = None

def writers_start():
    global stress
    stress = subprocess.Popen([stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "4",
                               "--hot-move", "32", "--init", "../init.raw", "--shadow-out", "shadow.raw",
                               "--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"]
                              + (["--backing", "../init.raw"] if scen in "SC" else []),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stress.stdout.readline()  # its seed: running, SIGUSR1 handled

def reopen(node, file, **opts):
    s.run("blockdev-reopen", options=[dict(driver="qcow2", **{"node-name": node}, file=file, **opts)])

def reopen_file(node, name, **opts):
    s.run("blockdev-reopen", options=[dict(driver="file", **{"node-name": node}, filename=f"{cwd}/{name}", **opts)])

# node -> (its file node, its image, whether it has a backing)
layout = {"src": ("fsrc", "src.qcow2", None), "tgt": ("ftgt", "tgt.qcow2", None),
          "base": ("fbase", "base.qcow2", None), "top": ("ftop", "top.qcow2", True),
          "mid": ("fmid", "mid.qcow2", True)}

def drain_round(n, nodes, snap_node=None, export_node=None):
    for node in nodes:
        # a node with a backing keeps its options (the job's end changes
        # its backing: a reopen naming the old one would undo that)
        f, img, backing = layout[node]
        if not backing:
            reopen(node, f, discard="unmap", **{"detect-zeroes": "on"})
        reopen_file(f, img, discard="unmap")
        s.run("block-dirty-bitmap-add", node=node, name="p", persistent=True)
        s.run("block-dirty-bitmap-add", node=node, name="m")
        s.run("block-dirty-bitmap-remove", node=node, name="p")
        s.run("block-dirty-bitmap-remove", node=node, name="m")
        if not backing:
            reopen(node, f)
        reopen_file(f, img)
    if export_node:
        s.run("block-export-add", type="nbd", id="look", **{"node-name": export_node}, name="look")
        s.run("block-export-del", id="look")
    if snap_node:
        s.run("blockdev-snapshot-internal-sync", device=snap_node, name=f"s{n}")
        s.run("blockdev-snapshot-delete-internal-sync", device=snap_node, name=f"s{n}")

def drains_until(jid, nodes, want, **kw):
    """drain rounds until job jid is in state want (or gone); the count"""
    n = 0
    while True:
        j = s.job(jid)
        if not j or j["status"] in want:
            return n, j
        if stress.poll() is not None:
            fail(f"vbd-stress ended under the job: {stress.stdout.read()[-3000:]}")
        drain_round(n, nodes, **kw)
        n += 1
        if n == 2:
            s.on_job(jid, "block-job-set-speed", device=jid, speed=0)  # the rest at full speed

def writers_end():
    if stress.poll() is not None:
        fail(f"vbd-stress ended before the job: {stress.stdout.read()[-3000:]}")
    stress.send_signal(signal.SIGUSR1)
    out = stress.communicate(timeout=300)[0]
    if stress.returncode:
        fail(f"vbd-stress: {out[-3000:]}")
    print(out.strip().splitlines()[-1])

# the guest's node on an iothread (its export follows; a mirror's or a
# backup's target joins it when the job is made)
s.run("x-blockdev-set-iothread", **{"node-name": "src" if scen in "MB" else "top", "iothread": "io0", "force": True})
if scen != "B":
    writers_start()
speed = 2 << 20
if scen == "M":
    s.run("blockdev-mirror", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full", "speed": speed})
    # nobody reads the target the mirror writes (it shares only unchanged
    # writes), as qsd refuses it: the export drains the source instead
    e = s.error("block-export-add", type="nbd", id="look", **{"node-name": "tgt"}, name="look")
    if not e["desc"].startswith("Permission conflict on node 'tgt': permissions 'consistent read' are both required"):
        fail(f"vbd: an export of the mirror's target: {e}")
    n, j = drains_until("j", ["src", "tgt"], ("ready",), export_node="src")
    s.run("job-complete", id="j")
elif scen == "B":
    # the point in time: before the first write
    s.run("blockdev-backup", **{"job-id": "j", "device": "src", "target": "tgt", "sync": "full", "speed": speed})
    writers_start()
    n, j = drains_until("j", ["src", "tgt"], ("concluded", "null"), export_node="tgt")
elif scen == "S":
    s.run("block-stream", **{"job-id": "j", "device": "top", "speed": speed})
    n, j = drains_until("j", ["top", "base"], ("concluded", "null"))
elif scen == "C":
    s.run("block-commit", **{"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base", "speed": speed})
    n, j = drains_until("j", ["base", "mid", "top"], ("concluded", "null"))
if not s.job_end("j"):
    fail("the job was cancelled")
writers_end()
print(f"{n} drain rounds under the job")
if n < 2:
    fail(f"only {n} drain rounds ran under the job: not tested")
PY
    kill -TERM $dpid; wait $dpid || fail "vbd-daemon exited with $?: $(tail -5 daemon.log)"
    dpid=
    ! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
    case $scen in
    M)
        qcheck tgt.qcow2; qcheck src.qcow2
        must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 shadow.raw ;;
    B)
        qcheck tgt.qcow2; qcheck src.qcow2
        must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 ../init.raw
        must qemu-img compare -q -f qcow2 -F raw src.qcow2 shadow.raw ;;
    S)
        qcheck top.qcow2; qcheck base.qcow2
        [ -z "$(qemu-img info --output=json top.qcow2 | grep backing-filename)" ] || fail "top still has a backing file"
        must qemu-img compare -q -f qcow2 -F raw top.qcow2 shadow.raw ;;
    C)
        qcheck top.qcow2; qcheck base.qcow2
        must qemu-img compare -q -f qcow2 -F raw top.qcow2 shadow.raw ;;
    esac
    cd "$T" || fail "cd $T"
done
echo ok
