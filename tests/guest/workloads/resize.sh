# Waits for the disk to grow under the running guest (the host resizes the
# image and signals the back end), then uses the new end of the disk.
# VBD_OLD_SECTORS / VBD_NEW_SECTORS: the sizes before and after, in 512-byte sectors.
. /lib/vbd.sh
old=$(cat $blk/size)
[ "$old" = "$VBD_OLD_SECTORS" ] || fail "size $old sectors at boot, expected $VBD_OLD_SECTORS"
log "resize: ready at $old sectors"
i=0
while [ "$(cat $blk/size)" = "$old" ]; do
    i=$((i + 1))
    [ $i -gt 1200 ] && fail "the size never changed (still $old sectors after 120 s)"
    sleep 0.1
done
new=$(cat $blk/size)
[ "$new" = "$VBD_NEW_SECTORS" ] || fail "size $new sectors after the resize, expected $VBD_NEW_SECTORS"
log "resize: the kernel sees $new sectors"
size=$(blockdev --getsize64 $dev)
[ "$size" = $((new * 512)) ] || fail "blockdev --getsize64 says $size"
# the last MiB, entirely beyond the old end
last=$((new * 512 / lbs - 1048576 / lbs))
write_pattern $last $((1048576 / lbs)) direct
drop_caches
check_region $last $((1048576 / lbs)) direct
log "resize: wrote and read back the last MiB"
