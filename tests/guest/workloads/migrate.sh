# Runs while the VM is live-migrated (vhost-user-migrate.sh): pass after
# pass, a checksummed pattern written and read back with O_DIRECT, 64 KiB
# at a time, each pass on an area (VBD_MIG_MIB MiB, default 4, from the
# disk's start) with a seed of its own, until the host says the migration
# is done (the disk's last sector starts with MIGRATED; looked at after
# each pass). Passes take the areas in turn and start again at the first
# when the disk is full (a fast guest, under KVM, makes more passes than
# there are areas before the migration ends): each area then holds the
# last pass that wrote it. Each chunk is also read through the page cache, whose
# pages the guest's CPU never writes again and no later pass reads again.
# Then every area is checked from those cached pages, then O_DIRECT, then
# buffered again after the cache is dropped.
. /lib/vbd.sh
area=$(((${VBD_MIG_MIB:-4} << 20) / lbs)) chunk=$((65536 / lbs))
last=$((size / 512 - 1))
max=$(((size / lbs - 1) / area))
[ "$max" -ge 3 ] || fail "disk too small for 3 areas of $area blocks"
migrated() { [ "$(dd if=$dev bs=512 skip=$last count=1 iflag=direct 2>/dev/null | head -c 8)" = MIGRATED ]; }
base=$seed pass=0
drop_caches
while :; do
    pass=$((pass + 1))
    seed=$base-$pass
    b=$((((pass - 1) % max) * area))
    e=$((b + area))
    while [ $b -lt $e ]; do
        write_pattern $b $chunk direct
        check_region $b $chunk direct
        check_region $b $chunk buffered
        b=$((b + chunk))
    done
    log "migrate: pass $pass done"
    migrated && break
done
for how in cached direct dropped; do
    [ $how = dropped ] && drop_caches
    # the last pass that wrote each area
    p=$((pass > max ? pass - max + 1 : 1))
    while [ $p -le $pass ]; do
        seed=$base-$p
        case $how in
            direct) check_region $((((p - 1) % max) * area)) $area direct ;;
            *) check_region $((((p - 1) % max) * area)) $area buffered ;;
        esac
        p=$((p + 1))
    done
done
log "migrate: after $pass passes every block of each area's last pass verified"
