#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# A Linux guest on a throttled vhost-user-blk disk (issue 14): a throttle
# group with low limits (300 IOPS, 4 MiB/s, bursts off) and a throttle
# filter over a qcow2 image, exported on an iothread with 2 queues. The
# guest's block and filesystem workloads see slow I/O and never an error;
# afterwards qemu-img checks the image clean and reads the guest's pattern.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
guest() { "$G/run-guest.sh" --vhost-user "$S" --timeout 1200 "$@" || fail "guest: $*"; }
img=$T/disk.qcow2
must qemu-img create -q -f qcow2 "$img" 64M
start_daemon --object iothread,id=io0 \
    --object throttle-group,id=g0,limits.iops-total=300,limits.bps-total=4194304 \
    --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=qcow2,node-name=fmt0,file=file0 \
    --blockdev driver=throttle,node-name=disk0,throttle-group=g0,file=fmt0 \
    --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=disk0,writable=on,num-queues=2,iothread=io0"
step "one boot: the fs workload, then the basic one (patterns) through the throttle filter"
guest --num-queues 2 --workload "$G/workloads/fs.sh" --workload "$G/workloads/basic.sh" --env VBD_SEED=thr
stop_daemon
! grep -qi "error\|Sanitizer" "$T/daemon.log" || fail "daemon log: $(cat "$T/daemon.log")"
wait_lock_free "$img"
qcheck "$img"
must qemu-img convert -f qcow2 -O raw "$img" "$T/out.raw"
want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=thr; pattern 0 2048" | md5sum)
got=$(dd if="$T/out.raw" bs=512 count=2048 2>/dev/null | md5sum)
[ "$want" = "$got" ] || fail "the guest's first MiB is not what qemu-img reads from the image"
echo ok
