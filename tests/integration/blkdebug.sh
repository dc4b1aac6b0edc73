#!/bin/bash
# The blkdebug error-injection filter (issue 14 part 4): the same rules give
# the same errors as QEMU's blkdebug under qemu-io (reads and writes: sector,
# once, errno); vbd's own x-skip fails the Nth request; flushes fail on
# flush_to_disk; over a vhost-user-blk export, werror=report hands the error
# to the guest and rerror=stop retries a request until it goes through; bad
# rules get one-line errors.
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
must qemu-img create -f raw -o preallocation=full "$T/a.img" 4M >/dev/null
# io IMAGE-OPTS CMD...: run the qemu-io commands with qemu-io and vbd-io on
# the same options; their outputs (without the timing lines) must be equal
io_diff() {
    local opts=$1 c args=()
    shift
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io --image-opts "$opts" "${args[@]}" 2>&1 | grep -v "ops;" >"$T/q.out"
    "$VBD_IO" --image-opts "$opts" "${args[@]}" 2>&1 | grep -v "ops;" >"$T/v.out"
    diff -u "$T/q.out" "$T/v.out" || fail "vbd-io and qemu-io differ on $opts"
    cat "$T/v.out" | sed 's/^/    /'
}
B="driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/a.img"

step "read_aio on sector 8, once, EIO: as QEMU"
io_diff "$B,file.inject-error.0.event=read_aio,file.inject-error.0.sector=8,file.inject-error.0.once=on" \
    "read 0 4k" "read 4k 4k" "read 4k 4k" "read 2k 4k"
grep -c "read failed: Input/output error" "$T/v.out" | grep -qx 1 || fail "one read must fail"

step "write_aio on sector 100, always, ENOSPC: as QEMU"
io_diff "$B,file.inject-error.0.event=write_aio,file.inject-error.0.errno=28,file.inject-error.0.sector=100,file.inject-error.0.iotype=write" \
    "write 0 4k" "write 50k 1k" "write 48k 8k" "write 50k 1k" "read 50k 1k"
[ "$(grep -c "write failed: No space left on device" "$T/v.out")" = 3 ] || fail "three writes must fail"

step "two rules, read and write, any sector: as QEMU"
io_diff "$B,file.inject-error.0.event=read_aio,file.inject-error.0.errno=5,file.inject-error.0.iotype=read,file.inject-error.1.event=write_aio,file.inject-error.1.iotype=write,file.inject-error.1.errno=1,file.inject-error.1.once=on" \
    "write 0 4k" "write 0 4k" "read 0 4k" "read 1M 512"

step "x-skip: the third write fails, once"
"$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.x-skip=2,file.inject-error.0.once=on" \
    -c "write 0 4k" -c "write 4k 4k" -c "write 8k 4k" -c "write 12k 4k" >"$T/v.out" 2>&1
grep -v "ops;" "$T/v.out" | tr '\n' '|' | grep -qx "wrote 4096/4096 bytes at offset 0|wrote 4096/4096 bytes at offset 4096|write failed: Input/output error|wrote 4096/4096 bytes at offset 12288|" ||
    fail "x-skip=2: $(cat "$T/v.out")"

step "flush_to_disk: a flush fails with the errno, once"
"$VBD_IO" --image-opts "$B,file.inject-error.0.event=flush_to_disk,file.inject-error.0.errno=5,file.inject-error.0.once=on" \
    -c "flush" -c "flush" >"$T/v.out" 2>&1
[ "$(cat "$T/v.out")" = "flush failed: Input/output error" ] || fail "flush: $(cat "$T/v.out")"

step "vhost-user-blk: werror=report gives the guest the error; rerror=stop retries until it passes"
S=$T/vu.sock
start_daemon --blockdev "driver=blkdebug,node-name=b0,image.driver=file,image.filename=$T/a.img,inject-error.0.event=write_aio,inject-error.0.once=on,inject-error.1.event=read_aio,inject-error.1.once=on,inject-error.1.x-skip=10" \
    --export type=vhost-user-blk,id=e0,node-name=b0,addr.type=unix,addr.path=$S,writable=on,werror=report,rerror=stop,retry-interval=100
"$VBD_BENCH" --vhost-user "$S" -w randwrite -n 50 -d 1 --size 4M --json >"$T/w.json" 2>&1
[ $? = 1 ] || fail "vbd-bench: the failed write must be reported: $(cat "$T/w.json")"
grep -q '"errors": 1,' "$T/w.json" || fail "one write error expected: $(cat "$T/w.json")"
"$VBD_BENCH" --vhost-user "$S" -w randread -n 50 -d 1 --size 4M --json >"$T/r.json" 2>&1 ||
    fail "rerror=stop: the read must be retried and succeed: $(cat "$T/r.json")"
grep -q '"errors": 0,' "$T/r.json" || fail "no read error expected: $(cat "$T/r.json")"
grep -q "stopped requests went through" "$T/daemon.log" || fail "no retry in the log: $(cat "$T/daemon.log")"
stop_daemon

step "bad rules: one-line errors"
must_fail_with "'l1_update' is not an event vbd's blkdebug fires" "$VBD_IO" --image-opts \
    "$B,file.inject-error.0.event=l1_update" -c "read 0 512"
must_fail_with "Parameter 'inject-error.0.iotype' does not accept value 'sideways'" "$VBD_IO" --image-opts \
    "$B,file.inject-error.0.event=read_aio,file.inject-error.0.iotype=sideways" -c "read 0 512"
must_fail_with "inject-error.0.errno: 0 is not an errno value" "$VBD_IO" --image-opts \
    "$B,file.inject-error.0.event=read_aio,file.inject-error.0.errno=0" -c "read 0 512"
must_fail_with "Parameter 'inject-error.0.event' is missing" "$VBD_IO" --image-opts \
    "$B,file.inject-error.0.errno=5" -c "read 0 512"
must_fail_with "blkdebug inject-error.0 does not support the option 'bogus'" "$VBD_IO" --image-opts \
    "$B,file.inject-error.0.event=read_aio,file.inject-error.0.bogus=1" -c "read 0 512"
must_fail_with "A block device must be specified for \"image\"" "$VBD_IO" --image-opts \
    "driver=blkdebug" -c "read 0 512"
echo OK
