#!/bin/bash
# A 1 GiB copy through the nbd client: vbd-img convert from a qemu-nbd URI
# to a local raw file must equal the source byte for byte and keep its
# holes. qemu-img convert of the same URI runs too, as the yardstick: both
# times are printed (not asserted: the machine decides them).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-nbd cmp
cd "$T"
qemu-img create -q -f raw src.raw 1G
# random data (an offset mix-up cannot go unnoticed) with two holes between
head -c 512M /dev/urandom | dd of=src.raw bs=1M conv=notrunc status=none
head -c 256M /dev/urandom | dd of=src.raw bs=1M seek=640 conv=notrunc status=none
qemu-nbd -f raw -r -t -k "$T/s.sock" src.raw 2>qn.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
for _ in $(seq 1200); do [ -S s.sock ] && break; sleep 0.05; done
U="nbd+unix:///?socket=$T/s.sock"

ms() { echo $(($(date +%s%N) / 1000000)); }
step "vbd-img convert -O raw $U (1 GiB, 768 MiB of data)"
t0=$(ms)
must "$VBD_IMG" convert -f raw -O raw "$U" vbd.raw
t1=$(ms)
cmp vbd.raw src.raw || fail "the copy through NBD differs from the source"
[ "$(du -m vbd.raw | cut -f1)" -lt 800 ] || fail "the copy through NBD lost the holes ($(du -m vbd.raw | cut -f1) MiB)"
rm -f vbd.raw

step "qemu-img convert of the same URI"
t2=$(ms)
must qemu-img convert -f raw -O raw "$U" qemu.raw
t3=$(ms)
cmp qemu.raw src.raw || fail "qemu-img's copy differs (the server is broken?)"
echo "1 GiB over NBD: vbd-img $((t1 - t0)) ms, qemu-img $((t3 - t2)) ms"
echo ok
