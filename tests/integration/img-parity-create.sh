#!/bin/bash
# vbd-img create beside qemu-img create (7.2) on every format vbd writes:
# the same command line run by both tools, each in its own copy of base/,
# gives the same exit code, stdout (the Formatting line) and stderr, and
# leaves the same files; an image both made is the same to qemu-img info
# (a vmdk's random cid aside). Sizes as qemu_strtosz reads them ("1.k")
# and past each format's limit (qemu-img's "The image size is too large
# for file format" for any driver's EFBIG), every format's -o options and
# their wrong values, qcow2's version 2 refusals in QEMU's words, -b/-F
# with and without a size, -u (a backing format that names no driver
# refused still), existing files, -q, and qcow2's
# encryption options: qemu-img's words for what it refuses too, then vbd's
# own line (vbd makes no encrypted image); encryption=off is no encryption.
# (img-parity.sh: create's Formatting line and backing checks;
# img-create-resize.sh: sizes and preallocation on disk.)
. "$(dirname "$0")/lib.sh"
need qemu-img
cd "$T"
mkdir base base/dir
must qemu-img create -q -f qcow2 base/a.qcow2 4M
must qemu-img create -q -f raw base/a.raw 4M
must qemu-img create -q -f vmdk base/a.vmdk 4M
must qemu-img create -q -f qed base/a.qed 4M
: >base/exist.qcow2

same() { create_same "$@"; }

step "sizes: suffixes, fractions, each format's limit"
for s in 1kB 1.5 1.k 1. 1.0005k; do
    same -f raw n.raw "$s"
done
same -f qcow2 n.qcow2 2E
same -f qcow2 -o cluster_size=512 n.qcow2 64T
same -f raw n.raw 8191P
same -f vpc n.vpc 2040G
same -f vhdx n.vhdx 64T
same -f qcow2 -o size=1M -o size=2M n.qcow2

step "qcow2: -o values, version 2's refusals in qemu-img's words"
for o in cluster_size=3k cluster_size=1k,extended_l2=on extended_l2=on,compat=0.10 compat=0.10,lazy_refcounts=on \
    compat=0.10,refcount_bits=8 compat=0.10,compression_type=zstd lazy_refcounts=on,refcount_bits=8,compat=0.10 \
    refcount_bits=3 data_file=d,data_file_raw=on preallocation=full,extended_l2=on; do
    same -f qcow2 -o "$o" n.qcow2 1M
done

step "qcow2 encryption: qemu-img's refusals, vbd's own for an image qemu-img would encrypt"
for o in encryption=off encryption=on encrypt.format=aes encrypt.format=bogus encrypt.key-secret=s0 \
    encrypt.format=luks,encrypt.key-secret=s0 encryption=on,encrypt.format=luks encrypt.iter-time=x; do
    same -f qcow2 -o "$o" n.qcow2 1M
done
same -q -f qcow2 -o encryption=on n.qcow2 1M
# with the secret qemu-img makes the image; vbd-img refuses with one line, writing nothing
tools_run qemu-img "$VBD_IMG" create --object secret,id=s0,data=x -f qcow2 -o encrypt.format=luks,encrypt.key-secret=s0 n.qcow2 1M
grep -q "exit 1" v.out && grep -q "cannot make encrypted images" v.err && [ ! -e v/n.qcow2 ] ||
    fail "an encrypted qcow2 asked of vbd-img: $(cat v.out v.err)"

step "the other formats' -o values"
for o in subformat=monolithicFlat subformat=streamOptimized hwversion=6,compat6=on; do
    same -f vmdk -o "$o" n.vmdk 1M
done
for o in subformat=fixed force_size=bogus; do
    same -f vpc -o "$o" n.vpc 1M
done
for o in log_size=3M block_size=512M subformat=fixed; do
    same -f vhdx -o "$o" n.vhdx 1M
done
same -f vdi -o static=on n.vdi 1M
same -f qed -o table_size=16 n.qed 1M
same -f parallels -o cluster_size=4k n.parallels 1M
for o in preallocation=Full size=-1 backing_file=a.raw; do
    same -f raw -o "$o" n.raw 1M
done

step "backing files, -u, existing files, -q, -o help"
same -f qcow2 -b a.qcow2 -F qcow2 n.qcow2 128M
same -f qcow2 -b a.qcow2 -F raw n.qcow2
same -f qcow2 -b a.qcow2 -F bogus n.qcow2
same -f qcow2 -u -b a.qcow2 -F bogus n.qcow2 1M
same -f qcow2 -b ../a.qcow2 -F qcow2 dir/n.qcow2
same -f qcow2 -b exist.qcow2 -F qcow2 n.qcow2
same -f qed -b a.qed -F qed n.qed
same -f vmdk -b a.vmdk -F vmdk n.vmdk
same -f qcow2 exist.qcow2 1M
same -q -f qcow2 -b a.qcow2 -F qcow2 n.qcow2
same -f qcow2 -o cluster_size=4k -o lazy_refcounts=on n.qcow2 1M
echo PASS
