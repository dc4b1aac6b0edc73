#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# Block jobs under a running Linux guest (TCG, vhost-user-blk, 2 queues):
# the guest's pattern writers (tests/guest/workloads/until-stopped.sh:
# rounds of O_DIRECT writes, each read back) run while, one after the other,
#  1. block-stream pulls base.qcow2 into the exported top.qcow2 and drops it;
#  2. blockdev-snapshot-sync puts ov.qcow2 on top, and an active
#     block-commit merges it back into top.qcow2: READY, job-complete moves
#     the export to top;
#  3. blockdev-mirror sync=full copies top to tgt.qcow2: READY,
#     job-complete moves the export to tgt.
# Each job is rate-limited so that guest rounds complete while it copies
# (checked: the round count grows during each job). Then the host writes
# the stop marker over NBD (the NBD export follows every pivot), the guest
# re-verifies every region on the final image, and qemu-img check is clean
# on every image; tgt.qcow2 holds what the exports read at the end.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img qemu-io python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
Q=$T/qmp.sock
N=$T/nbd.sock
export VBD_ROOT
stop_guest() { [ -n "${gpid:-}" ] || return 0; kill $(pgrep -P $gpid) $gpid 2>/dev/null; wait $gpid 2>/dev/null; gpid=; }
on_exit 'stop_guest; [ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
cd "$T"
# a base with data everywhere but the guest's regions (the first 2 MiB),
# and an empty overlay
mixed_disk base.raw 64 12 24 36 48
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
must qemu-img create -q -f qcow2 tgt.qcow2 64M

start_daemon --chardev socket,id=m0,path="$Q",server=on,wait=off --monitor chardev=m0 \
    --blockdev '{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"'"$T"'/base.qcow2"},"backing":null}' \
    --blockdev '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"'"$T"'/top.qcow2"},"backing":"base"}' \
    --export "type=vhost-user-blk,id=vu0,node-name=top,addr.type=unix,addr.path=$S,writable=on,num-queues=2" \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name=top,name=disk,writable=on
: >console.log
gpid=
"$G/run-guest.sh" --vhost-user "$S" --num-queues 2 --workload "$G/workloads/until-stopped.sh" --timeout 1200 \
    --env VBD_SEED=jobs --log "$T/console.log" >guest.out 2>&1 &
gpid=$!

python3 - "$gpid" <<'PY' || { tail -20 console.log; tail -20 daemon.log; fail "see above"; }
import os, re, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
guest = int(sys.argv[1])
s = Session("qmp.sock", "vbd")
def rounds():
    with open("console.log", "rb") as f:
        r = re.findall(rb"vbd: round (\d+) ok", f.read())
    return int(r[-1]) if r else 0
def wait_rounds(n, what):
    """the guest completes n more rounds (polling its console)"""
    want = rounds() + n
    while rounds() < want:
        try:
            os.kill(guest, 0)
        except OSError:
            fail(f"the guest ended while waiting for its rounds ({what})")
        time.sleep(0.1)
def during(jid, what, ready):
    """the job runs while the guest completes rounds, then reaches its end (or READY)"""
    s.status(jid, "created"); s.status(jid, "running")
    r0 = rounds()
    wait_rounds(2, what)
    j = s.job(jid)
    if not j or j["status"] not in (("running", "ready") if ready else ("running",)):
        fail(f"{what}: the job has ended before two guest rounds: {j}")
    s.run("block-job-set-speed", device=jid, speed=0)
    if ready:
        s.status(jid, "ready")
        wait_rounds(1, what + " in READY")
        s.run("job-complete", id=jid)
    s.completed(jid)
    print(f"{what}: guest rounds {r0} to {rounds()} during the job", flush=True)

wait_rounds(2, "start")
s.run("block-stream", **{"job-id": "j1", "device": "top", "speed": 256 << 10})
during("j1", "block-stream", False)
s.run("blockdev-snapshot-sync", **{"node-name": "top", "snapshot-file": os.path.abspath("ov.qcow2"),
                                   "snapshot-node-name": "ov", "format": "qcow2"})
wait_rounds(2, "on the overlay")
s.run("block-commit", **{"job-id": "j2", "device": "ov", "speed": 256 << 10})
during("j2", "active block-commit", True)
s.gone("ov")  # the committed layer closes with its last user (the export moved down): top is a root again
s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
      file={"driver": "file", "filename": os.path.abspath("tgt.qcow2")})
s.run("blockdev-mirror", **{"job-id": "j3", "device": "top", "target": "tgt", "sync": "full", "speed": 256 << 10})
during("j3", "blockdev-mirror", True)
wait_rounds(2, "on the mirror's target")
s.run("blockdev-del", **{"node-name": "top"})
s.run("blockdev-del", **{"node-name": "base"})
sh("qemu-io -f raw -c 'write -P 0x53 %d 4k' 'nbd+unix:///disk?socket=nbd.sock'" % ((64 << 20) - 4096), "stop marker")
PY
step "the guest's workload ends: every region re-verified on the final image"
wait $gpid; grc=$?
gpid=
tail -1 guest.out
[ $grc = 0 ] || { tail -20 console.log; fail "the guest's workload failed (run-guest exit $grc)"; }
! tr -d '\r' <console.log | grep -a -E "I/O error|blk_update_request|Buffer I/O" || fail "I/O errors on the guest's console"
grep -aq "until-stopped: done" console.log || fail "the workload did not reach its final check"
must qemu-img convert -q -f raw -O raw "nbd+unix:///disk?socket=$N" final.raw
stop_daemon
for i in base top ov tgt; do qcheck $i.qcow2; done
must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 final.raw
qemu-img info tgt.qcow2 | grep -q "^backing file" && fail "tgt.qcow2 has a backing file"
# what the guest did not touch is the base's data, carried through all three jobs
must cmp -s -i 4M:4M -n 56M final.raw base.raw
echo ok
