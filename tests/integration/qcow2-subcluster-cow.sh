#!/bin/bash
# Writes into part of a cluster of a qcow2 image with extended L2 entries
# leave the subcluster allocation QEMU 7.2 leaves (block/qcow2-cluster.c,
# calculate_l2_meta): into an unallocated cluster only the subclusters
# written to are allocated (the others keep reading from the backing file,
# or stay zero), a write not aligned to subclusters fills up the edge
# subclusters from what they read before; into an allocated cluster of our
# own only the bitmap changes (and the edge subclusters written to are
# filled up in place); a compressed cluster is copied whole; a cluster
# shared with an internal snapshot from its first to its last allocated
# subcluster. The same qemu-io command lines run by qemu-io and vbd-io
# (and over NBD by qemu-storage-daemon and vbd-daemon), each on its own
# copy of one image, over cluster sizes 16k/64k/2M, with and without a
# backing file and with an external data file: qemu-img map --output=json
# (host offsets included) the same, qemu-img compare the same, qemu-img
# check clean, and the content what the writes over the old content give
# (so the backing file's bytes show where nothing was written).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon
cd "$T"

# kind NAME CLUSTER OPTS [b]: src/img.qcow2 of 14 clusters, extended L2,
# over base.qcow2 (0x11 everywhere) with b; without a data file: a
# compressed cluster at 10 and an internal snapshot s0 that shares
# cluster 12 (subclusters 2-4 of 0xab)
kind() {
    K=$1 C=$2 S=$(($2 / 32))
    local size=$((14 * C)) opts="extended_l2=on,cluster_size=$C${3:+,$3}"
    rm -rf src && mkdir src
    if [ -n "${4:-}" ]; then
        must qemu-img create -q -f qcow2 -o cluster_size=$C base-$K.qcow2 $size
        must qemu-io -f qcow2 -c "write -P 0x11 0 $size" base-$K.qcow2 >/dev/null
        (cd src && must qemu-img create -q -f qcow2 -o "$opts" -b "$T/base-$K.qcow2" -F qcow2 img.qcow2)
    else
        (cd src && must qemu-img create -q -f qcow2 -o "$opts" img.qcow2 $size)
    fi
    SNAP=
    case $opts in *data_file*) ;; *) SNAP=1 ;; esac
    if [ -n "$SNAP" ]; then
        must qemu-io -f qcow2 -c "write -c -P 0xcd $((10 * C)) $C" -c "write -P 0xab $((12 * C + 2 * S)) $((3 * S))" \
            src/img.qcow2 >/dev/null
        must qemu-img snapshot -c s0 src/img.qcow2
    fi
    step "$K ($opts${4:+, backing file})"
}
# check_copies WHAT: q/ (QEMU's) and v/ (vbd's) after the same writes
# (in each copy's directory: a data file is named relative to where qemu-img runs)
check_copies() {
    (cd q && qemu-img map --output=json img.qcow2 >../q.map) || fail "qemu-img map of QEMU's copy: $1"
    (cd v && qemu-img map --output=json img.qcow2 >../v.map) || fail "qemu-img map of vbd's copy: $1"
    diff -u q.map v.map || fail "map differs: $1"
    (cd q && qemu-img compare -q -f qcow2 -F raw img.qcow2 ../want.raw) || fail "QEMU's copy does not read what was written: $1"
    (cd v && qemu-img compare -q -f qcow2 -F raw img.qcow2 ../want.raw) || fail "vbd's copy does not read what was written: $1"
    (cd v && qcheck img.qcow2) || exit 1
    [ -z "$SNAP" ] || { qemu-img snapshot -l v/img.qcow2 | grep -q s0 || fail "snapshot s0 lost: $1"; }
}
# want CMD...: want.raw, the content before (src) with the writes applied
want() {
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    (cd src && must qemu-img convert -q -O raw img.qcow2 ../want.raw)
    must qemu-io -f raw "${args[@]}" want.raw >/dev/null
}
# same CMD...: qemu-io and vbd-io run the -c commands on fresh copies of src/
same() {
    local args=() c t
    for c in "$@"; do args+=(-c "$c"); done
    for t in q v; do rm -rf $t && cp -a src $t; done
    (cd q && qemu-io -f qcow2 "${args[@]}" img.qcow2 >../q.out 2>&1; echo "exit $?" >>../q.out)
    (cd v && "$VBD_IO" -f qcow2 "${args[@]}" img.qcow2 >../v.out 2>&1; echo "exit $?" >>../v.out)
    sed -i -E -e 's/qemu-io|vbd-io/TOOL/g' -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' q.out v.out
    diff -u q.out v.out || fail "output differs: $*"
    want "$@"
    check_copies "$*"
}
# nbd_same CMD...: the same over NBD, qemu-storage-daemon and vbd-daemon each serving its copy
nbd_same() {
    nbd_qsd_vbd "" "$@"
    want "$@"
    check_copies "NBD $*"
}

cases() {
    # one subcluster; two (half of each); inside one (the rest of it is
    # copied from what it read); across two clusters
    same "write -P 2 $((C + S)) $S" "write -P 3 $((2 * C + S + S / 2)) $S" "write -P 4 $((3 * C + 5 * S + 100)) 300" \
        "write -P 5 $((5 * C - S / 2 - 7)) $((S + 13))"
    # over zero subclusters: of an unallocated cluster (the zero ones not
    # written to stay zero), of an allocated one (filled up in place)
    same "write -z $((6 * C)) $((4 * S))" "write -P 6 $((6 * C + S + 10)) $S" \
        "write -P 7 $((7 * C)) $S" "write -z $((7 * C + 4 * S)) $((4 * S))" "write -P 8 $((7 * C + 5 * S + 3)) 10"
    # an allocated cluster with unallocated subclusters: no new cluster,
    # the bitmap grows (whole subclusters: nothing copied); then over
    # subclusters allocated already; then all of it
    same "write -P 9 $((8 * C)) $S" "write -P 11 $((8 * C + 20 * S)) $((2 * S))" \
        "write -P 10 $((8 * C + 10 * S + 1)) $((3 * S))" \
        "write -P 12 $((8 * C + 11 * S + 5)) 7" "write -P 13 $((8 * C + 31 * S - 1)) 2"
    same "write -P 9 $((8 * C + 3 * S)) $S" "write -P 14 $((8 * C)) $C" "write -P 15 $((9 * C + 2)) $((C - 4))"
    if [ -n "$SNAP" ]; then
        # a compressed cluster (copied whole); a cluster shared with the
        # snapshot (its allocated subclusters 2-4 and up to the write)
        same "write -P 16 $((10 * C + 3 * S + 1)) 5" "write -P 17 $((12 * C + 7 * S + 1)) 10" \
            "write -P 18 $((12 * C - S)) $S"
    fi
}

kind ext64k-backed 65536 "" b
cases
# the difference this test is about must really be there: the written
# subcluster of cluster 1 is the top's, the next one still the backing file's
same "write -P 2 $((C + S)) $S"
grep -q "\"start\": $((C + 2 * S)), \"length\": [0-9]*, \"depth\": 1" v.map ||
    fail "the subclusters after the one written do not read from the backing file: $(cat v.map)"
nbd_same "write -P 2 $((C + S)) $S" "write -P 4 $((3 * C + 5 * S + 100)) 300" "write -P 5 $((5 * C - S / 2 - 7)) $((S + 13))" \
    "write -P 9 $((8 * C)) $S" "write -P 10 $((8 * C + 10 * S + 1)) $((3 * S))" "write -P 16 $((10 * C + 3 * S + 1)) 5"
kind ext16k-backed 16384 "" b
cases
kind ext2m-backed $((2 << 20)) "" b
cases
kind ext64k 65536 ""
cases
kind ext64k-data-file 65536 data_file=img.data b
cases
echo OK
