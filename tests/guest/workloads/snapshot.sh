# Pattern writers that run across a live snapshot taken by the host: the
# first MiB is written once, then two O_DIRECT writers rewrite their own
# 2 MiB each pass with a new seed, until the host fills the
# stop block with "S" (over NBD, to the same node). Every write must succeed and,
# at the end, every region holds its last pattern (one more pass runs
# after STOP, so the host knows it is not in the base). Logs "snapshot:
# writers running" when the host may take the snapshot.
. /lib/vbd.sh
[ "$size" -ge $((16 << 20)) ] || fail "disk smaller than 16 MiB"
mib=$((1048576 / lbs))
stop_block=$((VBD_STOP_OFFSET / lbs))
base_seed=$seed
write_pattern 0 $mib direct
pass=0
one_pass() {
    pass=$((pass + 1))
    seed=$base_seed-$pass
    sh -c ". /lib/vbd.sh; seed=$seed; write_pattern $((mib * 4)) $((mib * 2)) direct" &
    w1=$!
    sh -c ". /lib/vbd.sh; seed=$seed; write_pattern $((mib * 8)) $((mib * 2)) direct" &
    w2=$!
    wait $w1 || fail "writer 1 failed in pass $pass"
    wait $w2 || fail "writer 2 failed in pass $pass"
}
while :; do
    one_pass
    [ $pass = 1 ] && log "snapshot: writers running"
    [ "$(dd if=$dev bs=$lbs skip=$stop_block count=1 iflag=direct 2>/dev/null | head -c 4)" = SSSS ] && break
    [ $pass -lt 2000 ] || fail "no STOP from the host after $pass passes"
done
one_pass # wholly after the host's STOP, so after the snapshot: in the overlay only
log "snapshot: stopped after $pass passes"
drop_caches
last=$seed
seed=$base_seed
check_region 0 $mib direct
seed=$last
check_region $((mib * 4)) $((mib * 2)) direct
check_region $((mib * 8)) $((mib * 2)) direct
drop_caches
check_region $((mib * 4)) $((mib * 2)) buffered
check_region $((mib * 8)) $((mib * 2)) buffered
log "snapshot: patterns verified"
