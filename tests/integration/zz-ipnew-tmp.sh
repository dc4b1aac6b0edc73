#!/bin/bash
# vbd-img beside qemu-img, verb by verb: the same command line run by both
# tools, each in its own copy of the same images, must give the same exit
# code, the same stdout and the same stderr (the tool's name aside), and
# leave the same files behind (nothing written by a command that fails).
# Covers what a script sees that the verbs' own tests do not: bad command
# lines (unknown options, missing arguments, missing file names), size
# arguments qemu-img rejects, dd's operands.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
mkdir base
must qemu-img create -q -f qcow2 base/a.qcow2 64M
must qemu-img create -q -f raw base/a.raw 64M
must qemu-io -f qcow2 -c 'write -P 1 0 1M' base/a.qcow2 >/dev/null
must qemu-io -f raw -c 'write -P 1 0 1M' base/a.raw >/dev/null
must qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 base/o.qcow2
must qemu-img create -q -f qcow2 base/b.qcow2 64M
must qemu-io -f qcow2 -c 'write -P 7 0 512k' base/b.qcow2 >/dev/null
must qemu-img create -q -f qcow2 base/s.qcow2 64M
must qemu-img snapshot -c s base/s.qcow2
must qemu-img create -q -f qcow2 -o compat=0.10 base/v2.qcow2 64M
must qemu-img create -q -f qcow2 -o extended_l2=on base/x.qcow2 64M
must qemu-img create -q -f qcow2 base/bm.qcow2 3G
must qemu-img bitmap --add -g 512 base/bm.qcow2 a_longer_bitmap_name
must qemu-img bitmap --add -g 4M base/bm.qcow2 b
must qemu-img bitmap --add --disable base/bm.qcow2 c
# a raw image whose size is not a multiple of 512 (QEMU counts whole sectors)
head -c 196616 /dev/urandom >base/odd.raw

# same ARGS...: both tools run ARGS in fresh copies of base/ (lib.sh)
same() {
    tools_run qemu-img "$VBD_IMG" "$@"
    tools_same "$@"
}

step "convert: -r, -C, --salvage, -T and qemu-img's checks around them, in its order"
same convert -O raw -r 1G a.qcow2 n.raw
same convert -O raw -r x a.qcow2 n.raw
same convert -O raw -r 99E a.qcow2 n.raw
same convert -C -O qcow2 a.qcow2 n.qcow2
same convert -C -S 4k -O raw a.qcow2 n.raw
same convert -C -c -O qcow2 a.qcow2 n.qcow2
same convert -C --salvage -O raw a.qcow2 n.raw
same convert --salvage -O raw a.qcow2 n.raw
same convert -T bogus -O raw a.qcow2 n.raw
same convert -n -o cluster_size=4k -O qcow2 nosuch n.qcow2
same convert -n -o help -O qcow2 a.qcow2 b.qcow2
same convert -n -f raw -O raw a.raw odd.raw
same convert -c -O qcow2 -o preallocation=metadata a.qcow2 n.qcow2
same convert -O qcow2 -B a.qcow2 -F qcow2 a.qcow2 b.qcow2 n.qcow2
# qemu-img 7.2 reports it and exits 0
same convert -n --target-is-zero -B a.qcow2 -F qcow2 -O raw a.qcow2 a.raw
same convert -O raw -B a.raw -F raw a.qcow2 n.raw
same convert -O bochs a.qcow2 n.bochs
same convert -O qcow2 a.qcow2 a.qcow2
same dd -O raw if=a.qcow2 of=a.qcow2
same create -f bochs n.bochs 1M
same dd -O bochs if=a.qcow2 of=n.bochs
same dd -O bogus if=a.qcow2 of=n.raw
same dd --image-opts if=driver=qcow2,file.filename=a.qcow2 of=n.raw bs=64k count=2
same dd if=a.raw of=n.raw bs=0x200 count=2
# -C copies what the source calls data byte for byte (no zero detection), holes stay holes
dd if=/dev/zero of=base/z.raw bs=64k count=4 status=none
head -c 64k /dev/urandom | dd of=base/z.raw bs=64k seek=1 conv=notrunc status=none
truncate -s 1M base/z.raw
for f in raw qcow2; do
    same convert -C -f raw -O $f z.raw n.$f
    diff <(qemu-img map --output=json -f $f q/n.$f | sed 's/, "offset": [0-9]*//') \
         <(qemu-img map --output=json -f $f v/n.$f | sed 's/, "offset": [0-9]*//') || fail "convert -C -O $f: map differs"
done
rm base/z.raw
# --salvage: a sector that cannot be read is zeroes, with qemu-img's warning
bd="driver=raw,file.driver=blkdebug,file.image.filename=a.raw,file.inject-error.0.event=read_aio,file.inject-error.0.sector=8"
for s in --salvage '--salvage -q' ''; do
    same convert $s -O raw --image-opts "$bd" n.raw
    [ -z "$s" ] || cmp q/n.raw v/n.raw || fail "convert $s: the targets differ"
done

step "sizes as qemu_strtosz reads them (hex, out of range)"
same create -f raw n.raw 0x100000
same create -f raw n.raw 8E
same create -f raw n.raw 0x1k
same create -f raw n.raw 18446744073709551616
same map -s x a.raw
same map -l 99E a.raw
same map -s 0x3ff0000 --output=json -f raw a.raw
same resize -f raw a.raw 16E
same resize -f raw a.raw +0x1k
# the file driver takes off, falloc and full only (metadata resized a raw image); the mode checked first
same resize --preallocation=metadata -f raw a.raw 128M
same resize --preallocation=bogus nosuch 128M
same bitmap --add -g 99E a.qcow2 z
same convert -S 99E -O raw a.qcow2 n.raw
same convert -S x -O raw a.qcow2 n.raw
same measure --size 0x100000 -O qcow2

step "-o read as QemuOpts (qemu-img's parse before its Formatting line), the drivers' words after it"
for o in cluster_size=64k,cluster_size=4k nolazy_refcounts lazy_refcounts=y lazy_refcounts=1 cluster_size=bogus \
         cluster_size=16E cluster_size=0x10000 refcount_bits=x refcount_bits=99999999999999999999 refcount_bits=0x10 \
         'cluster_size=4k,' 'cluster_size=4k,,x' id=x =4k cluster_size=x,bogus=1 bogus=1,cluster_size=x \
         preallocation=bogus compat=bogus compression_type=bogus; do
    same create -f qcow2 -o "$o" n.qcow2 1M
done
same create -f raw -o preallocation=bogus n.raw 1M
same create -f vdi -o static=yes n.vdi 1M
same create -f qed -o table_size=x n.qed 1M
same convert -O qcow2 -o preallocation=bogus a.qcow2 n.qcow2
same convert -O qcow2 -o lazy_refcounts=bogus a.qcow2 n.qcow2
same measure -O qcow2 -o refcount_bits=x a.qcow2
same measure -O raw -o preallocation=bogus a.qcow2
same amend -o lazy_refcounts=on,lazy_refcounts=off a.qcow2
same amend -o lazy_refcounts=bogus a.qcow2

step "snapshot: a name may repeat (ids differ); -d finds the snapshot by its name alone"
snaps() { qemu-img snapshot -l "$1" | awk 'NR > 2 { print $1, $2 }'; }
for args in "-c s" "-d 1" "-d s"; do
    same snapshot $args s.qcow2
    [ "$(snaps q/s.qcow2)" = "$(snaps v/s.qcow2)" ] || fail "snapshot $args: the snapshots differ"
done

echo PASS
