#!/bin/bash
# qcow2 L2 entries that are unaligned or use reserved bits, checked and
# repaired (-r all) by vbd-img check beside qemu-img check 7.2 on copies of
# the same image: the same exit code, summary and findings (qemu-img's
# words), and after the repair the same image to qemu-img (its check and
# the guest's data). qemu-img repairs an unaligned preallocated (zero)
# cluster into a plain zero cluster ("Repairing offset=...: Preallocated
# cluster is not properly aligned"); one holding data it reports ("Data
# cluster is not properly aligned") and counts by the clusters its offset
# falls in; reserved bits it reports only. vbd called both "Cluster is not
# properly aligned", repaired neither and counted no cluster for them, so
# that -r all dropped the refcount of a cluster the entry still names.
# Then images mutated word by word in their L1 and L2 tables: no image
# ends worse after vbd's repair than after qemu-img's.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
mut() { # IMG L2-INDEX HOW [VALUE]: change one entry of the first L2 table
    python3 - "$@" <<'EOF' || fail "patching $1"
import struct, sys
f = open(sys.argv[1], 'r+b'); idx = int(sys.argv[2]); how = sys.argv[3]
f.seek(20); cbits, = struct.unpack('>I', f.read(4))
f.seek(72); incompat, = struct.unpack('>Q', f.read(8))
esize = 16 if incompat & 16 else 8
f.seek(40); l1, = struct.unpack('>Q', f.read(8))
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2 + esize * idx); e, = struct.unpack('>Q', f.read(8))
e = {'unalign': e + 0x200, 'zero-unalign': (e + 0x200) | 1, 'reserved': e | 0x0200000000000000,
     'reserved-low': e | 0x2, 'set': int(sys.argv[4], 0) if len(sys.argv) > 4 else e}[how]
f.seek(l2 + esize * idx); f.write(struct.pack('>Q', e))
EOF
}
same_check() { # IMG ARGS...: vbd-img check and qemu-img check on copies (q/i.qcow2, v/i.qcow2): exit code, stdout, findings
    local img=$1; shift
    mkdir -p q v; cp "$img" q/i.qcow2; cp "$img" v/i.qcow2
    (cd q && qemu-img check "$@" i.qcow2) >q.out 2>q.err; qr=$?
    (cd v && "$VBD_IMG" check "$@" i.qcow2) >v.out 2>v.err; vr=$?
    [ $vr = $qr ] || fail "check $* of $img: exit vbd $vr, qemu $qr ($(cat v.err))"
    diff -u q.out v.out >&2 || fail "check $* of $img: stdout differs"
    diff -u <(sort q.err) <(sort v.err) >&2 || fail "check $* of $img: findings differ"
    if [ $# -gt 0 ]; then # the repaired images: the same to qemu-img, the same guest data
        diff -u <(cd q && qemu-img check --output=json i.qcow2 2>&1) <(cd v && qemu-img check --output=json i.qcow2 2>&1) >&2 ||
            fail "check $* of $img: qemu-img check of the repaired images differs"
        # (an unaligned data cluster stays unreadable to qemu-img: then to both)
        if qemu-img convert -O raw q/i.qcow2 q.raw 2>/dev/null; then
            must qemu-img convert -O raw v/i.qcow2 v.raw
            cmp q.raw v.raw || fail "check $* of $img: the repaired images' data differ"
        else
            qemu-img convert -O raw v/i.qcow2 v.raw 2>/dev/null && fail "check $* of $img: readable only after vbd's repair"
        fi
    fi
    return 0
}
must qemu-img create -q -f qcow2 base.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -z 64k 64k' -c 'write -P 2 128k 64k' -c 'write -P 3 1M 64k' \
    base.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k xl2.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 64k 4k' -c 'write -P 3 1M 64k' xl2.qcow2 >/dev/null

step "an unaligned preallocated zero cluster: repaired into a zero cluster, as qemu-img"
cp base.qcow2 z.qcow2; mut z.qcow2 0 zero-unalign
same_check z.qcow2
grep -q 'ERROR offset=50200: Preallocated cluster is not properly aligned; L2 entry corrupted.' v.err ||
    fail "no finding for the preallocated cluster: $(cat v.err)"
same_check z.qcow2 -r all
grep -q '^Repairing offset=50200: Preallocated cluster' v.err || fail "not repaired: $(cat v.err)"
[ $vr = 0 ] || fail "the preallocated cluster left the image corrupt (exit $vr)"
qcheck v/i.qcow2
must qemu-io -f qcow2 -c 'read -P 0 0 64k' -c 'read -P 2 128k 64k' v/i.qcow2 >/dev/null

step "an unaligned data cluster: reported in qemu-img's words, counted as qemu-img counts it; -r all the same"
cp base.qcow2 d.qcow2; mut d.qcow2 0 unalign
same_check d.qcow2
grep -q 'ERROR offset=50200: Data cluster is not properly aligned; L2 entry corrupted.' v.err ||
    fail "no finding for the data cluster: $(cat v.err)"
same_check d.qcow2 --output=json
same_check d.qcow2 -r leaks
same_check d.qcow2 -r all

step "extended L2: an unaligned cluster with no allocated subcluster is repaired (to an unallocated entry), one with data is not"
cp xl2.qcow2 x.qcow2; mut x.qcow2 2 set 0x8000000000070200
same_check x.qcow2
same_check x.qcow2 -r all
cp xl2.qcow2 x.qcow2; mut x.qcow2 0 unalign
same_check x.qcow2
same_check x.qcow2 -r all

step "reserved bits in an L2 entry: reported, not repaired, by both"
for how in reserved reserved-low; do
    cp base.qcow2 r.qcow2; mut r.qcow2 2 $how
    same_check r.qcow2
    grep -q 'reserved bits set' v.err || fail "$how: no finding: $(cat v.err)"
    same_check r.qcow2 -r all
    [ $vr = 2 ] || fail "$how: -r all exit $vr, qemu-img's is 2"
done

step "entries mutated one by one: after -r all, no image worse for qemu-img than after qemu-img's own repair"
# qemu-img check's exit codes from the best to the worst: 0 clean, 3 leaks, 1 check error, 2 corrupt
rank() { case $1 in 0) echo 0 ;; 3) echo 1 ;; 1) echo 2 ;; *) echo 3 ;; esac; }
n=0
for img in base.qcow2 xl2.qcow2; do
    for idx in 0 2; do # a data cluster, an unallocated one
        # unaligned data, unaligned preallocated, reserved bit on another table's cluster, past the end, compressed
        for v in 0x8000000000050200 0x8000000000000201 0x0100000000030000 0x80000000fff00000 0x40000000000a0000; do
            cp $img m.qcow2; mut m.qcow2 $idx set $v
            cp m.qcow2 q.qcow2; cp m.qcow2 v.qcow2
            qemu-img check -r all q.qcow2 >/dev/null 2>&1
            "$VBD_IMG" check -r all v.qcow2 >v.out 2>v.err; vr=$?
            case $(cat v.out v.err) in *AddressSanitizer* | *runtime\ error*) fail "$img entry $idx = $v: sanitizer" ;; esac
            [ $vr -le 3 ] || fail "$img entry $idx = $v: vbd-img check -r all exited $vr"
            qemu-img check q.qcow2 >/dev/null 2>&1; qa=$?
            qemu-img check v.qcow2 >/dev/null 2>&1; va=$?
            [ "$(rank $va)" -le "$(rank $qa)" ] ||
                fail "$img entry $idx = $v: after vbd's repair qemu-img check exits $va, after qemu-img's $qa"
            n=$((n + 1))
        done
    done
done
echo "$n mutated images"
echo OK
