#!/bin/bash
# A compressed L2 entry in a qcow2 image with an external data file (never
# valid: compressed clusters live in the image file, a data file has none).
# Its "data" would come from the metadata file: vbd inflated whatever the
# entry pointed at (here the L1 table) and, on a discard, gave up that
# cluster's refcount (the L1 table's cluster then counted 0 while in use).
# QEMU 7.2 refuses the entry on reads and writes ("Compressed cluster entry
# found in image with external data file", the image marked corrupt); vbd
# now does the same in one line, and no release ever follows such an entry.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 -o cluster_size=4k,data_file=img.data base.qcow2 1M
must qemu-io -f qcow2 -c "write -P 0x11 0 8k" base.qcow2 >/dev/null
# guest cluster 0 -> "compressed", one sector at the L1 table (4 KiB clusters: sector count at bit 58)
python3 - base.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(48)
l1 = struct.unpack('>Q', h[40:48])[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); f.write(struct.pack('>Q', (1 << 62) | l1))
PY
no_refcount_loss() { # IMG: no cluster in use counted 0 (what a release of the L1 table's cluster leaves)
    local out
    out=$(qemu-img check "$1" 2>&1)
    ! echo "$out" | grep -q 'refcount=0 reference=1' || fail "a cluster in use lost its refcount: $out"
}
step "read: refused in one line, as QEMU"
cp base.qcow2 img.qcow2
must_fail_with "compressed cluster entry in an image with an external data file" "$VBD_IO" -f qcow2 -r -c "read 0 4k" img.qcow2
must "$VBD_IO" -f qcow2 -r -c "read -P 0x11 4k 4k" img.qcow2 >/dev/null   # the other cluster reads
for cmd in "write -P 0x22 0 4k" "write -P 0x22 1000 100" "discard 0 4k" "write -z 0 4k" "write -z -u 0 4k"; do
    step "$cmd: nothing of the metadata file released"
    cp base.qcow2 img.qcow2
    "$VBD_IO" -f qcow2 -c "$cmd" img.qcow2 >out.txt 2>&1
    echo "vbd-io: $(cat out.txt)"
    [ "$(grep -c . out.txt)" -le 2 ] || fail "$cmd: not one line: $(cat out.txt)"
    no_refcount_loss img.qcow2
    must "$VBD_IO" -f qcow2 -r -c "read -P 0x11 4k 4k" img.qcow2 >/dev/null
done
echo OK
