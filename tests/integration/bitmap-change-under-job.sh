#!/bin/bash
# A change to a qcow2 node's persistent bitmaps (block-dirty-bitmap-add/
# remove/disable/enable/clear of another bitmap) while a block job writes
# into the node: qcow2 stores its bitmaps, frees them and opens them again
# around the change, and the exports are drained for it but a job is not
# (QEMU's drain pauses it). Every cluster the job wrote must be dirty in
# the node's enabled bitmap afterwards, as qemu-nbd -B reads it from the
# image. The writers: block-stream into an overlay with the bitmap,
# block-commit into a base with the bitmap (below an intermediate layer,
# and active: the top's own), blockdev-mirror into a target with it.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo python3
cd "$T"
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'

# data: 64k at every other 64k of 48 MiB (the clusters a job copies)
data_cmds() { local c=() o; for ((o = 0; o < 48 * 1048576; o += 131072)); do c+=(-c "write -P 0x5a $o 64k"); done; printf '%s\n' "${c[@]}"; }
mapfile -t WRITES < <(data_cmds)

dirty_check() { # IMAGE BITMAP: every data cluster dirty in BITMAP, as qemu-nbd reads it
    rm -f q.sock
    qemu-nbd -r -t -k "$T/q.sock" -B "$2" -f qcow2 "$1" 2>qn.log &
    local p=$!
    for _ in $(seq 600); do [ -S q.sock ] && break; sleep 0.05; done
    nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///?socket=$T/q.sock" >map.txt || { kill $p; fail "nbdinfo --map on $1"; }
    kill $p; wait $p 2>/dev/null
    python3 - map.txt <<'PY' || fail "$1: clusters the job wrote are clean in bitmap $2"
import sys
dirty = []
for line in open(sys.argv[1]):
    off, ln, typ = (int(x) for x in line.split()[:3])
    if typ & 1:
        dirty.append((off, off + ln))
def is_dirty(o):
    return any(a <= o and o + 65536 <= b for a, b in dirty)
missed = [o for o in range(0, 48 << 20, 131072) if not is_dirty(o)]
if missed:
    print(f"{len(missed)} written clusters clean, first at {missed[:8]}", file=sys.stderr)
    sys.exit(1)
PY
}

churn() { # NODE JOB: bitmap changes on NODE until job JOB concludes (auto-dismiss off), then dismissed
    T=$T NODE=$1 JOB=$2 python3 - <<'PY' || { tail -30 "$T/daemon.log"; fail "bitmap changes under job $2"; }
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
s = Session(os.environ["T"] + "/qmp.sock", "vbd")
node, job = os.environ["NODE"], os.environ["JOB"]
rounds = completed = 0
while True:
    # one round at least, whatever the job's pace (it is kept until dismissed)
    s.run("block-dirty-bitmap-add", node=node, name="x", persistent=True)
    s.run("block-dirty-bitmap-disable", node=node, name="x")
    s.run("block-dirty-bitmap-enable", node=node, name="x")
    s.run("block-dirty-bitmap-clear", node=node, name="x")
    s.run("block-dirty-bitmap-remove", node=node, name="x")
    rounds += 1
    j = [j for j in s.run("query-jobs") if j["id"] == job][0]
    if j["status"] == "ready" and not completed:
        s.run("job-complete", id=job)  # an active commit, a mirror: done once ready
        completed = 1
    if j["status"] == "concluded":
        if "error" in j:
            fail(f"job {job}: {j['error']}")
        s.run("job-dismiss", id=job)
        break
print(f"{rounds} rounds of bitmap changes under the job", file=sys.stderr)
PY
}

step "block-stream into an overlay with a persistent bitmap"
must qemu-img create -q -f qcow2 base.qcow2 48M
qemu-io -f qcow2 "${WRITES[@]}" base.qcow2 >/dev/null || fail "qemu-io: the data of base.qcow2"
must qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 top.qcow2 48M
must qemu-img bitmap --add top.qcow2 b
start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=bf,filename=$T/base.qcow2,read-only=on" \
    --blockdev "driver=qcow2,node-name=base,file=bf,read-only=on" \
    --blockdev "driver=file,node-name=tf,filename=$T/top.qcow2" \
    --blockdev "driver=qcow2,node-name=top,file=tf,backing=base"
qmp_cmd() { T=$T python3 -c "
import os, sys, json
sys.path.insert(0, os.environ['VBD_ROOT'] + '/tests/qmp')
from jobs import Session
Session(os.environ['T'] + '/qmp.sock', 'vbd').run(sys.argv[1], **json.loads(sys.argv[2]))" "$@" || fail "qmp $1"; }
qmp_cmd block-stream '{"job-id": "j0", "device": "top", "speed": 16777216, "auto-dismiss": false}'
churn top j0
stop_daemon
must qemu-img check -q top.qcow2
dirty_check top.qcow2 b

step "block-commit into a base with a persistent bitmap"
must qemu-img create -q -f qcow2 base.qcow2 48M
must qemu-img bitmap --add base.qcow2 b
must qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 mid.qcow2 48M
qemu-io -f qcow2 "${WRITES[@]}" mid.qcow2 >/dev/null || fail "qemu-io: the data of mid.qcow2"
must qemu-img create -q -f qcow2 -b "$T/mid.qcow2" -F qcow2 top.qcow2 48M
start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=bf,filename=$T/base.qcow2" \
    --blockdev "driver=qcow2,node-name=base,file=bf" \
    --blockdev "driver=file,node-name=mf,filename=$T/mid.qcow2" \
    --blockdev "driver=qcow2,node-name=mid,file=mf,backing=base" \
    --blockdev "driver=file,node-name=tf,filename=$T/top.qcow2" \
    --blockdev "driver=qcow2,node-name=top,file=tf,backing=mid"
qmp_cmd block-commit '{"job-id": "j1", "device": "top", "top-node": "mid", "base-node": "base", "speed": 16777216, "auto-dismiss": false}'
churn base j1
stop_daemon
must qemu-img check -q base.qcow2
dirty_check base.qcow2 b

step "active block-commit into a base with a persistent bitmap"
must qemu-img create -q -f qcow2 base.qcow2 48M
must qemu-img bitmap --add base.qcow2 b
must qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 top.qcow2 48M
qemu-io -f qcow2 "${WRITES[@]}" top.qcow2 >/dev/null || fail "qemu-io: the data of top.qcow2"
start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=bf,filename=$T/base.qcow2" \
    --blockdev "driver=qcow2,node-name=base,file=bf" \
    --blockdev "driver=file,node-name=tf,filename=$T/top.qcow2" \
    --blockdev "driver=qcow2,node-name=top,file=tf,backing=base"
qmp_cmd block-commit '{"job-id": "j2", "device": "top", "speed": 16777216, "auto-dismiss": false}'
churn base j2
stop_daemon
must qemu-img check -q base.qcow2
dirty_check base.qcow2 b

step "blockdev-mirror into a target with a persistent bitmap"
must qemu-img create -q -f qcow2 src.qcow2 48M
qemu-io -f qcow2 "${WRITES[@]}" src.qcow2 >/dev/null || fail "qemu-io: the data of src.qcow2"
must qemu-img create -q -f qcow2 tgt.qcow2 48M
must qemu-img bitmap --add tgt.qcow2 b
start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=file,node-name=sf,filename=$T/src.qcow2" \
    --blockdev "driver=qcow2,node-name=src,file=sf" \
    --blockdev "driver=file,node-name=gf,filename=$T/tgt.qcow2" \
    --blockdev "driver=qcow2,node-name=tgt,file=gf"
qmp_cmd blockdev-mirror '{"job-id": "j3", "device": "src", "target": "tgt", "sync": "full", "speed": 16777216, "auto-dismiss": false}'
churn tgt j3
stop_daemon
must qemu-img check -q tgt.qcow2
dirty_check tgt.qcow2 b
echo ok
