#!/bin/bash
# vbd-img check --output=json prints what qemu-img check prints (every
# counter: allocated, fragmented, compressed, end offset, corruptions; the
# exit code; the messages) over a matrix of images made by qemu-img/qemu-io:
# cluster sizes, extended L2, external data file, compressed clusters (zlib,
# zstd), snapshots, backing, preallocation, refcount widths, lazy refcounts,
# bitmaps; then the same images truncated (corrupt: exit 2, not a failure
# to open), L1/L2 entries with reserved bits set, and a cluster with more
# references than the refcount width counts.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
mixed_data mixed.raw 11
agree() { # FILE: same exit code and JSON as qemu-img check
    "$VBD_IMG" check --output=json "$1" >v.json 2>v.err; vr=$?
    qemu-img check --output=json "$1" >q.json 2>q.err; qr=$?
    [ $vr = $qr ] || fail "check exit codes differ on $1: vbd $vr, qemu $qr ($(head -2 v.err))"
    diff -u q.json v.json >&2 || fail "check JSON differs on $1"
    # the same findings (qemu-img reports them in another order)
    diff -u <(sort q.err) <(sort v.err) >&2 || fail "check messages differ on $1"
    echo $vr
}
mk() { # NAME OPTS SIZE QEMU-IO-COMMANDS...
    local n=$1 o=$2 sz=$3; shift 3
    must qemu-img create -q -f qcow2 -o "$o" "$n.qcow2" "$sz"
    for c in "$@"; do must qemu-io -f qcow2 -c "$c" "$n.qcow2" >/dev/null; done
}
step "the matrix"
mk c512 cluster_size=512 4M "write -P 1 0 1M" "write -P 2 2M 100k" "write -P 3 512k 4k"
mk c4k cluster_size=4096 16M "write -P 1 0 3M" "write 8M 64k" "write -P 3 100k 4k" "discard 2M 64k"
mk c64k cluster_size=64k 64M "write -P 1 0 3M" "write 40M 64k" "write -P 3 100k 4k" "write -z 1M 128k"
mk c2m cluster_size=2M 64M "write -P 1 0 3M" "write 40M 64k"
mk ext extended_l2=on 64M "write -P 1 0 3M" "write 40M 4k" "write -z 1M 4k" "write -z 8M 4k"
mk ext2m extended_l2=on,cluster_size=2M 64M "write -P 1 0 100k" "write 40M 4k" "write -z 50k 32k"
mk df data_file=df.raw 16M "write -P 1 0 1M" "write -P 2 8M 64k"
mk dfraw data_file=dfraw.raw,data_file_raw=on 16M "write -P 1 0 1M" "write -P 2 8M 64k"
must qemu-img convert -c -O qcow2 mixed.raw comp.qcow2
must qemu-img snapshot -c s0 comp.qcow2
must qemu-io -f qcow2 -c "write -P 7 0 100k" comp.qcow2 >/dev/null
must qemu-img convert -c -O qcow2 -o cluster_size=4k mixed.raw comp4k.qcow2
mk snap cluster_size=64k 16M "write -P 1 0 1M"
must qemu-img snapshot -c s1 snap.qcow2
must qemu-io -f qcow2 -c "write -P 2 0 256k" -c "write -P 3 5M 64k" snap.qcow2 >/dev/null
mk base cluster_size=64k 16M "write -P 1 0 4M"
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c "write -P 2 1M 4k" -c "write -P 3 3M 64k" top.qcow2 >/dev/null
for p in metadata falloc full; do mk pre-$p preallocation=$p 8M "write -P 1 1M 64k"; done
must qemu-img create -q -f qcow2 empty.qcow2 1G
mk rc1 refcount_bits=1 16M "write -P 1 0 1M" "write -P 2 5M 64k"
mk rc64 refcount_bits=64,cluster_size=4k 16M "write -P 1 0 1M" "write -P 2 5M 64k"
mk lazy lazy_refcounts=on 16M "write -P 1 0 1M" "write -P 2 5M 64k"
mk bm cluster_size=64k 16M "write -P 1 0 1M"
must qemu-img bitmap --add bm.qcow2 b0
must qemu-io -f qcow2 -c "write -P 2 5M 64k" bm.qcow2 >/dev/null
must qemu-img bitmap --add -g 4k bm.qcow2 b1
must qemu-img convert -c -O qcow2 -o extended_l2=on mixed.raw compx.qcow2
must qemu-io -f qcow2 -c "write -P 1 100k 4k" -c "write -z 2M 4k" compx.qcow2 >/dev/null
mk zstd compression_type=zstd 16M "write -c -P 1 0 64k" "write -c -P 2 1M 64k"
mk dfx data_file=dfx.raw,extended_l2=on 16M "write -P 1 0 1M" "write -z 4M 4k" "write -P 2 8M 4k"
mk snap4k cluster_size=4k 8M "write -P 1 0 1M"
must qemu-img snapshot -c a snap4k.qcow2
must qemu-io -f qcow2 -c "write -P 2 100k 300k" snap4k.qcow2 >/dev/null
must qemu-img snapshot -c b snap4k.qcow2
must qemu-io -f qcow2 -c "write -P 3 0 8k" -c "discard 500k 100k" snap4k.qcow2 >/dev/null
must qemu-img snapshot -d a snap4k.qcow2
images=$(ls *.qcow2)
for f in $images; do
    r=$(agree "$f") || exit 1
    [ "$r" = 0 ] || fail "$f: check exited $r on a clean image"
done
# the counters must not be trivially equal: 512-byte clusters are fragmented
# per L2 table (vbd used to say 35 where qemu-img says 0), compressed clusters
# count as fragmented, and a data file's cluster at offset 0 is allocated
grep -q '"compressed-clusters"' <("$VBD_IMG" check --output=json comp.qcow2) || fail "no compressed clusters counted"
step "truncated images: corrupt (exit 2), same counters as qemu-img"
for f in c512 c64k comp snap snap4k ext df pre-metadata; do
    for t in 512 65536 65600 200000 1000000; do
        cp $f.qcow2 t.qcow2; truncate -s $t t.qcow2
        [ "$(stat -c %s $f.qcow2)" -gt $t ] || continue
        r=$(agree t.qcow2) || fail "(truncated $f to $t)"
        [ "$r" = 2 ] || fail "$f truncated to $t: check exited $r, expected 2"
    done
done
step "L1 and L2 entries with reserved bits set: corruption (exit 2)"
set_bits() { # FILE l1|l2 MASK: OR MASK into the first L1 entry or the first entry of its L2 table
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); mask = int(sys.argv[3], 0)
f.seek(40); l1 = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); e = struct.unpack('>Q', f.read(8))[0]
at = l1 if sys.argv[2] == 'l1' else e & 0x00fffffffffffe00
f.seek(at); v = struct.unpack('>Q', f.read(8))[0]
f.seek(at); f.write(struct.pack('>Q', v | mask))
PY
}
for spec in "l1 0x1000000000000000" "l1 0x100" "l2 0x0200000000000000" "l2 0x2"; do
    cp c64k.qcow2 r.qcow2; set_bits r.qcow2 $spec
    r=$(agree r.qcow2) || fail "(reserved bits $spec)"
    [ "$r" = 2 ] || fail "reserved bits $spec: check exited $r, expected 2"
    grep -q "reserved bits set" v.err || fail "reserved bits $spec: no message: $(cat v.err)"
done
step "hostile offsets (snapshot L1 table, L2 table, data cluster near 2^64 or far past the end): reported, no crash"
hostile() { # SRC WHAT: put a huge offset in; check must report corruption (2) or an error (1), as qemu-img (1 or 2)
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); what = sys.argv[2]
f.seek(40); l1 = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); e = struct.unpack('>Q', f.read(8))[0]
if what == 'snapl1':
    # 2 MiB of L1 entries 1 MiB below 2^64: offset + length wraps around
    f.seek(64); so = struct.unpack('>Q', f.read(8))[0]; f.seek(so); f.write(struct.pack('>QI', 0xfffffffffff00000, 1 << 18))
elif what == 'l2':
    f.seek(l1); f.write(struct.pack('>Q', (1 << 63) | 0x00fffffffff00000))
else:
    f.seek(e & 0x00fffffffffffe00); f.write(struct.pack('>Q', (1 << 63) | 0x00fffffffff00000))
PY
}
for what in snapl1 l2 data; do
    cp snap.qcow2 h.qcow2; hostile h.qcow2 $what
    "$VBD_IMG" check h.qcow2 >/dev/null 2>v.err; vr=$?
    qemu-img check h.qcow2 >/dev/null 2>&1; qr=$?
    case $vr in 1|2) ;; *) fail "hostile $what: vbd-img check exited $vr: $(tail -3 v.err)";; esac
    case $qr in 1|2) ;; *) fail "hostile $what: qemu-img check exited $qr (test premise)";; esac
done
step "more references than the refcount width counts: qemu-img's overflow errors, nothing repaired"
# refcount_bits=1 and 64 KiB clusters: two more L2 entries name the first
# data cluster (3 references, 1 countable); refcount_bits=2 and three more
# (4 references, 3 countable). vbd-img said "refcount=1 reference=3" (and
# "Repairing" under -r all, with nothing written)
dup_l2() { # FILE N: N more entries of the first L2 table name its first data cluster
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
f.seek(40); l1 = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); e = f.read(8)
for i in range(int(sys.argv[2])):
    f.seek(l2 + 8 * (i + 1)); f.write(e)
PY
}
mk ov1 refcount_bits=1 4M "write -P 1 0 64k"
dup_l2 ov1.qcow2 2
mk ov2 refcount_bits=2 4M "write -P 1 0 64k"
dup_l2 ov2.qcow2 3
for f in ov1 ov2; do
    r=$(agree $f.qcow2) || exit 1
    [ "$r" = 2 ] || fail "$f: check exited $r, expected 2"
    grep -q "ERROR: overflow cluster offset=0x" v.err || fail "$f: no overflow error: $(cat v.err)"
    for o in all leaks; do
        for k in q v; do cp $f.qcow2 $k.qcow2; done
        qr=0 vr=0
        qemu-img check -r $o q.qcow2 >q.out 2>&1 || qr=$?
        "$VBD_IMG" check -r $o v.qcow2 >v.out 2>&1 || vr=$?
        [ $vr = $qr ] || fail "$f check -r $o: exit $vr, qemu-img's $qr"
        diff -u <(sort q.out) <(sort v.out) >&2 || fail "$f check -r $o: the report differs"
        cmp q.qcow2 v.qcow2 || fail "$f check -r $o: the image differs from qemu-img's"
    done
done

step "every image of the matrix is still clean for qemu-img"
for f in $images; do qcheck "$f"; done
echo OK
