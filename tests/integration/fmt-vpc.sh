#!/bin/bash
# VHD (vpc), fixed and dynamic, against qemu-img/qemu-io: images qemu-img
# makes read the same through vbd; images and writes vbd makes read the
# same through qemu; geometry rounding and force_size give qemu's sizes;
# a fixed VHD probes as raw (as in qemu-img) and needs -f vpc; lying
# footers and headers give a one-line error.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T" || exit 1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}

# patterns at unaligned offsets, crossing sectors and the 2 MiB blocks
writes=(-c 'write -P 0x11 1000 3000000' -c 'write -P 0x22 4193000 5000' -c 'write -P 0x33 9000001 777'
        -c 'write -P 0x44 14679000 70000')
reads=(-c 'read -P 0x11 1000 3000000' -c 'read -P 0x22 4193000 5000' -c 'read -P 0x33 9000001 777'
       -c 'read -P 0x44 14679000 70000' -c 'read -P 0 0 1000' -c 'read -P 0 3001000 1192000')
size_of() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["virtual-size"], d["format"], d.get("cluster-size", 0))' "$1"; }

for sub in dynamic fixed; do
    for force in off on; do
        tag="$sub/force_size=$force"
        step "$tag: qemu-img made, vbd reads"
        must qemu-img create -q -f vpc -o subformat=$sub,force_size=$force q.vhd 20000001
        must qemu-io -f vpc "${writes[@]}" q.vhd >/dev/null
        must qemu-img convert -f vpc -O raw q.vhd q.raw
        must "$VBD_IMG" convert -f vpc -O raw q.vhd v.raw
        cmp q.raw v.raw || fail "$tag: vbd-img convert -O raw differs from qemu-img's"
        out=$("$VBD_IO" -f vpc "${reads[@]}" q.vhd) || fail "$tag: vbd-io read failed: $out"
        "$VBD_IO" -f vpc -c 'read -P 0x12 1000 512' q.vhd >/dev/null 2>&1 && fail "$tag: vbd-io accepted a wrong pattern"
        must qemu-img info -f vpc --output=json q.vhd >qi.json
        must "$VBD_IMG" info -f vpc --output=json q.vhd >vi.json
        [ "$(size_of qi.json)" = "$(size_of vi.json)" ] || fail "$tag: info differs: $(size_of qi.json) vs $(size_of vi.json)"
        qm=$(qemu-img map -f vpc --output=json q.vhd | python3 -c 'import json,sys; print([(e["start"],e["length"],e["present"],e["data"],e["zero"]) for e in json.load(sys.stdin)])')
        vm=$("$VBD_IMG" map -f vpc --output=json q.vhd | python3 -c 'import json,sys; print([(e["start"],e["length"],e["present"],e["data"],e["zero"]) for e in json.load(sys.stdin)])')
        [ "$qm" = "$vm" ] || fail "$tag: map differs: $qm vs $vm"
        # qemu-io's map and alloc count an unallocated block (it reads as zeroes) as allocated
        qa=$(qemu-io -f vpc -r -c map -c 'alloc 0 4M' -c 'alloc 16M 4M' q.vhd)
        va=$("$VBD_IO" -f vpc -r -c map -c 'alloc 0 4M' -c 'alloc 16M 4M' q.vhd)
        [ "$qa" = "$va" ] || fail "$tag: map/alloc differ: $qa vs $va"

        step "$tag: vbd-img convert to vpc, qemu reads"
        must "$VBD_IMG" convert -f raw -O vpc -o subformat=$sub,force_size=$force q.raw v.vhd
        must qemu-img info -f vpc --output=json v.vhd >vi.json
        [ "$(size_of qi.json)" = "$(size_of vi.json)" ] || fail "$tag: vbd-made image has qemu size $(size_of vi.json), want $(size_of qi.json)"
        out=$(qemu-img compare -f vpc -F vpc q.vhd v.vhd) || fail "$tag: qemu-img compare: $out"
        out=$(qemu-io -f vpc "${reads[@]}" v.vhd) || fail "$tag: qemu-io read failed"
        case "$out" in *fail*) fail "$tag: qemu-io reads other data: $out" ;; esac

        step "$tag: vbd-io writes into a qemu-img-made image"
        must qemu-img create -q -f vpc -o subformat=$sub,force_size=$force a.vhd 20000001
        must cp a.vhd b.vhd
        w=(-c 'write -P 0x55 2097000 5000' -c 'write -P 0x66 6000000 1' -c 'write -P 0x77 12582912 4096')
        must "$VBD_IO" -f vpc "${w[@]}" -c 'aio_write -P 0x81 8388608 4096' -c 'aio_write -P 0x82 8392704 4096' \
            -c 'aio_write -P 0x83 8400000 1000' -c 'aio_flush' a.vhd >/dev/null
        must qemu-io -f vpc "${w[@]}" -c 'write -P 0x81 8388608 4096' -c 'write -P 0x82 8392704 4096' \
            -c 'write -P 0x83 8400000 1000' b.vhd >/dev/null
        out=$(qemu-img compare -f vpc -F vpc a.vhd b.vhd) || fail "$tag: vbd-io writes differ from qemu-io's: $out"
        rm -f q.vhd v.vhd a.vhd b.vhd q.raw v.raw
    done
done

step "geometry: sizes as qemu-img rounds them"
for s in 1M 3000001 100M 1G 127G 2040G; do
    for force in off on; do
        must qemu-img create -q -f vpc -o force_size=$force q.vhd $s
        must "$VBD_IMG" create -q -f vpc -o force_size=$force v.vhd $s
        must qemu-img info -f vpc --output=json q.vhd >qi.json
        must qemu-img info -f vpc --output=json v.vhd >vi.json
        [ "$(size_of qi.json)" = "$(size_of vi.json)" ] || fail "size $s force_size=$force: qemu $(size_of qi.json), vbd $(size_of vi.json)"
        # the same footer but for timestamp, checksum and uuid
        python3 - q.vhd v.vhd <<'EOF' || fail "size $s force_size=$force: footers differ"
import sys
a, b = (open(p, 'rb').read(512) for p in sys.argv[1:3])
mask = lambda f: f[:24] + f[28:64] + f[84:]
sys.exit(mask(a) != mask(b))
EOF
        rm -f q.vhd v.vhd
    done
done
must_fail_with "too large" "$VBD_IMG" create -q -f vpc v.vhd 2041G

step "a fixed VHD probes as raw, as in qemu-img"
must "$VBD_IMG" create -q -f vpc -o subformat=fixed f.vhd 4M
fmt=$("$VBD_IMG" info --output=json f.vhd | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
[ "$fmt" = raw ] || fail "fixed VHD probed as $fmt"
must "$VBD_IMG" create -q -f vpc d.vhd 4M
fmt=$("$VBD_IMG" info --output=json d.vhd | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
[ "$fmt" = vpc ] || fail "dynamic VHD probed as $fmt"

step "hostile footers and headers: one-line errors"
patch() { # patch IMG OFFSET HEXBYTES [fix-footer-checksum]
    python3 - "$@" <<'EOF'
import sys, struct
p, off, data = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
b = bytearray(open(p, 'rb').read())
off = off + len(b) if off < 0 else off
b[off:off + len(data)] = data
def fix(start, size, at):
    b[start + at:start + at + 4] = b'\0' * 4
    b[start + at:start + at + 4] = struct.pack('>I', ~sum(b[start:start + size]) & 0xffffffff)
if len(sys.argv) > 4 and sys.argv[4] == 'end':
    fix(len(b) - 512, 512, 64)
elif len(sys.argv) > 4:
    fix(0, 512, 64)
    fix(512, 1024, 36)
open(p, 'wb').write(b)
EOF
}
bad() { # bad WANT OFFSET HEX [fix]; the image is $base
    must cp "$base" x.vhd
    patch x.vhd "$2" "$3" ${4:-}
    must_fail_with "$1" "$VBD_IMG" info -f vpc x.vhd
    must_fail_with "$1" "$VBD_IO" -f vpc -c 'read 0 512' x.vhd
}
base=d.vhd
bad "checksum" 40 01
base=f.vhd bad "invalid VPC image" -512 00 # (qemu-img's words for a footer without its cookie)
base=f.vhd bad "past the end of the file" -456 ffff end
bad "data_offset" 16 00000000ffff0000 fix
bad "cxsparse" 512 00 fix
bad "dynamic header checksum" 560 01
bad "Invalid block size" 544 00000300 fix
bad "Error reading pagetable" 528 00000000ffffff00 fix
bad "Page table too small" 540 00000001 fix
bad "The image has been truncated" 1536 00100000 fix
must "$VBD_IMG" create -q -f vpc -o force_size=on d2.vhd 4M
base=d2.vhd bad "2040 GiB" 48 0000ffffffffff00 fix
# a dynamic image turned differencing names no parent (fmt-vpc-diff.sh reads real ones)
must cp d.vhd x.vhd
patch x.vhd 60 00000004 fix
must_fail_with "differencing VHD image names no parent" "$VBD_IMG" info -f vpc x.vhd
must_fail_with "writing to differencing VHD images is not supported" "$VBD_IO" -f vpc -c 'write 0 512' x.vhd
printf 'short' >s.vhd
must_fail_with "invalid VPC image" "$VBD_IMG" info -f vpc s.vhd # (one zero-padded sector: qemu-img's words)

step "an allocation cut short before its BAT entry: the next new block does not show its data"
# an allocation writes the bitmap, the data, the footer at the new end,
# flushes, then the BAT entry; blkdebug fails that 4th write. The space
# keeps the failed write's data (as after a crash in that window): a new
# block put there read it in the sectors nobody wrote, in the same process
# and after reopening.
zero_after() { # RAW OFFSET LENGTH: that range of the converted image is zeroes
    python3 - "$@" <<'EOF'
import sys
d = open(sys.argv[1], "rb").read()
at, n = int(sys.argv[2]), int(sys.argv[3])
bad = [i for i in range(at, at + n) if d[i]]
if bad:
    sys.exit(f"{len(bad)} bytes of [{at}, {at + n}) are not zero (first {bad[0]}: 0x{d[bad[0]]:02x}): a failed write's data")
EOF
}
fail_bat="driver=vpc,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/l.vhd,file.inject-error.0.event=write_aio,file.inject-error.0.x-skip=3,file.inject-error.0.once=on"
must qemu-img create -q -f vpc l.vhd 8M
out=$("$VBD_IO" --image-opts "$fail_bat" -c "write -P 0x55 0 2M" -c "write -P 0x66 2M 4k" 2>&1)
grep -q "write failed: Input/output error" <<<"$out" || fail "the BAT entry's write must fail: $out"
must "$VBD_IO" -f vpc -c "write -P 0x77 4M 4k" l.vhd >/dev/null
must qemu-img convert -f vpc -O raw l.vhd l.raw
zero_after l.raw $((2 * 1048576 + 4096)) $((2 * 1048576 - 4096)) || fail "the block after a failed allocation, same process"
out=$("$VBD_IO" --image-opts "$fail_bat" -c "write -P 0x55 0 2M" 2>&1)
grep -q "write failed: Input/output error" <<<"$out" || fail "the BAT entry's write must fail again: $out"
must "$VBD_IO" -f vpc -c "write -P 0x88 6M 4k" l.vhd >/dev/null
must qemu-img convert -f vpc -O raw l.vhd l.raw
zero_after l.raw $((6 * 1048576 + 4096)) $((2 * 1048576 - 4096)) || fail "the block after a failed allocation, reopened"
must "$VBD_IO" -f vpc -c "read -P 0x66 2M 4k" -c "read -P 0x77 4M 4k" -c "read -P 0x88 6M 4k" -c "read -P 0 0 2M" l.vhd >l.out
! grep -q "fail" l.out || fail "the blocks written after the failed ones: $(cat l.out)"

step "the model-based stress test (tests/stress/vbd-stress) on dynamic vpc images (2 MiB blocks; qemu-img has no vpc check), in process and over NBD"
cd "$T"
stress_format vpc 2097152 2097152 "-o force_size=on" nocheck
echo ok
