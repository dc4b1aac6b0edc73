#!/bin/bash
# Hostile persistent-bitmap metadata in qcow2 images: a bitmap table that
# lies on an L2 table or on the L1 table. A read-write open loads enabled
# bitmaps and a clean close writes their tables back in place: on such an
# image that write landed on the L2 or L1 table, so a write to guest 20M
# changed what guest 4k-8k or 2M-4M read (the table's new entry became an
# L2 or L1 entry). QEMU 7.2 refuses the first (reserved bits in the table
# entries: "Could not read bitmap_table table from image for bitmap 'b0':
# Invalid argument") and frees the L1 table's cluster in the second. vbd now
# refuses both at open with QEMU's line, before anything is written, and
# `bitmap --remove` of a disabled bitmap (not loaded at open) releases no
# cluster such a table names (it dropped the refcounts of an L2 table and a
# data cluster in use: qemu-img check found them corrupt).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
set_table() { # IMG l1|l2: the first bitmap's table offset set to the L1 table or to L1[0]'s L2 table
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(65536)
p, dir_off = struct.unpack('>I', h[100:104])[0], None
while p + 8 <= len(h):
    t, l = struct.unpack('>II', h[p:p + 8])
    if t == 0: break
    if t == 0x23852875: dir_off = struct.unpack('>Q', h[p + 24:p + 32])[0]
    p += 8 + ((l + 7) & ~7)
l1 = struct.unpack('>Q', h[40:48])[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(dir_off); f.write(struct.pack('>Q', l1 if sys.argv[2] == 'l1' else l2))
PY
}
# 4 KiB clusters, 64 MiB, an enabled bitmap b0 of 512-byte granularity: a
# 4-entry table, each entry covering 16 MiB; data at 10M (L1[5]) and, in
# a.qcow2, at 0 (L1[0]'s L2 table). b.qcow2 has L1[0..3] zero: table entries
# QEMU takes as valid.
for img in a b; do
    must qemu-img create -q -f qcow2 -o cluster_size=4k $img.qcow2 64M
    [ $img = a ] && must qemu-io -f qcow2 -c "write -P 0x11 0 4k" a.qcow2 >/dev/null
    must qemu-io -f qcow2 -c "write -P 0x22 10M 4k" $img.qcow2 >/dev/null
    must qemu-img bitmap --add -g 512 $img.qcow2 b0
    must qemu-img convert -O raw $img.qcow2 $img.raw
done
# the guest data of IMG (read by vbd: QEMU opens none of these images) must be BASE's
same_data() { # IMG BASE
    "$VBD_IMG" convert -f qcow2 -O raw "$1" got.raw 2>/dev/null || fail "$1: vbd-img cannot read the image afterwards"
    cmp -s "$2.raw" got.raw || fail "$1: guest data changed ($(cmp "$2.raw" got.raw | head -1))"
}
for c in a:l2 b:l1; do
    base=${c%:*} where=${c#*:}
    step "bitmap table on the $where table: a write to 20M is refused at open, nothing written"
    cp $base.qcow2 img.qcow2
    set_table img.qcow2 $where
    cp img.qcow2 before.qcow2
    must_fail_with "Could not read bitmap_table table from image for bitmap 'b0': Invalid argument" \
        "$VBD_IO" -f qcow2 -c "write -P 0x33 20M 4k" img.qcow2
    cmp -s img.qcow2 before.qcow2 || fail "the refused open changed the image"
    same_data img.qcow2 $base
    must "$VBD_IO" -f qcow2 -r -c "read -P 0x22 10M 4k" img.qcow2 >/dev/null   # read-only opens still read
    step "a disabled bitmap whose table is on the $where table: bitmap --remove releases none of its clusters"
    cp $base.qcow2 img.qcow2
    must qemu-img bitmap --disable img.qcow2 b0
    set_table img.qcow2 $where
    must "$VBD_IMG" bitmap --remove img.qcow2 b0
    same_data img.qcow2 $base
    out=$(qemu-img check img.qcow2 2>&1); rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check after bitmap --remove: rc $rc: $out"   # leaks at worst
    must "$VBD_IO" -f qcow2 -c "write -P 0x44 4k 4k" -c "write -P 0x55 3M 4k" img.qcow2 >/dev/null
    out=$(qemu-img check img.qcow2 2>&1); rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check after writes: rc $rc: $out"
    must qemu-io -f qcow2 -r -c "read -P 0x22 10M 4k" -c "read -P 0x44 4k 4k" -c "read -P 0x55 3M 4k" img.qcow2 >/dev/null
done
echo OK
