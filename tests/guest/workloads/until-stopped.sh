# Pattern writers and readers that keep the disk busy until the host says
# stop: each round two writers (one per CPU, O_DIRECT) rewrite two of 8
# regions of 256 KiB with a fresh seed and read them back; after each round
# the last logical block is read O_DIRECT and the workload ends when the
# host has filled it with 'S' (VBD_MAX_ROUNDS bounds it otherwise). At the
# end every region is checked again, direct and buffered, against the seed
# of the round that last wrote it. "vbd: round N ok" tells the host the
# disk is being served. Needs a writable disk of 16 MiB+.
. /lib/vbd.sh
[ "$(cat $blk/ro)" = 0 ] || fail "device is read-only"
[ "$size" -ge $((16 << 20)) ] || fail "disk smaller than 16 MiB"
base=$seed
rblocks=$((262144 / lbs))
nregions=8
stop_block=$((size / lbs - 1))
ncpu=$(grep -c ^processor /proc/cpuinfo)
log "until-stopped: size $size, logical block $lbs, seed $base, $ncpu CPUs"
stopped() { [ "$(dd if=$dev bs=$lbs skip=$stop_block count=1 iflag=direct 2>/dev/null | head -c 8)" = SSSSSSSS ]; }
round=0
while :; do
    round=$((round + 1))
    first=$(((round * 2) % nregions))
    pids=
    for r in $first $((first + 1)); do
        taskset $((1 << (r % ncpu))) sh -c ". /lib/vbd.sh; seed=$base.$round; write_pattern $((r * rblocks)) $rblocks direct" &
        pids="$pids $!"
    done
    for p in $pids; do wait $p || fail "round $round: a writer failed"; done
    for r in $first $((first + 1)); do
        seed=$base.$round; check_region $((r * rblocks)) $rblocks direct
        eval "last_$r=$round"
    done
    log "round $round ok"
    stopped && break
    [ $round -lt "${VBD_MAX_ROUNDS:-100000}" ] || fail "no stop marker after $round rounds"
done
drop_caches
r=0
while [ $r -lt $nregions ]; do
    eval "w=\${last_$r:-}"
    if [ -n "$w" ]; then
        seed=$base.$w; check_region $((r * rblocks)) $rblocks direct
        seed=$base.$w; check_region $((r * rblocks)) $rblocks buffered
    fi
    r=$((r + 1))
done
log "until-stopped: done after $round rounds, every region verified"
