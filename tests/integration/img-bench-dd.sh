#!/bin/bash
# vbd-img bench writes what it says (checked by qemu-io), with both aio
# modes; vbd-img dd produces the same file as qemu-img dd.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
img=$T/b.raw
qemu-img create -q -f raw "$img" 16M
for aio in io_uring threads; do
    step "bench -w -i $aio"
    must "$VBD_IMG" bench -w -c 1000 -d 16 -s 4k -i $aio --pattern=0x5e --flush-interval=100 -f raw "$img" >"$T/o"
    grep -q "^Sending 1000 write requests, 4096 bytes each, 16 in parallel (starting at offset 0, step size 4096)" "$T/o" || fail "bench header: $(cat "$T/o")"
    grep -q "^Run completed in" "$T/o" || fail "bench summary missing"
    qemu-io -f raw -c "read -P 0x5e 0 4000k" -c 'read -P 0 4000k 4k' "$img" | grep -q failed && fail "bench did not write its pattern"
    must "$VBD_IMG" bench -c 2000 -d 32 -i $aio -t none -f raw "$img" >/dev/null
done
# On tmpfs, writes of 256 KiB and more take their own path (io_uring's
# kernel workers instead of the thread pool, with or without O_DIRECT):
# every 1 MiB request at QD4 must land where bench says, with its pattern.
if [ -d /dev/shm ] && [ "$(stat -f -c %T /dev/shm)" = tmpfs ]; then
    shm=$(mktemp -d /dev/shm/vbd-test.XXXXXX)
    on_exit "rm -rf '$shm'"
    qemu-img create -q -f raw "$shm/b.raw" 64M
    for aio in io_uring threads; do
        for cache in writeback none; do
            step "bench -w 1M -i $aio -t $cache on tmpfs"
            qemu-io -f raw -c 'write -P 0x11 0 64M' "$shm/b.raw" >/dev/null
            must "$VBD_IMG" bench -w -c 40 -d 4 -s 1M -S 1M -o 8M -i $aio -t $cache --pattern=0x6b -f raw "$shm/b.raw" >/dev/null
            qemu-io -f raw -c 'read -P 0x11 0 8M' -c 'read -P 0x6b 8M 40M' -c 'read -P 0x11 48M 16M' "$shm/b.raw" |
                grep -q -i -E 'failed|error' && fail "bench 1M -i $aio -t $cache on tmpfs: wrong data"
        done
    done
fi
step "dd"
qemu-io -f raw -c 'write -P 9 0 16M' "$img" >/dev/null
must "$VBD_IMG" dd -f raw -O raw bs=64k count=3 skip=2 if="$img" of="$T/v.raw"
qemu-img dd -f raw -O raw bs=64k count=3 skip=2 if="$img" of="$T/q.raw"
cmp "$T/v.raw" "$T/q.raw" || fail "dd output differs from qemu-img dd"
echo ok
