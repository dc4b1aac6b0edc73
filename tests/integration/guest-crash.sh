#!/bin/bash
# Crash consistency with a real guest: a Linux guest writes files with
# fsync on ext4 (journal, mounted -o discard: deleted files free clusters
# of the image) over vhost-user-blk (a qcow2 image, discard=unmap, 2 rings
# on an iothread); at a point picked by the seed (after K files were logged
# durable) vbd-daemon gets SIGKILL, then QEMU: a power cut under the guest.
# Then, each round:
#  - qemu-img check of the qcow2 finds no error (leaks allowed);
#  - vbd-daemon restarted on the image serves it (NBD), and the file system
#    read through it checks clean: e2fsck -p (journal replay, orphans: what
#    a boot does) must meet nothing unexpected, e2fsck -fn after it nothing
#    at all;
#  - every file the guest logged durable (written, fsync'd, synced, then
#    logged) has the content it logged, in every round so far.
# The next round boots on the crashed image (the kernel replays the
# journal). GUEST_CRASH_SEED, GUEST_CRASH_ROUNDS.
# Under KVM a round takes seconds and make check runs it; under TCG (a
# host whose kernel does not boot under KVM) a round takes minutes: make
# check skips it there and `make guest-crash` (VBD_GUEST_CRASH=1) runs it.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox mkfs.ext4 e2fsck debugfs
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
. "$G/accel.sh"
pick_accel || skip "no accelerator for the guest"
[ "$ACCEL" = kvm ] || [ "${VBD_GUEST_CRASH:-0}" = 1 ] ||
    skip "$ACCEL guest ($ACCEL_WHY): minutes a round; make guest-crash runs it"
SEED=${GUEST_CRASH_SEED:-$RANDOM}
ROUNDS=${GUEST_CRASH_ROUNDS:-2}
echo "seed $SEED"
cd "$T"
truncate -s 256M fs.raw
must mkfs.ext4 -q -b 4096 -F fs.raw
must qemu-img convert -q -f raw -O qcow2 fs.raw img.qcow2
rm -f fs.raw
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "${gpid:-}" ] && _vbd_kill_tree $gpid'
: >durable
for round in $(seq 1 "$ROUNDS"); do
    k=$((5 + (SEED * 7 + round * 13) % 25))
    step "round $round: guest writes files with fsync over vhost-user (qcow2, 2 rings on an iothread); SIGKILL after $k durable files"
    S=$T/vu.sock
    start_daemon --object iothread,id=io0 --blockdev "driver=file,node-name=f0,filename=$T/img.qcow2,discard=unmap" \
        --blockdev driver=qcow2,node-name=disk0,file=f0,discard=unmap \
        --export "type=vhost-user-blk,id=v,node-name=disk0,addr.type=unix,addr.path=$S,writable=on,num-queues=2,iothread=io0"
    rm -f console.log
    TMPDIR=$T "$G/run-guest.sh" --vhost-user "$S" --num-queues 2 --workload "$G/workloads/crash.sh" --env VBD_ROUND=$round \
        --timeout 600 --log "$T/console.log" >guest.out 2>&1 &
    gpid=$!
    for _ in $(seq 6000); do
        [ "$(tr -d '\r' 2>/dev/null <console.log | grep -c 'vbd: durable ')" -ge $k ] && break
        kill -0 $gpid 2>/dev/null || break
        sleep 0.05
    done
    [ "$(tr -d '\r' <console.log | grep -c 'vbd: durable ')" -ge $k ] ||
        { cat guest.out; tail -20 console.log; fail "round $round: the guest did not log $k durable files"; }
    kill -9 $dpid
    wait $dpid 2>/dev/null
    dpid=
    ! grep -q Sanitizer daemon.log || { cat daemon.log; fail "round $round: sanitizer report before the kill"; }
    _vbd_kill_tree $gpid
    wait $gpid 2>/dev/null
    gpid=
    ! grep -a "vbd: FAIL" console.log || fail "round $round: the guest failed before the kill"
    tr -d '\r' <console.log | sed -n 's/.*vbd: durable //p' >>durable
    echo "$(tr -d '\r' <console.log | grep -c 'vbd: durable ') files durable this round (killed after $k), $(wc -l <durable) in all"

    wait_lock_free -f qcow2 img.qcow2
    rc=0
    out=$(qemu-img check -f qcow2 img.qcow2 2>&1) || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "round $round: qemu-img check after SIGKILL (exit $rc): $out"

    step "round $round: vbd-daemon restarted; the file system read through it checks clean, every durable file intact"
    S=$T/nbd.sock
    start_daemon --blockdev "driver=file,node-name=f0,filename=$T/img.qcow2" --blockdev driver=qcow2,node-name=disk0,file=f0 \
        --nbd-server "addr.type=unix,addr.path=$S" --export type=nbd,id=n,node-name=disk0,name=disk
    must qemu-img convert -q -f raw -O raw "nbd+unix:///disk?socket=$S" fs.raw
    stop_daemon
    rc=0
    out=$(e2fsck -p fs.raw 2>&1) || rc=$?
    [ $rc -le 1 ] || fail "round $round: e2fsck -p (exit $rc): $out"
    rc=0
    out=$(e2fsck -fn fs.raw 2>&1) || rc=$?
    [ $rc = 0 ] || fail "round $round: e2fsck -fn after the replay (exit $rc): $out"
    rm -rf got && mkdir got
    awk '{ print "dump /" $1 " got/" NR }' durable >dump.cmd
    debugfs -f dump.cmd fs.raw >/dev/null 2>debugfs.err
    python3 - <<'PY' || fail "round $round: durable files lost or changed"
import hashlib, os, sys
bad = 0
for i, line in enumerate(open("durable"), 1):
    name, want = line.split()
    p = f"got/{i}"
    got = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None
    if got != want:
        bad += 1
        print(f"{name}: {'missing' if got is None else 'content differs'}", file=sys.stderr)
print(f"{i - bad} of {i} durable files intact")
sys.exit(1 if bad else 0)
PY
    rm -f fs.raw
done
echo ok
