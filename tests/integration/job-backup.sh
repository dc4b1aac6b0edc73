#!/bin/bash
# blockdev-backup, full then incremental, by vbd-daemon and by
# qemu-storage-daemon 7.2 on copies of the same images:
#  1. an in-memory bitmap b0 (persistent=false) is added, then a full
#     backup of the source (qcow2, exported writable over NBD) to a qcow2
#     target runs rate-limited while qemu-io writes patterns through the
#     export: the target ends equal to the source as it was at the start
#     (point in time: the guest's writes first saved the old data), the
#     source equal to the start plus the writes; vbd's job was still copying
#     when the writes were done (so they went through copy-before-write:
#     at 1 KiB/s that holds however slow the host, see below);
#  2. sync=bitmap with b0 into a second qcow2 (its backing file the full
#     backup): it equals the source now, and it allocates exactly the
#     clusters the writes touched, the same ones for both daemons;
#     bitmap-mode on-success left b0 clean (an export of it reads clean).
#  3. a bitmap in use by the job is refused for removal, and the errors of
#     bad arguments are QEMU's.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdinfo python3
cd "$T"
mixed_disk base.raw 16 0 9
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
IOW="-c 'write -P 0xa1 0 64k' -c 'write -P 0xa2 500k 100k' -c 'write -P 0xa3 9M 3M' -c 'write -z 13M 1M' \
-c 'write -P 0xa4 15M 1M' -c 'write -P 0xa5 1000 3000' -c 'write -P 0xa6 8M 4k' -c 'write -P 0xa7 15872k 1k'"
cp base.raw model.raw
eval "qemu-io -f raw $IOW model.raw" >/dev/null || fail "model"

on_exit 'kill -9 $dpid 2>/dev/null'
for d in vbd qsd; do
    step "$d"
    rm -rf "$T/$d" && mkdir "$T/$d" && cd "$T/$d"
    cp ../base.qcow2 src.qcow2
    must qemu-img create -q -f qcow2 full.qcow2 16M
    must qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 inc.qcow2 16M
    job_daemon_start $d src --blockdev "$(qcow2_node src)"
    python3 - "$d" "$IOW" <<'PY' || fail "$d"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, iow = sys.argv[1:3]
s = Session("qmp.sock", who)
cwd = os.getcwd()
def qcow2(name, f, **extra):
    s.run("blockdev-add", driver="qcow2", **{"node-name": name}, file={"driver": "file", "filename": f"{cwd}/{f}"}, **extra)
qcow2("full", "full.qcow2")
s.run("block-dirty-bitmap-add", node="src", name="b0")
# errors before anything runs: QEMU's words
e = s.error("blockdev-backup", device="src", target="full", sync="bitmap")
if e["desc"] != "must provide a valid bitmap name for 'bitmap' sync mode":
    fail(f"{who}: {e}")
e = s.error("blockdev-backup", device="src", target="full", sync="full", bitmap="nope", **{"bitmap-mode": "never"})
if e["desc"] != "Bitmap 'nope' could not be found":
    fail(f"{who}: {e}")
# 1 KiB/s: the job's first 1 MiB chunk starts at once, each next one 1024 s
# after the one before (its budget: the bytes it started over its speed
# since it began, vbd's and QEMU's alike), so the job cannot be done before
# the writes whatever the scheduler does (the whole run is far shorter than
# one more chunk's wait); set-speed 0 then lets it finish at once. At 2 MiB/s
# the job could end in 8 s: a starved qemu-io can take longer.
s.run("blockdev-backup", **{"job-id": "b", "device": "src", "target": "full", "sync": "full", "speed": 1 << 10})
s.status("b", "created"); s.status("b", "running")
sh(f"qemu-io -f raw {iow} 'nbd+unix:///disk?socket=nbd.sock'", "qemu-io during the backup")
j = s.job("b")
if who == "vbd" and (not j or j["status"] != "running" or j["current-progress"] >= j["total-progress"]):
    fail(f"{who}: the backup was not running while the guest wrote: {j}")
if j:
    r = s.m.cmd("block-job-set-speed", {"device": "b", "speed": 0})
    if "error" in r and who == "vbd":
        fail(f"{who}: block-job-set-speed: {r}")
s.completed("b")
# incremental: what b0 recorded (the writes), into a qcow2 over the full one
qcow2("inc", "inc.qcow2", backing=None)
s.run("blockdev-backup", **{"job-id": "i", "device": "src", "target": "inc", "sync": "bitmap", "bitmap": "b0",
                            "bitmap-mode": "on-success", "speed": 1 << 10})  # still running: see above
s.status("i", "created"); s.status("i", "running")
if who == "vbd":
    e = s.error("block-dirty-bitmap-remove", node="src", name="b0")
    if e["desc"] != "Bitmap 'b0' is currently in use by another operation and cannot be used":
        fail(f"{who}: {e}")
s.run("block-job-set-speed", device="i", speed=0)
s.completed("i")
# on-success: b0 starts clean again (no write since); a read-only export
# takes a disabled bitmap only (QEMU)
s.run("block-dirty-bitmap-disable", node="src", name="b0")
s.run("block-export-add", type="nbd", id="e1", **{"node-name": "src"}, name="bm", bitmaps=["b0"])
out = sh("nbdinfo --map=qemu:dirty-bitmap:b0 'nbd+unix:///bm?socket=nbd.sock'", "nbdinfo")
if [l.split()[2] for l in out.splitlines()] != ["0"]:
    fail(f"{who}: b0 after the incremental backup: {out}")
for _ in range(600):  # nbdinfo's connection may not be gone yet: wait for that
    r = s.m.cmd("block-export-del", {"id": "e1"})
    if "error" not in r:
        break
    if "still in use" not in r["error"]["desc"]:
        fail(f"{who}: block-export-del: {r}")
    time.sleep(0.05)
else:
    fail(f"{who}: export e1 still in use after 30 s")
for n in ("inc", "full"):
    s.run("blockdev-del", **{"node-name": n})
PY
    job_daemon_stop $d
    for f in src full inc; do qcheck $f.qcow2; done
    must qemu-img compare -q -f qcow2 -F raw full.qcow2 ../base.raw   # the point in time
    must qemu-img compare -q -f qcow2 -F raw src.qcow2 ../model.raw
    qemu-img compare -f qcow2 -F raw inc.qcow2 ../model.raw >cmp.out 2>&1 || fail "$d: incremental: $(cat cmp.out; qemu-img map inc.qcow2)"   # incremental over full
    qemu-img map --output=json inc.qcow2 | python3 -c 'import json, sys
r = []
for m in json.load(sys.stdin):
    if m["depth"] == 0 and m["present"]:
        if r and r[-1][0] + r[-1][1] == m["start"]:
            r[-1][1] += m["length"]
        else:
            r.append([m["start"], m["length"]])
print(" ".join("%d+%d" % (a, b) for a, b in r))' >inc.map
    cd "$T"
done
cmp -s vbd/inc.map qsd/inc.map || fail "incremental backups differ: vbd $(cat vbd/inc.map) qsd $(cat qsd/inc.map)"
# the clusters the writes touched: 0-64k, 448k-640k, 8M+64k, 9M-12M, 13M-14M, 15M-16M
[ "$(cat vbd/inc.map)" = "0+65536 458752+196608 8388608+65536 9437184+3145728 13631488+1048576 15728640+1048576" ] ||
    fail "incremental backup allocates $(cat vbd/inc.map)"
echo ok
