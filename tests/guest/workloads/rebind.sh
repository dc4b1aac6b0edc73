# The driver is unbound and bound again (echo to virtio_blk's unbind/bind)
# while direct reads and writes run on the disk, VBD_REBINDS times (default
# 3): the unbind waits for every request in flight to complete (a lost
# completion hangs it: the guest's watchdog fails), the device is reset and
# set up again, the disk comes back with the data written before (a region
# written once, checked after every rebind) and takes new writes; the kernel
# logs no ring error (a duplicated completion: "id N is not a head").
. /lib/vbd.sh
rounds=${VBD_REBINDS:-3}
drv=/sys/bus/virtio/drivers/virtio_blk
virtio=$(basename "$(readlink -f $blk/device)")
case $virtio in virtio*) ;; *) fail "no virtio device behind $blk ($virtio)" ;; esac
mib=$((1048576 / lbs))
write_pattern 0 $mib direct
r=1
while [ $r -le $rounds ]; do
    # writers and readers in flight: direct I/O, so each request reaches the device
    i=0
    while [ $i -lt 4 ]; do
        (n=0; while dd if=/dev/urandom of=$dev bs=64k seek=$((16 + i * 64 + n % 64)) count=1 oflag=direct 2>/dev/null
            do n=$((n + 1)); done) &
        (while dd if=$dev of=/dev/null bs=64k skip=$((i * 64)) count=64 iflag=direct 2>/dev/null; do :; done) &
        i=$((i + 1))
    done
    # each loop's first request has gone down once the disk counted 16 more
    before=$(($(stat_field 1) + $(stat_field 5)))
    j=0
    while [ $(($(stat_field 1) + $(stat_field 5))) -lt $((before + 16)) ]; do
        j=$((j + 1)); [ $j -gt 1200 ] && fail "round $r: the I/O loops do not run"; sleep 0.1
    done
    log "rebind: round $r: unbinding $virtio under I/O (in flight now: $(cat $blk/inflight))"
    echo $virtio >$drv/unbind || fail "round $r: unbind failed"
    wait # the loops end at their first error: the disk is gone
    [ ! -e $blk ] || fail "round $r: $blk still there after the unbind"
    echo $virtio >$drv/bind || fail "round $r: bind failed"
    j=0
    while ! ls /sys/bus/virtio/devices/$virtio/block/ 2>/dev/null | grep -q vd; do
        j=$((j + 1)); [ $j -gt 1200 ] && fail "round $r: no disk 120 s after the bind"; sleep 0.1
    done
    name=$(ls /sys/bus/virtio/devices/$virtio/block/)
    dev=/dev/$name blk=/sys/block/$name
    j=0
    while [ ! -r $blk/dev ]; do j=$((j + 1)); [ $j -gt 1200 ] && fail "round $r: no $blk/dev"; sleep 0.1; done
    # the node, made here: devtmpfs made none for the disk added again (6.1,
    # no udev), and one an earlier round made may name another minor now
    mm=$(cat $blk/dev)
    rm -f $dev
    mknod $dev b ${mm%:*} ${mm#*:} || fail "round $r: mknod $dev $mm"
    check_region 0 $mib direct
    write_pattern $((2 * mib + r)) 1 direct
    check_region $((2 * mib + r)) 1 direct
    log "rebind: round $r: $dev back, data intact, writes work"
    r=$((r + 1))
done
# virtio_ring's complaints about a used ring (BAD_RING): a completion of a
# request not in flight, twice, or longer than its buffers
dmesg | grep -e "is not a head" -e "id [0-9]* out of range" -e "is larger than in buflen" >/tmp/bad &&
    fail "kernel: $(head -3 /tmp/bad)"
log "rebind: done"
