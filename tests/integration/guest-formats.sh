#!/bin/bash
# A Linux guest runs its block and filesystem workloads on foreign-format
# disks (vmdk monolithicSparse and streamOptimized-converted, vhdx dynamic)
# that qemu-img made, served by vbd-daemon over vhost-user-blk; afterwards
# qemu-img reads the guest's pattern from the image and checks it clean.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
guest() { "$G/run-guest.sh" --vhost-user "$S" --timeout 300 "$@" || fail "guest: $*"; }

for spec in "vmdk:" "vmdk:subformat=twoGbMaxExtentSparse" "vhdx:" "vhdx:block_size=1M"; do
    fmt=${spec%%:*} o=${spec#*:}
    step "$fmt ${o:-default}: basic and fs workloads over vhost-user-blk"
    img=$T/disk.$fmt
    rm -f "$T"/disk*
    must qemu-img create -q -f "$fmt" ${o:+-o "$o"} "$img" 64M
    start_daemon --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver="$fmt",node-name=disk0,file=file0 \
        --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=disk0,writable=on,num-queues=2"
    # one boot: the fs workload, then the basic one (whose patterns are checked below)
    guest --num-queues 2 --workload "$G/workloads/fs.sh" --workload "$G/workloads/basic.sh" --env VBD_SEED="fmt$fmt"
    stop_daemon
    wait_lock_free "$img"
    qcheck -f "$fmt" "$img"
    must qemu-img convert -f "$fmt" -O raw "$img" "$T/out.raw"
    want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=fmt$fmt; pattern 0 2048" | md5sum)
    got=$(dd if="$T/out.raw" bs=512 count=2048 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "$fmt: the guest's first MiB is not what qemu-img reads from the image"
    want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=fmt$fmt; pattern $((131072 - 2048)) 2048" | md5sum)
    got=$(dd if="$T/out.raw" bs=512 skip=$((131072 - 2048)) count=2048 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "$fmt: the guest's last MiB is not what qemu-img reads from the image"
done
echo ok
