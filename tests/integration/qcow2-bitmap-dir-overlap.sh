#!/bin/bash
# A guest write must never land on the bitmap directory. A corrupt qcow2
# image whose L2 entry for guest 4k-8k names the bitmap directory's cluster
# (flag COPIED, refcount 1: an overwrite in place): QEMU 7.2's overlap
# check refuses the write ("Preventing invalid write on metadata (overlaps
# with bitmap directory)") and marks the image corrupt. vbd's check did not
# look at the directory: the write went onto it and succeeded, then the
# close wrote the directory back over the guest's bytes: guest 4k-8k read
# as the directory, not as the acknowledged write (qemu-io's "read -P 0x33
# 4k 4k" failed its pattern; the image looked clean: no corrupt flag, b0
# listed). Now vbd refuses the
# write as QEMU does: the image ends byte for byte as QEMU leaves it
# (marked corrupt, b0 in-use: the bitmaps of a corrupt image are not
# stored).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
# dir_off IMG: the bitmap directory's offset; alias_dir IMG OFF: L2 entry of guest cluster 1 := the directory, COPIED
dir_off() {
    python3 - "$1" <<'PY'
import struct, sys
h = open(sys.argv[1], 'rb').read(65536)
p = struct.unpack('>I', h[100:104])[0]
while p + 8 <= len(h):
    t, l = struct.unpack('>II', h[p:p + 8])
    if t == 0: break
    if t == 0x23852875: print(struct.unpack('>Q', h[p + 24:p + 32])[0])
    p += 8 + ((l + 7) & ~7)
PY
}
alias_dir() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(512)
l1 = struct.unpack('>Q', h[40:48])[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2 + 8); f.write(struct.pack('>Q', (1 << 63) | int(sys.argv[2])))
PY
}
# 4 KiB clusters; data at 0 (L1[0]'s L2 table) and 10M; an enabled bitmap b0
must qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 64M
must qemu-io -f qcow2 -c "write -P 0x11 0 4k" -c "write -P 0x22 10M 4k" img.qcow2 >/dev/null
must qemu-img bitmap --add -g 512 img.qcow2 b0
dir=$(dir_off img.qcow2)
[ -n "$dir" ] || fail "no bitmap directory in img.qcow2"
alias_dir img.qcow2 "$dir"

step "QEMU: a write to guest 4k (the bitmap directory's cluster) is refused"
cp img.qcow2 q.qcow2
out=$(qemu-io -f qcow2 -c "write -P 0x33 4k 4k" q.qcow2 2>&1)
echo "$out" | grep -q "overlaps with bitmap directory" || fail "qemu-io did not refuse the write: $out"

step "vbd: the same write is refused, the image left as QEMU leaves it"
cp img.qcow2 v.qcow2
out=$("$VBD_IO" -f qcow2 -c "write -P 0x33 4k 4k" v.qcow2 2>&1)
echo "$out"
! echo "$out" | grep -q "^wrote" || fail "vbd-io wrote onto the bitmap directory: $out"
echo "$out" | grep -q "corrupt" || fail "vbd-io did not say the image is corrupt: $out"
cmp -s v.qcow2 q.qcow2 || fail "vbd's image differs from QEMU's: $(cmp v.qcow2 q.qcow2)"
qemu-img info --output=json q.qcow2 | grep -q '"corrupt": true' || fail "QEMU did not mark its copy corrupt"
info=$(qemu-img info --output=json v.qcow2) || fail "qemu-img info cannot read vbd's image: $info"
echo "$info" | grep -q '"corrupt": true' || fail "vbd did not mark the image corrupt: $info"
echo "$info" | grep -q '"name": "b0"' || fail "bitmap b0 is gone: $info"
echo OK
