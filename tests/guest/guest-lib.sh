# Sourced by workloads in the guest (busybox sh) as /lib/vbd.sh.
log() { echo "vbd: ${VBD_TAG:+$VBD_TAG: }$*"; } # VBD_TAG: the disk, when the guest has several
fail() { echo "$*" >/tmp/reason; log "FAIL: $*"; exit 1; }
must() { "$@" || fail "command failed: $*"; }
dev=${VBD_DEV:-/dev/vda}
blk=/sys/block/${dev#/dev/}
if [ -b "$dev" ]; then # also sourced on the host, for pattern()
    lbs=$(cat $blk/queue/logical_block_size)
    size=$(blockdev --getsize64 $dev)
fi
seed=${VBD_SEED:-$(head -c 8 /dev/urandom | md5sum | cut -c1-8)}
# pattern FIRST COUNT: COUNT 512-byte records for sectors FIRST.. (each names its sector and the seed)
pattern() {
    awk -v s="$seed" -v a="$1" -v n="$2" 'BEGIN {
        r = sprintf("vbd %s sector %012d ", s, 0); f = ""
        for (i = length(r); i < 511; i++) f = f "."
        for (i = 0; i < n; i++) printf "vbd %s sector %012d %s\n", s, a + i, f
    }'
}
# write_pattern BLOCK COUNT [direct]: COUNT logical blocks at logical block BLOCK
write_pattern() {
    local spb=$((lbs / 512)) flag=
    [ "${3:-}" = direct ] && flag=oflag=direct
    pattern $(($1 * spb)) $(($2 * spb)) | dd of=$dev bs=$lbs seek=$1 count=$2 iflag=fullblock $flag conv=notrunc 2>/dev/null ||
        fail "write of $2 blocks at block $1 ($3) failed"
}
# check_region BLOCK COUNT [direct]
check_region() {
    local spb=$((lbs / 512)) flag= want got
    [ "${3:-}" = direct ] && flag=iflag=direct
    want=$(pattern $(($1 * spb)) $(($2 * spb)) | md5sum | cut -c1-32)
    got=$(dd if=$dev bs=$lbs skip=$1 count=$2 $flag 2>/dev/null | md5sum | cut -c1-32)
    [ "$want" = "$got" ] || fail "data mismatch in $2 blocks at block $1 (${3:-buffered} read)"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# stat_field N: field N (1-based) of the disk's /sys/block/*/stat
stat_field() { awk -v n="$1" '{ print $n }' $blk/stat; }
features() { cat $blk/device/features; }
has_feature() { [ "$(features | cut -c$(($1 + 1)))" = 1 ]; }
