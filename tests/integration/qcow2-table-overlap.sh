#!/bin/bash
# A refcount table entry or an L1 entry naming a cluster already in use as
# other metadata (a hostile or damaged image): a refcount block on the L1
# table or on an L2 table, an L2 table on the refcount table or on a
# refcount block. A write that allocates changes that block or table, and so
# the other structure: QEMU's overlap check refuses it ("Preventing invalid
# write on metadata") and marks the image corrupt. vbd wrote it: one 4 KiB
# write at 2 MiB + 64 KiB replaced entries of the L1 table or the L2 table
# (the 8 KiB written before at 0 no longer read back), of the refcount table
# or of the refcount block. check -r all "repaired" refcounts through such a
# block (the L1 table destroyed the same way), and so did the read-write open
# of a lazy-refcounts image left dirty (its repair is check -r all). Now
# the write fails with one line naming it and the image is marked corrupt, as
# qemu-io does; check -r leaks repairs nothing and says the refcount
# structure needs a rebuild, check -r all rebuilds it (both as qemu-img),
# and also for a refcount table entry past the end of the file (which it
# left as it was: exit 2, where qemu-img's repair ends clean) or with
# reserved bits or an unaligned offset (check could not open the image at
# all: exit 1, where qemu-img check reports it, exit 2, and -r all repairs).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
# IMG: the offsets of its L1 table, refcount table, refcount block 0, and of the L2 table of L1 entry 0
offsets() {
    python3 - "$1" <<'PY'
import struct, sys
f = open(sys.argv[1], 'rb'); h = f.read(56)
l1, rt = struct.unpack('>Q', h[40:48])[0], struct.unpack('>Q', h[48:56])[0]
f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
print(l1, rt, rb, l2)
PY
}
poke() { # IMG OFFSET VALUE [copied]: a big-endian 64-bit entry (with QCOW_OFLAG_COPIED)
    python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); f.write(struct.pack('>Q', int(sys.argv[3]) | (1 << 63 if len(sys.argv) > 4 else 0)))" "$@"
}
must qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 4M
must qemu-io -f qcow2 -c "write -P 0x11 0 8k" base.qcow2 >/dev/null
read -r l1 rt rb l2 < <(offsets base.qcow2)
echo "L1 table $l1, refcount table $rt, refcount block $rb, L2 table $l2"
cases="refblock-on-l1 refblock-on-l2 l2-on-reftable l2-on-refblock"
make_case() { # CASE: bad.qcow2 and its copy orig.qcow2; $at: the cluster other metadata lies on
    cp base.qcow2 bad.qcow2
    case $1 in
    refblock-on-l1) poke bad.qcow2 "$rt" "$l1"; at=$l1 ;;
    refblock-on-l2) poke bad.qcow2 "$rt" "$l2"; at=$l2 ;;
    l2-on-reftable) poke bad.qcow2 $((l1 + 8)) "$rt" copied; at=$rt ;;
    l2-on-refblock) poke bad.qcow2 $((l1 + 8)) "$rb" copied; at=$rb ;;
    esac
    cp bad.qcow2 orig.qcow2
}
for c in $cases; do
    step "$c: a write that allocates is refused, the image marked corrupt (as qemu-io)"
    make_case $c
    cp orig.qcow2 q.qcow2
    qemu-io -f qcow2 -c "write -P 0x22 2112k 4k" q.qcow2 >q.out 2>&1
    grep -q "Preventing invalid write on metadata" q.out || fail "qemu-io no longer refuses $c: $(cat q.out)"
    out=$("$VBD_IO" -f qcow2 -c "write -P 0x22 2112k 4k" bad.qcow2 2>&1) && fail "$c: the write succeeded: $out"
    echo "$out"
    echo "$out" | grep -q "is corrupt: .* on other metadata" || fail "$c: no line naming the corruption: $out"
    [ "$(echo "$out" | grep -c .)" -le 2 ] || fail "$c: more than the error and the failed write: $out"
    cmp -s -i "$at:$at" -n 4096 bad.qcow2 orig.qcow2 || fail "$c: the write changed the cluster at $at"
    qemu-img info bad.qcow2 | grep -q "corrupt: true" || fail "$c: qemu-img does not see the image marked corrupt"
    must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" bad.qcow2 >/dev/null
    must "$VBD_IO" -f qcow2 -r -c "read -P 0x11 0 8k" bad.qcow2 >/dev/null
done
for c in $cases; do
    step "$c: check -r leaks repairs nothing: the refcount structure needs a rebuild (as qemu-img)"
    make_case $c
    cp orig.qcow2 q.qcow2
    qemu-img check -r leaks q.qcow2 >q.out 2>&1; qr=$?
    "$VBD_IMG" check -r leaks bad.qcow2 >v.out 2>&1; vr=$?
    cat v.out
    [ $vr = $qr ] || fail "$c: check -r leaks exit $vr, qemu-img's $qr"
    grep -qx "ERROR need to rebuild refcount structures" v.out || fail "$c: check -r leaks: $(cat v.out)"
    cmp -s bad.qcow2 orig.qcow2 || fail "$c: check -r leaks changed the image"
done
for c in $cases; do
    step "$c: check -r all rebuilds the refcount structure as qemu-img does; the data stays"
    make_case $c
    "$VBD_IMG" check -r all bad.qcow2 >v.out 2>&1; vr=$?
    cat v.out
    cp orig.qcow2 q.qcow2
    qemu-img check -r all q.qcow2 >q.out 2>&1; qr=$?
    [ $vr = $qr ] || fail "$c: check -r all exit $vr, qemu-img's $qr"
    grep -qx "Rebuilding refcount structure" v.out || fail "$c: check -r all did not rebuild: $(cat v.out)"
    # what is left for qemu-img check is what it left itself
    qemu-img check q.qcow2 >/dev/null 2>&1; qr=$?
    qemu-img check bad.qcow2 >q.out 2>&1; vr=$?
    [ $vr = $qr ] || fail "$c: qemu-img check after vbd's repair: exit $vr, after its own $qr: $(cat q.out)"
    must "$VBD_IO" -f qcow2 -r -c "read -P 0x11 0 8k" bad.qcow2 >/dev/null
    must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" bad.qcow2 >/dev/null
done
step "a refcount table entry past the end of the file: check -r all rebuilds the structure without it (as qemu-img)"
cp base.qcow2 out.qcow2
poke out.qcow2 $((rt + 8)) $((139 * 4096))
cp out.qcow2 q.qcow2
qemu-img check -r all q.qcow2 >q.out 2>&1; qr=$?
"$VBD_IMG" check -r all out.qcow2 >v.out 2>&1; vr=$?
cat v.out
[ $vr = $qr ] || fail "check -r all exit $vr, qemu-img's $qr"
grep -qx "Repairing refcount block 1 is outside image" q.out || fail "qemu-img no longer says: $(cat q.out)"
grep -qx "Repairing refcount block 1 is outside image" v.out || fail "check -r all: $(cat v.out)"
qcheck out.qcow2
must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" out.qcow2 >/dev/null
for bad in "with reserved bits" unaligned; do
    step "refcount table entry 0 $bad: check reports it, -r leaks repairs nothing, -r all rebuilds (as qemu-img)"
    cp base.qcow2 rb.qcow2
    case $bad in with*) poke rb.qcow2 "$rt" $((rb | 1)) ;; unaligned) poke rb.qcow2 "$rt" $((rb + 512)) ;; esac
    cp rb.qcow2 rb-orig.qcow2
    for mode in "" "-r leaks" "-r all"; do
        cp rb-orig.qcow2 q.qcow2
        qemu-img check $mode q.qcow2 >q.out 2>&1; qr=$?
        "$VBD_IMG" check $mode rb.qcow2 >v.out 2>&1; vr=$?
        echo "check $mode: exit $vr: $(grep -v 'cluster [0-9]* refcount' v.out | head -3 | tr '\n' '|')"
        # exit: 2 (corrupt), 1 (-r leaks: needs a rebuild), 0 (-r all: rebuilt clean). qemu-img 7.2 differs
        # twice: check of the unaligned entry exits 1 ("Can't get refcount for cluster N" for each cluster it
        # covers: internal errors), and its -r all of the reserved bits fails (its new refcount block would go
        # where the old one is, which its own overlap check refuses: "ERROR writing refblock", the image
        # marked corrupt, exit 1)
        case $mode in "") want=2 ;; "-r leaks") want=1 ;; *) want=0 ;; esac
        [ $vr = $want ] || fail "$bad: check $mode exit $vr ($want expected; qemu-img's $qr): $(cat v.out)"
        line=$(grep "^ERROR refcount" q.out | head -1)
        grep -qxF "$line" v.out || fail "$bad: check $mode lacks qemu-img's '$line': $(cat v.out)"
        [ "$mode" = "-r all" ] || cmp -s rb.qcow2 rb-orig.qcow2 || fail "$bad: check $mode changed the image"
    done
    qcheck rb.qcow2
    must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" rb.qcow2 >/dev/null
    must_fail_with "not cluster aligned" "$VBD_IO" -f qcow2 -c "write -P 0x22 0 4k" rb-orig.qcow2
done
step "a lazy-refcounts image left dirty, its refcount block on the L1 table: the repair at a read-write open"
must qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on lazy.qcow2 4M
must qemu-io -f qcow2 -c "write -P 0x11 0 8k" lazy.qcow2 >/dev/null
read -r l1 rt rb l2 < <(offsets lazy.qcow2)
poke lazy.qcow2 "$rt" "$l1"
python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(79); b=f.read(1)[0]; f.seek(79); f.write(bytes([b | 1]))" lazy.qcow2 # incompatible feature bit 0: dirty
cp lazy.qcow2 q.qcow2
must qemu-io -f qcow2 -c "read -P 0x11 0 8k" q.qcow2 >/dev/null # QEMU rebuilds the refcount structure at the open
must "$VBD_IO" -f qcow2 -c "read -P 0x11 0 8k" lazy.qcow2 >/dev/null
must qemu-img check q.qcow2 >/dev/null
must qemu-img check lazy.qcow2 >/dev/null
must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" lazy.qcow2 >/dev/null
echo OK
