#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# vbd-img convert copies content exactly, keeps holes sparse, and its
# output is identical to qemu-img convert's (content and allocation).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
src=$T/src.raw
qemu-img create -q -f raw "$src" 256M
qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 10M 4k' -c 'write -P 0 20M 1M' -c 'write -P 3 100M 3M' \
    -c 'write -P 4 255M 1M' "$src" >/dev/null
# -t none too: a target whose writes are page-cache copies made inline
# (buffered, or tmpfs even with O_DIRECT) is written in order with at most
# 8 requests whatever -m/-W say (unless threads copy: then -W is kept, see
# img-convert-split.sh); O_DIRECT to a disk keeps both. The
# targets: $T (a disk here) and, where it is tmpfs, /dev/shm.
dirs=$T
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    shm=$(mktemp -d /dev/shm/vbd-test.XXXXXX); on_exit "rm -rf $shm"
    dirs="$T $shm"
fi
# qemu-img map of an image, host offsets included
full_map() {
    qemu-img map --output=json -f "$1" "$2"
}
# the data ranges of an image, host offsets left out (qemu-img -W lays out its output differently each run)
data_ranges() {
    qemu-img map --output=json -f "$1" "$2" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if e["data"] and out and out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    elif e["data"]:
        out.append([e["start"], e["start"] + e["length"]])
print(out)'
}
for d in $dirs; do
qemu-img convert -f raw -O raw "$src" "$d/ref.raw"
# qemu-img's map and written-back size, the same for every case below
sync "$d/ref.raw"
refmap=$(qemu-img map --output=json -f raw "$d/ref.raw") refblocks=$(stat -c %b "$d/ref.raw")
fs=$(stat -f -c %T "$d")
for t in unsafe none; do for m in 1 8 16; do for w in "" -W; do
    step "convert -t $t -m $m $w to $fs"
    rm -f "$d/dst.raw"
    must "$VBD_IMG" convert -t $t -m $m $w -f raw -O raw "$src" "$d/dst.raw"
    must qemu-img compare -f raw -F raw "$src" "$d/dst.raw" >/dev/null
    # same allocation as qemu-img's own convert (written zeroes become holes)
    [ "$(qemu-img map --output=json -f raw "$d/dst.raw")" = "$refmap" ] ||
        fail "-t $t -m $m $w: allocation differs from qemu-img convert's: $(qemu-img map --output=json -f raw "$d/dst.raw")"
    # and no more space: blocks allocated ahead of a write (ext4, 256 KiB
    # at least) that map shows as a hole would show here; the file system's
    # own blocks (an extent tree's) differ by a few KiB between O_DIRECT and
    # buffered writes, hence the 128 KiB of slack (sync: written back)
    sync "$d/dst.raw"
    blocks=$(stat -c %b "$d/dst.raw")
    [ "$blocks" -le $((refblocks + 256)) ] || fail "uses $blocks sectors, qemu-img's convert $refblocks"
done; done; done; done
if [ -n "${shm:-}" ]; then
    # tmpfs to tmpfs is copied by several threads (one per CPU, capped by
    # -m), each reading, scanning and writing its chunks out of order: the
    # paths beside the plain copy, each against qemu-img's result. The raw
    # source: the shape of $src in 64 MiB (data at the start and the end,
    # 4k alone, written zeroes, 3 MiB), 32 chunks of 2 MiB: every thread
    # has many; a quarter of the bytes to write, fill and compare.
    src64=$T/src64.raw
    qemu-img create -q -f raw "$src64" 64M
    qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 10M 4k' -c 'write -P 0 20M 1M' -c 'write -P 3 40M 3M' \
        -c 'write -P 4 63M 1M' "$src64" >/dev/null
    cp --sparse=always "$src64" "$shm/src.raw"
    step "tmpfs, threads: concatenation into an existing image full of other data (-n: zeroes written)"
    qemu-img create -q -f raw "$shm/two.raw" 150M
    qemu-io -f raw -c 'write -P 9 0 150M' "$shm/two.raw" >/dev/null
    cp "$shm/two.raw" "$shm/tworef.raw"
    convert_like_qemu "-n, two raw sources" raw "$shm/tworef.raw" "$shm/two.raw" "$shm/tworef.raw" \
        -n -f raw -O raw "$shm/src.raw" "$shm/src.raw"
    for opt in "" "-S 0" "-S 64k" "-p" "-m 2" "-m 16 -W" "-t none -T none"; do
        step "tmpfs, threads: convert $opt"
        rm -f "$shm/dst.raw" "$shm/ref.raw"
        # shellcheck disable=SC2086 # $opt is words
        convert_like_qemu "$opt" raw "$src64" "$shm/dst.raw" "$shm/ref.raw" $opt -f raw -O raw "$shm/src.raw"
    done
    step "tmpfs, threads: a write that fails (past the file size limit) fails the convert, in qemu-img's words"
    qemu-img create -q -f raw "$shm/lim.raw" 64M
    out=$( (trap '' XFSZ; ulimit -f 32768; "$VBD_IMG" convert -n -f raw -O raw "$shm/src.raw" "$shm/lim.raw") 2>&1) &&
        fail "convert past the file size limit succeeded"
    grep -q "error while writing at byte [0-9]*: File too large" <<<"$out" || fail "not the write's error: $out"
    rm -f "$shm"/*.raw
    # qcow2 sources on tmpfs, opened read-only and locked, are mapped on the
    # main loop and their data clusters read from the file on the threads;
    # compressed clusters go through the qcow2 node (a hop), zero clusters
    # and backing files' ranges as block status says. Against qemu-img's
    # convert of the same image.
    qemu-img create -q -f qcow2 "$shm/base.qcow2" 256M
    qemu-io -f qcow2 -c 'write -P 5 0 2M' -c 'write -P 5 50M 2M' -c 'write -P 5 200M 1M' \
        -c 'write -c -P 8 120M 256k' "$shm/base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b "$shm/base.qcow2" -F qcow2 "$shm/top.qcow2" 256M
    qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -c -P 6 4M 128k' -c 'write -P 2 10M 4k' -c 'write -z 51M 64k' \
        -c 'write -P 7 100M 3M' -c 'write -P 9 150M 1M' -c 'write -z 150M 512k' -c 'write -P 0 180M 1M' \
        "$shm/top.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k "$shm/sub.qcow2" 256M
    qemu-io -f qcow2 -c 'write -P 3 0 1M' -c 'write -P 4 2M 8k' -c 'write -P 4 2052k 4k' -c 'write -z 512k 64k' \
        -c 'write -P 6 99M 5M' -c 'write -z 100M 1M' "$shm/sub.qcow2" >/dev/null
    for q in top sub; do for opt in "" "-S 0" "-S 64k" "-m 16 -W" "-U"; do
        step "tmpfs, threads: qcow2 source $q.qcow2 convert $opt"
        rm -f "$shm/dst.raw" "$shm/ref.raw"
        # shellcheck disable=SC2086 # $opt is words
        convert_like_qemu "$q $opt" qcow2 "$shm/$q.qcow2" "$shm/dst.raw" "$shm/ref.raw" \
            $opt -f qcow2 -O raw "$shm/$q.qcow2"
    done; done
    step "tmpfs, threads: a qcow2 source of 16384 extents (4k clusters, every other one data): several mapped windows"
    python3 - "$shm/frag.raw" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 64 << 20)
for i in range(0, 16384, 2):
    os.pwrite(fd, bytes([i % 251 + 1]) * 4096, i * 4096)
os.close(fd)
PY
    qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$shm/frag.raw" "$shm/frag.qcow2"
    rm -f "$shm/dst.raw" "$shm/ref.raw"
    convert_like_qemu "fragmented source" raw "$shm/frag.raw" "$shm/dst.raw" "$shm/ref.raw" -f qcow2 -O raw "$shm/frag.qcow2"
    step "tmpfs, threads: two qcow2 sources concatenated into an image full of other data (-n)"
    qemu-img create -q -f raw "$shm/two.raw" 512M
    qemu-io -f raw -c 'write -P 9 0 512M' "$shm/two.raw" >/dev/null
    cp "$shm/two.raw" "$shm/tworef.raw"
    convert_like_qemu "-n, two qcow2 sources" raw "$shm/tworef.raw" "$shm/two.raw" "$shm/tworef.raw" \
        -n -f qcow2 -O raw "$shm/top.qcow2" "$shm/sub.qcow2"
    # qcow2 targets on tmpfs are written by the threads too: clusters placed
    # in order and linked on the main loop, each worker writing its data to
    # the image's file from its own thread; partial clusters, allocated or
    # preallocated ones and extended L2 images go the main loop's path.
    # Against qemu-img's convert: content, qemu-img check, and the map with
    # the host offsets: the clusters laid out in the file as qemu-img lays
    # them out (each new L2 table before its first data cluster, as QEMU
    # allocates it; users compare the two maps whole). With -W qemu-img's
    # own layout changes from run to run: the data ranges only. So too for
    # 512-byte clusters from the qcow2 source: its 8 MiB of data outgrow the
    # one-cluster refcount table, which vbd grows elsewhere than QEMU's
    # qcow2_refcount_area (not matched yet; the raw source's data fit).
    cp --sparse=always "$src64" "$shm/src.raw"
    for in in "raw $shm/src.raw" "qcow2 $shm/top.qcow2"; do
        read -r f i <<<"$in"
        for opt in "" "-S 0" "-S 64k" "-m 16 -W" "-m 1" "-o cluster_size=4k" "-o cluster_size=512" \
                   "-o cluster_size=2M" "-o compat=0.10" "-o extended_l2=on" "-o extended_l2=on,cluster_size=128k" \
                   "-o preallocation=metadata" "-c" "-o data_file=$shm/dst.data"; do
            step "tmpfs, threads: $f -> qcow2 convert $opt"
            rm -f "$shm/dst.qcow2" "$shm/ref.qcow2" "$shm/dst.data"
            must "$VBD_IMG" convert $opt -f $f -O qcow2 "$i" "$shm/dst.qcow2" >/dev/null
            must qemu-img compare -f $f -F qcow2 "$i" "$shm/dst.qcow2" >/dev/null
            must qemu-img check -q "$shm/dst.qcow2"
            rm -f "$shm/ref.data"
            must qemu-img convert ${opt//dst.data/ref.data} -f $f -O qcow2 "$i" "$shm/ref.qcow2" >/dev/null
            if [[ $opt == *-W* || ( $f = qcow2 && $opt = "-o cluster_size=512" ) ]]; then
                [ "$(data_ranges qcow2 "$shm/dst.qcow2")" = "$(data_ranges qcow2 "$shm/ref.qcow2")" ] ||
                    fail "$f $opt: data ranges $(data_ranges qcow2 "$shm/dst.qcow2"), qemu-img's $(data_ranges qcow2 "$shm/ref.qcow2")"
            else
                diff <(full_map qcow2 "$shm/dst.qcow2") <(full_map qcow2 "$shm/ref.qcow2") ||
                    fail "$f $opt: the map (host offsets too) differs from qemu-img's (left: vbd)"
            fi
        done
    done
    # (content and check here; the map against qemu-img's is img-convert-backing.sh)
    step "tmpfs, threads: qcow2 target over a backing file (-B)"
    rm -f "$shm/dst.qcow2"
    must "$VBD_IMG" convert -f qcow2 -O qcow2 -B "$shm/base.qcow2" -F qcow2 "$shm/top.qcow2" "$shm/dst.qcow2"
    must qemu-img compare -f qcow2 -F qcow2 "$shm/top.qcow2" "$shm/dst.qcow2" >/dev/null
    must qemu-img check -q "$shm/dst.qcow2"
    step "tmpfs, threads: -n into existing qcow2 images, a new one and one full of other data"
    for fill in "" "write -P 9 0 64M"; do
        rm -f "$shm/dst.qcow2" "$shm/ref.qcow2"
        qemu-img create -q -f qcow2 "$shm/dst.qcow2" 64M
        [ -z "$fill" ] || qemu-io -f qcow2 -c "$fill" "$shm/dst.qcow2" >/dev/null
        cp "$shm/dst.qcow2" "$shm/ref.qcow2" # the same image for qemu-img's side
        must "$VBD_IMG" convert -n -f raw -O qcow2 "$shm/src.raw" "$shm/dst.qcow2"
        must qemu-img convert -n -f raw -O qcow2 "$shm/src.raw" "$shm/ref.qcow2"
        must qemu-img compare -f raw -F qcow2 "$shm/src.raw" "$shm/dst.qcow2" >/dev/null
        must qemu-img check -q "$shm/dst.qcow2"
        # over data too: the source's holes start 4k into a cluster, and a zero
        # extent longer than a chunk is written as zero clusters, as qemu-img's
        diff <(map_shape qcow2 "$shm/dst.qcow2") <(map_shape qcow2 "$shm/ref.qcow2") ||
            fail "-n ${fill:-new}: the map differs from qemu-img's (left: vbd)"
    done
    step "tmpfs, threads: a qcow2 target's data write that fails (blkdebug EIO) fails the convert, in qemu-img's words"
    # host sector 6144 (3 MiB): inside the data the 5 MiB of the source's data clusters are laid out in
    rm -f "$shm/dst.qcow2"
    qemu-img create -q -f qcow2 "$shm/dst.qcow2" 64M
    out=$("$VBD_IMG" convert -n -f raw --target-image-opts "$shm/src.raw" "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$shm/dst.qcow2,file.inject-error.0.event=write_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=6144" 2>&1) &&
        fail "convert to a failing target succeeded"
    grep -q "error while writing at byte [0-9]*: Input/output error" <<<"$out" || fail "not the write's error: $out"
    must qemu-img check -q "$shm/dst.qcow2"
    step "tmpfs, threads: a qcow2 target's write past the file size limit fails the convert, in qemu-img's words"
    rm -f "$shm/dst.qcow2"
    qemu-img create -q -f qcow2 "$shm/dst.qcow2" 64M
    out=$( (trap '' XFSZ; ulimit -f 4096; "$VBD_IMG" convert -n -f raw -O qcow2 "$shm/src.raw" "$shm/dst.qcow2") 2>&1) &&
        fail "convert past the file size limit succeeded"
    grep -q "error while writing at byte [0-9]*: File too large" <<<"$out" || fail "not the write's error: $out"
    qemu-img check -q "$shm/dst.qcow2" >/dev/null 2>&1 || [ $? = 3 ] || fail "after the failed write: qemu-img check is neither clean nor only leaky"
    rm -f "$shm/dst.qcow2" "$shm/ref.qcow2" "$shm/dst.data" "$shm/ref.data" "$shm/src.raw"
    step "tmpfs, threads: a qcow2 source whose data cluster fails to read (blkdebug EIO) fails the convert, naming it"
    # the host offset of guest 101M (inside the 3M written at 100M), in sectors
    host=$(qemu-img map --output=json -f qcow2 "$shm/top.qcow2" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["depth"] == 0 and e["data"] and e["start"] <= 101 << 20 < e["start"] + e["length"] and "offset" in e:
        print((e["offset"] + (101 << 20) - e["start"]) // 512)')
    [ -n "$host" ] || fail "no host offset for 101M"
    # qemu-img's words: the chunk's offset in the target
    rm -f "$shm/dst.raw"
    out=$("$VBD_IMG" convert --image-opts -O raw "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$shm/top.qcow2,file.inject-error.0.event=read_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=$host" "$shm/dst.raw" 2>&1) &&
        fail "convert from a failing source succeeded"
    grep -q "error while reading at byte [0-9]*: Input/output error" <<<"$out" || fail "not the read's error: $out"
    rm -f "$shm"/*.raw "$shm"/*.qcow2
fi
# the page cache path (a disk) and qed targets too: the host offsets as qemu-img's
for d in $dirs; do for fo in "qcow2 " "qcow2 -t none" "qcow2 -o cluster_size=4k" "qcow2 -o cluster_size=512" \
                             "qcow2 -o compat=0.10" "qed " "qed -m 1" "qed -o cluster_size=4k"; do
    read -r fmt opt <<<"$fo"
    step "convert $opt -O $fmt on $(stat -f -c %T "$d"): qemu-img map with host offsets as qemu-img's"
    rm -f "$d/lay.$fmt" "$d/layq.$fmt"
    # shellcheck disable=SC2086 # $opt is words
    must "$VBD_IMG" convert $opt -f raw -O $fmt "$src" "$d/lay.$fmt"
    # shellcheck disable=SC2086
    must qemu-img convert $opt -f raw -O $fmt "$src" "$d/layq.$fmt"
    must qemu-img compare -f raw -F $fmt "$src" "$d/lay.$fmt" >/dev/null
    must qemu-img check -q -f $fmt "$d/lay.$fmt"
    diff <(full_map $fmt "$d/lay.$fmt") <(full_map $fmt "$d/layq.$fmt") ||
        fail "$opt -O $fmt: the map (host offsets too) differs from qemu-img's (left: vbd)"
done; rm -f "$d/lay".* "$d/layq".*; done
# holes that start 4k into a cluster and run for several 2 MiB chunks, a
# written zero extent, data at the end
holes=$T/holes.raw
qemu-img create -q -f raw "$holes" 24M
qemu-io -f raw -c 'write -P 5 0 4k' -c 'write -P 6 9M 4k' -c 'write -P 0 12M 1M' -c 'write -P 7 16388k 8k' \
    -c 'write -P 8 23M 1M' "$holes" >/dev/null
step "convert -S 0 writes zeroes and holes as data: the target is fully allocated, as qemu-img's (the 24 MiB image of holes)"
for fmt in raw qcow2; do
    rm -f "$T/dst.$fmt" "$T/ref.$fmt"
    must "$VBD_IMG" convert -S 0 -f raw -O $fmt "$holes" "$T/dst.$fmt"
    must qemu-img convert -S 0 -f raw -O $fmt "$holes" "$T/ref.$fmt"
    must qemu-img compare -f raw -F $fmt "$holes" "$T/dst.$fmt" >/dev/null
    [ $fmt = raw ] || must qemu-img check -q "$T/dst.$fmt"
    [ "$(data_ranges $fmt "$T/dst.$fmt")" = "$(data_ranges $fmt "$T/ref.$fmt")" ] ||
        fail "-S 0 -O $fmt: data ranges $(data_ranges $fmt "$T/dst.$fmt"), qemu-img's $(data_ranges $fmt "$T/ref.$fmt")"
done
for d in $dirs; do for o in cluster_size=4k cluster_size=64k cluster_size=2M cluster_size=64k,compat=0.10; do
    rm -f "$d/full.qcow2"
    qemu-img create -q -f qcow2 -o $o "$d/full.qcow2" 24M
    qemu-io -f qcow2 -c 'write -P 1 0 24M' "$d/full.qcow2" >/dev/null
    for S in "" "-S 64k"; do
        step "convert -n $S into a qcow2 ($o) full of data on $(stat -f -c %T "$d"): zero clusters as qemu-img's"
        for out in "$d/fullv.qcow2" "$d/fullq.qcow2"; do cp "$d/full.qcow2" "$out"; done
        must "$VBD_IMG" convert -n $S -f raw -O qcow2 "$holes" "$d/fullv.qcow2"
        must qemu-img convert -n $S -f raw -O qcow2 "$holes" "$d/fullq.qcow2"
        must qemu-img compare -f raw -F qcow2 "$holes" "$d/fullv.qcow2" >/dev/null
        must qemu-img check -q "$d/fullv.qcow2"
        diff <(map_shape qcow2 "$d/fullv.qcow2") <(map_shape qcow2 "$d/fullq.qcow2") ||
            fail "-n $S into $o: the map differs from qemu-img's (left: vbd)"
    done
done; rm -f "$d/full.qcow2" "$d/fullv.qcow2" "$d/fullq.qcow2"; done
step "convert -n into an existing image and concatenation"
qemu-img create -q -f raw "$T/two.raw" 512M
must "$VBD_IMG" convert -n -f raw -O raw "$src" "$src" "$T/two.raw"
must qemu-io -f raw -c 'read -P 2 10M 4k' -c 'read -P 2 266M 4k' -c 'read -P 4 511M 1M' "$T/two.raw" >"$T/out"
grep -q failed "$T/out" && fail "concatenated data wrong"
step "convert of a qemu-written image through --image-opts window"
must "$VBD_IMG" convert --image-opts -O raw "driver=raw,offset=10M,size=1M,file.filename=$src" "$T/win.raw"
[ "$(stat -c %s "$T/win.raw")" = 1048576 ] || fail "window size wrong"
must qemu-io -f raw -c 'read -P 2 0 4k' -c 'read -P 0 4k 1020k' "$T/win.raw" | grep -q failed && fail "window data wrong"
step "zero runs inside a chunk, raw and qcow2 targets, page cache and O_DIRECT: allocated as qemu-img's"
# data, written zeroes and data again inside one 2 MiB chunk, at 4k and 64k steps
mix=$T/mix.raw
qemu-img create -q -f raw "$mix" 8M
qemu-io -f raw -c 'write -P 5 0 4k' -c 'write -P 0 4k 60k' -c 'write -P 6 64k 4k' -c 'write -P 0 68k 1M' \
    -c 'write -P 7 1092k 8k' -c 'write -P 8 3M 1M' -c 'write -P 0 5M 2M' -c 'write -P 9 7M 1M' "$mix" >/dev/null
for fmt in raw qcow2; do for t in writeback none; do for S in 0 4k 64k; do
    rm -f "$T/mixv.$fmt" "$T/mixq.$fmt"
    must "$VBD_IMG" convert -S $S -t $t -f raw -O $fmt "$mix" "$T/mixv.$fmt"
    must qemu-img convert -S $S -t $t -f raw -O $fmt "$mix" "$T/mixq.$fmt"
    must qemu-img compare -f raw -F $fmt "$mix" "$T/mixv.$fmt" >/dev/null
    [ $fmt = raw ] || must qemu-img check -q "$T/mixv.$fmt"
    [ "$(data_ranges $fmt "$T/mixv.$fmt")" = "$(data_ranges $fmt "$T/mixq.$fmt")" ] ||
        fail "-O $fmt -t $t -S $S: data ranges $(data_ranges $fmt "$T/mixv.$fmt"), qemu-img's $(data_ranges $fmt "$T/mixq.$fmt")"
done; done; done
echo ok
