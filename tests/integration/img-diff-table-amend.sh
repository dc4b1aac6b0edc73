#!/bin/bash
# test-timeout: 900 (25 cases, ASan: 34 s at load 4, 140-190 s at load 25-31, 7 min at load 35-47 beside 7 helpers)
# vbd-img amend -o refcount_bits=N beside qemu-img 7.2 amend (img-diff-table.sh's
# way: lib-difftable.sh's img_case, the same output, and the image either
# wrote qemu-img's byte for byte, compared, checked, feature bits equal):
# widths up and down, on images with
# snapshots (refcounts of 2), compressed clusters (several in a host
# cluster), persistent bitmaps (same image, laid out otherwise: below),
# lazy refcounts, a v2 image upgraded in the same amend, and 512-byte
# clusters, where the new structure needs a larger refcount table or the
# old one grows while the new one is allocated. A refcount too large for the narrower width: qemu-img's
# refusal, word for word, and the image as qemu-img leaves it.
# DIFF_TABLE_FILTER=REGEX: only the case lines matching it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-difftable.sh"
need qemu-img qemu-io python3
cd "$T"
mkdir base
FORMATS=qcow2
# mk NAME CREATE-OPTIONS QEMU-IO-COMMANDS...: base/NAME.qcow2 of 4 MiB by qemu-img, written by qemu-io
mk() {
    local name=$1 opts=$2 c args=()
    shift 2
    must qemu-img create -q -f qcow2 -o "$opts" base/$name.qcow2 "${SIZE:-4M}"
    for c in "$@"; do args+=(-c "$c"); done
    [ $# = 0 ] || must qemu-io -f qcow2 "${args[@]}" base/$name.qcow2 >/dev/null
}
mk a cluster_size=64k 'write -P 1 0 64k' 'write -P 2 1M 512' 'write -z 2M 64k' 'write -P 3 3M 128k'
mk snap cluster_size=64k 'write -P 1 0 256k' 'write -P 2 1M 64k'
must qemu-img snapshot -c s1 base/snap.qcow2
must qemu-io -c 'write -P 5 64k 64k' -c 'write -P 6 3M 64k' base/snap.qcow2 >/dev/null
# compressed clusters: 64 KiB of one byte packs into a few bytes, several to a host cluster
mk comp cluster_size=64k 'write -c -P 1 0 64k' 'write -c -P 2 64k 64k' 'write -c -P 3 128k 64k' 'write -P 4 1M 64k'
mk bm cluster_size=64k 'write -P 1 0 64k'
must qemu-img bitmap --add base/bm.qcow2 b0
must qemu-img bitmap --add -g 512k base/bm.qcow2 b1
must qemu-io -c 'write -P 2 1M 64k' -c 'write -P 3 3M 8k' base/bm.qcow2 >/dev/null
mk lazy cluster_size=64k,lazy_refcounts=on 'write -P 1 0 64k' 'write -P 2 2M 64k'
mk v2 compat=0.10 'write -P 1 0 64k' 'write -P 2 2M 64k'
# 512-byte clusters: 64 refcount table entries to a cluster, so that 3 MiB
# of data (32 KiB pieces 64 KiB apart, L2 tables amid them) needs two
# table clusters at 64 bits; og: 64 bits, 2 MiB less 12 KiB in the file,
# so that the old refcount table, one cluster, grows while the amend
# allocates the new structure (QEMU's refcount_area from the old one)
mapfile -t w < <(for i in $(seq 0 95); do echo "write -P $((i % 200 + 1)) $((i * 64))k 32k"; done)
SIZE=8M mk s16 cluster_size=512,refcount_bits=16 "${w[@]}"
SIZE=8M mk s1 cluster_size=512,refcount_bits=1 "${w[@]}"
SIZE=8M mk s64 cluster_size=512,refcount_bits=64 "${w[@]:0:32}"
must qemu-img snapshot -c s1 base/s64.qcow2
must qemu-io -c 'write -P 9 0 16k' base/s64.qcow2 >/dev/null
SIZE=8M mk og cluster_size=512,refcount_bits=64 'write -P 7 0 1970k'

# any amend of an image with bitmaps (lazy_refcounts=off alike): qemu-img
# stores them anew at its close (new bitmap tables and directory, the old
# clusters freed, the old directory left with in-use set), and so does
# vbd-img's close after an amend (it wrote them back in place)
run_cases img_case <<'CASES'
# narrower and wider, from 16 bits, on each kind of image
@a.qcow2 amend -o refcount_bits=1 %i
@a.qcow2 amend -o refcount_bits=64 %i
@snap.qcow2 amend -o refcount_bits=2 %i
@snap.qcow2 amend -o refcount_bits=64 %i
@comp.qcow2 amend -o refcount_bits=4 %i
@comp.qcow2 amend -o refcount_bits=32 %i
@bm.qcow2 amend -o refcount_bits=8 %i
@bm.qcow2 amend -o refcount_bits=64 %i
@bm.qcow2 amend -o lazy_refcounts=on %i
@bm.qcow2 amend -o refcount_bits=3 %i
# a size change with bitmaps: stored anew after the resize, once (the
# amend's and resize's; the old directory keeps in-use, as QEMU's close
# leaves it: vbd-img cleared it in place first)
@bm.qcow2 amend -o size=8M %i
@bm.qcow2 amend -o refcount_bits=16,size=2M %i
@bm.qcow2 resize --shrink %i 2M
# from other widths; 512-byte clusters: the new table larger (to 64 bits)
@s1.qcow2 amend -o refcount_bits=64 %i
@s16.qcow2 amend -o refcount_bits=64 %i
@s16.qcow2 amend -o refcount_bits=1 %i
@s64.qcow2 amend -o refcount_bits=2 %i
@og.qcow2 amend -o refcount_bits=32 %i
# a refcount of 2 (a snapshot) in 1 bit: qemu-img's refusal; other refusals
@snap.qcow2 amend -o refcount_bits=1 %i
@v2.qcow2 amend -o refcount_bits=8 %i
@a.qcow2 amend -o refcount_bits=3 %i
# with the other options, in qemu-img's order: upgrade first, the backing
# file refused after the change, lazy refcounts, downgrade last
@v2.qcow2 amend -o compat=1.1,refcount_bits=1,lazy_refcounts=on %i
@a.qcow2 amend -o refcount_bits=8,backing_file=x %i
@lazy.qcow2 amend -o refcount_bits=64,lazy_refcounts=off %i
@s64.qcow2 amend -o refcount_bits=16,compat=0.10 %i
CASES
