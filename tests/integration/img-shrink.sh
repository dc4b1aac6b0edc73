#!/bin/bash
# resize --shrink and amend -o size= smaller discard what lies past the new
# end, as qemu-img does (no "discard it first"): on the same input image,
# vbd-img's result reads as qemu-img's, maps the same (host offsets aside),
# passes qemu-img check, is no larger a file than qemu-img's, and growing
# it again shows zeroes, never the discarded data. Snapshots keep theirs;
# persistent bitmaps follow the size. Includes the README's example.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

size_of() { stat -c %s "$1"; }
vsize() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
map_of() { # the guest view of the map: host offsets differ between tools
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    e.pop("offset", None)
    print(e)'
}
# IMG.q (qemu-img) and IMG.v (vbd-img) made from copies of IMG by ARGS, where @ stands for the file
shrink_both() { # IMG ARGS...
    on_copies "$@"
    [ $qrc = 0 ] || fail "qemu-img ${*:2}: $(cat q.out)"
    [ $vrc = 0 ] || fail "vbd-img ${*:2}: $(cat v.out)"
}
compare_results() { # IMG: vbd-img's result against qemu-img's
    local img=$1
    qcheck "$img.v"
    [ "$(vsize "$img.v")" = "$(vsize "$img.q")" ] || fail "$img: virtual size $(vsize "$img.v") vs qemu-img's $(vsize "$img.q")"
    qemu-img compare -q "$img.q" "$img.v" || fail "$img: vbd-img's shrunk image reads differently from qemu-img's"
    map_of "$img.q" >q.map
    map_of "$img.v" >v.map
    diff -u q.map v.map >d.txt || fail "$img: map differs from qemu-img's result: $(cat d.txt)"
    [ "$(size_of "$img.v")" -le "$(size_of "$img.q")" ] ||
        fail "$img: file is $(size_of "$img.v") bytes, qemu-img's $(size_of "$img.q")"
}
regrow_zero() { # IMG FROM TO: grown back, [FROM, TO) reads as zeroes
    must "$VBD_IMG" resize -q "$1" "$3"
    qcheck "$1"
    qemu-io -r -c "read -P 0 $2 $(($3 - $2))" "$1" | grep -q "^read" || fail "$1: discarded data came back after growing"
}

step "the README example: grow with preallocation=falloc, then shrink below the original size"
must "$VBD_IMG" create -q -f qcow2 -o cluster_size=64k,compression_type=zstd vm.qcow2 64M
qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 40M 1M' vm.qcow2 >/dev/null
cp vm.qcow2 vmq.qcow2
must "$VBD_IMG" resize -q --preallocation=falloc vm.qcow2 +32M
must qemu-img resize -q --preallocation=falloc vmq.qcow2 +32M
out=$("$VBD_IMG" resize --shrink vm.qcow2 32M 2>&1) || fail "README's resize --shrink after a falloc grow: $out"
[ "$out" = "Image resized." ] || fail "resize --shrink printed: $out"
must qemu-img resize -q --shrink vmq.qcow2 32M
qcheck vm.qcow2
qemu-img compare -q vm.qcow2 vmq.qcow2 || fail "README case: reads differently from qemu-img's result"
[ "$(size_of vm.qcow2)" -le "$(size_of vmq.qcow2)" ] || fail "README case: $(size_of vm.qcow2) bytes vs qemu-img's $(size_of vmq.qcow2)"
[ "$(size_of vm.qcow2)" -lt $((8 << 20)) ] || fail "README case: the preallocated clusters are still in the file ($(size_of vm.qcow2) bytes)"
regrow_zero vm.qcow2 $((32 << 20)) $((96 << 20))

for opts in "" cluster_size=512 cluster_size=2M extended_l2=on,cluster_size=16k refcount_bits=1 refcount_bits=64 compat=0.10 \
    lazy_refcounts=on; do
    step "shrink with data past the end: ${opts:-defaults}"
    rm -f i.qcow2*
    must qemu-img create -q -f qcow2 ${opts:+-o $opts} i.qcow2 96M
    qemu-io -c 'write -P 1 0 3M' -c 'write -P 2 20M 100k' -c 'write -z 30M 1M' -c 'write -P 3 33M 512' \
        -c 'write -P 4 60M 2M' -c 'write -c -P 5 80M 64k' -c 'write -P 6 95M 1M' i.qcow2 >/dev/null
    shrink_both i.qcow2 resize -q --shrink @ $((33 << 20))
    compare_results i.qcow2
    regrow_zero i.qcow2.v $((33 << 20)) $((96 << 20))
    step "shrink to a size inside a cluster: ${opts:-defaults}"
    shrink_both i.qcow2 resize -q --shrink @ $(((20 << 20) + 1536))
    compare_results i.qcow2
    qemu-io -r -c "read -P 2 $((20 << 20)) 1536" i.qcow2.v | grep -q "^read" || fail "data before the new end lost"
done

step "shrink with an internal snapshot: the snapshot keeps every byte"
rm -f s.qcow2*
must qemu-img create -q -f qcow2 s.qcow2 64M
qemu-io -c 'write -P 1 0 64M' s.qcow2 >/dev/null
must qemu-img snapshot -c s0 s.qcow2
qemu-io -c 'write -P 2 8M 100k' -c 'write -P 3 40M 64k' -c 'write -P 4 20M 4k' s.qcow2 >/dev/null
shrink_both s.qcow2 resize -q --shrink @ 20M
compare_results s.qcow2
must qemu-img convert -l snapshot.name=s0 -O raw s.qcow2.q s0q.raw
must qemu-img convert -l snapshot.name=s0 -O raw s.qcow2.v s0v.raw
cmp s0q.raw s0v.raw || fail "the snapshot's data changed in the shrink"
must "$VBD_IMG" snapshot -a s0 s.qcow2.v
qcheck s.qcow2.v
qemu-io -r -c 'read -P 1 0 64M' s.qcow2.v | grep -q "^read" || fail "snapshot applied after the shrink does not read as taken"

step "shrink with persistent bitmaps: they follow the size, dirty bits before the end kept"
rm -f b.qcow2*
must qemu-img create -q -f qcow2 b.qcow2 64M
must qemu-img bitmap --add b.qcow2 a
must qemu-img bitmap --add -g 512 --disable b.qcow2 d
qemu-io -c 'write 1M 64k' -c 'write 30M 1M' b.qcow2 >/dev/null
must qemu-img bitmap --merge a b.qcow2 d
shrink_both b.qcow2 resize -q --shrink @ 20M
compare_results b.qcow2
for t in q v; do qemu-img info --output=json b.qcow2.$t | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["bitmaps"])' >bm.$t; done
diff -u bm.q bm.v || fail "bitmaps listed differently after the shrink"
if command -v qemu-nbd >/dev/null && command -v nbdinfo >/dev/null; then
    for b in a d; do
        for t in q v; do
            rm -f n.sock
            qemu-nbd -r -t -k "$T/n.sock" -B $b -f qcow2 b.qcow2.$t 2>qn.log &
            p=$!
            for _ in $(seq 1200); do [ -S n.sock ] && break; sleep 0.05; done
            nbdinfo --map=qemu:dirty-bitmap:$b "nbd+unix:///?socket=$T/n.sock" >map.$t || fail "nbdinfo: $(cat qn.log)"
            kill $p; wait $p 2>/dev/null
        done
        diff -u map.q map.v || fail "bitmap $b after the shrink differs from qemu-img's"
        grep -q "1048576 *65536 *1" map.v || fail "bitmap $b lost the dirty bits before the end: $(cat map.v)"
    done
fi
must "$VBD_IMG" resize -q b.qcow2.v 100M
qcheck b.qcow2.v

step "shrink with an external data file: the data file is cut too"
rm -f x.qcow2* x.raw
for t in q v; do
    must qemu-img create -q -f qcow2 -o data_file=x$t.raw x.qcow2.$t 64M
    qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 40M 1M' x.qcow2.$t >/dev/null
done
must qemu-img resize -q --shrink x.qcow2.q 16M
must "$VBD_IMG" resize -q --shrink x.qcow2.v 16M
compare_results x.qcow2
[ "$(size_of xv.raw)" = "$(size_of xq.raw)" ] || fail "data file: $(size_of xv.raw) bytes, qemu-img leaves $(size_of xq.raw)"

step "amend -o size= smaller: as qemu-img amend"
rm -f a.qcow2*
must qemu-img create -q -f qcow2 a.qcow2 64M
qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 40M 1M' a.qcow2 >/dev/null
shrink_both a.qcow2 amend -o size=16M @
compare_results a.qcow2
must_fail_with "multiple of 512" "$VBD_IMG" amend -o size=1000 a.qcow2.v

step "raw: the file is cut"
must qemu-img create -q -f raw r.raw 64M
qemu-io -f raw -c 'write -P 1 40M 1M' r.raw >/dev/null
must "$VBD_IMG" resize -q -f raw --shrink r.raw 16M
[ "$(size_of r.raw)" = $((16 << 20)) ] || fail "raw shrink left $(size_of r.raw) bytes"
echo ok
