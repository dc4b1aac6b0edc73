#!/bin/bash
# Write-zeroes, discard and preallocation leave the metadata QEMU leaves.
# The same qemu-io command lines run by qemu-io and vbd-io, each on its own
# copy of one image, over qcow2 v2/v3, cluster sizes 4k/64k/2M, extended L2,
# with and without a backing file: the images left must have the same
# qemu-img map (allocation, zero flags, depth; host offsets aside), read the
# same (qemu-img compare) and check clean (leaks included). Then the same
# requests over NBD (WRITE_ZEROES with and without NO_HOLE, TRIM) against
# vbd-daemon and qemu-storage-daemon serving copies of one image.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon
cd "$T"
FMT=qcow2 IMG=img.qcow2 # the format and image `same` works on
mapof() { qemu-img map -f $FMT --output=json "$1" | sed 's/, "offset": [0-9]*//'; }
# agree WHAT: q/$IMG (QEMU's) and v/$IMG (vbd's) must agree
agree() {
    diff -u <(mapof q/$IMG) <(mapof v/$IMG) || fail "map differs: $1"
    qemu-img compare -q -f $FMT -F $FMT q/$IMG v/$IMG || fail "contents differ: $1"
    [ $FMT != qcow2 ] || qcheck v/$IMG
}
# kind NAME OPTS [b]: src/img.qcow2 of 1M with data at 0-128k, compressed
# clusters at 512k and 768k (64k each), on a 1M backing file of 0x11 with b
kind() {
    rm -rf src && mkdir src
    if [ -n "${3:-}" ]; then
        must qemu-img create -q -f qcow2 -o "$2" src/base.qcow2 1M
        must qemu-io -f qcow2 -c 'write -P 0x11 0 1M' src/base.qcow2 >/dev/null
        must qemu-img create -q -f qcow2 -o "$2" -b base.qcow2 -F qcow2 src/img.qcow2 1M
    else
        must qemu-img create -q -f qcow2 -o "$2" src/img.qcow2 1M
    fi
    local c=(-c 'write -P 0xab 0 128k' -c 'write -c -P 0xcd 512k 64k' -c 'write -c -P 0xcd 768k 64k')
    case $2 in *2M*) c=(-c 'write -P 0xab 0 128k') ;; esac # one cluster: nothing to compress
    must qemu-io -f qcow2 "${c[@]}" src/img.qcow2 >/dev/null
    step "$1 ($2${3:+, backing file})"
}
# same CMD...: both tools run the -c commands on fresh copies of src/
same() {
    local args=() c t
    for c in "$@"; do args+=(-c "$c"); done
    for t in q v; do rm -rf $t && cp -a src $t; done
    # the copies' allocation before the command (cp makes zeroed ranges holes)
    q0=$(stat -c %b q/$IMG) v0=$(stat -c %b v/$IMG)
    (cd q && qemu-io -f $FMT "${args[@]}" $IMG >../q.out 2>&1; echo "exit $?" >>../q.out)
    (cd v && "$VBD_IO" -f $FMT "${args[@]}" $IMG >../v.out 2>&1; echo "exit $?" >>../v.out)
    sed -i -E -e 's/qemu-io|vbd-io/TOOL/g' -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' q.out v.out
    diff -u q.out v.out || fail "output differs: $*"
    [ "${DATA_ONLY:-}" ] || agree "$*"
    qemu-img compare -q -f $FMT -F $FMT q/$IMG v/$IMG || fail "contents differ: $*"
    [ $FMT != qcow2 ] || qcheck v/$IMG
}
same_data() { DATA_ONLY=1 same "$@"; }
zeroes() {
    # whole clusters: unallocated, allocated, compressed; -u gives them up
    same 'write -z 256k 64k' 'write -z 0 64k' 'write -z 512k 64k'
    same 'write -z -u 256k 64k' 'write -z -u 0 64k' 'write -z -u 512k 64k'
    # part of a cluster or subcluster: unallocated, allocated, compressed
    # (zero data into part of an unallocated cluster over a backing file:
    # with extended L2 only the subclusters written are allocated)
    same 'write -z 256k 4k' 'write -z 260k 1000' 'write -z 4k 1000' 'write -z 768k 4k'
    same 'write -z -u 256k 4k' 'write -z -u 0 4k' 'write -z -u 768k 4k'
    # across clusters, the whole image; zeroes over zeroes
    same 'write -z 100k 200k' 'write -z -u 300k 300k'
    same 'write -z 0 1M'
    same 'write -z -u 0 1M'
    same 'write -z 256k 64k' 'write -z -u 256k 64k' 'write -z 256k 4k'
    # discard: aligned, not, compressed, after zeroes
    same 'discard 0 64k' 'discard 256k 64k' 'discard 512k 64k'
    same 'discard 0 4k' 'discard 100k 200k' 'discard 768k 4k'
    same 'discard 0 1M'
    same 'write -z 256k 64k' 'discard 256k 64k' 'discard 0 64k' 'write -z 0 64k'
}
# promised T: falloc/full promise the grown range's space: each image's
# file grew by at least half the new range (1M) on the disk (a sparse grow
# adds a few metadata blocks; how much more the file system counts varies)
promised() {
    local t b0
    for t in q v; do
        eval "b0=\$${t}0"
        [ $(( ($(stat -c %b $t/img.qcow2) - b0) * 512 )) -ge $((1 << 19)) ] ||
            fail "$t: $1 did not allocate the new range ($b0 -> $(stat -c %b $t/img.qcow2) blocks)"
    done
}
truncates() {
    local m
    for m in off metadata falloc full; do
        same "truncate -m $m 2M"
        case $m in falloc | full) promised "truncate -m $m 2M" ;; esac
        same "truncate -m $m 1100k"
    done
    same 'truncate 512k'
    same 'truncate 300k' 'truncate 1M'
}
kind v3-64k compat=1.1
zeroes
truncates
kind v2-64k compat=0.10
zeroes
kind v3-4k cluster_size=4k
zeroes
kind v3-2M cluster_size=2M
same 'write -z 0 1M' 'write -z 512k 4k'
same 'write -z -u 0 1M'
same 'discard 0 1M'
same 'write -z 1M 4k' 'truncate -m metadata 2M' 'truncate -m off 3M'
# growing inside the last cluster: QEMU moves the cluster and covers all of
# it, vbd covers the part past the old end in place (README): space only
for m in falloc full; do
    same_data "truncate -m $m 2M"
    promised "truncate -m $m 2M"
done
kind ext extended_l2=on
zeroes
truncates
kind v3-64k-backed compat=1.1 b
zeroes
truncates
kind v2-64k-backed compat=0.10 b
zeroes
# growing over a longer backing file needs zero clusters: both fail
same 'truncate 300k' 'truncate 1M' 'read -P 0 400k 4k'
kind ext-backed extended_l2=on b
zeroes
truncates

step "qcow2 with a raw external data file: partial discards do nothing, -u unmaps"
rm -rf src && mkdir src
(cd src && must qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on img.qcow2 1M &&
    must qemu-io -f qcow2 -c 'write -P 1 0 512k' img.qcow2 >/dev/null)
for c in 'discard 0 64k' 'discard 100k 20k' 'write -z 128k 64k' 'write -z -u 192k 64k' 'write -z 600k 64k' \
    'write -z 200k 1k' 'discard 0 1M' 'write -z -u 0 1M'; do
    # the header names d.raw relative to where qemu-img runs: in each copy
    for t in q v; do rm -rf $t && cp -a src $t; done
    (cd q && must qemu-io -f qcow2 -c "$c" img.qcow2 >/dev/null)
    (cd v && must "$VBD_IO" -f qcow2 -c "$c" img.qcow2 >/dev/null)
    [ "$(cd q && mapof img.qcow2)" = "$(cd v && mapof img.qcow2)" ] || fail "map differs: $c"
    cmp q/d.raw v/d.raw || fail "the raw data files differ: $c"
    (cd v && qcheck img.qcow2)
done

step "qed: whole clusters without data become zero clusters, the rest zero data"
FMT=qed IMG=img.qed
for b in "" b; do
    rm -rf src && mkdir src
    if [ -n "$b" ]; then
        must qemu-img create -q -f qed src/base.qed 4M
        must qemu-io -f qed -c 'write -P 0x11 0 4M' src/base.qed >/dev/null
        must qemu-img create -q -f qed -b base.qed -F qed src/img.qed 4M
    else
        must qemu-img create -q -f qed src/img.qed 4M
    fi
    must qemu-io -f qed -c 'write -P 0xab 0 1M' src/img.qed >/dev/null
    same 'write -z 2M 1M' 'write -z 0 1M'
    if [ -z "$b" ]; then
        same 'write -z -u 2M 1M' 'write -z 2M 4k'
    else
        # data into part of a zero cluster: QEMU 7.2 copies the backing
        # file's bytes into the rest of it (which read as zeroes before);
        # vbd keeps the zeroes (README)
        rm -rf v && cp -a src v
        must "$VBD_IO" -f qed -c 'write -z -u 2M 1M' -c 'write -P 5 2M 4k' -c 'read -P 0 2052k 1020k' v/$IMG >/dev/null
        must "$VBD_IO" -f qed -c 'read -P 5 2M 4k' -c 'read -P 0 2052k 1020k' v/$IMG >/dev/null
    fi
    same 'write -z 100k 2M' 'write -z 3M 1M' 'write -z 3M 1M'
    same 'discard 0 1M' 'discard 2M 1M'
done
step "vmdk, vdi: zeroes over unallocated grains/blocks stay unallocated (README): contents"
for f in vmdk vdi; do
    FMT=$f IMG=img.$f
    rm -rf src && mkdir src
    must qemu-img create -q -f $f src/$IMG 4M
    must qemu-io -f $f -c 'write -P 0xab 0 1M' src/$IMG >/dev/null
    same_data 'write -z 2M 1M' 'write -z 0 64k' 'write -z 100k 2M' 'discard 0 1M'
done
step "formats that cannot be resized say so in QEMU's words"
for f in vmdk vdi vhdx vpc; do
    FMT=$f IMG=img.$f
    rm -rf src && mkdir src
    must qemu-img create -q -f $f src/$IMG 4M
    same_data 'truncate 8M' 'truncate -m falloc 8M'
done
FMT=qcow2 IMG=img.qcow2

step "NBD: WRITE_ZEROES (NO_HOLE or not) and TRIM, vbd-daemon beside qemu-storage-daemon"
# nbd_same CMD...: qemu-io over NBD into each daemon serving its copy
nbd_same() {
    nbd_qsd_vbd ,discard=unmap "$@"
    agree "NBD $*"
}
for k in "v3-64k compat=1.1" "ext extended_l2=on" "v3-64k-backed compat=1.1 b"; do
    kind $k
    nbd_same 'write -z 256k 64k' 'write -z 0 64k' 'write -z 512k 64k' 'write -z 768k 4k'
    nbd_same 'write -z -u 256k 64k' 'write -z -u 0 64k' 'write -z -u 512k 64k' 'write -z -u 260k 1000'
    nbd_same 'discard 0 64k' 'discard 256k 64k' 'discard 512k 64k' 'discard 100k 200k'
done
echo OK
