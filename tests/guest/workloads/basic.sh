# Raw block I/O: patterns written buffered and O_DIRECT, odd sizes, a large
# write, parallel writers on every CPU; read back both ways; flush and
# discard when the device offers them. Needs a writable disk of 16 MiB+.
. /lib/vbd.sh
log "size $size, logical block $lbs, features $(features | cut -c1-33), seed $seed"
[ "$(cat $blk/ro)" = 0 ] || fail "device is read-only"
[ -n "${VBD_EXPECT_LBS:-}" ] && { [ "$lbs" = "$VBD_EXPECT_LBS" ] || fail "logical block size $lbs, expected $VBD_EXPECT_LBS"; }
[ -n "${VBD_EXPECT_SIZE:-}" ] && { [ "$size" = "$VBD_EXPECT_SIZE" ] || fail "size $size, expected $VBD_EXPECT_SIZE"; }
[ "$size" -ge $((16 << 20)) ] || fail "disk smaller than 16 MiB"
mib=$((1048576 / lbs))
nblocks=$((size / lbs))
mid=$((nblocks / 2))
write_pattern 0 $mib
write_pattern $mid $mib direct
write_pattern $((nblocks - mib)) $mib
write_pattern $((mib + 1)) 7 direct                # odd size at an odd block
write_pattern $((mib * 4)) $((mib * 4)) direct     # 4 MiB in one request (split by the guest's limits)
ncpu=$(grep -c ^processor /proc/cpuinfo)
i=0
while [ $i -lt $((ncpu * 2)) ]; do                 # two writers per CPU, pinned
    taskset $((1 << (i % ncpu))) sh -c ". /lib/vbd.sh; seed=$seed; write_pattern $((mib * 10 + i * mib / 2)) $((mib / 2)) direct" &
    i=$((i + 1))
done
wait
drop_caches
for d in direct buffered; do
    check_region 0 $mib $d
    check_region $mid $mib $d
    check_region $((nblocks - mib)) $mib $d
    check_region $((mib + 1)) 7 $d
    check_region $((mib * 4)) $((mib * 4)) $d
    check_region $((mib * 10)) $((mib * ncpu)) $d
    drop_caches
done
log "patterns verified"
# every queue must have completed requests
nq=$(ls -d $blk/mq/* | wc -l)
if [ "$nq" -gt 1 ]; then
    vdev=$(basename "$(readlink -f $blk/device)") # virtioN, its queues' interrupt names
    q=0
    while [ $q -lt $nq ]; do
        n=$(awk -v q="$vdev-req.$q" '$NF == q { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts)
        [ "${n:-0}" -gt 0 ] || fail "queue $q saw no completion"
        q=$((q + 1))
    done
    log "$nq queues all used"
fi
if [ -w $blk/cache_type ] || [ -w $blk/queue/write_cache ]; then
    echo "write back" >$blk/cache_type 2>/dev/null || echo "write back" >$blk/queue/write_cache
    before=$(stat_field 16)
    write_pattern $((mib * 9)) 1
    sync
    dd if=/dev/zero of=$dev bs=$lbs seek=$((mib * 9 + 1)) count=1 conv=fsync 2>/dev/null
    [ "$(stat_field 16)" -gt "$before" ] || fail "fsync sent no FLUSH"
    log "flush reached the device"
fi
if [ "$(cat $blk/queue/discard_max_bytes)" -gt 0 ]; then
    before=$(stat_field 14)
    must blkdiscard -o $((mid * lbs + 65536)) -l 524288 $dev
    [ "$(stat_field 14)" -ge $((before + 1024)) ] || fail "discard not counted"
    drop_caches
    check_region $mid $((65536 / lbs)) direct
    check_region $((mid + (65536 + 524288) / lbs)) $(((1048576 - 65536 - 524288) / lbs)) direct
    log "discard kept its neighbours"
fi
log "basic: done"
