#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# A Linux guest runs its block and filesystem workloads on foreign-format
# disks (vmdk monolithicSparse and streamOptimized-converted, vhdx dynamic)
# that qemu-img made, served by vbd-daemon over vhost-user-blk; afterwards
# qemu-img reads the guest's pattern from the image and checks it clean.
# One boot: a disk per format, each served by a vbd-daemon of its own, the
# disks' workloads side by side.
# test-timeout: 2400 (run.sh: its guest may take --timeout 2000 without KVM)
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"

specs="vmdk: vmdk:subformat=twoGbMaxExtentSparse vhdx: vhdx:block_size=1M"
args=() i=0
for spec in $specs; do
    fmt=${spec%%:*} o=${spec#*:} n=f$i
    img=$T/$n/disk.$fmt
    mkdir "$T/$n"
    must qemu-img create -q -f "$fmt" ${o:+-o "$o"} "$img" 64M
    start_named $n --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver="$fmt",node-name=disk0,file=file0 \
        --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$T/$n.sock,node-name=disk0,writable=on,num-queues=2"
    # on its disk: the fs workload, then the basic one (whose patterns are checked below)
    args+=(--vhost-user "$T/$n.sock" --num-queues 2 --workload "$G/workloads/fs.sh" --workload "$G/workloads/basic.sh"
           --env VBD_SEED="fmt$n")
    i=$((i + 1))
done
step "one boot, a disk per format ($specs): basic and fs workloads over vhost-user-blk"
"$G/run-guest.sh" "${args[@]}" --parallel --timeout 2000 || fail "guest"
i=0
for spec in $specs; do
    fmt=${spec%%:*} o=${spec#*:} n=f$i
    img=$T/$n/disk.$fmt
    step "$fmt ${o:-default}: qemu-img check clean, qemu-img reads the guest's patterns"
    stop_named $n
    wait_lock_free "$img"
    qcheck -f "$fmt" "$img"
    must qemu-img convert -f "$fmt" -O raw "$img" "$T/out.raw"
    want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=fmt$n; pattern 0 2048" | md5sum)
    got=$(dd if="$T/out.raw" bs=512 count=2048 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "$fmt: the guest's first MiB is not what qemu-img reads from the image"
    want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=fmt$n; pattern $((131072 - 2048)) 2048" | md5sum)
    got=$(dd if="$T/out.raw" bs=512 skip=$((131072 - 2048)) count=2048 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "$fmt: the guest's last MiB is not what qemu-img reads from the image"
    rm -f "$T/out.raw"
    i=$((i + 1))
done
echo ok
