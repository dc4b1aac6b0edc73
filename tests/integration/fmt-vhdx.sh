#!/bin/bash
# VHDX, fixed and dynamic, against qemu-img/qemu-io 7.2: images qemu-img
# makes (each subformat, block sizes, block_state_zero) read the same
# through vbd; images and writes vbd makes read the same through qemu and
# check clean; vbd-img create lays images out as qemu-img does; a dirty
# image (a log left by a crash, written by vhdx-craft.py after the spec) is
# refused read-only by both, replayed by a read-write open of vbd as by
# qemu-img check -r all; the stress test on a dynamic image; hostile logs,
# BATs and headers give one-line errors and leave the file untouched.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T" || exit 1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
CRAFT=$VBD_ROOT/tests/integration/vhdx-craft.py

# patterns at unaligned offsets, crossing the 1 MiB and 8 MiB block boundaries
writes=(-c 'write -P 0x11 1000 3000000' -c 'write -P 0x22 8387000 5000' -c 'write -P 0x33 9000001 777'
        -c 'write -P 0x44 16770000 70000' -c 'write -P 0x55 19999000 1001')
reads=(-c 'read -P 0x11 1000 3000000' -c 'read -P 0x22 8387000 5000' -c 'read -P 0x33 9000001 777'
       -c 'read -P 0x44 16770000 70000' -c 'read -P 0x55 19999000 1001' -c 'read -P 0 0 1000' -c 'read -P 0 3001000 1192000')
info_of() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["virtual-size"], d["format"], d.get("cluster-size", 0), d.get("dirty-flag"))' "$1"; }
# qemu 7.2's vhdx has no block status: qemu-img map shows all data (no
# offsets), measure counts every cluster, qemu-io map/alloc all allocated;
# vbd's views must be the same (convert still skips what is unallocated)
map_ok() { # map_ok IMG RAW
    diff -u <(qemu-img map -f vhdx --output=json "$1") <("$VBD_IMG" map -f vhdx --output=json "$1") ||
        fail "vbd-img map of $1 differs from qemu-img's"
    diff -u <(qemu-img measure -O qcow2 -f vhdx "$1") <("$VBD_IMG" measure -O qcow2 -f vhdx "$1") ||
        fail "vbd-img measure of $1 differs from qemu-img's"
    diff -u <(qemu-io -r -f vhdx -c map -c 'alloc 0 1M' "$1") <("$VBD_IO" -r -f vhdx -c map -c 'alloc 0 1M' "$1") ||
        fail "vbd-io map/alloc of $1 differ from qemu-io's"
    out=$(qemu-img compare -f vhdx -F raw "$1" "$2") || fail "$1 does not hold $2: $out"
}

for opts in subformat=dynamic subformat=dynamic,block_size=1M subformat=dynamic,block_size=1M,block_state_zero=off \
            subformat=fixed,block_size=1M subformat=fixed,block_state_zero=off subformat=dynamic,block_size=32M,log_size=2M; do
    step "$opts: qemu-img made, vbd reads"
    must qemu-img create -q -f vhdx -o $opts q.vhdx 20000001
    must qemu-io -f vhdx "${writes[@]}" q.vhdx >/dev/null
    must qemu-img convert -f vhdx -O raw q.vhdx q.raw
    must "$VBD_IMG" convert -f vhdx -O raw q.vhdx v.raw
    cmp q.raw v.raw || fail "$opts: vbd-img convert -O raw differs from qemu-img's"
    out=$("$VBD_IO" -f vhdx "${reads[@]}" q.vhdx) || fail "$opts: vbd-io read failed: $out"
    "$VBD_IO" -f vhdx -c 'read -P 0x12 1000 512' q.vhdx >/dev/null 2>&1 && fail "$opts: vbd-io accepted a wrong pattern"
    must qemu-img info -f vhdx --output=json q.vhdx >qi.json
    must "$VBD_IMG" info --output=json q.vhdx >vi.json
    [ "$(info_of qi.json)" = "$(info_of vi.json)" ] || fail "$opts: info differs: $(info_of qi.json) vs $(info_of vi.json)"
    map_ok q.vhdx q.raw
    out=$("$VBD_IMG" check q.vhdx) || fail "$opts: vbd-img check of a qemu-img-made image: $out"

    step "$opts: vbd-img convert to vhdx, qemu reads"
    must "$VBD_IMG" convert -f raw -O vhdx -o $opts q.raw v.vhdx
    qcheck -f vhdx v.vhdx
    must qemu-img info -f vhdx --output=json v.vhdx >vi.json
    [ "$(info_of qi.json)" = "$(info_of vi.json)" ] || fail "$opts: vbd-made image has qemu info $(info_of vi.json), want $(info_of qi.json)"
    out=$(qemu-img compare -f vhdx -F vhdx q.vhdx v.vhdx) || fail "$opts: qemu-img compare: $out"
    out=$(qemu-io -f vhdx "${reads[@]}" v.vhdx) || fail "$opts: qemu-io read failed"
    case "$out" in *fail*) fail "$opts: qemu-io reads other data: $out" ;; esac
    map_ok v.vhdx q.raw

    step "$opts: vbd-io writes into a qemu-img-made image"
    must qemu-img create -q -f vhdx -o $opts a.vhdx 20000001
    must cp a.vhdx b.vhdx
    w=(-c 'write -P 0x55 1047000 5000' -c 'write -P 0x66 6000000 1' -c 'write -P 0x77 12582912 4096'
       -c 'write -P 0x78 8388000 1000')
    must "$VBD_IO" -f vhdx "${w[@]}" -c 'aio_write -P 0x81 8388608 4096' -c 'aio_write -P 0x82 8392704 4096' \
        -c 'aio_write -P 0x83 8400000 1000' -c 'aio_write -P 0x84 3145000 2000' -c 'aio_flush' a.vhdx >/dev/null
    must qemu-io -f vhdx "${w[@]}" -c 'write -P 0x81 8388608 4096' -c 'write -P 0x82 8392704 4096' \
        -c 'write -P 0x83 8400000 1000' -c 'write -P 0x84 3145000 2000' b.vhdx >/dev/null
    out=$(qemu-img compare -f vhdx -F vhdx a.vhdx b.vhdx) || fail "$opts: vbd-io writes differ from qemu-io's: $out"
    qcheck -f vhdx a.vhdx
    rm -f q.vhdx v.vhdx a.vhdx b.vhdx q.raw v.raw
done

step "vbd-img create lays images out as qemu-img does"
layout() { # the structure of an image, without its GUIDs, sequence numbers and checksums
    python3 - "$1" <<'EOF'
import os, struct, sys
b = open(sys.argv[1], 'rb').read()
h = [b[o:o + 4096] for o in (65536, 131072)]
out = [len(b), b[:8]] + [(x[:4], x[64:80]) for x in h]
for o in (196608, 262144):
    r = b[o:o + 65536]
    out.append(r[8:16] + r[16:16 + 32 * struct.unpack_from('<I', r, 8)[0]])
bat_off, bat_len = struct.unpack_from('<QI', b, 196608 + 32)
meta_off = struct.unpack_from('<Q', b, 196608 + 64)[0]
out.append(b[bat_off:bat_off + bat_len])
m = b[meta_off:meta_off + 65536]
out.append(m[:32 + 32 * 5])
items = b[meta_off + 65536:meta_off + 65536 + 40]
out.append(items[:16] + items[32:])  # but the page 83 GUID
import hashlib; print(hashlib.sha256(repr(out).encode()).hexdigest())
EOF
}
for args in "log_size=1M 20000001" "block_size=1000000 100M" "log_size=1500000 100M" "subformat=fixed,block_size=2M 9M" \
            "subformat=fixed,block_state_zero=off 9M" "block_state_zero=off 1100M" "subformat=dynamic 101G" "block_size=512M 3G"; do
    set -- $args
    must qemu-img create -q -f vhdx -o $1 q.vhdx $2
    must "$VBD_IMG" create -q -f vhdx -o $1 v.vhdx $2
    [ "$(layout q.vhdx)" = "$(layout v.vhdx)" ] || fail "create $args: the layout differs from qemu-img's"
    must qemu-img info --output=json q.vhdx >qi.json
    must qemu-img info --output=json v.vhdx >vi.json
    [ "$(info_of qi.json)" = "$(info_of vi.json)" ] || fail "create $args: qemu info $(info_of vi.json), want $(info_of qi.json)"
    qcheck v.vhdx
    rm -f q.vhdx v.vhdx
done
must_fail_with "Block size must be a power of two" "$VBD_IMG" create -q -f vhdx -o block_size=3M v.vhdx 100M
must_fail_with "Log size must be a multiple of 1 MB" "$VBD_IMG" create -q -f vhdx -o log_size=0 v.vhdx 100M
must_fail_with "Image size too large; max of 64TB" "$VBD_IMG" create -q -f vhdx v.vhdx 65T
must_fail_with "subformat" "$VBD_IMG" create -q -f vhdx -o subformat=differencing v.vhdx 1M
out=$("$VBD_IMG" measure -O vhdx --size 100M) || fail "vbd-img measure failed: $out"
case "$out" in *"required size: 8388608"*"fully allocated size: 117440512"*) ;; *) fail "measure: $out" ;; esac

step "a dirty image: refused read-only, replayed read-write, as qemu-img replays it"
for bs in 1M 8M; do
    must qemu-img create -q -f vhdx -o block_size=$bs d.vhdx 20M
    must qemu-io -f vhdx -c 'write -P 0x11 1000 60000' -c 'write -P 0x22 3000000 100000' d.vhdx >/dev/null
    must qemu-img convert -f vhdx -O raw d.vhdx want.raw
    must python3 "$CRAFT" dirty d.vhdx want.raw
    for c in q v c; do must cp d.vhdx $c.vhdx; done
    qemu-img info v.vhdx >qi.txt 2>&1 && fail "bs=$bs: qemu-img info opened a dirty image read-only"
    grep -q "needs to be replayed" qi.txt || fail "bs=$bs: qemu-img info of a dirty image: $(cat qi.txt)"
    must_fail_with "needs to be replayed" "$VBD_IMG" info v.vhdx
    must_fail_with "needs to be replayed" "$VBD_IO" -r -c 'read 0 512' v.vhdx
    cmp d.vhdx v.vhdx || fail "bs=$bs: a read-only open changed the dirty image"
    out=$(qemu-img check -r all q.vhdx) || fail "bs=$bs: qemu-img check -r all: $out"
    out=$(qemu-img compare -f raw -F vhdx want.raw q.vhdx) || fail "bs=$bs: qemu replays other content: $out"
    # vbd: the first read-write open replays, and the new content reads back at once
    s=$(($(python3 -c "print(int('$bs'[:-1]) << 20)")))
    out=$("$VBD_IO" -c "read -P 0x5a $s $s" -c 'read -P 0xa5 8192 4096' -c 'read -P 0 20480 8192' \
          -c 'read -P 0x11 1000 7192' -c 'write -P 0x99 30000 10' v.vhdx) || fail "bs=$bs: vbd-io on the dirty image: $out"
    qcheck v.vhdx
    must qemu-io -c 'write -P 0x99 30000 10' q.vhdx >/dev/null
    out=$(qemu-img compare -f vhdx -F vhdx q.vhdx v.vhdx) || fail "bs=$bs: vbd's replay differs from qemu's: $out"
    out=$("$VBD_IMG" check -r all c.vhdx) || fail "bs=$bs: vbd-img check -r all: $out"
    case "$out" in *"1 corruptions"*"No errors were found"*) ;; *) fail "bs=$bs: vbd-img check -r all says: $out" ;; esac
    out=$(qemu-img compare -f raw -F vhdx want.raw c.vhdx) || fail "bs=$bs: vbd-img check replays other content: $out"
    rm -f d.vhdx q.vhdx v.vhdx c.vhdx want.raw
done

step "hostile logs: one-line errors, the file untouched"
must qemu-img create -q -f vhdx -o block_size=1M base.vhdx 8M
must qemu-io -f vhdx -c 'write -P 0x11 0 100000' base.vhdx >/dev/null
for kind in past-eof zero-huge header; do
    must cp base.vhdx h.vhdx
    must python3 "$CRAFT" hostile h.vhdx $kind
    must cp h.vhdx before.vhdx
    must_fail_with "outside the file's data" "$VBD_IO" -c 'read 0 512' h.vhdx
    cmp h.vhdx before.vhdx || fail "log $kind: the refused replay changed the file"
    must_fail_with "needs to be replayed" "$VBD_IMG" info h.vhdx
done

step "hostile headers, region tables, metadata and BAT: one-line errors"
patch() { # patch IMG OFFSET HEXBYTES [hdr|rt1]: OFFSET may be H+N (in the active header); then fix that checksum
    VHDX_LOGPY=$CRAFT python3 - "$@" <<'EOF'
import importlib.util, os, struct, sys
spec = importlib.util.spec_from_file_location('vl', os.environ['VHDX_LOGPY'])
vl = importlib.util.module_from_spec(spec); spec.loader.exec_module(vl)
p, off, data = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
b = bytearray(open(p, 'rb').read())
seqs = [struct.unpack_from('<Q', b, o + 8)[0] for o in (65536, 131072)]
hdr = 65536 if seqs[0] > seqs[1] else 131072
off = hdr + int(off[2:]) if off.startswith('H+') else int(off)
b[off:off + len(data)] = data
crc = sys.argv[4] if len(sys.argv) > 4 else ''
if crc:
    s, n = (hdr, 4096) if crc == 'hdr' else (196608, 65536)
    b[s:s + n] = vl.with_crc(bytes(b[s:s + n]), 4)
open(p, 'wb').write(b)
EOF
}
bad() { # bad WANT OFFSET HEX [hdr|rt1]; the image is base.vhdx
    must cp base.vhdx x.vhdx
    patch x.vhdx "$2" "$3" ${4:-}
    must_fail_with "$1" "$VBD_IMG" info x.vhdx
    must_fail_with "$1" "$VBD_IO" -c 'read 0 512' x.vhdx
}
H1=65536 H2=131072 RT1=196608 RT2=262144
must python3 - base.vhdx <<'EOF'
import struct, sys
b = open(sys.argv[1], 'rb').read()
assert struct.unpack_from('<QI', b, 196608 + 32) == (2 << 20, 1 << 20)
assert struct.unpack_from('<Q', b, 196608 + 64)[0] == 3 << 20
EOF
# one damaged header or region table: the other copy serves; both: refused
for pair in "$H1 $H2 No valid VHDX header" "$RT1 $RT2 no valid VHDX region table"; do
    set -- $pair
    must cp base.vhdx y.vhdx && patch y.vhdx $1 00
    must "$VBD_IO" -r -c 'read -P 0x11 0 100000' y.vhdx >/dev/null
    patch y.vhdx $2 00
    shift 2
    must_fail_with "$*" "$VBD_IMG" info y.vhdx
    must_fail_with "$*" "$VBD_IO" -c 'read 0 512' y.vhdx
done
bad "BAT region (offset 1099511627776" $((RT1 + 32)) 0000000000010000 rt1
bad "overlaps another region" $((RT1 + 32)) 0000100000000000 rt1
bad "not aligned to 1 MiB" $((RT1 + 32)) 0010200000000000 rt1
bad "too small for" $(((3 << 20) + 65536 + 8)) 0000000000400000
bad "has no metadata region" $((RT1 + 48)) 00 rt1
bad "unsupported VHDX log version" H+64 0100 hdr
bad "invalid VHDX log offset" H+72 0000020000000000 hdr
bad "no 'metadata' signature" $((3 << 20)) 00
bad "differencing VHDX image without a parent locator" $(((3 << 20) + 65536 + 4)) 02
bad "invalid VHDX block size" $(((3 << 20) + 65536)) 00003000
bad "invalid VHDX logical sector size" $(((3 << 20) + 65536 + 32)) 00010000
bad "invalid VHDX virtual disk size" $(((3 << 20) + 65536 + 8)) 0000000000000001
bad "is outside the metadata region" $(((3 << 20) + 32 + 16)) 0000f000
bad "unsupported required VHDX metadata item" $(((3 << 20) + 64)) 00
bad "points after end of file" $((2 << 20)) 0600000040000000
bad "overlaps the image's metadata" $((2 << 20)) 0600200000000000
must cp base.vhdx x.vhdx && patch x.vhdx $(((2 << 20) + 8)) $(python3 -c "import struct,sys; b=open('base.vhdx','rb').read(); print(b[2<<20:(2<<20)+8].hex())")
must_fail_with "overlap" "$VBD_IMG" info x.vhdx
# a truncated image: open refuses, check counts the blocks past the end as qemu-img does
must cp base.vhdx t.vhdx && must truncate -s $((8 << 20)) t.vhdx
must_fail_with "Image has probably been truncated" "$VBD_IMG" info t.vhdx
"$VBD_IMG" check t.vhdx >vc.txt 2>&1; rc=$?
qemu-img check t.vhdx >qc.txt 2>&1; qrc=$?
[ $rc = 2 ] && [ $qrc = 2 ] || fail "check of a truncated image: vbd exit $rc, qemu exit $qrc: $(cat vc.txt)"
grep -q "1 errors were found" vc.txt || fail "vbd-img check of a truncated image: $(cat vc.txt)"
head -c 100000 base.vhdx >s.vhdx
must_fail_with "smaller than its 1 MiB header section" "$VBD_IMG" info s.vhdx
printf 'vhdxfile' | dd of=n.raw bs=1 seek=512 conv=notrunc 2>/dev/null; truncate -s 2M n.raw
fmt=$("$VBD_IMG" info --output=json n.raw | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
[ "$fmt" = raw ] || fail "a file with 'vhdxfile' not at 0 probed as $fmt"

step "a differencing image (made after the spec; qemu-img 7.2 cannot read one): read through its parent"
must qemu-img create -q -f vhdx -o block_size=1M parent.vhdx 8M
must qemu-io -f vhdx -c 'write -P 0x31 0 6M' -c 'write -P 0x32 1048576 10000' parent.vhdx >/dev/null
must qemu-img convert -f vhdx -O raw parent.vhdx parent.raw
must qemu-img create -q -f vhdx -o block_size=1M,block_state_zero=off child.vhdx 8M
must python3 "$CRAFT" diff child.vhdx parent.raw want.raw
must "$VBD_IMG" info --output=json child.vhdx >vi.json
python3 -c 'import json,sys; d=json.load(open("vi.json")); sys.exit(d.get("backing-filename") != "parent.vhdx")' ||
    fail "differencing: vbd-img info does not name the parent: $(cat vi.json)"
must "$VBD_IMG" convert -f vhdx -O raw child.vhdx got.raw
cmp got.raw want.raw || fail "differencing: vbd-img convert -O raw reads other content"
must "$VBD_IMG" convert -f vhdx -O qcow2 child.vhdx got.qcow2
out=$(qemu-img compare -f qcow2 -F raw got.qcow2 want.raw) || fail "differencing: converted to qcow2: $out"
must "$VBD_IO" -r -c "read -P 0xc2 $((1048576 + 10 * 512)) 5120" -c "read -P 0x32 $((1048576 + 9 * 512)) 512" \
    -c "read -P 0 $((2 << 20)) 1M" -c "read -P 0x31 $((3 << 20)) 1M" -c "read -P 0 $((6 << 20)) 2M" child.vhdx >/dev/null
m=$("$VBD_IMG" map -f vhdx --output=json child.vhdx | python3 -c 'import json,sys; print([(e["start"], e["length"], e["depth"], e["zero"]) for e in json.load(sys.stdin)])')
M=1048576
want="[(0, $M, 0, False), ($M, 5120, 1, False), ($((M + 5120)), 5120, 0, False), ($((M + 10240)), $((980 * 512)), 1, False), "
want+="($((M + 1000 * 512)), $((500 * 512)), 0, False), ($((M + 1500 * 512)), $((548 * 512)), 1, False), ($((2 * M)), $M, 0, True), "
# the parent is an ordinary vhdx: all data below the child, as qemu-img maps it
want+="($((3 * M)), $((5 * M)), 1, False)]"
[ "$m" = "$want" ] || fail "differencing: map $m, want $want"
must_fail_with "can only be opened read-only" "$VBD_IO" -c 'read 0 1' child.vhdx
must mv parent.vhdx elsewhere.vhdx
must_fail_with "parent.vhdx" "$VBD_IMG" convert -f vhdx -O raw child.vhdx got.raw
rm -f child.vhdx elsewhere.vhdx parent.raw want.raw got.raw got.qcow2

step "the model-based stress test (tests/stress/vbd-stress) on dynamic vhdx images"
need_stress
head -c 3M /dev/urandom >init.raw && truncate -s 8M init.raw
n=0
for io in "" "-t none" "-i threads"; do
    n=$((n + 1))
    must qemu-img create -q -f vhdx -o block_size=1M s.vhdx 8M
    must qemu-img convert -q -n -f raw -O vhdx init.raw s.vhdx
    out=$(timeout -k 10 600 "$STRESS" --seed $((300 + n)) --ops 1500 --cluster-size 1048576 --init init.raw \
          --shadow-out shadow.raw $io -f vhdx s.vhdx 2>&1) || fail "vbd-stress [$io] seed=$((300 + n)): $(echo "$out" | tail -5)"
    qcheck -f vhdx s.vhdx
    must qemu-img compare -q -f vhdx -F raw s.vhdx shadow.raw
done
echo ok
