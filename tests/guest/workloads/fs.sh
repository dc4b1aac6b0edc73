# ext2 on the whole disk (wiped): files with checksums survive a remount,
# deletion, fstrim and a read-only mount.
. /lib/vbd.sh
files=${VBD_FILES:-200}
log "fs: mkfs, $files files"
must mke2fs -q -b 4096 $dev
mkdir -p /mnt/d
must mount -t ext4 $dev /mnt/d
mkfiles() { # FIRST COUNT
    i=$1
    while [ $i -lt $(($1 + $2)) ]; do
        d=/mnt/d/dir$((i % 10)); mkdir -p $d
        n=$(((i * 7919) % 512 + 1))
        head -c $((n * 512)) /dev/urandom >$d/f$i || fail "write f$i"
        i=$((i + 1))
    done
}
sums() { (cd /mnt/d && find . -name 'f*' -type f | sort | xargs sha256sum) >/tmp/sums; }
check() {
    (cd /mnt/d && sha256sum -c -s /tmp/sums) || fail "checksum mismatch ($1)"
    [ "$(find /mnt/d -name 'f*' -type f | wc -l)" = "$(wc -l </tmp/sums)" ] || fail "file count ($1)"
}
mkfiles 0 $files
sums
must umount /mnt/d
drop_caches
must mount -t ext4 $dev /mnt/d
check "after remount"
log "$files files verified after remount"
find /mnt/d -name 'f*[02468]' -type f | xargs rm -f
[ "$(cat $blk/queue/discard_max_bytes)" -gt 0 ] && { must fstrim /mnt/d; log "fstrim done"; }
mkfiles $files $((files / 2 + 1))
sums
must umount /mnt/d
drop_caches
must mount -t ext4 -o ro $dev /mnt/d
check "read-only mount"
must umount /mnt/d
log "fs: done"
