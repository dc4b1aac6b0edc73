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

step "unknown options, options without their argument (every verb)"
same info -z a.qcow2
same check --output
same compare --strict a.raw a.qcow2
same map -s
same create -f
same convert -O
same bench -c
same dd -Z
same amend -o
same bitmap --bogus a.qcow2 b0
same resize --bogus a.raw 1G
same snapshot -x a.qcow2
same rebase -b
same commit -b

step "file names missing or too many"
for v in info check snapshot map commit bench rebase compare create amend resize convert dd measure bitmap; do
    same $v
done
same snapshot -l
same rebase -b x
same rebase a.qcow2
same bitmap a.qcow2
same resize a.qcow2
same convert a.qcow2
same amend -o lazy_refcounts=on
same measure -O qcow2
same measure a.raw a.qcow2
same compare a.raw
same info a.raw a.qcow2
same snapshot -l a.qcow2 o.qcow2
same map a.raw a.qcow2
same commit o.qcow2 a.qcow2
same check a.raw a.qcow2
same resize a.raw 1G 2G
same create -f raw n.raw 1M 2M
same convert -O raw a.raw
same snapshot -l -c s1 a.qcow2
same dd if=a.raw

step "a file that is not there: qemu-img's 'Could not open' twice, every verb"
for v in info check map commit bench snapshot; do
    same $v nosuch
done
same compare a.raw nosuch
same convert nosuch n.raw
same dd if=nosuch of=n.raw
same resize nosuch 1G
same amend -o lazy_refcounts=on nosuch
same measure -O qcow2 nosuch
same bitmap --add nosuch b0
same rebase -b nosuch -F raw o.qcow2
same info --image-opts driver=file,filename=nosuch
same info --image-opts driver=qcow2,file.driver=file,file.filename=nosuch
same info --image-opts driver=file
same info --image-opts driver=qcow2,file.driver=file
# --image-opts is a QemuOpts string, first name implied "file": a bare first
# word names a node (none in a tool), later bare words are flags (deprecated)
for v in info map check; do
    same $v --image-opts a.qcow2
done
same info --image-opts on
same info --image-opts 'a,,b'
same info --image-opts a.qcow2,file.driver=file
same info --image-opts file=a.qcow2
same info --image-opts driver=qcow2,file=a.qcow2
same info --image-opts driver=qcow2,file.filename=a.qcow2,foo
same info --image-opts driver=qcow2,file.filename=a.qcow2,nofoo
same info --image-opts driver=raw,file.filename=a.raw,bogus=1
same info --image-opts ''
same compare --image-opts a.qcow2 driver=qcow2,file.filename=a.qcow2
same compare --image-opts driver=qcow2,file.filename=a.qcow2 a.qcow2
same convert --image-opts a.qcow2 -O raw n.raw
same info -f qcow2 a.raw
same info -f vmdk a.qcow2

step "snapshot: no action does nothing; qemu-img's messages"
same snapshot a.qcow2
same snapshot s.qcow2
same snapshot -c s1 a.qcow2
same snapshot -a nos s.qcow2
same snapshot -d nos s.qcow2
same snapshot -l a.raw
same snapshot -c s a.raw
same snapshot -d s a.raw

step "rebase: a new backing file needs its format (-F), in safe and unsafe mode"
same rebase -b a.raw o.qcow2
same rebase -u -b a.raw o.qcow2
same rebase -b b.qcow2 o.qcow2
same rebase -b nosuch o.qcow2
same rebase -b nosuch -F qcow2 o.qcow2
same rebase -u -b nosuch o.qcow2
same rebase -b b.qcow2 -F qcow2 o.qcow2
must qemu-img compare -q q/o.qcow2 v/o.qcow2
same rebase -u -b b.qcow2 -F qcow2 o.qcow2
same rebase -f raw -b b.qcow2 -F qcow2 a.raw

step "a raw image probed for a write: qemu-img's warning"
same resize a.raw 128M
same rebase -b b.qcow2 -F qcow2 a.raw

step "bad sizes"
same measure -O qcow2 --size 1Q
same resize a.qcow2 1Q
same resize -f raw a.raw 12x

step "create: the Formatting line (QEMU's option order, defaults, values as parsed), the checks before it"
same create -f qcow2 n.qcow2 1G
same create -f qcow2 n.qcow2 100
same create -f raw -o preallocation=falloc n.raw 100
for f in raw qcow2 vmdk vpc vhdx vdi qed parallels; do
    same create -f $f n.$f 1M
done
same create -f qcow2 -o cluster_size=4k,extended_l2=on,preallocation=metadata,compat=1.1,data_file=d,data_file_raw=on,lazy_refcounts=on,refcount_bits=8,compression_type=zlib n.qcow2 1M
same create -f qcow2 -o cluster_size=64k,lazy_refcounts=true,compat=v3 n.qcow2 1.5M
same create -f qcow2 -o size=2M n.qcow2
same create -f vmdk -o adapter_type=lsilogic,compat6=on,subformat=monolithicFlat,zeroed_grain=on n.vmdk 1M
same create -f vpc -o subformat=fixed,force_size=on n.vpc 1M
same create -f vhdx -o log_size=1M,block_size=1M,subformat=fixed,block_state_zero=off n.vhdx 1M
same create -f vdi -o static=on n.vdi 1M
same create -f qed -o backing_file=a.qcow2,backing_fmt=qcow2,cluster_size=64k,table_size=4 n.qed
same create -f parallels -o cluster_size=64k n.parallels 1M
same create -f qcow2 -b a.qcow2 -F qcow2 n.qcow2
same create -f qcow2 -b a.raw -F raw n.qcow2 1G
same create -f qcow2 -u -b nosuch -F qcow2 n.qcow2 1G
same create -f qcow2 -b 'a,b' -F qcow2 -u n.qcow2 1G
# refused: nothing is written
same create -f qcow2 -b a.qcow2 n.qcow2
same create -f qcow2 -b a.raw n.qcow2 1G
same create -f qcow2 -u -b nosuch n.qcow2 1G
same create -f vmdk -o backing_file=a.qcow2 n.vmdk 1M
same create -f qcow2 -b nosuch -F qcow2 n.qcow2 1G
same create -f qcow2 -b nosuch -F qcow2 n.qcow2
same create -f qcow2 -b n.qcow2 -F qcow2 n.qcow2 1G
same create -f qcow2 -b a.qcow2 -F qcow2 a.qcow2 1G
same create -f qcow2 -o backing_file= n.qcow2 1G
same create -f qcow2 -b a.qcow2 -F qcow2 -o size=2M n.qcow2 1M
same create -f raw -b a.raw r.raw 1M
same create -f raw -F raw r.raw 1M
same create -f parallels -o backing_file=x n.parallels 1M
same create -f qcow2 -o bogus=1 n.qcow2 1M
same create -f foo n 1M
same create -f qcow2 n.qcow2
same create -f qcow2 n.qcow2 1Q
same create -f qcow2 n.qcow2 -- -1
same create -f qcow2 -u -b a.qcow2 -F qcow2 n.qcow2

step "-o help: qemu-img's listing (sorted, NAME=<TYPE> - HELP; encryption is not vbd's)"
for f in raw vmdk vpc vhdx vdi qed parallels; do
    same create -f $f -o help
    same create -f $f -o '?'
    same convert -O $f -o help
done
same create -o help
same convert -O raw -o help a.raw
same create -f foo -o help
same convert -O foo -o help

step "amend: qemu-img 7.2's checks and messages (no prefix), in its order; backing_file/backing_fmt only unchanged"
for o in cluster_size=4k extended_l2=on preallocation=full encrypt.format=luks bogus=1 bogus=1,compat=0.9 \
         compat=0.9,cluster_size=4k compat=0.9 refcount_bits=3 compat=0.10,refcount_bits=8 \
         lazy_refcounts=on,compat=0.10 data_file=d data_file_raw=on backing_file=a.raw backing_fmt=raw \
         backing_file=a.qcow2,backing_fmt=qcow2 backing_file= compat=1.1; do
    same amend -o $o a.qcow2
    same amend -o $o o.qcow2
    same amend -o $o v2.qcow2
done
same amend -o backing_file=a.qcow2 o.qcow2
same amend -o compat=1.1,backing_file=x v2.qcow2
same amend -o compat=0.10 x.qcow2
same amend -o lazy_refcounts=on v2.qcow2

step "measure: the input opened first, qemu-img's messages, -o checked, -l, the bitmaps' room"
for f in qed vdi bogus; do
    same measure -O $f a.qcow2
    same measure -O $f nosuch
done
for o in cluster_size=4k,extended_l2=on cluster_size=512 cluster_size=2M,compat=0.10 cluster_size=bogus \
         cluster_size=1.5k preallocation=full bogus=1 subformat=fixed; do
    same measure -O qcow2 -o $o a.qcow2
    same measure -O raw -o $o a.qcow2
done
for l in s 1 snapshot.name=s snapshot.id=1 nosuch snapshot.bogus=1 snapshot.name=nosuch; do
    same measure -O qcow2 -l $l s.qcow2
    same measure --output=json -O raw -l $l s.qcow2
done
same measure -O qcow2 -l s a.raw
same convert -l s -O raw a.raw n.raw
same measure -O qcow2 -l s --size 1G
same measure -f raw --size 1G
same measure --image-opts --size 1G
for i in bm.qcow2 v2.qcow2 a.qcow2; do
    same measure -O qcow2 $i
    same measure --output=json -O qcow2 -o cluster_size=512 $i
    same measure -O qcow2 -o cluster_size=2M $i
    same measure -O qcow2 -o compat=0.10 $i
done

step "convert, commit, check: option errors as qemu-img's"
same convert -O raw -S 3 a.qcow2 n.raw
same convert -O raw -S 32M a.qcow2 n.raw
same convert -O raw -n a.qcow2 n.raw
same convert -O qcow2 -B a.qcow2 o.qcow2 n.qcow2
same convert -O qcow2 -o bogus=1 a.qcow2 n.qcow2
same convert -O qcow2 -B a.qcow2 -F qcow2 o.qcow2 n.qcow2
same convert -O qcow2 -o cluster_size=4k a.qcow2 n.qcow2
same convert -O raw -m 17 a.qcow2 n.raw
same convert -O raw --target-is-zero a.qcow2 n.raw
same commit -b nosuch o.qcow2
same check -r bogus a.qcow2

step "an empty file is raw, not probed (every prefix probe, cloop's, matches nothing)"
: >base/empty.img
same info empty.img
same info --output=json empty.img
same map --output=json empty.img
same map --output=json -s 1M -l 0 a.raw
same map --output=json -s 128M a.raw
same map -s 128M a.raw
same check empty.img
same compare empty.img empty.img
same convert -O qcow2 empty.img n.qcow2
same measure -O qcow2 empty.img

step "a raw image whose size is not a multiple of 512"
same info -f raw odd.raw
same map --output=json -f raw odd.raw
same compare -f raw -F raw odd.raw odd.raw
same convert -f raw -O raw odd.raw n.raw

step "convert: -r, -C, --salvage, -T and qemu-img's checks around them, in its order; a failed write"
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
# a write that fails: qemu-img's line, which names the start of the chunk
# (2 MiB of data) the failed write was part of
head -c 8M /dev/zero | tr '\0' '\1' >base/d.raw
truncate -s 8M base/t.raw
td="driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename=t.raw,file.inject-error.0.event=write_aio,file.inject-error.0.sector=5000"
for m in '' '-m 1' '-m 16 -W'; do
    # shellcheck disable=SC2086 # $m is words
    same convert -n $m -f raw --target-image-opts d.raw "$td"
done
rm base/d.raw base/t.raw

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

step "dd operands"
same dd if=a.raw of=d.raw bogus=1
same dd if=a.raw of=d.raw foo
same dd if=a.raw of=d.raw =1
same dd if=a.raw of=d.raw bs=0
same dd if=a.raw of=d.raw bs=3x
same dd if=a.raw of=d.raw bs=4G
same dd if=a.raw of=d.raw count=x
same dd if=a.raw of=d.raw skip=-1
# count counts from the input's start in qemu-img 7.2: a skip past it is
# reported and an empty output written, exit 0
same dd -f raw if=a.raw of=d.raw skip=2 count=1 bs=1M
same dd -f raw if=a.raw of=d.raw skip=1 count=2 bs=1M
echo "PASS"
