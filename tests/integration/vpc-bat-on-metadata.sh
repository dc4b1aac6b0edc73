#!/bin/bash
# A dynamic VHD whose BAT entry puts a block on the image's own metadata
# (the footer's copy at 0, the dynamic header, the BAT): a guest write to
# that block landed on the metadata, was acknowledged, and the next open
# refused the image as truncated ("a VHD block ends at ... past the end of
# the file": the write had replaced BAT entries), every block lost. QEMU
# 7.2 opens and writes such an image alike (its next open: "free_data_block_offset
# points after the end of file"). Now a read-write open refuses it with one
# line naming the block; a read-only open still reads it; the image is
# left as it was and qemu-io reads the data of the healthy block.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
# 16 MiB, 2 MiB blocks: block 0 holds data
must qemu-img create -q -f vpc base.vhd 16M
must qemu-io -f vpc -c "write -P 0x11 0 64k" base.vhd >/dev/null
# point IMG WHERE: BAT[1] := a block that starts on WHERE (footer: the copy at 0, dyn: the dynamic header, bat)
point() {
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); d = f.read(4096)
dyn = struct.unpack('>Q', d[16:24])[0]
bat = struct.unpack('>Q', d[dyn + 16:dyn + 24])[0]
at = {'footer': 0, 'dyn': dyn, 'bat': bat}[sys.argv[2]]
# the block's sector bitmap (512 bytes for 2 MiB blocks) is on WHERE, its data right behind
f.seek(bat + 4); f.write(struct.pack('>I', at // 512))
PY
}
for where in bat dyn footer; do
    step "BAT[1] on the $where: a read-write open is refused, nothing written"
    cp base.vhd img.vhd
    point img.vhd $where
    cp img.vhd before.vhd
    out=$("$VBD_IO" -f vpc -c "write -P 0x33 2M 4k" img.vhd 2>&1) && fail "vbd-io wrote the block on the $where: $out"
    echo "$out"
    echo "$out" | grep -q "VHD block 1 (at [0-9]*) lies on the image's metadata" || fail "not the refusal expected: $out"
    [ "$(echo "$out" | wc -l)" = 1 ] || fail "more than one line: $out"
    cmp -s img.vhd before.vhd || fail "the refused open changed the image"
    must "$VBD_IO" -f vpc -r -c "read -P 0x11 0 64k" img.vhd >/dev/null # read-only still reads
    must qemu-io -f vpc -r -c "read -P 0x11 0 64k" img.vhd >/dev/null
done
step "the healthy image still opens read-write"
must "$VBD_IO" -f vpc -c "write -P 0x44 2M 4k" base.vhd >/dev/null
must qemu-io -f vpc -r -c "read -P 0x11 0 64k" -c "read -P 0x44 2M 4k" base.vhd >/dev/null
echo OK
