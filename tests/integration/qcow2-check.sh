#!/bin/bash
# vbd-img check on qcow2 agrees with qemu-img check (exit codes, counts,
# JSON) on clean, leaking and corrupt images, and -r leaks / -r all repair
# them so that qemu-img check finds them clean.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 img.qcow2 64M
must qemu-io -f qcow2 -c "write -P 0x5a 0 1M" -c "write -P 0x5b 20M 64k" img.qcow2 >/dev/null
cp img.qcow2 clean.qcow2
agree() { # FILE EXPECTED-EXIT
    "$VBD_IMG" check --output=json "$1" >v.json 2>/dev/null; vr=$?
    qemu-img check --output=json "$1" >q.json 2>/dev/null; qr=$?
    [ $vr = $qr ] || fail "exit codes differ on $1: vbd $vr, qemu $qr"
    [ $vr = "$2" ] || fail "check of $1 exited $vr, expected $2"
    diff -u q.json v.json || fail "check JSON differs on $1"
}
step "clean image"
agree img.qcow2 0
step "a leaked cluster (refcount 1, no reference): exit 3, -r leaks repairs"
size=$(stat -c %s img.qcow2)
truncate -s $((size + 4 * 65536)) img.qcow2   # a cluster inside the file that nothing references
qcow2_set_refcount img.qcow2 $((size / 65536 + 1)) 1
agree img.qcow2 3
must "$VBD_IMG" check -q -r leaks img.qcow2
qcheck img.qcow2
step "a data cluster with refcount 0: corruption (exit 2), -r all repairs"
cp clean.qcow2 img.qcow2
data=$(qemu-img map --output=json img.qcow2 | python3 -c 'import json,sys; print([e["offset"] for e in json.load(sys.stdin) if e["data"]][0] // 65536)')
qcow2_set_refcount img.qcow2 "$data" 0
agree img.qcow2 2
# -r leaks cannot repair a cluster in use whose count is 0 (qemu-img would
# rebuild the refcount structure): nothing is written, exit 1, qemu-img's words
cp img.qcow2 before.qcow2
"$VBD_IMG" check -r leaks img.qcow2 >/dev/null 2>v.err; [ $? = 1 ] || fail "-r leaks must not fix corruption"
cmp -s img.qcow2 before.qcow2 || fail "-r leaks changed a corrupt image"
grep -qx "ERROR need to rebuild refcount structures" v.err && grep -qx "vbd-img: Check failed: Input/output error" v.err ||
    fail "-r leaks on a corrupt image: $(cat v.err)"
# (qemu-img -r all rebuilds the refcount structures at the end of the file; vbd fixes the entries in place,
# so image-end-offset differs after a repair, and both images are clean afterwards)
must "$VBD_IMG" check -q -r all img.qcow2
qcheck img.qcow2
must qemu-io -f qcow2 -c "read -P 0x5a 0 1M" img.qcow2 >/dev/null
echo OK
