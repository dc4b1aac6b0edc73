#!/bin/bash
# Differencing VHD images read with their parent (issue 16). qemu-img
# cannot create one, so vhd-diff.py builds them over qemu-img-made VHDs.
# qemu-img 7.2 reads a differencing VHD as a plain dynamic one (it neither
# opens the parent nor looks at the sector bitmaps), so the reference is
# built from qemu-img's own reads: the sectors the child's bitmaps claim
# from `qemu-img convert` of the child, every other sector from `qemu-img
# convert` of the parent. vbd-img convert -O raw must equal that byte for
# byte, for every kind of parent locator, a fixed parent, and a chain of
# two; writes are refused; a missing parent and hostile locators give
# one-line errors.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
GEN=$VBD_ROOT/tests/integration/vhd-diff.py

# reference CHILD PARENT CLAIMED OUT: qemu-img's reads of both, merged by the bitmaps
reference() {
    qemu-img convert -f vpc -O raw "$1" ref-child.raw || fail "qemu-img convert $1"
    qemu-img convert -f vpc -O raw "$2" ref-parent.raw || fail "qemu-img convert $2"
    python3 - ref-child.raw ref-parent.raw "$3" "$4" <<'PY'
import sys
child = open(sys.argv[1], 'rb').read()
out = bytearray(open(sys.argv[2], 'rb').read())
out = out[:len(child)].ljust(len(child), b'\0')
for line in open(sys.argv[3]):
    s = int(line)
    out[s * 512:(s + 1) * 512] = child[s * 512:(s + 1) * 512]
open(sys.argv[4], 'wb').write(out)
PY
}

for sub in dynamic fixed; do
    step "parent: $sub VHD made by qemu-img, written by qemu-io"
    rm -rf d && mkdir d
    must qemu-img create -q -f vpc -o subformat=$sub d/parent.vhd 20M
    must qemu-io -f vpc -c 'write -P 0x11 0 3M' -c 'write -P 0x22 9M 2M' -c 'write -P 0x33 19M 512k' d/parent.vhd >/dev/null
    must qemu-img convert -f vpc -O raw d/parent.vhd d/parent.raw
    for loc in W2ru W2ku MacX none W2ku,W2ru; do
        step "child over the $sub parent, locators: $loc"
        python3 "$GEN" parent.vhd d/child.vhd d/parent.raw d/exp.raw $loc d/claimed || fail "vhd-diff.py"
        reference d/child.vhd d/parent.vhd d/claimed d/ref.raw
        cmp d/exp.raw d/ref.raw || fail "the builder's idea of the disk differs from qemu-img's reads"
        must "$VBD_IMG" convert -O raw d/child.vhd v.raw
        cmp v.raw d/ref.raw || fail "vbd-img convert -O raw of a differencing VHD ($sub parent, $loc) differs from the reference"
        "$VBD_IMG" info --output=json d/child.vhd >v.json || fail "vbd-img info"
        python3 - v.json <<'PY' || fail "info of the child: $(cat v.json)"
import json, os, sys
d = json.load(open(sys.argv[1]))
assert os.path.basename(d['backing-filename']) == 'parent.vhd', d  # MacX: absolute
assert d['backing-filename-format'] == 'vpc', d
assert d['virtual-size'] == os.path.getsize('d/parent.raw'), d  # the parent's, which qemu-img sized
PY
        # reads through vbd-io: a child sector, a parent sector, a block left to the parent
        out=$("$VBD_IO" -r -c 'read -P 0x11 4096 4096' -c 'read -P 0x22 9M 1M' -c 'read -P 0x33 19M 512k' \
              -c 'read -P 0 12M 1M' d/child.vhd 2>&1) || fail "vbd-io reads of the child: $out"
    done
    step "vbd-img map of the child names child and parent"
    "$VBD_IMG" map --output=json d/child.vhd >v.map || fail "vbd-img map"
    python3 - v.map d/claimed <<'PY' || fail "map: $(head -c 2000 v.map)"
import json, os, sys
m = json.load(open(sys.argv[1]))
claimed = set(int(l) for l in open(sys.argv[2]))
for e in m:
    for s in range(e['start'] // 512, (e['start'] + e['length']) // 512):
        assert (e['depth'] == 0) == (s in claimed), (e, s)
assert sum(e['length'] for e in m) == os.path.getsize('d/parent.raw')
PY
done

step "a chain of two: a differencing child over a differencing parent"
python3 "$GEN" parent.vhd d/child.vhd d/parent.raw d/exp.raw W2ru d/claimed
must "$VBD_IMG" convert -O raw d/child.vhd d/child.raw
python3 "$GEN" child.vhd d/grand.vhd d/child.raw d/exp2.raw W2ru d/claimed2
must "$VBD_IMG" convert -O raw d/grand.vhd v.raw
cmp v.raw d/exp2.raw || fail "a chain of two differencing VHDs reads differently"

step "writes are refused, a missing parent and hostile locators fail in one line"
must_fail_with "writing to differencing VHD images is not supported" "$VBD_IO" -c 'write 0 512' d/child.vhd
mv d/parent.vhd d/parent.moved
must_fail_with "parent.vhd" "$VBD_IMG" convert -O raw d/child.vhd v.raw
mv d/parent.moved d/parent.vhd
python3 "$GEN" parent.vhd d/child.vhd d/parent.raw d/exp.raw W2ru
hostile() { # PYTHON-EDIT-OF-THE-DYNAMIC-HEADER EXPECTED
    cp d/child.vhd d/h.vhd
    python3 - d/h.vhd "$1" <<'PY' || fail "edit"
import struct, sys
f = open(sys.argv[1], 'r+b'); f.seek(512); d = bytearray(f.read(1024))
exec(sys.argv[2])
d[36:40] = bytes(4); d[36:40] = struct.pack('>I', ~sum(d) & 0xffffffff)
f.seek(512); f.write(d)
PY
    must_fail_with "$2" "$VBD_IMG" info d/h.vhd # HOSTILE
}
hostile "struct.pack_into('>Q', d, 576 + 16, 1 << 40)" "parent locator W2ru (offset 1099511627776"
hostile "struct.pack_into('>I', d, 576 + 8, 1 << 20)" "is outside the file"
hostile "d[576:576+24*8] = bytes(24*8); d[64:576] = bytes(512)" "names no parent"
hostile "struct.pack_into('>I', d, 576 + 8, 1)" "is not a valid path"
echo PASS
