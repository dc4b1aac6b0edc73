#!/bin/bash
# A qed image whose L1 entry names the L1 table itself as an L2 table, or
# whose L2 entry names the L1 table as a data cluster: qemu-io 7.2 writes
# the new L2 entry (or the guest's data) into the L1 table, and the image's
# map is gone (shown below as the premise). vbd refuses such a write with
# one line naming the L1 table (as its qcow2 refuses a write onto other
# metadata), the file unchanged; writes elsewhere in the image still work
# and qemu-io reads them; check reports the image as qemu-img does.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
# 4 KiB clusters, 4-cluster tables: an L2 table maps 8 MiB, the L1 table is at 4096
must qemu-img create -q -f qed -o cluster_size=4096 base.qed 64M
must qemu-io -f qed -c 'write -P 0x11 0 4k' -c 'write -P 0x22 8M 4k' base.qed >/dev/null
point() { # IMG l1|l2: L1 entry 1 -> the L1 table (l1), or cluster 0's L2 entry -> the L1 table (l2)
    python3 - "$@" <<'EOF' || fail "patching $1"
import struct, sys
f = open(sys.argv[1], 'r+b')
f.seek(40); l1, = struct.unpack('<Q', f.read(8))
assert l1 == 4096, l1
if sys.argv[2] == 'l1':
    f.seek(l1 + 8); f.write(struct.pack('<Q', l1))
else:
    f.seek(l1); l2, = struct.unpack('<Q', f.read(8))
    f.seek(l2); f.write(struct.pack('<Q', l1))
EOF
}
l1_bytes() { python3 -c "import sys; f=open(sys.argv[1],'rb'); f.seek(4096); sys.stdout.write(f.read(16384).hex())" "$1"; }
refused() { # IMG WHAT VBD-IO-COMMAND: the write fails, one line names the L1 table, the file is unchanged
    local sum out lines
    sum=$(md5sum <"$1")
    out=$("$VBD_IO" -f qed -c "$3" "$1" 2>&1) && fail "$2: the write onto the L1 table went through: $out"
    case "$out" in *AddressSanitizer* | *runtime\ error*) fail "$2: sanitizer: $out" ;; esac
    lines=$(printf '%s\n' "$out" | grep -c 'lies on the L1 table')
    [ "$lines" = 1 ] || fail "$2: not one line naming the L1 table: $out"
    [ "$(md5sum <"$1")" = "$sum" ] || fail "$2: the image changed"
}

step "premise: qemu-io 7.2 writes an L2 entry into the L1 table named as an L2 table"
cp base.qed q.qed; point q.qed l1
before=$(l1_bytes q.qed)
must qemu-io -f qed -c 'write -P 0x33 8212k 4k' q.qed >/dev/null
[ "$(l1_bytes q.qed)" != "$before" ] || fail "premise: qemu-io left the L1 table as it was"

step "vbd: the same write (data, and zeroes) refused, the file unchanged; a write through a sound table works"
cp base.qed v.qed; point v.qed l1
refused v.qed "write through L1 entry 1" 'write -P 0x33 8212k 4k'
refused v.qed "write -z through L1 entry 1" 'write -z 8256k 4k'
must "$VBD_IO" -f qed -c 'write -P 0x44 4k 4k' v.qed >/dev/null
must qemu-io -f qed -c 'read -P 0x11 0 4k' -c 'read -P 0x44 4k 4k' v.qed >/dev/null
"$VBD_IMG" check v.qed >/dev/null 2>&1; vr=$?
qemu-img check v.qed >/dev/null 2>&1; qr=$?
[ $vr = $qr ] && [ $vr = 2 ] || fail "check of the image: vbd-img exit $vr, qemu-img exit $qr (both should say corrupt: 2)"

step "a data cluster named at the L1 table: qemu-io overwrites the L1 table, vbd refuses"
cp base.qed q.qed; point q.qed l2
before=$(l1_bytes q.qed)
must qemu-io -f qed -c 'write -P 0x55 0 4k' q.qed >/dev/null
[ "$(l1_bytes q.qed)" != "$before" ] || fail "premise: qemu-io left the L1 table as it was"
cp base.qed v.qed; point v.qed l2
refused v.qed "data write onto the L1 table" 'write -P 0x55 0 4k'
refused v.qed "zero write onto the L1 table" 'write -z 0 4k'
must "$VBD_IO" -f qed -c 'write -P 0x66 8M 4k' v.qed >/dev/null
must qemu-io -f qed -c 'read -P 0x66 8M 4k' v.qed >/dev/null
echo OK
