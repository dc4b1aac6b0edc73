#!/bin/bash
# A refcount table entry that names a cluster already in use as other
# metadata (the refcount table itself, the L1 table): the next refcount
# update that block covers writes over that table. qemu-img check reports
# "ERROR refcount block N refcount=M" and -r all rebuilds the refcount
# structure. vbd's check counted the extra reference as an ordinary
# refcount error: -r all "repaired" it by raising the cluster's refcount to
# 2 and then reported the image clean (qemu-img check disagreed). It now
# reports the block as qemu-img does, and -r all rebuilds the refcount
# structure as qemu-img's does (before: exit 2, nothing rebuilt; where such
# a block covered clusters in use, the repair was written over the other
# table: qcow2-table-overlap.sh).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 1M
must qemu-io -f qcow2 -c "write -P 0x11 0 8k" base.qcow2 >/dev/null
poke_reftable() { # IMG INDEX reftable|l1: reftable[INDEX] = the reftable's or the L1 table's offset
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(56)
l1, rt = struct.unpack('>Q', h[40:48])[0], struct.unpack('>Q', h[48:56])[0]
f.seek(rt + 8 * int(sys.argv[2])); f.write(struct.pack('>Q', rt if sys.argv[3] == 'reftable' else l1))
PY
}
for what in reftable l1; do
    step "refcount table entry 62 names the $what"
    cp base.qcow2 img.qcow2
    poke_reftable img.qcow2 62 $what
    q=$(qemu-img check img.qcow2 2>&1 | grep 'refcount block')
    v=$("$VBD_IMG" check img.qcow2 2>&1); rc=$?
    echo "qemu-img: $q"
    [ $rc = 2 ] || fail "vbd-img check: exit $rc (2 expected): $v"
    echo "$v" | grep -qxF "$q" || fail "vbd-img check lacks qemu-img's line '$q': $v"
    # -r all rebuilds the refcount structure, as qemu-img's does
    cp img.qcow2 q.qcow2
    qemu-img check -r all q.qcow2 >/dev/null 2>&1; qr=$?
    out=$("$VBD_IMG" check -r all img.qcow2 2>&1); rc=$?
    [ $rc = $qr ] || fail "check -r all: exit $rc, qemu-img's $qr: $out"
    echo "$out" | grep -qxF "$q" || fail "check -r all lacks '$q': $out"
    echo "$out" | grep -qx 'Rebuilding refcount structure' || fail "check -r all did not rebuild: $out"
    qcheck img.qcow2
    must "$VBD_IO" -f qcow2 -r -c "read -P 0x11 0 8k" img.qcow2 >/dev/null
    must qemu-io -f qcow2 -r -c "read -P 0x11 0 8k" img.qcow2 >/dev/null
done
echo OK
