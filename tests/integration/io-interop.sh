#!/bin/bash
# Data written by vbd-io reads back identically through qemu-io and the
# other way round, for each aio mode and cache mode.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
img=$T/disk.raw
for aio in io_uring threads; do
    for cache in writeback writethrough none unsafe; do
        step "aio=$aio cache=$cache"
        must qemu-img create -q -f raw "$img" 16M
        must "$VBD_IO" -f raw -i $aio -t $cache -c 'write -P 0x5a 0 64k' -c 'write -P 0x33 1000 3000' \
            -c 'writev -P 0x44 8M 4k 512 7k' -c 'write -z 12M 1M' -c 'flush' "$img" >/dev/null
        must qemu-io -f raw -c 'read -P 0x5a 0 1000' -c 'read -P 0x33 1000 3000' -c 'read -P 0x5a 4000 61536' \
            -c 'read -P 0x44 8M 11776' -c 'read -P 0 12M 1M' "$img" >"$T/q.out"
        grep -q 'verification failed' "$T/q.out" && fail "qemu-io sees other data than vbd-io wrote ($aio/$cache)"
        must qemu-io -f raw -c 'write -P 0x77 2M 128k' -c 'write -P 0x78 3M 100' "$img" >/dev/null
        must "$VBD_IO" -f raw -i $aio -t $cache -c 'read -P 0x77 2M 128k' -c 'read -P 0x78 3M 100' -c 'read -P 0 3145828 412' "$img" >/dev/null
        # a wrong pattern must be detected (non-zero exit)
        "$VBD_IO" -f raw -i $aio -c 'read -P 0x79 2M 4k' "$img" >/dev/null 2>&1 && fail "vbd-io accepted a wrong pattern"
    done
done
step "aio_write batch + aio_flush"
must qemu-img create -q -f raw "$img" 4M
must "$VBD_IO" -f raw -c 'aio_write -P 1 0 4k' -c 'aio_write -P 2 4k 4k' -c 'aio_write -P 3 1M 64k' -c 'aio_flush' "$img" >/dev/null
must qemu-io -f raw -c 'read -P 1 0 4k' -c 'read -P 2 4k 4k' -c 'read -P 3 1M 64k' "$img" | grep -vq failed
grep -q failed <(qemu-io -f raw -c 'read -P 1 0 4k' -c 'read -P 2 4k 4k' -c 'read -P 3 1M 64k' "$img") && fail "aio writes not on disk"
echo ok
