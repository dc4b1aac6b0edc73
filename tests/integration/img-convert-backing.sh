#!/bin/bash
# vbd-img convert to a target with a backing file (-B, or -o backing_file
# which qemu-img takes as -B): the target reads as the source, and what
# the source's top layer leaves unallocated is left to the backing file,
# as qemu-img leaves it (the same map: present, zero, data, depth); the
# target is opened with its backing file, as qemu-img opens it.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
# convert_same_map SRC-FMT SRC DST-DIR ARGS...: vbd-img and qemu-img convert
# SRC to qcow2 with ARGS; vbd's reads as SRC, checks clean, and is
# allocated as qemu-img's
convert_same_map() {
    local fmt=$1 src=$2 d=$3
    shift 3
    rm -f "$d/dst.qcow2" "$d/ref.qcow2"
    must "$VBD_IMG" convert -f "$fmt" -O qcow2 "$@" "$src" "$d/dst.qcow2"
    must qemu-img convert -f "$fmt" -O qcow2 "$@" "$src" "$d/ref.qcow2"
    must qemu-img compare -f "$fmt" -F qcow2 "$src" "$d/dst.qcow2" >/dev/null
    must qemu-img check -q "$d/dst.qcow2"
    diff <(map_shape qcow2 "$d/dst.qcow2") <(map_shape qcow2 "$d/ref.qcow2") ||
        fail "the map differs from qemu-img convert's (left: vbd)"
}
dirs=$T
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    shm=$(mktemp -d /dev/shm/vbd-test.XXXXXX); on_exit "rm -rf $shm"
    dirs="$T $shm" # tmpfs: the threaded copy
fi
for d in $dirs; do
    # base: data over its first half; top: data, zeroes and a discard over it;
    # flat: a raw image with zeroes where base has data
    qemu-img create -q -f qcow2 "$d/base.qcow2" 64M
    qemu-io -f qcow2 -c "write -P 1 0 32M" "$d/base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 "$d/top.qcow2"
    qemu-io -f qcow2 -c "write -P 2 1M 1M" -c "write -z 4M 1M" -c "write -P 3 30M 4M" -c "write -z 40M 64k" \
        -c "write -P 4 63M 1M" "$d/top.qcow2" >/dev/null
    # (truncate; flat0.raw by qemu-img create, which allocates the first 4k:
    # that zero block is written as zeroes into part of a cluster over the
    # backing file's data, a data cluster of zeroes in both tools' output)
    truncate -s 64M "$d/flat.raw"
    qemu-io -f raw -c "write -P 7 8M 1M" -c "write -P 8 48M 2M" "$d/flat.raw" >/dev/null
    qemu-img create -q -f raw "$d/flat0.raw" 64M
    qemu-io -f raw -c "write -P 7 8M 1M" -c "write -P 8 48M 2M" "$d/flat0.raw" >/dev/null
    # small4k: a top of 4k clusters over base, written in 4k pieces: what it
    # leaves to base lies inside the target's 64k clusters it writes
    qemu-img create -q -f qcow2 -o cluster_size=4k -b "$d/base.qcow2" -F qcow2 "$d/small4k.qcow2"
    qemu-io -f qcow2 -c "write -P 2 0 4k" -c "write -P 3 68k 8k" -c "write -z 200k 4k" -c "write -P 4 31M 12k" \
        -c "write -P 5 40M 4k" "$d/small4k.qcow2" >/dev/null
    # noback: a qcow2 without a backing file: what it does not allocate reads
    # as zeroes, written as zeroes over the target's backing file's data
    qemu-img create -q -f qcow2 "$d/noback.qcow2" 64M
    qemu-io -f qcow2 -c "write -P 2 1M 1M" -c "write -z 5M 64k" -c "write -P 3 40M 1M" "$d/noback.qcow2" >/dev/null
    for src in "qcow2 $d/top.qcow2" "raw $d/flat.raw" "raw $d/flat0.raw" "qcow2 $d/small4k.qcow2" "qcow2 $d/noback.qcow2"; do
        set -- $src
        for how in "-B $d/base.qcow2 -F qcow2" "-o backing_file=$d/base.qcow2,backing_fmt=qcow2"; do
            for S in "" "-S 0" "-S 64k"; do
                step "$(stat -f -c %T "$d"): convert $S -f $1 ${2##*/} -O qcow2 ${how%%=*}..."
                convert_same_map "$1" "$2" "$d" $S $how
            done
        done
    done
    # a backing file shorter than the target: past its end the target reads
    # zeroes, and zeroes there are not written (qemu-img's post-allocated
    # range), before it they are
    qemu-img create -q -f qcow2 "$d/short.qcow2" 24M
    qemu-io -f qcow2 -c "write -P 1 0 24M" "$d/short.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b "$d/short.qcow2" -F qcow2 "$d/longtop.qcow2" 64M
    qemu-io -f qcow2 -c "write -z 20M 8M" -c "write -P 6 30M 1M" -c "write -z 50M 64k" "$d/longtop.qcow2" >/dev/null
    for src in "raw $d/flat0.raw" "qcow2 $d/noback.qcow2" "qcow2 $d/longtop.qcow2"; do
        set -- $src
        for S in "" "-S 0"; do
            step "$(stat -f -c %T "$d"): convert $S -f $1 ${2##*/} -O qcow2 -B over a shorter backing file"
            convert_same_map "$1" "$2" "$d" $S -B "$d/short.qcow2" -F qcow2
        done
    done
done
echo PASS
