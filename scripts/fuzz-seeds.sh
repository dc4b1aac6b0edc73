#!/bin/bash
# Seed corpora for the qcow2 and vmdk fuzz targets: small images made by
# qemu-img (qcow2: v2/v3, 512 B to 64 KiB clusters, extended L2,
# compression, a snapshot, a backing name; vmdk: monolithicSparse with and
# without zeroed grains, streamOptimized, a descriptor file). Idempotent.
set -euo pipefail
mkdir -p "$1"
top=$(cd "$1" && pwd)
# vhdx: the target builds a valid image itself; an input is a flags byte
# (1 dirty log, 2/4/8 keep the header/region table/log checksums as
# mutated, 0x10 read-only, 0x20 open for check, 0x40 truncated, 0x80 differencing), then a
# window selector and bytes XORed over the image's structures.
v=$top/fuzz-vhdx
mkdir -p "$v"
for s in 00 01 11 21 40 4100 80 90; do [ -e "$v/seed-$s" ] || printf "$(echo $s | sed 's/../\\x&/g')" >"$v/seed-$s"; done
d=$top/fuzz-qcow2
mkdir -p "$d"
if [ -z "$(ls -A "$d")" ]; then
cd "$d"
qemu-img create -q -f qcow2 v3.qcow2 1M && qemu-io -c "write -P 1 0 64k" -c "write -z 128k 64k" v3.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M && qemu-io -c "write -P 2 4k 4k" v2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 small.qcow2 256k
qemu-io -c "write -P 3 1000 3000" small.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k extl2.qcow2 1M
qemu-io -c "write -P 4 4k 4k" extl2.qcow2 >/dev/null
head -c 200000 /dev/urandom >raw.bin
qemu-img convert -q -c -O qcow2 -f raw raw.bin comp.qcow2 && rm raw.bin
qemu-img snapshot -c s1 v3.qcow2
qemu-img create -q -f qcow2 -b v3.qcow2 -F qcow2 backed.qcow2
fi
d=$top/fuzz-vmdk
mkdir -p "$d"
if [ -z "$(ls -A "$d")" ]; then
    cd "$d"
    qemu-img create -q -f vmdk sparse.vmdk 1M && qemu-io -f vmdk -c "write -P 1 0 64k" -c "write -P 2 300k 5000" sparse.vmdk >/dev/null
    qemu-img create -q -f vmdk -o zeroed_grain=on zg.vmdk 1M && qemu-io -f vmdk -c "write -P 3 0 128k" -c "write -z 0 64k" zg.vmdk >/dev/null
    head -c 200000 /dev/urandom >raw.bin
    qemu-img convert -q -O vmdk -o subformat=streamOptimized -f raw raw.bin stream.vmdk && rm raw.bin
    printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 128 FLAT "x-flat.vmdk" 0\n' >desc.vmdk
fi
