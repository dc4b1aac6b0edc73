# Fills the whole disk with VBD_FILL_BYTE; the host checks where it landed.
. /lib/vbd.sh
[ -n "${VBD_EXPECT_SIZE:-}" ] && { [ "$size" = "$VBD_EXPECT_SIZE" ] || fail "size $size, expected $VBD_EXPECT_SIZE"; }
[ -n "${VBD_EXPECT_LBS:-}" ] && { [ "$lbs" = "$VBD_EXPECT_LBS" ] || fail "logical block size $lbs, expected $VBD_EXPECT_LBS"; }
dd if=/dev/zero bs=65536 count=$((size / 65536)) 2>/dev/null | tr '\000' "${VBD_FILL_BYTE:-W}" |
    dd of=$dev bs=65536 iflag=fullblock oflag=direct 2>/dev/null || fail "filling the disk"
log "fill: done"
