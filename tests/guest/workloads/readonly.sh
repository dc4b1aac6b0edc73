# A read-only disk: the guest sees it read-only, reads work, writes fail.
. /lib/vbd.sh
[ "$(cat $blk/ro)" = 1 ] || fail "$blk/ro is not 1"
has_feature 5 || fail "VIRTIO_BLK_F_RO not offered"
before=$(dd if=$dev bs=1M count=1 iflag=direct 2>/dev/null | md5sum)
dd if=$dev of=/dev/null bs=1M skip=$((size / 1048576 - 1)) count=1 iflag=direct 2>/dev/null || fail "read of the last MiB"
dd if=/dev/zero of=$dev bs=4096 count=1 oflag=direct 2>/dev/null && fail "an O_DIRECT write succeeded"
dd if=/dev/zero of=$dev bs=4096 count=1 conv=fsync 2>/dev/null && fail "a buffered write succeeded"
blkdiscard -o 0 -l 1048576 $dev 2>/dev/null && fail "a discard succeeded"
drop_caches
[ "$(dd if=$dev bs=1M count=1 iflag=direct 2>/dev/null | md5sum)" = "$before" ] || fail "the first MiB changed"
log "readonly: done"
