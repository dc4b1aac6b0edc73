#!/bin/bash
# test-timeout: 2700 (run.sh: two guests that may each take --timeout 1200 without KVM)
# Point-in-time copies of a disk a running Linux guest (TCG, vhost-user-blk)
# keeps writing, by blockdev-backup and by fleecing:
#  - a first guest run (QEMU on the image itself) writes a round of
#    patterns and shuts down; the stop marker it needed is cleared and
#    qemu-img convert keeps the image as the point in time (pit.raw);
#  - vbd-daemon serves the image to a second guest through a
#    copy-before-write filter (target: a qcow2 fleecing image whose backing
#    is the source; a snapshot-access node over it is exported read-only
#    over NBD with a disabled in-memory bitmap); before the guest starts, a
#    rate-limited blockdev-backup sync=full to tgt.qcow2 starts;
#  - the guest's pattern writers (until-stopped.sh, another seed) run while
#    the backup copies (its speed limit lifted after two guest rounds) and
#    while nbdcopy reads the fleecing export;
#  - tgt.qcow2 and nbdcopy's copy both equal pit.raw, the guest re-verifies
#    its second-run patterns on the source, qemu-img check is clean on
#    every image.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img qemu-io python3 busybox nbdcopy nbdinfo
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
Q=$T/qmp.sock
N=$T/nbd.sock
SIZE=$((32 << 20))
export VBD_ROOT
stop_guest() { [ -n "${gpid:-}" ] || return 0; kill $(pgrep -P $gpid) $gpid 2>/dev/null; wait $gpid 2>/dev/null; gpid=; }
on_exit 'stop_guest; [ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
cd "$T"
# data everywhere but the guest's regions (the first 2 MiB), so the backup
# has something to copy all along the disk
mixed_disk base.raw $((SIZE >> 20)) 3 10 17 24
must qemu-img convert -q -f raw -O qcow2 base.raw src.qcow2
must qemu-img create -q -f qcow2 tgt.qcow2 $SIZE
must qemu-img create -q -f qcow2 -b "$T/src.qcow2" -F qcow2 fleece.qcow2 $SIZE

step "first guest run: one round of patterns, then shut down"
# the stop marker already in place ends the workload after its first round
must qemu-io -f qcow2 -c "write -P 0x53 $((SIZE - 4096)) 4k" src.qcow2
"$G/run-guest.sh" --image "$T/src.qcow2" --format qcow2 --workload "$G/workloads/until-stopped.sh" --timeout 1200 \
    --env VBD_SEED=first --log "$T/console1.log" >guest1.out 2>&1 || { tail -20 console1.log; fail "first guest run"; }
grep -aq "until-stopped: done after 1 rounds" console1.log || fail "first run: $(tail -3 console1.log)"
must qemu-io -f qcow2 -c "write -z $((SIZE - 4096)) 4k" src.qcow2
# the point in time
must qemu-img convert -q -f qcow2 -O raw src.qcow2 pit.raw
cmp -s pit.raw base.raw && fail "the first guest run changed nothing"

start_daemon --chardev socket,id=m0,path="$Q",server=on,wait=off --monitor chardev=m0 \
    --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$T"'/src.qcow2"}}' \
    --blockdev '{"driver":"qcow2","node-name":"tmp","file":{"driver":"file","filename":"'"$T"'/fleece.qcow2"},"backing":"src"}' \
    --blockdev '{"driver":"copy-before-write","node-name":"cbw","file":"src","target":"tmp"}' \
    --blockdev '{"driver":"snapshot-access","node-name":"fleece","file":"cbw"}' \
    --blockdev '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"'"$T"'/tgt.qcow2"}}' \
    --export "type=vhost-user-blk,id=vu0,node-name=cbw,addr.type=unix,addr.path=$S,writable=on,num-queues=2" \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name=cbw,name=disk,writable=on
: >console.log

step "second guest run: backup and fleecing while it writes"
python3 - "$G" <<'PY' || { gpid=$(cat guest.pid 2>/dev/null); tail -20 console.log; tail -20 daemon.log; fail "see above"; }
import os, re, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
g = sys.argv[1]
s = Session("qmp.sock", "vbd")
s.run("block-dirty-bitmap-add", node="src", name="b0")
s.run("block-dirty-bitmap-disable", node="src", name="b0")
s.run("block-export-add", type="nbd", id="fl", **{"node-name": "fleece"}, name="fleece",
      bitmaps=[{"node": "src", "name": "b0"}])
# 4 KiB/s: it cannot end before the guest's two rounds however slowly they
# run (a TCG guest at load 20 took longer than 256 KiB/s needed for 32 MiB)
s.run("blockdev-backup", **{"job-id": "j1", "device": "src", "target": "tgt", "sync": "full", "speed": 4096})
s.status("j1", "created"); s.status("j1", "running")
guest = subprocess.Popen([g + "/run-guest.sh", "--vhost-user", "vu.sock", "--num-queues", "2",
                          "--workload", g + "/workloads/until-stopped.sh", "--timeout", "1200",
                          "--env", "VBD_SEED=second", "--log", "console.log"],
                         stdout=open("guest.out", "w"), stderr=subprocess.STDOUT)
open("guest.pid", "w").write(str(guest.pid))
def rounds():
    with open("console.log", "rb") as f:
        r = re.findall(rb"vbd: round (\d+) ok", f.read())
    return int(r[-1]) if r else 0
def wait_rounds(n, what):
    want = rounds() + n
    while rounds() < want:
        if guest.poll() is not None:
            fail(f"the guest ended while waiting for its rounds ({what}): exit {guest.returncode}")
        time.sleep(0.1)
wait_rounds(2, "during the backup")
j = s.job("j1")
if not j or j["status"] != "running":
    fail(f"blockdev-backup has ended before two guest rounds: {j}")
s.run("block-job-set-speed", device="j1", speed=0)
s.completed("j1")
r0 = rounds()
sh("nbdcopy 'nbd+unix:///fleece?socket=nbd.sock' during.raw", "nbdcopy of the fleecing export")
wait_rounds(1, "after nbdcopy")
print(f"guest rounds: 2 during the backup, {r0} to {rounds()} around nbdcopy", flush=True)
open("map.txt", "w").write(sh("nbdinfo --map=qemu:dirty-bitmap:b0 'nbd+unix:///fleece?socket=nbd.sock'", "nbdinfo"))
sh("qemu-io -f raw -c 'write -P 0x53 %d 4k' 'nbd+unix:///disk?socket=nbd.sock'" % ((32 << 20) - 4096), "stop marker")
rc = guest.wait()
if rc:
    fail(f"the guest's workload failed (run-guest exit {rc})")
s.run("block-export-del", id="fl")
s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
PY
gpid=
tail -1 guest.out
! tr -d '\r' <console.log | grep -a -E "I/O error|blk_update_request|Buffer I/O" || fail "I/O errors on the guest's console"
grep -aq "until-stopped: done" console.log || fail "the workload did not reach its final check"
# nothing was written before the bitmap was disabled
[ "$(awk '$3 != 0' map.txt)" = "" ] || fail "dirty bitmap b0 not clean: $(cat map.txt)"
stop_daemon
for i in src tgt fleece; do qcheck $i.qcow2; done
must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 pit.raw
must cmp during.raw pit.raw
# the guest's second run did overwrite the disk after the point in time
qemu-img compare -q -f qcow2 -F raw src.qcow2 pit.raw && fail "the source still equals the point in time"
echo ok
