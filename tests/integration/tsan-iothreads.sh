#!/bin/bash
# vbd-daemon built with ThreadSanitizer (make build-tsan), rings on two
# iothreads: a raw node served over vhost-user-blk (4 rings) and NBD at
# once, a qcow2 node (its requests hop to the main loop and back), and
# werror=enospc stopping and resuming the rings; every run verifies its
# data, and the daemon must end without a single ThreadSanitizer report.
. "$(dirname "$0")/lib.sh"
need nbdkit qemu-img
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
[ -x "$TSAN_DAEMON" ] || skip "no ThreadSanitizer build (make build-tsan)"
export TSAN_OPTIONS="halt_on_error=0 exitcode=66"
S=$T/vu.sock N=$T/nbd.sock
dpid= kpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && kill $kpid 2>/dev/null'
iot=(--object iothread,id=io0 --object iothread,id=io1)
start() { # daemon options...
    rm -f "$S"
    "$TSAN_DAEMON" "${iot[@]}" "$@" 2>"$T/daemon.log" &
    dpid=$!
    for _ in $(seq 200); do [ -S "$S" ] && return; kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
    cat "$T/daemon.log"; fail "the ThreadSanitizer daemon did not start"
}
stop() {
    kill -TERM $dpid; wait $dpid; local rc=$?; dpid=
    if grep -q "ThreadSanitizer" "$T/daemon.log"; then
        grep -A30 "WARNING: ThreadSanitizer" "$T/daemon.log" | head -60; fail "ThreadSanitizer report ($1)"
    fi
    [ $rc = 0 ] || { cat "$T/daemon.log"; fail "daemon exit status $rc ($1)"; }
}

step "raw node on 4 rings over 2 iothreads and on NBD at once: verify both ways, mixed I/O with flushes"
truncate -s 128M "$T/disk.img"
start --blockdev driver=file,node-name=f0,filename="$T/disk.img" --blockdev driver=raw,node-name=d0,file=f0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1 \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name=d0,name=disk,writable=on
must "$VBD_BENCH" --vhost-user "$S" -q 4 -d 16 --verify --size 16M >/dev/null
"$VBD_BENCH" --vhost-user "$S" -q 4 -w randrw:70 -n 20000 --flush-every 50 >"$T/vu.out" 2>&1 &
bpid=$!
must "$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" -q 2 -w randrw:70 -n 10000 --flush-every 50 >/dev/null
wait $bpid || fail "vhost-user randrw: $(cat "$T/vu.out")"
must "$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" --verify --size 16M >/dev/null
stop "raw"

step "qcow2 node on 4 rings over 2 iothreads (requests hop to the main loop); qemu-img check clean"
must qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
start --blockdev driver=file,node-name=f0,filename="$T/disk.qcow2" --blockdev driver=qcow2,node-name=d0,file=f0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1
must "$VBD_BENCH" --vhost-user "$S" -q 4 -d 16 --verify --size 16M >/dev/null
must "$VBD_BENCH" --vhost-user "$S" -q 4 -w randrw:70 -n 10000 --flush-every 50 >/dev/null
stop "qcow2"
qcheck "$T/disk.qcow2"

step "werror=enospc on 2 rings over 2 iothreads: stop, retries, resume"
touch "$T/enospc"
rm -f "$T/k.sock"
nbdkit -f -U "$T/k.sock" --filter=error memory 64M error-pwrite=ENOSPC error-pwrite-rate=100% \
    error-pwrite-file="$T/enospc" 2>/dev/null &
kpid=$!
for _ in $(seq 100); do [ -S "$T/k.sock" ] && break; sleep 0.1; done
start --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/k.sock" --blockdev driver=raw,node-name=d0,file=n0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1,werror=enospc,retry-interval=200
"$VBD_BENCH" --vhost-user "$S" -q 2 -d 16 --verify --size 8M >"$T/b.out" 2>&1 &
bpid=$!
for _ in $(seq 300); do grep -q "the device stops" "$T/daemon.log" && break; sleep 0.1; done
grep -q "the device stops" "$T/daemon.log" || fail "the device never stopped on ENOSPC"
rm "$T/enospc"
wait $bpid || fail "verify after ENOSPC went away: $(cat "$T/b.out")"
grep -q "went through after" "$T/daemon.log" || fail "no line for the end of the stop"
stop "werror"
kill $kpid; wait $kpid 2>/dev/null; kpid=
echo OK
