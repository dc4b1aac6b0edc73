#!/bin/bash
# vbd-img convert -c compresses like qemu-img convert -c: every cluster with
# data is stored compressed (also one that is partly zero), an all-zero
# cluster is not written. Real-looking input (text, random bytes, zero runs
# of every length). Compared with qemu-img's own convert -c of the same
# input: the same clusters allocated and compressed (qemu-img check), the
# same map (host offsets aside), the same content, a file no larger (chunks
# are packed across cluster boundaries as qemu-img packs them); the output
# checks clean. A disk ending inside its last cluster gets that cluster
# compressed too, as qemu-img does (vbd wrote it plain: one cluster more).
# -n -c into a target that holds data fails where qemu-img's does (EIO).
. "$(dirname "$0")/lib.sh"
need qemu-img python3
cd "$T"
mixed_data mixed.raw 7
counters() { # IMG: allocated and compressed clusters as qemu-img check counts them
    qemu-img check --output=json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("allocated-clusters",0), d.get("compressed-clusters",0))'
}
shape() { # IMG: qemu-img map without host offsets
    qemu-img map --output=json "$1" | sed 's/, "offset": [0-9]*//'
}
for cs in 4k 64k 2M; do
    step "cluster size $cs"
    rm -f q.qcow2 v.qcow2
    must qemu-img convert -c -O qcow2 -o cluster_size=$cs mixed.raw q.qcow2
    must "$VBD_IMG" convert -c -O qcow2 -o cluster_size=$cs mixed.raw v.qcow2
    must qemu-img compare -f raw -F qcow2 mixed.raw v.qcow2 >/dev/null
    qc=$(counters q.qcow2); vc=$(counters v.qcow2)
    [ "$qc" = "$vc" ] || fail "allocated/compressed clusters: qemu-img $qc, vbd $vc"
    [ "${vc#* }" -gt 0 ] || fail "nothing compressed"
    diff <(shape q.qcow2) <(shape v.qcow2) || fail "map differs from qemu-img convert -c's"
    echo "sizes: qemu-img $(stat -c %s q.qcow2), vbd $(stat -c %s v.qcow2); clusters (allocated compressed): $vc"
    [ "$(stat -c %s v.qcow2)" -le "$(stat -c %s q.qcow2)" ] || fail "vbd's output is larger than qemu-img's"
    qcheck v.qcow2
done
step "a disk that ends inside its last cluster: that cluster is compressed too (zero-padded, as qemu-img)"
head -c $(((6 << 20) - 3584)) mixed.raw >tail.raw   # the last 4k cluster holds 512 bytes, the last 64k one 61952
for cs in 4k 64k; do
    rm -f q.qcow2 v.qcow2
    must qemu-img convert -c -O qcow2 -o cluster_size=$cs tail.raw q.qcow2
    must "$VBD_IMG" convert -c -O qcow2 -o cluster_size=$cs tail.raw v.qcow2
    qc=$(counters q.qcow2); vc=$(counters v.qcow2)
    [ "$qc" = "$vc" ] || fail "$cs, partial last cluster: allocated/compressed clusters: qemu-img $qc, vbd $vc"
    must qemu-img compare -f raw -F qcow2 tail.raw v.qcow2 >/dev/null
    qcheck v.qcow2
    # and a compressed write of that cluster alone (vbd-io as qemu-io)
    cb=$([ $cs = 4k ] && echo 4096 || echo 65536)
    size=$(((6 << 20) - 3584)) last=$(((6 << 20) - cb))
    for io in qemu-io "$VBD_IO"; do
        rm -f w.qcow2
        must qemu-img create -q -f qcow2 -o cluster_size=$cs w.qcow2 $size
        must "$io" -f qcow2 -c "write -c -P 0x61 $last $((size - last))" w.qcow2 >/dev/null
        [ "$(counters w.qcow2)" = "1 1" ] || fail "$io, $cs: the last cluster's compressed write: $(counters w.qcow2)"
        qcheck w.qcow2
    done
done
step "-S 0: every cluster is written, zero ones included (compressed)"
rm -f q.qcow2 v.qcow2
must qemu-img convert -c -S 0 -O qcow2 mixed.raw q.qcow2
must "$VBD_IMG" convert -c -S 0 -O qcow2 mixed.raw v.qcow2
qc=$(counters q.qcow2); vc=$(counters v.qcow2)
[ "$qc" = "$vc" ] || fail "-S 0: allocated/compressed clusters: qemu-img $qc, vbd $vc"
must qemu-img compare -f raw -F qcow2 mixed.raw v.qcow2 >/dev/null
qcheck v.qcow2
step "-n -c into a target with data: refused at the first allocated cluster, as qemu-img (nothing freed)"
must qemu-img create -q -f qcow2 t.qcow2 1M
must qemu-io -f qcow2 -c 'write -P 1 64k 64k' t.qcow2 >/dev/null
must qemu-img create -q -f qcow2 s.qcow2 1M
must qemu-io -f qcow2 -c 'write -P 2 0 256k' s.qcow2 >/dev/null
cp t.qcow2 q.qcow2 && cp t.qcow2 v.qcow2
qemu-img convert -n -c -O qcow2 s.qcow2 q.qcow2 >q.out 2>q.err; echo "exit $?" >>q.out
"$VBD_IMG" convert -n -c -O qcow2 s.qcow2 v.qcow2 >v.out 2>v.err; echo "exit $?" >>v.out
diff -u q.out v.out || fail "convert -n -c: stdout/exit differ"
# qemu-img's words; the byte may differ: both name the start of the chunk the
# failed write was part of, and qemu-img's chunks are one cluster when compressing
grep -qx "vbd-img: error while writing at byte [0-9]*: Input/output error" v.err || fail "convert -n -c: not the write's error: $(cat v.err)"
qcheck v.qcow2
must qemu-img compare -q q.qcow2 v.qcow2
must qemu-io -f qcow2 -c 'read -P 1 64k 64k' v.qcow2 >/dev/null
echo OK
