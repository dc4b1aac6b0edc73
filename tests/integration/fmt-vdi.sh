#!/bin/bash
# VirtualBox VDI (issue 16): images qemu-img makes (dynamic and static=on,
# sizes that end inside a block) read by vbd-img/vbd-io as qemu-img reads
# them; images vbd-img makes and writes vbd-io does checked clean and
# compared identical by qemu-img; concurrent writes into one unallocated
# block; info agrees; corrupt headers give a one-line error.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

# patterns at unaligned offsets, several crossing the 1 MiB block boundaries
PATTERNS=("0x11 1000 5000" "0x22 1048000 3000" "0x33 3145000 2097000" "0x44 5242879 3" "0x55 6291000 9000")
qwrite() { # qemu-io with the patterns above into $1 (format vdi)
    local args=(); for p in "${PATTERNS[@]}"; do args+=(-c "write -P $p"); done
    must qemu-io -f vdi "${args[@]}" "$1" >/dev/null
}
verify_vbd() { # vbd-io must read every pattern back from $1
    local args=() out; for p in "${PATTERNS[@]}"; do args+=(-c "read -P $p"); done
    out=$("$VBD_IO" -f vdi -r "${args[@]}" "$1" 2>&1) || fail "vbd-io read of $1: $out"
    ! grep -qi "fail\|mismatch" <<<"$out" || fail "vbd-io reads other data from $1: $out"
}
info_key() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1]))' "$2" <<<"$1"; }

for opt in "static=off" "static=on"; do
    for size in 7M 6500k; do
        step "qemu-img vdi $opt size $size: vbd-img reads it as qemu-img does"
        rm -f q.vdi v.raw q.raw
        must qemu-img create -q -f vdi -o $opt q.vdi $size
        qwrite q.vdi
        must "$VBD_IMG" convert -f vdi -O raw q.vdi v.raw
        must qemu-img convert -f vdi -O raw q.vdi q.raw
        cmp v.raw q.raw || fail "vbd-img convert of q.vdi ($opt, $size) differs from qemu-img's"
        verify_vbd q.vdi
        # probed without -f, too
        must "$VBD_IMG" convert -O raw q.vdi v.raw
        cmp v.raw q.raw || fail "probed q.vdi converts differently"
        vi=$("$VBD_IMG" info --output=json q.vdi) || fail "vbd-img info q.vdi"
        qi=$(qemu-img info --output=json q.vdi)
        for k in virtual-size format cluster-size; do
            [ "$(info_key "$vi" $k)" = "$(info_key "$qi" $k)" ] ||
                fail "info $k: vbd-img says $(info_key "$vi" $k), qemu-img $(info_key "$qi" $k)"
        done
        [ "$("$VBD_IMG" map --output=json q.vdi)" = "$(qemu-img map --output=json q.vdi)" ] ||
            fail "vbd-img map of q.vdi differs from qemu-img's"

        step "vbd-img convert raw -> vdi ($opt): qemu-img check clean, compare identical"
        rm -f c.vdi
        must "$VBD_IMG" convert -f raw -O vdi -o $opt q.raw c.vdi
        qcheck c.vdi
        must "$VBD_IMG" check -q c.vdi
        must qemu-img compare -q -f raw -F vdi q.raw c.vdi
        [ "$(info_key "$(qemu-img info --output=json c.vdi)" virtual-size)" = "$(stat -c %s q.raw)" ] ||
            fail "c.vdi has another virtual size than its source"
    done
done

step "vbd-img create matches qemu-img create (size, type, file size)"
for opt in "static=off" "static=on"; do
    rm -f v.vdi q.vdi
    must "$VBD_IMG" create -q -f vdi -o $opt v.vdi 6500k
    must qemu-img create -q -f vdi -o $opt q.vdi 6500k
    [ "$(stat -c %s v.vdi)" = "$(stat -c %s q.vdi)" ] || fail "$opt: vbd-img's file is $(stat -c %s v.vdi) bytes, qemu-img's $(stat -c %s q.vdi)"
    qcheck v.vdi
    [ "$(qemu-img map --output=json v.vdi)" = "$(qemu-img map --output=json q.vdi)" ] || fail "$opt: maps differ"
    qi=$(qemu-img info --output=json v.vdi)
    [ "$(info_key "$qi" virtual-size)" = "$(info_key "$(qemu-img info --output=json q.vdi)" virtual-size)" ] ||
        fail "$opt: virtual sizes differ"
done

step "a size past the VDI limit is refused with qemu-img's error"
q=$(qemu-img create -q -f vdi huge.vdi 5000T 2>&1) && fail "qemu-img created a 5000T vdi"
must_fail_with "${q##*: }" "$VBD_IMG" create -q -f vdi huge.vdi 5000T

step "vbd-io writes into qemu-img images (with concurrent writes to one unallocated block) = qemu-io's writes"
for opt in "static=off" "static=on"; do
    rm -f a.vdi b.vdi
    must qemu-img create -q -f vdi -o $opt a.vdi 8M
    must qemu-io -f vdi -c "write -P 0x66 100 2000000" a.vdi >/dev/null
    must cp a.vdi b.vdi
    cmds=(-c "aio_write -P 0x71 3146000 5000" -c "aio_write -P 0x72 3200000 700" -c "aio_write -P 0x73 4100000 300000"
          -c "aio_write -P 0x74 3145728 100" -c "aio_write -P 0x75 5000 3000" -c aio_flush
          -c "write -P 0x76 7340000 9000" -c "write -z 1500 2000" -c "write -z 6000000 5000")
    must "$VBD_IO" -f vdi "${cmds[@]}" a.vdi >/dev/null
    qcmds=(); for c in "${cmds[@]}"; do [ "$c" = -c ] && continue; [ "$c" = aio_flush ] && continue; qcmds+=(-c "${c#aio_}"); done
    must qemu-io -f vdi "${qcmds[@]}" b.vdi >/dev/null
    qcheck a.vdi
    must qemu-img compare -q -f vdi -F vdi a.vdi b.vdi
    out=$(qemu-io -f vdi -r -c "read -P 0x74 3145728 100" -c "read -P 0x71 3146000 5000" -c "read -P 0x72 3200000 700" a.vdi 2>&1)
    ! grep -q "fail" <<<"$out" || fail "concurrent writes into one block lost data: $out"
done

step "corrupt headers: one-line error, exit 1"
must qemu-img create -q -f vdi good.vdi 4M
must qemu-io -f vdi -c "write -P 1 0 2M" good.vdi >/dev/null
patch() { # file offset struct-format value
    python3 - "$@" <<'EOF'
import struct, sys
f, off, fmt, val = sys.argv[1], int(sys.argv[2], 0), sys.argv[3], int(sys.argv[4], 0)
with open(f, 'r+b') as h:
    h.seek(off); h.write(struct.pack(fmt, val))
EOF
}
check_bad() { # want-substring offset fmt value
    cp good.vdi bad.vdi
    patch bad.vdi "$2" "$3" "$4"
    must_fail_with "$1" "$VBD_IMG" convert -f vdi -O raw bad.vdi bad.raw
    must_fail_with "$1" "$VBD_IO" -f vdi -c "write 0 512" bad.vdi
    rc=0; "$VBD_IMG" info -f vdi bad.vdi >/dev/null 2>&1 || rc=$?
    [ $rc = 1 ] || fail "vbd-img info on bad.vdi ($1) exited $rc, not 1"
}
check_bad "version" 0x44 "<I" 0x00020001
check_bad "block size" 0x178 "<I" 4096
check_bad "sector size" 0x168 "<I" 4096
check_bad "block map past the end" 0x154 "<I" 0x7ffffe00
check_bad "too many blocks" 0x180 "<I" 0xfffffff0
check_bad "Unsupported VDI image size" 0x170 "<Q" 0xffffffffffff0000
check_bad "data offset" 0x158 "<I" 0x201
check_bad "points to block" 0x200 "<I" 0x12345
check_bad "used twice" 0x204 "<I" 0
check_bad "parent UUID" 0x1b8 "<I" 1
check_bad "image type" 0x4c "<I" 7
step "check: a map with a block used twice, an entry past the image, a wrong count: exit 2 as qemu-img"
for fault in "0x204 <I 0" "0x208 <I 0x999" "0x184 <I 1"; do
    cp good.vdi bad.vdi
    must qemu-io -f vdi -c "write -P 2 2M 1M" bad.vdi >/dev/null
    patch bad.vdi $fault
    rc=0; qemu-img check bad.vdi >/dev/null 2>&1 || rc=$?
    vrc=0; out=$("$VBD_IMG" check bad.vdi 2>&1) || vrc=$?
    [ $rc = 2 ] && [ $vrc = 2 ] || fail "check of a map patched with '$fault': qemu-img exit $rc, vbd-img $vrc: $out"
    grep -q "^ERROR: " <<<"$out" || fail "vbd-img check names no error for '$fault': $out"
done
must "$VBD_IMG" check -q good.vdi

step "an allocation that fails (or a crash) between its count and its map entry leaves at worst a leaked block"
# an allocation writes the block, then the header's count, then the map
# entry (QEMU's order); blkdebug fails the 2nd or the 3rd write of one. A
# map entry past the count (the old order, map then count) had QEMU's next
# allocation hand the same data block out twice, and vbd refuse the image.
for skip in 1 2; do
    rm -f f.vdi f.raw
    must qemu-img create -q -f vdi f.vdi 8M
    must qemu-io -f vdi -c "write -P 0x11 1M 64k" f.vdi >/dev/null
    out=$("$VBD_IO" --image-opts "driver=vdi,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/f.vdi,file.inject-error.0.event=write_aio,file.inject-error.0.x-skip=$skip,file.inject-error.0.once=on" \
        -c "write -P 0x22 3M 64k" 2>&1)
    grep -q "write failed: Input/output error" <<<"$out" || fail "x-skip=$skip: the allocating write must fail: $out"
    must qemu-io -f vdi -c "write -P 0x33 5M 64k" f.vdi >/dev/null
    out=$("$VBD_IO" -f vdi -c "write -P 0x44 7M 64k" f.vdi 2>&1) || fail "x-skip=$skip: vbd-io cannot write on: $out"
    must qemu-img convert -f vdi -O raw f.vdi f.raw
    python3 - f.raw "$skip" <<'EOF' || fail "x-skip=$skip: a block's data was lost"
import sys
d = open(sys.argv[1], "rb").read()
for pat, at in ((0x11, 1 << 20), (0x33, 5 << 20), (0x44, 7 << 20)):
    if d[at:at + 65536] != bytes([pat]) * 65536:
        sys.exit(f"x-skip={sys.argv[2]}: at {at} not the 0x{pat:02x} pattern (a data block used twice)")
EOF
    out=$("$VBD_IMG" check f.vdi 2>&1)
    ! grep -q "used by map entries" <<<"$out" || fail "x-skip=$skip: a data block is used twice: $out"
done

step "a crash between an allocation's count and its map entry leaked the last block: vbd takes it again (the last block of a full image was refused with EIO; qemu-io writes it past the image's blocks)"
cd "$T"
leaked_vdi() { # IMG: a 2 MiB dynamic vdi, block 0 written with 0x61, the header's count 2 (block 1 reserved, unused)
    must qemu-img create -q -f vdi "$1" 2M
    must qemu-io -f vdi -c 'write -P 0x61 0 1M' "$1" >/dev/null
    printf '\x02\x00\x00\x00' | dd of="$1" bs=1 seek=$((0x184)) conv=notrunc status=none || fail "patching $1"
    out=$(qemu-img check -f vdi "$1" 2>&1) && fail "qemu-img check of the leaked image found nothing"
    grep -q "allocated blocks mismatch, is 1, should be 2" <<<"$out" || fail "qemu-img check of the leaked image: $out"
}
leaked_vdi leak.vdi
before=$(stat -c %s leak.vdi)
out=$("$VBD_IO" -f vdi -c 'write -P 0x62 1M 1M' leak.vdi 2>&1) || fail "vbd-io write into the last block after a leak: $out"
! grep -qi "fail" <<<"$out" || fail "vbd-io write into the last block after a leak: $out"
qcheck -f vdi leak.vdi
[ "$(stat -c %s leak.vdi)" = $((before + 1048576)) ] || fail "the leaked block was not taken again: $(stat -c %s leak.vdi) bytes, was $before"
out=$(qemu-io -f vdi -r -c 'read -P 0x61 0 1M' -c 'read -P 0x62 1M 1M' leak.vdi 2>&1)
! grep -qi "fail\|mismatch" <<<"$out" || fail "qemu-io reads other data after vbd's write: $out"
leaked_vdi leak2.vdi
"$VBD_IO" -f vdi -r -c 'read -P 0x61 0 1M' leak2.vdi >/dev/null || fail "vbd-io read-only open of a leaked image"
out=$(qemu-img check -f vdi leak2.vdi 2>&1) && fail "a read-only open changed the leaked image"

step "the model-based stress test (tests/stress/vbd-stress) on dynamic vdi images (1 MiB blocks), in process and over NBD"
cd "$T"
stress_format vdi 1048576 1048576 ""
echo PASS
