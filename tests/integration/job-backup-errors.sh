#!/bin/bash
# blockdev-backup's error policy and drive-backup, by vbd-daemon and by
# qemu-storage-daemon 7.2, one QMP script:
#  1. the target fails a write once with ENOSPC (blkdebug under the qcow2
#     target): with on-target-error=stop the job sends BLOCK_JOB_ERROR
#     (write, stop) and pauses; job-resume copies the chunk again and the
#     backup completes equal to the source;
#  2. the same failure with the default policy (report) ends the job with
#     BLOCK_JOB_COMPLETED carrying "No space left on device";
#  3. drive-backup sync=full makes its own qcow2 target file: equal to the
#     source, qemu-img check clean; compress=on to a qcow2 target: equal to
#     the source, its clusters compressed;
#  4. (vbd) kill -9 of the daemon during a backup while qemu-io writes
#     through an export: source and target pass qemu-img check (leaks at
#     most), and the source still holds data the writer had flushed.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 base.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 0x55 0 8M' -c 'write -P 0x66 8M 8M' base.qcow2 >/dev/null

start() { # $1 = vbd|qsd
    local bin=$VBD_DAEMON
    [ "$1" = qsd ] && bin=qemu-storage-daemon
    "$bin" --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$PWD"'/src.qcow2"}}' \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export type=nbd,id=e0,node-name=src,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
}
on_exit 'kill -9 $dpid 2>/dev/null'
for d in vbd qsd; do
    step "$d"
    rm -rf "$T/$d" && mkdir "$T/$d" && cd "$T/$d"
    cp ../base.qcow2 src.qcow2
    # preallocated: vbd's blkdebug is not growable (qcow2 above it could not
    # write past the file's end), so the file has its full size already
    for t in t1 t2; do must qemu-img create -q -f qcow2 -o preallocation=metadata $t.qcow2 16M; done
    must qemu-img create -q -f qcow2 t4.qcow2 16M
    start $d
    python3 - "$d" <<'PY' || fail "$d"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who = sys.argv[1]
s = Session("qmp.sock", who)
cwd = os.getcwd()
def failing(name, f):
    # under the format, where QEMU's qcow2 emits write_aio for its data writes
    s.run("blockdev-add", driver="qcow2", **{"node-name": name},
          file={"driver": "blkdebug", "image": {"driver": "file", "filename": f"{cwd}/{f}"},
                "inject-error": [{"event": "write_aio", "errno": 28, "once": True}]})
# 1. stop, resume
failing("t1", "t1.qcow2")
s.run("blockdev-backup", **{"job-id": "b1", "device": "src", "target": "t1", "sync": "full",
                            "on-target-error": "stop"})
s.status("b1", "created"); s.status("b1", "running")
ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=120)["data"]
if ev != {"device": "b1", "operation": "write", "action": "stop"}:
    fail(f"{who}: BLOCK_JOB_ERROR {ev}")
s.status("b1", "paused")
s.run("job-resume", id="b1")
s.status("b1", "running")
s.completed("b1")
# 2. report
failing("t2", "t2.qcow2")
s.run("blockdev-backup", **{"job-id": "b2", "device": "src", "target": "t2", "sync": "full"})
s.status("b2", "created"); s.status("b2", "running")
ev = s.m.wait_event("BLOCK_JOB_ERROR", timeout=120)["data"]
if ev != {"device": "b2", "operation": "write", "action": "report"}:
    fail(f"{who}: BLOCK_JOB_ERROR {ev}")
s.status("b2", "aborting")
ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=120)["data"]
if ev.get("error") != "No space left on device":
    fail(f"{who}: BLOCK_JOB_COMPLETED {ev}")
s.status("b2", "concluded"); s.status("b2", "null")
# 3. drive-backup
s.run("drive-backup", **{"job-id": "b3", "device": "src", "target": f"{cwd}/t3.qcow2", "format": "qcow2",
                         "sync": "full"})
s.status("b3", "created"); s.status("b3", "running")
s.completed("b3")
# compressed
s.run("blockdev-add", driver="qcow2", **{"node-name": "t4"}, file={"driver": "file", "filename": f"{cwd}/t4.qcow2"})
s.run("blockdev-backup", **{"job-id": "b4", "device": "src", "target": "t4", "sync": "full", "compress": True})
s.status("b4", "created"); s.status("b4", "running")
s.completed("b4")
for n in ("t1", "t2", "t4"):
    s.run("blockdev-del", **{"node-name": n})
PY
    kill -TERM $dpid; wait $dpid; rc=$?; dpid=
    [ $rc = 0 ] || fail "$d exited with $rc: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$d: $(cat daemon.log)"
    for f in src t1 t2 t3 t4; do qcheck $f.qcow2; done
    must qemu-img compare -q t1.qcow2 ../base.qcow2
    must qemu-img compare -q t3.qcow2 ../base.qcow2
    must qemu-img compare -q t4.qcow2 ../base.qcow2
    qemu-img check --output=json t4.qcow2 | python3 -c 'import json, sys
c = json.load(sys.stdin)["compressed-clusters"]
sys.exit(0 if c == 256 else f"compressed clusters: {c} of 256")' || fail "$d: t4.qcow2 is not compressed throughout"
    cd "$T"
done

step "vbd: kill -9 during a backup"
rm -rf "$T/crash" && mkdir "$T/crash" && cd "$T/crash"
cp ../base.qcow2 src.qcow2
must qemu-img create -q -f qcow2 tgt.qcow2 16M
start vbd
python3 - <<'PY' || fail "crash"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
s = Session("qmp.sock", "vbd")
s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
      file={"driver": "file", "filename": os.getcwd() + "/tgt.qcow2"})
# 1 KiB/s: after its first chunks the job may start one more 1 MiB chunk
# every 1024 s (its budget: the bytes it started over its speed since it
# began), so it is still running at the kill however slow the host; at
# 1 MiB/s it could be done before a starved qemu-io had written
s.run("blockdev-backup", **{"job-id": "b", "device": "src", "target": "tgt", "sync": "full", "speed": 1 << 10})
s.status("b", "created"); s.status("b", "running")
sh("qemu-io -f raw -c 'write -P 0x77 4M 1M' -c 'write -P 0x78 12M 2M' -c flush "
   "'nbd+unix:///disk?socket=nbd.sock'", "writes during the backup")
j = s.job("b")
if not j or j["current-progress"] >= j["total-progress"]:
    fail(f"the backup ended before the kill: {j}")
PY
kill -9 $dpid; wait $dpid 2>/dev/null; dpid=
for f in src tgt; do
    qemu-img check -q $f.qcow2 >check.out 2>&1; rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check $f.qcow2 after kill -9: exit $rc: $(head -5 check.out)"
done
must qemu-io -f qcow2 -c 'read -P 0x77 4M 1M' -c 'read -P 0x78 12M 2M' -c 'read -P 0x55 0 4M' src.qcow2 >/dev/null
echo ok
