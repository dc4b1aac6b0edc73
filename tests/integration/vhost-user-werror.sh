#!/bin/bash
# werror/rerror on the vhost-user-blk export, driven by vbd-bench (our
# vhost-user front end): a write that fails with ENOSPC on a full tmpfs
# waits with werror=stop and succeeds once space is freed, and the data
# verifies; werror=report fails the request at once; werror=enospc stops on
# ENOSPC only (nbdkit's error filter injects EIO or ENOSPC); rerror=stop
# with retry-interval=0 waits for SIGUSR1.
. "$(dirname "$0")/lib.sh"
need python3 nbdkit
S=$T/vu.sock
dpid= bpid= kpid= mnt=
wait_log() { # PATTERN: wait up to 60 s for a daemon log line
    for _ in $(seq 600); do grep -q "$1" "$T/daemon.log" && return; sleep 0.1; done
    cat "$T/daemon.log"; fail "no '$1' in the daemon's log"
}
# wait_retries N: the stopped requests were retried N times, each failing
# again (the daemon's -v log says each retry): the request is still waiting
wait_retries() {
    for _ in $(seq 600); do [ "$(grep -c "retrying [0-9]* stopped request" "$T/daemon.log")" -ge "$1" ] && return; sleep 0.1; done
    cat "$T/daemon.log"; fail "fewer than $1 retries of the stopped requests"
}
start_nbdkit() { # nbdkit on a unix socket with the error filter; args: filter parameters
    rm -f "$T/nbd.sock"
    nbdkit -f -U "$T/nbd.sock" --filter=error memory 64M "$@" 2>"$T/nbdkit.log" &
    kpid=$!
    for _ in $(seq 600); do [ -S "$T/nbd.sock" ] && return; sleep 0.1; done
    fail "nbdkit did not start"
}
stop_nbdkit() { kill $kpid; wait $kpid 2>/dev/null; kpid=; }
on_exit '[ -n "$bpid" ] && kill -9 $bpid 2>/dev/null; [ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && kill $kpid 2>/dev/null; [ -n "$mnt" ] && umount "$mnt" 2>/dev/null'
check_pattern() { # IMG: vbd-bench's verify pattern is in the first 64 MiB of the file
    python3 - "$1" <<'PY' || fail "the verify pattern is not in $1"
import array, sys
K, C, M = 0x9E3779B97F4A7C15, 0x7662642d62656e63, (1 << 64) - 1
f = open(sys.argv[1], 'rb')
for off in range(0, 64 << 20, 1 << 20):   # one 4 KiB block per MiB, beyond the point where the disk filled too
    f.seek(off)
    words = array.array('Q', f.read(4096))
    if list(words) != [((off + 8 * i) * K & M) ^ C for i in range(512)]:
        sys.exit('mismatch at %d' % off)
PY
}

mnt=$T/mnt
mkdir -p "$mnt"
if mount -t tmpfs -o size=80M tmpfs "$mnt" 2>/dev/null; then
    img=$mnt/disk.img
    step "werror=stop (--drive short form): a write hits ENOSPC on a full tmpfs, waits, and succeeds once space is freed"
    truncate -s 128M "$img"
    dd if=/dev/zero of="$mnt/filler" bs=1M count=40 status=none
    start_daemon -v --drive file="$img",format=raw,cache=writeback,werror=stop --vhost-user "$S"
    "$VBD_BENCH" --vhost-user "$S" --verify -d 8 -b 64k >"$T/bench.out" 2>&1 &
    bpid=$!
    wait_log "write at sector .* failed: No space left on device; werror=stop: the device stops"
    wait_retries 2 # timer retries fail too: the request must still be waiting, not failed
    kill -0 $bpid 2>/dev/null || { cat "$T/bench.out"; fail "vbd-bench ended while the device was stopped"; }
    ! grep -q "failed with status" "$T/bench.out" || fail "the guest saw an error with werror=stop: $(cat "$T/bench.out")"
    rm "$mnt/filler"
    wait $bpid || { cat "$T/bench.out" "$T/daemon.log"; fail "vbd-bench --verify failed after space was freed"; }
    bpid=
    grep -q "67108864 bytes written and read back identical" "$T/bench.out" || fail "no verify line: $(cat "$T/bench.out")"
    grep -q "the stopped requests went through after [0-9]* retries" "$T/daemon.log" || fail "no line for the end of the stop"
    [ "$(grep -c "device stops" "$T/daemon.log")" = 1 ] || fail "more than one error line for one stop: $(cat "$T/daemon.log")"
    stop_daemon
    check_pattern "$img"

    step "werror=report (the default): the same write fails at once with an I/O error"
    rm -f "$img"
    truncate -s 128M "$img"
    dd if=/dev/zero of="$mnt/filler" bs=1M count=40 status=none
    start_daemon --blockdev driver=file,node-name=f0,filename="$img" --blockdev driver=raw,node-name=disk0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$S",writable=on
    out=$("$VBD_BENCH" --vhost-user "$S" --verify -d 8 -b 64k 2>&1) && fail "verify passed on a full disk: $out"
    case "$out" in *"write at offset"*"failed with status 1"*) ;; *) fail "unexpected vbd-bench output: $out" ;; esac
    ! grep -q "device stops" "$T/daemon.log" || fail "werror=report stopped the device"
    stop_daemon
    rm -f "$mnt/filler" "$img"
    umount "$mnt"
    mnt=
else
    echo "(tmpfs part skipped: cannot mount a tmpfs here)"
fi

iot=() # daemon options that put the rings on iothreads
nbd_export() { # export options... : vbd-daemon on nbdkit
    start_daemon -v "${iot[@]}" --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/nbd.sock" \
        --blockdev driver=raw,node-name=disk0,file=n0 \
        --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$S,writable=on$1"
}

step "werror=enospc: EIO is reported at once"
start_nbdkit error-pwrite=EIO error-pwrite-rate=100%
nbd_export ",werror=enospc"
out=$("$VBD_BENCH" --vhost-user "$S" -w write -n 64 -d 4 2>&1) && fail "writes passed with EIO injected: $out"
case "$out" in *"failed with status 1"*) ;; *) fail "unexpected vbd-bench output: $out" ;; esac
! grep -q "device stops" "$T/daemon.log" || fail "werror=enospc stopped on EIO"
stop_daemon
stop_nbdkit

step "werror=enospc, 2 rings on 2 iothreads: ENOSPC stops the device; the writes succeed once the error goes away"
touch "$T/enospc"
start_nbdkit error-pwrite=ENOSPC error-pwrite-rate=100% error-pwrite-file="$T/enospc"
iot=(--object iothread,id=io0 --object iothread,id=io1)
nbd_export ",werror=enospc,retry-interval=200,num-queues=2,iothread.0=io0,iothread.1=io1"
"$VBD_BENCH" --vhost-user "$S" --verify --size 8M -q 2 -d 16 >"$T/bench.out" 2>&1 &
bpid=$!
wait_log "werror=enospc: the device stops"
wait_retries 3
kill -0 $bpid 2>/dev/null || { cat "$T/bench.out"; fail "vbd-bench ended while the device was stopped"; }
rm "$T/enospc"
wait $bpid || { cat "$T/bench.out" "$T/daemon.log"; fail "verify failed after the ENOSPC went away"; }
bpid=
grep -q "read back identical" "$T/bench.out" || fail "no verify line: $(cat "$T/bench.out")"
stop_daemon
stop_nbdkit

step "rerror=stop,retry-interval=0, 2 rings on an iothread: a failed read waits for SIGUSR1"
touch "$T/eio"
start_nbdkit error-pread=EIO error-pread-rate=100% error-pread-file="$T/eio"
nbd_export ",rerror=stop,retry-interval=0,num-queues=2,iothread=io1"
"$VBD_BENCH" --vhost-user "$S" -w read -n 256 -q 2 -d 8 >"$T/bench.out" 2>&1 &
bpid=$!
wait_log "read at sector .* failed: Input/output error; rerror=stop: the device stops and the request is retried on SIGUSR1"
rm "$T/eio"
# no timer (the line above says "on SIGUSR1" from the same setting that arms one): still waiting
kill -0 $bpid 2>/dev/null || { cat "$T/bench.out"; fail "vbd-bench ended before SIGUSR1"; }
# a SIGUSR1 a second until vbd-bench is done: a read sent to nbdkit before the
# rm can fail after the first retry and stop the device again, and with
# retry-interval=0 only another SIGUSR1 retries it. Bounded by time, not by
# a count of signals: 60 signals were a minute, after which a device stopped
# again waited in wait for run.sh's time limit
end=$((SECONDS + 600))
while kill -0 $bpid 2>/dev/null; do
    [ $SECONDS -lt $end ] || { cat "$T/bench.out"; tail -20 "$T/daemon.log"; fail "vbd-bench still runs 600 s after the first SIGUSR1"; }
    kill -USR1 $dpid
    for _ in $(seq 10); do kill -0 $bpid 2>/dev/null || break; sleep 0.1; done
done
wait $bpid || { cat "$T/bench.out" "$T/daemon.log"; fail "reads failed after SIGUSR1"; }
bpid=
grep -q "errors 0" "$T/bench.out" || fail "errors after SIGUSR1: $(cat "$T/bench.out")"
grep -q "went through after [0-9]* retries" "$T/daemon.log" || fail "not retried on SIGUSR1: $(grep retr "$T/daemon.log")"
stop_daemon

step "a front end that goes away while requests are stopped (2 rings, 2 iothreads): the daemon fails them and keeps serving"
touch "$T/eio"
nbd_export ",rerror=stop,retry-interval=0,num-queues=2,iothread.0=io0,iothread.1=io1"
"$VBD_BENCH" --vhost-user "$S" -w read -n 256 -q 2 -d 8 >"$T/bench.out" 2>&1 &
bpid=$!
wait_log "rerror=stop: the device stops"
kill -9 $bpid; wait $bpid 2>/dev/null; bpid=
wait_log "front end disconnected"
rm "$T/eio"
must "$VBD_BENCH" --vhost-user "$S" -w read -n 256 -q 2 -d 8 >/dev/null
stop_daemon
stop_nbdkit
iot=()

step "bad input"
must_fail_with "werror=sideways: expected report, stop or enospc" "$VBD_DAEMON" --blockdev driver=null-co,node-name=d0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",werror=sideways
must_fail_with "rerror=enospc: expected report or stop" "$VBD_DAEMON" --blockdev driver=null-co,node-name=d0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",rerror=enospc
truncate -s 1M "$T/x.img"
must_fail_with "werror=maybe: expected report, stop or enospc" "$VBD_DAEMON" --drive file="$T/x.img",format=raw,werror=maybe \
    --vhost-user "$S"
echo OK
