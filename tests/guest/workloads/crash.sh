# Files written until the back end dies (the host kills it, then QEMU), on
# an ext4 with a journal (made on the host; mounted as it is, so that a
# previous crash's journal is replayed by the kernel). Each durable file is
# written with dd conv=fsync (every third under a temporary name, renamed
# after its fsync: the atomic-replace pattern), then the file system is
# synced (its directory entry, the journal), and only then "vbd: durable
# NAME SUM" is logged: every file named in such a line must be intact after
# the crash. Files written without a sync, and deleted, go along to give
# the journal more to replay; mounted with -o discard, so that deletes free
# clusters of the image under the writes. VBD_ROUND names this boot's files.
. /lib/vbd.sh
mnt=/mnt/c r=${VBD_ROUND:-0}
mkdir -p $mnt
must mount -t ext4 -o discard $dev $mnt
mkdir -p $mnt/d
log "crash: mounted, round $r"
i=0
while :; do
    f=d/r$r-f$i n=$(((i * 7919 + r * 31) % 96 + 1))
    if [ $((i % 3)) = 0 ]; then
        dd if=/dev/urandom of=$mnt/d/tmp bs=4096 count=$n conv=fsync 2>/dev/null || fail "write $f"
        mv $mnt/d/tmp $mnt/$f || fail "rename to $f"
    else
        dd if=/dev/urandom of=$mnt/$f bs=4096 count=$n conv=fsync 2>/dev/null || fail "write $f"
    fi
    head -c $(((i * 131) % 200000 + 1)) /dev/urandom >$mnt/x$((i % 5)) || fail "write x$((i % 5))"
    [ $((i % 4)) = 3 ] && rm -f $mnt/x$(((i + 2) % 5))
    sync
    log "durable $f $(sha256sum <$mnt/$f | cut -c1-64)"
    i=$((i + 1))
done
