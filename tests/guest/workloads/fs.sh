# ext2 on the whole disk (wiped): files with checksums survive a remount,
# deletion, fstrim and a read-only mount.
. /lib/vbd.sh
files=${VBD_FILES:-200}
mnt=/mnt/${VBD_TAG:-d} sumfile=/tmp/sums.${VBD_TAG:-d} # disks side by side (run-guest --parallel) each have their own
log "fs: mkfs, $files files"
must mke2fs -q -b 4096 $dev
mkdir -p $mnt
must mount -t ext4 $dev $mnt
mkfiles() { # FIRST COUNT
    i=$1
    while [ $i -lt $(($1 + $2)) ]; do
        d=$mnt/dir$((i % 10)); mkdir -p $d
        n=$(((i * 7919) % 512 + 1))
        head -c $((n * 512)) /dev/urandom >$d/f$i || fail "write f$i"
        i=$((i + 1))
    done
}
sums() { (cd $mnt && find . -name 'f*' -type f | sort | xargs sha256sum) >$sumfile; }
check() {
    (cd $mnt && sha256sum -c -s $sumfile) || fail "checksum mismatch ($1)"
    [ "$(find $mnt -name 'f*' -type f | wc -l)" = "$(wc -l <$sumfile)" ] || fail "file count ($1)"
}
mkfiles 0 $files
sums
must umount $mnt
drop_caches
must mount -t ext4 $dev $mnt
check "after remount"
log "$files files verified after remount"
find $mnt -name 'f*[02468]' -type f | xargs rm -f
[ "$(cat $blk/queue/discard_max_bytes)" -gt 0 ] && { must fstrim $mnt; log "fstrim done"; }
mkfiles $files $((files / 2 + 1))
sums
must umount $mnt
drop_caches
must mount -t ext4 -o ro $dev $mnt
check "read-only mount"
must umount $mnt
log "fs: done"
