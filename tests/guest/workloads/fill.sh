# Fills the whole disk with VBD_FILL_BYTE; the host checks where it landed.
. /lib/vbd.sh
[ -n "${VBD_EXPECT_SIZE:-}" ] && { [ "$size" = "$VBD_EXPECT_SIZE" ] || fail "size $size, expected $VBD_EXPECT_SIZE"; }
[ -n "${VBD_EXPECT_LBS:-}" ] && { [ "$lbs" = "$VBD_EXPECT_LBS" ] || fail "logical block size $lbs, expected $VBD_EXPECT_LBS"; }
# a MiB of the byte made once and repeated: tr over every byte of the disk
# cost the guest (TCG) 11 s of CPU for 64 MiB, this 7 s (boot excluded).
# The disk gets the same O_DIRECT writes of 64 KiB.
one=/tmp/fill.${dev##*/}
dd if=/dev/zero bs=65536 count=1 2>/dev/null | tr '\000' "${VBD_FILL_BYTE:-W}" >$one || fail "making the fill"
for _ in 1 2 3 4; do cat $one $one >$one.2 && mv $one.2 $one || fail "making the fill"; done
i=0
while [ $i -lt $(((size + 1048575) / 1048576)) ]; do cat $one; i=$((i + 1)); done 2>/dev/null |
    dd of=$dev bs=65536 count=$((size / 65536)) iflag=fullblock oflag=direct 2>/dev/null || fail "filling the disk"
rm -f $one
log "fill: done"
