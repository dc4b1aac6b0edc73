#!/bin/bash
# Persistent dirty bitmaps on a backing chain while a guest writes and
# block-commit runs, as libvirt drives it (backing layers opened read-only
# over auto-read-only file nodes, made writable by the job; a file node
# opened read-only=on stays so, and the commit is refused as in qsd 7.2:
# "Block node is read-only"): base (bitmap bb) <- mid <- top (bitmap bt),
# vbd-stress (64 requests in flight, random overlapping writes,
# write-zeroes and discards on hot clusters that move to fresh ground,
# every read checked against its model) through a vhost-user-blk export
# (2 rings on iothread io0) and an NBD export (4 connections) of top:
#  1. an intermediate block-commit of mid into base under the writes, mid
#     deleted after it (blockdev-del): every write of that run landed in
#     top, so each is dirty in bt;
#  2. an active block-commit of top into base, job-complete in READY
#     (the exports pivot to base) with the writes going on across it, top
#     deleted after it.
# After the daemon's stop (SIGTERM: bitmaps stored): no bitmap in-use, both
# still there, every image checks clean, base equals the model, every
# cluster whose content base's commits and writes changed is dirty in bb
# (read back by qemu-nbd -B, as a backup tool would). BITMAP_COMMIT_SEED.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo python3
SEED=${BITMAP_COMMIT_SEED:-7171}
stress_init 11 1
S=$T/qmp.sock
must qemu-img convert -q -f raw -O qcow2 init.raw base.qcow2
must qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 mid.qcow2
must qemu-io -f qcow2 -c "write -P 0x5a 4M 2M" -c "write -z 7M 256k" -c "write -P 0x33 9M 64k" -c "discard 12M 1M" mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b "$T/mid.qcow2" -F qcow2 top.qcow2
must qemu-img bitmap --add base.qcow2 bb
must qemu-img bitmap --add top.qcow2 bt
must qemu-img convert -q -f qcow2 -O raw mid.qcow2 back.raw # what top's backing chain reads as
cp back.raw init-top.raw
step "base (bb) <- mid <- top (bt): intermediate then active commit under QD 64 (seed $SEED)"
stress_daemon both top \
    --blockdev "driver=file,node-name=bf,filename=$T/base.qcow2,auto-read-only=on" \
    --blockdev "driver=qcow2,node-name=base,file=bf,read-only=on,discard=unmap" \
    --blockdev "driver=file,node-name=mf,filename=$T/mid.qcow2,auto-read-only=on" \
    --blockdev "driver=qcow2,node-name=mid,file=mf,read-only=on,backing=base" \
    --blockdev "driver=file,node-name=tf,filename=$T/top.qcow2" \
    --blockdev "driver=qcow2,node-name=top,file=tf,backing=mid,discard=unmap"
python3 - "$STRESS" "$SEED" <<'PY' || fail_with_daemon_log "commits under the writes"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session
from stress import Stress, after_some
stress_bin, seed = sys.argv[1], int(sys.argv[2])
s = Session("qmp.sock", "vbd")


def log(m):
    print(m, file=sys.stderr, flush=True)


def run(n, init, more):
    return Stress([stress_bin, "--seed", str(seed + n), "--ops", str(1 << 40), "--qd", "64", "--hot", "8",
                   "--hot-move", "64", "--init", init, "--shadow-out", f"shadow{n}.raw",
                   "--touched-out", f"touched{n}.raw"] + more +
                  ["--vhost-user", "vu.sock", "--queues", "2", "--nbd", "nbd+unix:///disk?socket=nbd.sock",
                   "--conns", "4"])


log("run 1")
st = run(1, "init-top.raw", ["--backing", "back.raw"])
after_some(s, 200, st, "before the commit")
s.run("block-commit", **{"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base", "speed": 4 << 20})
after_some(s, 100, st, "during the commit")
log("c1 started")
s.job_end("c1")
log("c1 ended")
after_some(s, 100, st, "after the commit")
st.finish()
s.run("blockdev-del", **{"node-name": "mid"})
s.run("blockdev-del", **{"node-name": "mf"})
# the content of base + top now: the first run's model. No discards: what
# one would expose of base changes while the job copies top into it
log("run 2")
st = run(2, "shadow1.raw", ["--no-discard"])
after_some(s, 200, st, "before the active commit")
s.run("block-commit", **{"job-id": "c2", "device": "top", "base-node": "base", "speed": 4 << 20})
log("c2 started")
after_some(s, 100, st, "while the active commit copies")
# unlimited: at 4 MiB/s 64 requests in flight would dirty clusters faster
# than the job copies them and it would never be READY (QEMU's neither)
s.run("block-job-set-speed", device="c2", speed=0)
while s.job("c2")["status"] != "ready":
    st.alive("before READY")
    time.sleep(0.02)  # polling the job's state
after_some(s, 200, st, "in READY")
log("c2 ready")
s.run("job-complete", id="c2")
s.job_end("c2")
log("c2 ended")
after_some(s, 300, st, "after the pivot")
st.finish()
s.run("blockdev-del", **{"node-name": "top"})
s.run("blockdev-del", **{"node-name": "tf"})
PY
stop_daemon
for x in base top mid; do qcheck $x.qcow2; done
out=$(qemu-img compare -f qcow2 -F raw base.qcow2 shadow2.raw 2>&1) || fail "base.qcow2 differs from the model: $out"
for x in base:bb top:bt; do
    info=$(qemu-img info --output=json "${x%%:*}.qcow2")
    case $info in *'"name": "'"${x#*:}"'"'*) ;; *) fail "bitmap ${x#*:} of ${x%%:*}.qcow2 is gone: $info" ;; esac
    case $info in *in-use*) fail "a bitmap of ${x%%:*}.qcow2 is left in-use: $info" ;; esac
done

# dirty_map IMAGE BITMAP OUT: the bitmap's dirty extents (nbdinfo --map through qemu-nbd -B)
dirty_map() {
    rm -f q.sock
    qemu-nbd -r -t -k "$T/q.sock" -B "$2" -f qcow2 "$1" 2>qn.log &
    local p=$!
    wait_sock "$T/q.sock" "$p" qn.log
    nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///?socket=$T/q.sock" >"$3" || { kill $p; fail "nbdinfo --map of $2 in $1"; }
    kill $p; wait $p 2>/dev/null
}
dirty_map top.qcow2 bt bt.map
dirty_map base.qcow2 bb bb.map
python3 - <<'PY' || fail "a changed cluster is clean in its bitmap"
import sys
def dirty(path):
    d = []
    for line in open(path):
        off, ln, typ = (int(x) for x in line.split()[:3])
        if typ & 1:
            d.append((off, off + ln))
    return d
def clean(d, clusters):
    return [c for c in clusters if not any(a <= c * 65536 < b for a, b in d)]
cs = 65536
# every cluster the first run changed (its writes all went to top); a
# touched one left clean may be a discard below the cluster (it changes nothing)
a, b = open("init-top.raw", "rb").read(), open("shadow1.raw", "rb").read()
changed = [c for c in range(len(a) // cs) if a[c * cs:(c + 1) * cs] != b[c * cs:(c + 1) * cs]]
missed = clean(dirty("bt.map"), changed)
t = open("touched1.raw", "rb").read()
touched = sorted({i * 512 // cs for i in range(len(t)) if t[i]})
print(f"bt: {len(changed)} clusters changed by the first run, {len(touched)} touched, "
      f"{len(clean(dirty('bt.map'), touched))} touched and clean")
if missed:
    sys.exit(f"bt: {len(missed)} changed clusters clean, first at cluster {missed[:8]}")
# every cluster base's content changed in (the commits, the writes after the pivot)
a, b = open("init.raw", "rb").read(), open("shadow2.raw", "rb").read()
changed = [c for c in range(len(a) // cs) if a[c * cs:(c + 1) * cs] != b[c * cs:(c + 1) * cs]]
missed = clean(dirty("bb.map"), changed)
print(f"bb: {len(changed)} clusters of base changed")
if missed:
    sys.exit(f"bb: {len(missed)} of them clean, first at cluster {missed[:8]}")
PY
echo ok
