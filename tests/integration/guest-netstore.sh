#!/bin/bash
# A Linux guest runs its filesystem and block workloads on networked disks:
# an rbd image on a throwaway single-node Ceph cluster (lib-ceph.sh) and an
# iSCSI LUN of a private tgtd (lib-tgt.sh), each opened by vbd-daemon's
# own driver (discard=unmap: the guest's fstrim and blkdiscard reach the
# cluster and the target) and served over vhost-user-blk with 2 queues. Afterwards
# QEMU's rbd and iscsi drivers (qemu-block-extra) read the image and the
# guest's patterns must be there: what the guest saw acknowledged is what
# another client of the cluster or target reads.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || skip "qemu-block-extra (QEMU's rbd driver) not installed"
qemu-img --help | grep -q 'Supported formats:.* iscsi' || skip "QEMU's iscsi driver (qemu-block-extra) is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
. "$(dirname "$0")/lib-ceph.sh"
. "$(dirname "$0")/lib-tgt.sh"
G=$VBD_ROOT/tests/guest
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
guest() { "$G/run-guest.sh" --vhost-user "$S" --timeout 300 "$@" | tee "$T/guest.out"; [ "${PIPESTATUS[0]}" = 0 ] || fail "guest: $*"; }
size=$((64 << 20))
sectors=$((size / 512))

# check_patterns NAME RAW SEED: the patterns the basic workload wrote with
# SEED are in RAW (a copy QEMU's driver made): the first and last MiB, and
# the middle MiB around the 512 KiB the guest discarded 64 KiB into it
check_patterns() {
    local name=$1 raw=$2 seed=$3 mid=$((sectors / 2)) first count want got
    for r in "0 2048" "$((sectors - 2048)) 2048" "$mid 128" "$((mid + 1152)) 896"; do
        read -r first count <<<"$r"
        want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=$seed; pattern $first $count" | md5sum)
        got=$(dd if="$raw" bs=512 skip=$first count=$count 2>/dev/null | md5sum)
        [ "$want" = "$got" ] || fail "$name: the guest's $count sectors at $first are not what QEMU's driver reads"
    done
}

# run_workloads NAME SEED QEMU-FILENAME: fs then basic, on the export at
# $S; between them QEMU's driver reads the guest's ext4 and e2fsck finds it
# clean (the daemon keeps serving: QEMU opens the image read-only beside it)
run_workloads() {
    step "$1: the fs workload (ext4, 2 queues) on the vhost-user-blk export"
    guest --num-queues 2 --workload "$G/workloads/fs.sh"
    grep -q "fstrim done" "$T/guest.out" || fail "$1: the guest saw no discard support (fstrim not run)"
    must qemu-img convert -U -f raw -O raw "$3" "$T/fs.raw"
    e2fsck -fn "$T/fs.raw" >"$T/fsck.log" 2>&1 || fail "$1: e2fsck of the guest's ext4 read by QEMU's driver: $(tail -5 "$T/fsck.log")"
    rm -f "$T/fs.raw"
    step "$1: the basic workload (patterns, O_DIRECT, parallel writers, flush, discard)"
    guest --num-queues 2 --workload "$G/workloads/basic.sh" --env VBD_SEED="$2"
    grep -q "discard kept its neighbours" "$T/guest.out" || fail "$1: the guest's blkdiscard was not checked"
}

step "rbd: a single-node Ceph cluster, a 64 MiB image, vbd-daemon's rbd driver"
ceph_start
C=$CEPH_CONF
must timeout 60 rbd -c "$C" create --size 64M guest
start_daemon --blockdev "driver=rbd,node-name=r0,pool=rbd,image=guest,conf=$C,cache.direct=on,discard=unmap" \
    --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=r0,writable=on,num-queues=2"
run_workloads rbd netrbd "rbd:rbd/guest:conf=$C"
stop_daemon
must qemu-img convert -f raw -O raw "rbd:rbd/guest:conf=$C" "$T/rbd.raw"
check_patterns rbd "$T/rbd.raw" netrbd
rm -f "$T/rbd.raw"
ceph_stop

step "iscsi: tgtd with a 64 MiB file-backed thin LUN, vbd-daemon's iscsi driver"
truncate -s $size "$T/lun.img"
tgt_start "$T/lun.img"
start_daemon --blockdev "driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1,discard=unmap" \
    --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=i0,writable=on,num-queues=2"
run_workloads iscsi netiscsi "$TGT_URL"
stop_daemon
must qemu-img convert -f raw -O raw "$TGT_URL" "$T/iscsi.raw"
check_patterns iscsi "$T/iscsi.raw" netiscsi
cmp "$T/iscsi.raw" "$T/lun.img" || fail "iscsi: QEMU's driver reads the LUN differently from its backing file"
echo ok
