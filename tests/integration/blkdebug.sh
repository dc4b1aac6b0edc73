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

step "an error rule stays active after its event: a write_aio rule fails the reads after a write too (as QEMU)"
io_diff "$B,file.inject-error.0.event=write_aio,file.inject-error.0.errno=5" "read 0 4k" "write 0 4k" "read 0 4k" "read 8k 4k"
[ "$(grep -c "failed" "$T/v.out")" = 3 ] || fail "the write and the reads after it must fail"

step "... until another event fires an error rule: then only that one is active (as QEMU)"
io_diff "$B,file.inject-error.0.event=write_aio,file.inject-error.0.errno=5,file.inject-error.1.event=read_aio,file.inject-error.1.errno=28,file.inject-error.1.sector=2000" \
    "read 0 4k" "write 0 4k" "write 8k 4k" "read 0 4k" "read 1000k 4k" "write 1000k 4k"
[ "$(grep -c "failed" "$T/v.out")" = 4 ] || fail "the writes and the read of sector 2000 must fail"

step "set-state and state: a rule fires in its state only; the first write fires the write rule and moves the node to state 2, where reads fire the read rule (as QEMU)"
io_diff "$B,file.set-state.0.event=write_aio,file.set-state.0.state=1,file.set-state.0.new_state=2,file.inject-error.0.event=write_aio,file.inject-error.0.state=1,file.inject-error.0.errno=28,file.inject-error.1.event=read_aio,file.inject-error.1.state=2,file.inject-error.1.errno=5" \
    "read 0 4k" "write 0 4k" "write 0 4k" "read 0 4k" "read 8k 4k"
[ "$(grep -c "failed" "$T/v.out")" = 4 ] || fail "two writes (the rule fired in state 1 stays active) and two reads must fail"

step "align, max-transfer, opt/max-write-zero, opt/max-discard: accepted, and the data as QEMU's"
L="$B,file.align=4096,file.max-transfer=65536,file.opt-write-zero=8192,file.max-write-zero=16384,file.opt-discard=8192,file.max-discard=65536"
io_diff "$L" "write -P 0x5a 1000 200k" "read -P 0x5a 1000 200k" "write -z 300k 100k" "read -P 0 300k 100k" "read -P 0x5a 4096 8k"

step "limits QEMU cannot meet: refused with QEMU's words"
for bad in max-transfer=1000 max-transfer=3G opt-write-zero=6144 opt-write-zero=8192,file.max-write-zero=12288 \
    opt-discard=100 opt-discard=8192,file.max-discard=12288; do
    key=${bad##*file.}
    key=${key%%=*}
    o="$B,file.align=4096,file.$bad"
    q=$(qemu-io --image-opts "$o" -c "read 0 512" 2>&1) && fail "qemu-io took $bad"
    v=$("$VBD_IO" --image-opts "$o" -c "read 0 512" 2>&1) && fail "vbd-io took $bad"
    [ "${q#qemu-io: }" = "${v#vbd-io: }" ] || fail "$bad: qemu-io: $q; vbd-io: $v"
    case $v in *"Cannot meet constraints with $key"*) ;; *) fail "$bad: $v" ;; esac
done

if command -v qemu-storage-daemon >/dev/null && command -v nbdinfo >/dev/null; then
    step "max-transfer over NBD: the block size maximum nbdinfo sees is qemu-storage-daemon's"
    for d in q v; do
        bin=qemu-storage-daemon
        [ $d = v ] && bin=$VBD_DAEMON
        rm -f "$T/$d.sock"
        "$bin" --blockdev "driver=file,node-name=f,filename=$T/a.img" \
            --blockdev "driver=blkdebug,node-name=b,image=f,max-transfer=65536" --blockdev driver=raw,node-name=r,file=b \
            --nbd-server "addr.type=unix,addr.path=$T/$d.sock" --export type=nbd,id=e,node-name=r,name=r 2>"$T/$d.log" &
        p=$!
        wait_sock "$T/$d.sock" "$p" "$T/$d.log"
        nbdinfo --json "nbd+unix:///r?socket=$T/$d.sock" >"$T/$d.json" || fail "nbdinfo against $d: $(cat "$T/$d.log")"
        kill -TERM $p
        wait $p
        grep -o '"block_size_[a-z]*": [0-9]*' "$T/$d.json" >"$T/$d.bs"
    done
    cat "$T/v.bs"
    grep -q '"block_size_maximum": 65536' "$T/q.bs" || fail "qsd: not the max-transfer: $(cat "$T/q.bs")"
    diff "$T/q.bs" "$T/v.bs" || fail "the block sizes differ from qsd's"
fi

step "a probed raw node (aligned to 512) over blkdebug limits below that (max-transfer=2, max-write-zero=2): requests end, data as qemu-io's on a shadow"
# the old code split each request at the limit aligned down to 512, i.e. into
# empty pieces, forever (found by fuzz-blockdev-opts); QEMU 7.2 asserts
# (bdrv_aligned_pwritev: num), so the shadow is written with an explicit raw
head -c 65536 /dev/urandom >"$T/lim.img" || fail "no random data"
cp "$T/lim.img" "$T/lim.shadow"
L="json:{\"file\":{\"driver\":\"blkdebug\",\"max-transfer\":2,\"max-write-zero\":2,\"image\":{\"driver\":\"file\",\"filename\":\"$T/lim.img\"}}}"
ops=(-c "write -z 4096 8k" -c "write -P 7 16384 4k" -c "write -P 9 30001 3000" -c "write -z 40000 1234")
timeout 300 "$VBD_IO" "${ops[@]}" -c "read -P 7 16384 4k" -c "read -P 0 4096 8k" "$L" >"$T/lim.out" 2>&1 ||
    fail "vbd-io over the limited child: $(tail -3 "$T/lim.out")"
must qemu-io -f raw "${ops[@]}" "$T/lim.shadow" >/dev/null
cmp "$T/lim.img" "$T/lim.shadow" || fail "the image differs from qemu-io's shadow"

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
must_fail_with "Parameter 'set-state.0.new_state' is missing" "$VBD_IO" --image-opts \
    "$B,file.set-state.0.event=read_aio" -c "read 0 512"
must_fail_with "A block device must be specified for \"image\"" "$VBD_IO" --image-opts \
    "driver=blkdebug" -c "read 0 512"
echo OK
