#!/bin/bash
# The read-only formats qemu-img reads (issue 16): bochs, cloop and dmg.
# cloop images come from create_compressed_fs (cloop-utils); bochs and dmg
# have no writer in Debian, so ro-images.py builds them by their layouts.
# vbd-img convert -O raw equals qemu-img's (and the content the image
# encodes), info and map agree with qemu-img's, vbd-io reads, writes are
# refused with a clear error, hostile images give one-line errors. Debian's
# qemu-img has no dmg-bz2 module: dmg images with bzip2 chunks are checked
# against the content they encode only.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3 create_compressed_fs
cd "$T"
GEN=$VBD_ROOT/tests/integration/ro-images.py

# same_keys A.json B.json KEY...: the two infos agree on each KEY, or one line naming the first that differs
same_keys() {
    python3 - "$@" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
for k in sys.argv[3:]:
    if a.get(k) != b.get(k):
        sys.exit(f"info {k}: vbd {a.get(k)} qemu {b.get(k)}")
PY
}

# same_as_qemu FMT IMG [EXPECTED]: convert, info, map and reads agree with
# qemu-img's (and with EXPECTED, the disk content the image encodes)
same_as_qemu() {
    local fmt=$1 img=$2 exp=${3:-}
    must "$VBD_IMG" convert -O raw "$img" v.raw
    qemu-img convert -f "$fmt" -O raw "$img" q.raw 2>q.err || fail "qemu-img convert $img: $(cat q.err)"
    cmp v.raw q.raw || fail "vbd-img convert -O raw of $img differs from qemu-img's"
    [ -z "$exp" ] || cmp v.raw "$exp" || fail "$img does not read as the content it encodes"
    "$VBD_IMG" info --output=json "$img" >v.json || fail "vbd-img info $img"
    qemu-img info --output=json "$img" >q.json 2>/dev/null
    out=$(same_keys v.json q.json virtual-size format filename 2>&1) || fail "$out of $img"
    "$VBD_IMG" map --output=json "$img" >v.map || fail "vbd-img map $img"
    qemu-img map --output=json "$img" >q.map 2>/dev/null
    cmp v.map q.map || fail "map of $img differs: $(diff v.map q.map)"
    # unaligned reads across blocks/chunks, checked against qemu's bytes
    # (one vbd-io for the five: each read's dump ends at its "read" line)
    local size r reads=() args=()
    size=$(stat -c %s q.raw)
    reads=("0 1" "511 1025" "65000 70000" "$((size / 2 - 3)) 7777" "$((size - 700)) 700")
    for r in "${reads[@]}"; do args+=(-c "read -v $r"); done
    "$VBD_IO" -r "${args[@]}" "$img" >v.out 2>&1 || fail "vbd-io reads of $img: $(cat v.out)"
    out=$(python3 - v.out q.raw "${reads[@]}" 2>&1 <<'PY'
import sys
reads = [tuple(map(int, r.split())) for r in sys.argv[3:]]
raw = open(sys.argv[2], 'rb').read()
got, dumps = bytearray(), []
for line in open(sys.argv[1]):
    # qemu-io's dump: "%08x:  " then n times "xx ", a space, n characters
    if len(line) > 10 and line[8] == ':':
        rest = line[11:].rstrip('\n')
        got += bytes(int(rest[3 * i:3 * i + 2], 16) for i in range((len(rest) - 1) // 4))
    elif line.startswith('read '):
        dumps.append(bytes(got))
        got = bytearray()
for i, (off, n) in enumerate(reads):
    if i >= len(dumps) or dumps[i] != raw[off:off + n]:
        sys.exit(f"{off} {n}")
PY
) || fail "vbd-io read $out of $img returned other bytes"

    # writes are refused in qemu-io's and qemu-img's words
    must_fail_with "can't open device $img: Image is read-only" "$VBD_IO" -f "$fmt" -c 'write 0 512' "$img"
    must_fail_with "Could not open '$img': Image is read-only" "$VBD_IMG" resize -f "$fmt" "$img" 100M
    must_fail_with "does not support image creation" "$VBD_IMG" create -f "$fmt" new.img 1M
}

step "cloop: create_compressed_fs images, block sizes 64k and 512k"
mixed_data m.raw 3
for bs in 65536 524288; do
    must create_compressed_fs -q -B $bs m.raw c$bs.cloop >/dev/null 2>&1
    same_as_qemu cloop c$bs.cloop
    # the disk is whole blocks: the content, then zeroes
    cmp -n $((6 << 20)) v.raw m.raw || fail "cloop content"
done

step "bochs: version 1 and 2 headers, 4k to 1M extents"
for v in v1 v2; do
    for ext in 4096 32768 1048576; do
        python3 "$GEN" bochs b.img b.exp $v $ext || fail "ro-images.py bochs"
        same_as_qemu bochs b.img b.exp
    done
done

step "dmg: chunks of every kind qemu-img reads, resource fork and XML plist"
for kind in rsrc xml; do
    python3 "$GEN" dmg d.dmg d.exp $kind nobz2 || fail "ro-images.py dmg"
    same_as_qemu dmg d.dmg d.exp
    # bzip2 chunks: qemu-img here lacks its dmg-bz2 module, so the encoded content is the reference
    python3 "$GEN" dmg bz.dmg bz.exp $kind || fail "ro-images.py dmg"
    must "$VBD_IMG" convert -O raw bz.dmg v.raw
    cmp v.raw bz.exp || fail "dmg with bzip2 chunks ($kind) reads differently from its content"
done
step "dmg: lzfse chunks are refused when read"
python3 "$GEN" dmg lz.dmg lz.exp xml lzfse || fail "ro-images.py dmg"
out=$("$VBD_IMG" convert -O raw lz.dmg v.raw 2>&1) && fail "an lzfse chunk was converted"
case "$out" in *"lzfse-compressed, which vbd cannot decompress"*) ;; *) fail "lzfse error: $out" ;; esac
# sectors before it still read
must "$VBD_IO" -r -c 'read 0 64k' lz.dmg >/dev/null
out=$("$VBD_IO" -r -c "read $(((40 + 128 + 300 + 64 + 9 + 16 + 2048) * 512)) 512" lz.dmg 2>&1) && fail "read an lzfse chunk"
case "$out" in *"chunk 7 is lzfse-compressed"*"Operation not supported"*) ;; *) fail "lzfse read error: $out" ;; esac

step "hostile images: one-line errors"
python3 "$GEN" bochs b.img b.exp v2 32768
hostile() { # FILE PYTHON-EDIT EXPECTED-SUBSTRING
    cp "$1" h.img
    python3 -c "import struct,sys,os; f=open('h.img','r+b'); $2" || fail "edit"
    must_fail_with "$3" "$VBD_IMG" info -f "$4" h.img
    must_fail_with "$3" "$VBD_IMG" convert -f "$4" -O raw h.img h.raw
}
# (the file reads as 1024 bytes, whole sectors as QEMU counts them: its catalog
# names a block past them)
hostile b.img "f.truncate(600)" "points past the end of the file" bochs
hostile b.img "f.seek(72); f.write(struct.pack('<I', 0x7fffffff))" "catalog size 2147483647 is too large" bochs
hostile b.img "f.seek(80); f.write(struct.pack('<I', 3000))" "extent size 3000 is not a power of two" bochs
hostile b.img "f.seek(512); f.write(struct.pack('<I', 0x10000000))" "points past the end of the file" bochs
hostile b.img "f.seek(88); f.write(struct.pack('<Q', 1 << 50))" "catalog size" bochs
hostile c65536.cloop "f.truncate(700)" "not monotonically increasing" cloop # (its table ends in the last sector's zero padding)
hostile c65536.cloop "f.seek(132); f.write(struct.pack('>I', 0x7fffffff))" "requires too many offsets" cloop
hostile c65536.cloop "f.seek(128); f.write(struct.pack('>I', 1000))" "multiple of 512" cloop
hostile c65536.cloop "f.seek(128); f.write(struct.pack('>I', 1 << 30))" "64 MiB or less" cloop
hostile c65536.cloop "f.seek(144); f.write(struct.pack('>Q', 1 << 40))" "invalid cloop compressed block size" cloop
hostile c65536.cloop "f.seek(152); f.write(struct.pack('>Q', 0))" "not monotonically increasing" cloop
hostile c65536.cloop "f.seek(0, 2); n = f.tell(); f.truncate(n - 5000)" "past the end of the file" cloop
python3 "$GEN" dmg d.dmg d.exp rsrc nobz2
hostile d.dmg "f.seek(0, 2); f.truncate(f.tell() - 600)" "UDIF trailer" dmg
hostile d.dmg "f.seek(-512 + 0x30, 2); f.write(struct.pack('>Q', 1 << 62))" "past the trailer" dmg
# a chunk whose data lies past the file: the first chunk's offset field (resource data at +256, length, mish header)
hostile d.dmg "f.seek(-512 + 0x28, 2); r = struct.unpack('>Q', f.read(8))[0]; f.seek(r + 256 + 4 + 204 + 0x18); f.write(struct.pack('>Q', 1 << 40))" "data is past the end of the file" dmg
hostile d.dmg "f.seek(-512 + 0x28, 2); r = struct.unpack('>Q', f.read(8))[0]; f.seek(r + 256 + 4 + 204 + 0x10); f.write(struct.pack('>Q', 1 << 20))" "is larger than max" dmg
# a chunk that does not decompress: the read fails, nothing crashes
cp d.dmg h.img
python3 -c "
import struct; f=open('h.img','r+b'); f.seek(40*512 + 10); f.write(b'garbage!')"
out=$("$VBD_IMG" convert -f dmg -O raw h.img h.raw 2>&1) && fail "a corrupt zlib chunk converted"
case "$out" in *"does not decompress"*) ;; *) fail "corrupt chunk error: $out" ;; esac
echo PASS
