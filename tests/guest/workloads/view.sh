# What the guest sees of its disk (lsblk -t's columns and more, from
# /sys/block/*/queue, the serial, the features): one "view:" line each, for
# the host to compare between back ends (guest-vhost-user.sh: vbd-daemon and
# qemu-storage-daemon with the same options).
. /lib/vbd.sh
for f in logical_block_size physical_block_size minimum_io_size optimal_io_size alignment_offset max_segments \
    max_segment_size max_hw_sectors_kb max_sectors_kb discard_granularity discard_max_hw_bytes \
    write_zeroes_max_bytes write_cache fua rotational; do
    v=$(cat $blk/queue/$f 2>/dev/null || echo none)
    [ $f = alignment_offset ] && v=$(cat $blk/alignment_offset)
    log "view: $f $v"
done
log "view: nr_hw_queues $(ls -d $blk/mq/* | wc -l)"
log "view: size $(cat $blk/size)"
log "view: ro $(cat $blk/ro)"
log "view: serial '$(cat $blk/serial)'"
log "view: features $(features)"
