#!/bin/bash
# test-timeout: 2400 (run.sh: 56 s at load 4, 623-1015 s at load 35-45 in round 27; 1200 s is too close)
# vbd-img create beside qemu-img create (7.2), the same command line in
# copies of the same directory (lib.sh create_same): a new image is laid
# out as qemu-img lays it out, the same file length, qemu-img map (host
# offsets too) and check (a new qcow2 from vbd-img was a cluster longer:
# its L1 table written to its cluster's end; vbd-img's empty vhdx had a 1
# MiB BAT region qemu-img could not open, QEMU's own is sized by its
# 32-bit count that wraps); the file protocol's hints nocow and
# extent_size_hint taken through any format, with qemu-img's checks;
# vmdk's adapter type and subformat refused in qemu-img's words.
# (img-parity-create.sh: create's command lines, values and refusals.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io jq
cd "$T"
mkdir base
must qemu-img create -q -f qcow2 base/a.qcow2 4M
same() { create_same "$@"; }
same_layout() { create_same_layout "$@"; }

step "the layout of a new image: file length, map and check as qemu-img's"
# qcow2: the L1 table written to its entries' end (not its cluster's) in
# the first refcount block; past it qemu-img's refcount blocks follow the
# table and the file ends on a cluster
for o in "" cluster_size=512 cluster_size=2M extended_l2=on,lazy_refcounts=on refcount_bits=1 compat=0.10 \
    data_file=d,data_file_raw=on preallocation=falloc; do
    same_layout -f qcow2 ${o:+-o "$o"} n.qcow2 1M
done
for s in 0 1G; do
    same_layout -f qcow2 n.qcow2 $s
done
# byte for byte: with clusters of 4 KiB and less qemu-img writes no feature
# name table (vbd-img wrote one, up to 4 KiB clusters)
for o in cluster_size=512 cluster_size=4k cluster_size=8k preallocation=metadata,cluster_size=4k \
    preallocation=metadata,cluster_size=2k; do
    same_layout -f qcow2 -o $o n.qcow2 1M
    cmp q/n.qcow2 v/n.qcow2 || fail "create -o $o: the images differ byte for byte"
done
# byte for byte where the L1 table outgrows what the first refcount block
# counts: QEMU's allocator makes the blocks as it goes, each at the first
# free cluster (at 33 GiB with 512-byte clusters a larger refcount table
# past them, the old one's cluster left a hole with its bytes); vbd-img
# put every block before the L1 table (and one table after the header)
for o in "cluster_size=1k,refcount_bits=64 545292288" "cluster_size=512 545292288" "cluster_size=512 1G" \
    "cluster_size=512 33G" "cluster_size=512,refcount_bits=1 64G" "cluster_size=1k,refcount_bits=64 8G" \
    "cluster_size=2k 1T" "cluster_size=512,data_file=d 1G"; do
    set -- $o
    same_layout -f qcow2 -o $1 n.qcow2 $2
    cmp q/n.qcow2 v/n.qcow2 || fail "create -o $o: the images differ byte for byte"
done
same_layout -f qcow2 -b a.qcow2 -F qcow2 n.qcow2
# an empty vhdx: QEMU's BAT region, sized by its 32-bit count that wraps
# (64 MiB with 8 MiB blocks), which it wants at open
for o in block_size=1M ""; do
    same_layout -f vhdx ${o:+-o "$o"} n.vhdx 0
done
# and each tool reads the other's as its own (qemu-img could not open vbd's)
for k in q v; do
    for t in qemu-img "$VBD_IMG"; do
        (cd $k && "$t" info -U n.vhdx && "$t" check -U n.vhdx) 2>&1 | grep -v '^disk size' >$k.${t##*/}.vhdx
    done
    diff -u $k.qemu-img.vhdx $k.vbd-img.vhdx || fail "an empty vhdx made by $k: vbd-img reads it otherwise"
done
for f in vmdk vpc vdi qed parallels; do
    same_layout -f $f n.$f 0
done
same_layout -f vhdx n.vhdx 100
# and each takes the space qemu-img's takes (stat's blocks): qemu-img
# writes a vhdx's file identifier, headers and region tables each alone
# and a qed's header and L1 table, leaving the rest of the first MiB (the
# header cluster) a hole (vbd-img wrote it whole: 880 KiB more for every
# vhdx, 60 KiB more for a qed with 64 KiB clusters); one 4 KiB block
# apart is the file system's, not the tool's: ext4 counts the block that
# holds a file's extent list once the file has more than 4 extents, and
# how the free space is cut decides that
for cl in "vhdx n.vhdx 0" "vhdx -o block_size=1M n.vhdx 0" "vhdx n.vhdx 1G" "vhdx -o subformat=fixed n.vhdx 8M" \
    "qed n.qed 0" "qed n.qed 1G" "qed -o cluster_size=4k n.qed 1M" "qed -b a.qcow2 -F qcow2 n.qed"; do
    set -- $cl
    same_layout -f "$@"
    f=n.$1
    bq=$(stat -c %b q/$f) bv=$(stat -c %b v/$f)
    [ $((bq - bv)) -le 8 ] && [ $((bv - bq)) -le 8 ] ||
        fail "create -f $cl: $(stat -c %b v/$f) blocks allocated by vbd-img, $(stat -c %b q/$f) by qemu-img"
done

step "qcow2 preallocation=falloc/full, create and resize: qemu-img's image byte for byte"
# qemu-img creates, then grows the image with the preallocation as
# qcow2_co_truncate does: past the last cluster in use the refcount blocks
# and a new refcount table counting all that follows, the data clusters in
# one run, the L2 tables last (the first in the old refcount table's
# cluster); vbd-img placed each L2 table before its data clusters and
# kept the table (1 MiB with 512-byte clusters, 1 GiB with 64 KiB: other
# offsets). A v2 image has no feature name table (vbd-img wrote one), a
# grown L1 table is written to its entries' end (vbd-img: its cluster's);
# a shrink makes the L2 table holding the new end if it is missing, as
# QEMU's discard of the tail does (vbd-img's file was 2 clusters shorter).
for o in cluster_size=512,preallocation=falloc cluster_size=512,preallocation=full preallocation=falloc \
    cluster_size=4k,preallocation=full refcount_bits=1,cluster_size=512,preallocation=falloc \
    refcount_bits=64,cluster_size=1k,preallocation=full extended_l2=on,preallocation=falloc \
    compat=0.10,preallocation=falloc lazy_refcounts=on,cluster_size=2k,preallocation=full compat=0.10; do
    same_layout -f qcow2 -o $o n.qcow2 1M
    cmp q/n.qcow2 v/n.qcow2 || fail "create -o $o 1M: the images differ byte for byte"
done
same_layout -f qcow2 -o preallocation=falloc n.qcow2 1G
cmp q/n.qcow2 v/n.qcow2 || fail "create -o preallocation=falloc 1G: the images differ byte for byte"
# resize: each tool grows its own image (the same bytes before), then
# writes the same data (qemu-io, vbd-io) into it: the same bytes after
# each, and qemu-img check clean
for rs in "cluster_size=512 1M --preallocation=falloc 5M" "cluster_size=4k 100k --preallocation=full 1M" \
    "cluster_size=4k 2k --preallocation=falloc 9k" "compat=0.10 1M --preallocation=falloc 64M" \
    "refcount_bits=1,cluster_size=512 1M --preallocation=full 2M" "extended_l2=on 1M --preallocation=falloc 600M" \
    "cluster_size=2M 1M --preallocation=falloc 64M" "'' 1M 64G" "cluster_size=512,preallocation=metadata 1M --preallocation=falloc 2M" \
    "'' 1G --shrink 1M" "preallocation=metadata 1G --shrink 100M"; do
    eval "set -- $rs"
    same_layout -f qcow2 ${1:+-o "$1"} n.qcow2 $2
    shift 2
    (cd q && qemu-img resize -q "$@" n.qcow2 2>&1) >q.rs
    (cd v && "$VBD_IMG" resize -q "$@" n.qcow2 2>&1 | sed 's/vbd-img/qemu-img/g') >v.rs
    diff -u q.rs v.rs || fail "resize $* after create -o ${rs%% *}: the output differs"
    cmp q/n.qcow2 v/n.qcow2 || fail "resize $* after create -o ${rs%% *}: the images differ byte for byte"
    w=(-c 'write -P 7 0 1536' -c "write -P 9 $(($(qemu-img info -U --output=json q/n.qcow2 | jq '."virtual-size"') - 1024)) 1024")
    qemu-io -f qcow2 "${w[@]}" q/n.qcow2 >/dev/null || fail "qemu-io write after resize $*"
    "$VBD_IO" -f qcow2 "${w[@]}" v/n.qcow2 >/dev/null || fail "vbd-io write after resize $*"
    cmp q/n.qcow2 v/n.qcow2 || fail "resize $* after create -o ${rs%% *}: the images differ after the same writes"
    qemu-img check -q v/n.qcow2 || fail "resize $* after create -o ${rs%% *}: qemu-img check of vbd-img's image"
done

step "preallocation through formats without their own: the file's option, the same file and allocation"
# qemu-img 7.2 hands preallocation to the file, which it creates empty with
# it: nothing allocated, the format's own layout (vbd-img refused it)
# (the space each tool's image takes is compared with that tool's image
# without the option: an empty vhdx or qed of vbd-img's takes more than
# qemu-img's, another matter)
for f in vdi vpc vhdx vmdk qed parallels; do
    for p in off falloc full; do
        same_layout -f $f -o preallocation=$p n.$f 1M
        for k in q v; do
            du=$(du -k $k/n.$f | cut -f1)
            [ $p = off ] && eval "off_$k=$du"
            [ "$du" = "$(eval echo \$off_$k)" ] ||
                fail "create -f $f -o preallocation=$p: $du KiB allocated by $k, $(eval echo \$off_$k) without it"
        done
        for t in qemu-img "$VBD_IMG"; do # each reads both as the same image
            "$t" compare -U -f $f -F $f q/n.$f v/n.$f >/dev/null ||
                fail "create -f $f -o preallocation=$p: ${t##*/} compare: the images differ or cannot be read"
        done
    done
done
for o in vdi:static=on,preallocation=full vpc:subformat=fixed,preallocation=falloc vhdx:subformat=fixed,preallocation=full; do
    same_layout -f ${o%%:*} -o ${o#*:} n.${o%%:*} 1M
done
# (a flat vmdk's descriptor holds its random CID in hex without leading
# zeroes: its length varies; the extent is compared)
same -f vmdk -o subformat=monolithicFlat,preallocation=full n.vmdk 1M
[ "$(stat -c %s q/n-flat.vmdk) $(du -k q/n-flat.vmdk | cut -f1)" = "$(stat -c %s v/n-flat.vmdk) $(du -k v/n-flat.vmdk | cut -f1)" ] ||
    fail "create -f vmdk -o subformat=monolithicFlat,preallocation=full: the flat extents differ in length or allocation"

step "the file's hints (nocow, extent_size_hint), as qemu-img's file driver takes them, through any format"
for o in nocow=bogus extent_size_hint=1M extent_size_hint=0 extent_size_hint=4G extent_size_hint=5G,preallocation=bogus \
    nocow=on,extent_size_hint=64k,preallocation=falloc; do
    same_layout -f raw -o "$o" n.raw 1M
done
for f in qcow2 vmdk vhdx; do
    same_layout -f $f -o nocow=on,extent_size_hint=256k n.$f 1M
done
same -f qcow2 -o extent_size_hint=5G n.qcow2 1M
same_layout -f qcow2 -o data_file=d,nocow=on n.qcow2 1M
same -f vmdk -o subformat=twoGbMaxExtentFlat,extent_size_hint=0 n.vmdk 1M
same -f raw -o help n.raw

step "vmdk: qemu-img's words for an adapter type or subformat it does not know, the adapter type first"
for o in adapter_type=foo adapter_type=IDE subformat=monolithicflat adapter_type=foo,subformat=bar \
    subformat=bar,adapter_type=lsilogic; do
    same -f vmdk -o "$o" n.vmdk 1M
done

echo PASS
