#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# A Linux guest runs its filesystem and block workloads on networked disks:
# an rbd image on a throwaway single-node Ceph cluster (lib-ceph.sh) and an
# iSCSI LUN of a private tgtd (lib-tgt.sh), each opened by vbd-daemon's
# own driver (discard=unmap: the guest's fstrim and blkdiscard reach the
# cluster and the target) and served over vhost-user-blk with 2 queues. Afterwards
# QEMU's rbd and iscsi drivers (qemu-block-extra) read the image and the
# guest's patterns must be there: what the guest saw acknowledged is what
# another client of the cluster or target reads. One boot: four disks, the
# fs and the basic workload each on an rbd image and an iSCSI LUN of their own.
# test-timeout: 2400 (run.sh: its guest and the Ceph cluster may take --timeout 2000)
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || skip "qemu-block-extra (QEMU's rbd driver) not installed"
qemu-img --help | grep -q 'Supported formats:.* iscsi' || skip "QEMU's iscsi driver (qemu-block-extra) is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
. "$(dirname "$0")/lib-ceph.sh"
. "$(dirname "$0")/lib-tgt.sh"
G=$VBD_ROOT/tests/guest
vu() { echo "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$T/$1.sock,node-name=$2,writable=on,num-queues=2"; }
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

step "rbd: a single-node Ceph cluster, two 64 MiB images, vbd-daemon's rbd driver"
ceph_start
C=$CEPH_CONF
for n in fs basic; do
    must timeout 60 rbd -c "$C" create --size 64M guest-$n
    start_named rbd-$n --blockdev "driver=rbd,node-name=r0,pool=rbd,image=guest-$n,conf=$C,cache.direct=on,discard=unmap" \
        --export "$(vu rbd-$n r0)"
done
step "iscsi: tgtd with two 64 MiB file-backed thin LUNs, vbd-daemon's iscsi driver"
truncate -s $size "$T/lun-fs.img" "$T/lun-basic.img"
tgt_start "$T/lun-fs.img"
tgt_adm --op new --mode logicalunit --tid 1 --lun 2 -b "$T/lun-basic.img" --bstype rdwr &&
    tgt_adm --op update --mode logicalunit --tid 1 --lun 2 --params thin_provisioning=1 || fail "tgtadm: LUN 2"
url_fs=$TGT_URL url_basic=${TGT_URL%/1}/2
for n in fs basic; do
    lun=1; [ $n = basic ] && lun=2
    start_named iscsi-$n --blockdev "driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=$lun,discard=unmap" \
        --export "$(vu iscsi-$n i0)"
done

# disk0 rbd fs, disk1 rbd basic, disk2 iscsi fs, disk3 iscsi basic
step "one boot: the fs workload (ext4, 2 queues) and the basic workload (patterns, O_DIRECT, parallel writers, flush, discard) on each"
"$G/run-guest.sh" --timeout 2000 \
    --vhost-user "$T/rbd-fs.sock" --num-queues 2 --workload "$G/workloads/fs.sh" \
    --vhost-user "$T/rbd-basic.sock" --num-queues 2 --workload "$G/workloads/basic.sh" --env VBD_SEED=netrbd \
    --vhost-user "$T/iscsi-fs.sock" --num-queues 2 --workload "$G/workloads/fs.sh" \
    --vhost-user "$T/iscsi-basic.sock" --num-queues 2 --workload "$G/workloads/basic.sh" --env VBD_SEED=netiscsi |
    tee "$T/guest.out"
[ "${PIPESTATUS[0]}" = 0 ] || fail "guest"

# fs_checks NAME TAG QEMU-FILENAME: the guest saw discard support, and QEMU's driver
# reads the guest's ext4 clean (while the daemon keeps serving: QEMU opens the image read-only beside it)
fs_checks() {
    step "$1: the guest's fstrim ran, e2fsck of its ext4 read by QEMU's driver is clean"
    grep -q "$2: fstrim done" "$T/guest.out" || fail "$1: the guest saw no discard support (fstrim not run)"
    must qemu-img convert -U -f raw -O raw "$3" "$T/fs.raw"
    e2fsck -fn "$T/fs.raw" >"$T/fsck.log" 2>&1 || fail "$1: e2fsck of the guest's ext4 read by QEMU's driver: $(tail -5 "$T/fsck.log")"
    rm -f "$T/fs.raw"
}
fs_checks rbd disk0 "rbd:rbd/guest-fs:conf=$C"
fs_checks iscsi disk2 "$url_fs"
grep -q "disk1: discard kept its neighbours" "$T/guest.out" || fail "rbd: the guest's blkdiscard was not checked"
grep -q "disk3: discard kept its neighbours" "$T/guest.out" || fail "iscsi: the guest's blkdiscard was not checked"
for n in rbd-fs rbd-basic iscsi-fs iscsi-basic; do stop_named $n; done

step "rbd: QEMU's driver reads the guest's patterns"
must qemu-img convert -f raw -O raw "rbd:rbd/guest-basic:conf=$C" "$T/rbd.raw"
check_patterns rbd "$T/rbd.raw" netrbd
rm -f "$T/rbd.raw"
ceph_stop
step "iscsi: QEMU's driver reads the guest's patterns and what the LUNs' files hold"
must qemu-img convert -f raw -O raw "$url_basic" "$T/iscsi.raw"
check_patterns iscsi "$T/iscsi.raw" netiscsi
cmp "$T/iscsi.raw" "$T/lun-basic.img" || fail "iscsi: QEMU's driver reads the LUN differently from its backing file"
must qemu-img convert -f raw -O raw "$url_fs" "$T/iscsi.raw"
cmp "$T/iscsi.raw" "$T/lun-fs.img" || fail "iscsi: QEMU's driver reads the fs LUN differently from its backing file"
echo ok
