#!/bin/bash
# test-timeout: 2400 (run.sh: hostile rounds under ASan, 44 s at load 4, 371-491 s at load 27-31, 790 s at load 40)
# A hostile vhost-user front end (tests/hostile/vhost_hostile.c) against
# vbd-daemon: memory regions past their fd, wrapping or overlapping; an
# inflight region past its fd or replaced under a running ring; the ring's
# own memory removed while it runs; fds on refused messages; unaligned ring
# addresses; kick fds in an error state; wrong payload sizes, ring sizes and
# indices; framing errors and connections closed mid-message; rings the
# guest writes badly (descriptor loops, buffers and indirect tables outside
# its memory or wrapping, indirect tables inside indirect ones or of bad
# sizes, heads and next indices out of range, an available index ahead by
# more than the ring, readable after writable, no status byte, a short
# header, more segments than any request holds) next to the longest chain
# a guest may send and one whose buffers cross memory regions into more
# segments than one syscall takes (also through an NBD client node), a bad
# chain behind a good one, a front end gone with requests in flight. Each bad message or ring gets one line in the daemon's
# log (a bad ring stops that ring only: the device's other ring serves on),
# the daemon serves a good front end right after, and over all rounds
# (> 1000 connections) its fd count stays the same and its RSS grows by a
# bounded amount. Then the same program plays a hostile back end to
# vbd-bench's vhost-user client.
. "$(dirname "$0")/lib.sh"
H=$VBD_BUILD/tests/hostile/vhost-hostile
[ -x "$H" ] || skip "vhost-hostile not built"
S=$T/vhost.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
must truncate -s 16M "$T/disk.img"

# a small quarantine: freed memory is reused soon, so RSS shows leaks, not ASan's cache
for engine in io_uring epoll; do
    rounds=20 noring=0
    [ $engine = epoll ] && rounds=5 noring=1
    step "every hostile case, $rounds rounds, $engine engine"
    VBD_NO_IO_URING=$noring ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" start_daemon \
        --blockdev driver=file,node-name=file0,filename="$T/disk.img" \
        --blockdev driver=raw,node-name=disk0,file=file0 \
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$S",writable=on,num-queues=2
    "$H" "$S" "$T/daemon.log" "$dpid" $rounds 8192 || { tail -30 "$T/daemon.log"; fail "hostile front end ($engine)"; }
    kill -0 $dpid || fail "the daemon died"
    stop_daemon
done
# The fd count above is compared between the first round and the last; here
# from before the first hostile connection to after the last, file by file,
# while the same daemon serves a second export (NBD, another image) that a
# qemu-io reads and writes afterwards.
step "a hostile session leaves the daemon the fds it had before it; its other export still serves"
command -v qemu-io >/dev/null || skip "qemu-io not installed"
must truncate -s 4M "$T/other.img"
must qemu-io -f raw -c "write -P 0x6b 0 4M" "$T/other.img" >/dev/null
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" start_daemon \
    --blockdev driver=file,node-name=file0,filename="$T/disk.img" \
    --blockdev driver=raw,node-name=disk0,file=file0 \
    --blockdev driver=file,node-name=file1,filename="$T/other.img" \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$S",writable=on,num-queues=2 \
    --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
    --export type=nbd,id=e1,node-name=file1,name=other,writable=on
wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
fds_of() { ls -l /proc/$dpid/fd | awk 'NR > 1 {print $9, $11}' | sort; }
fds_of >"$T/fds.before"
"$H" "$S" "$T/daemon.log" "$dpid" 2 8192 || { tail -30 "$T/daemon.log"; fail "hostile front end (other export)"; }
fds_of >"$T/fds.after"
diff "$T/fds.before" "$T/fds.after" || fail "the daemon's fds differ after the hostile session (< before, > after)"
echo "daemon fds before and after: $(wc -l <"$T/fds.before")"
out=$(qemu-io -f raw "nbd+unix:///other?socket=$T/nbd.sock" -c "read -P 0x6b 0 4M" -c "write -P 0x6c 1M 64k" \
    -c "read -P 0x6c 1M 64k" 2>&1) || fail "qemu-io over the other export: $out"
case $out in *fail* | *error*) fail "qemu-io over the other export: $out" ;; esac
kill -0 $dpid || fail "the daemon died"
stop_daemon
out=$(qemu-io -f raw -c "read -P 0x6b 0 1M" -c "read -P 0x6c 1M 64k" -c "read -P 0x6b 1088k 2944k" "$T/other.img" 2>&1)
case $out in *fail* | *error*) fail "the other image after the daemon stopped: $out" ;; esac
# A request of more segments than one syscall takes (its buffers cross
# memory regions) over an NBD client node: its write went out in one
# sendmsg of more than 1024 segments (EMSGSIZE) and dropped the connection.
if command -v qemu-nbd >/dev/null; then
    step "more segments than one sendmsg takes, through an NBD client node (qemu-nbd)"
    must truncate -s 16M "$T/nbd.img"
    qemu-nbd -f raw -k "$T/qn.sock" -x d --persistent "$T/nbd.img" 2>"$T/qn.log" &
    qnpid=$!
    on_exit 'kill $qnpid 2>/dev/null'
    wait_sock "$T/qn.sock" "$qnpid" "$T/qn.log"
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" start_daemon \
        --blockdev driver=nbd,node-name=nbd0,server.type=unix,server.path="$T/qn.sock",export=d \
        --export type=vhost-user-blk,id=e0,node-name=nbd0,addr.type=unix,addr.path="$S",writable=on,num-queues=2
    "$H" "$S" "$T/daemon.log" "$dpid" 3 8192 ring-segments-past-iov-max || { tail -30 "$T/daemon.log"; fail "over NBD"; }
    ! grep -q "NBD connection.*lost" "$T/daemon.log" || fail "the NBD connection was lost: $(grep lost "$T/daemon.log")"
    stop_daemon
    kill $qnpid
else
    echo "qemu-nbd not installed: not tried"
fi
step "vbd-bench against hostile back ends: one line of error, exit status 1 or 2, no crash"
B=$T/backend.sock
for kind in reply-wrong-request reply-huge reply-cut queues-zero capacity-huge blk-size-odd blk-size-huge \
    config-short nack-all used-jump; do
    rm -f "$B"
    "$H" --backend "$B" $kind &
    hpid=$!
    for _ in $(seq 1200); do [ -S "$B" ] && break; sleep 0.05; done # it appears once it listens
    out=$("$VBD_BENCH" --vhost-user "$B" -n 100 -d 4 2>&1 >/dev/null)
    rc=$?
    wait $hpid
    case $rc in 1 | 2) ;; *) fail "vbd-bench against '$kind' exited with $rc: $out" ;; esac
    [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || fail "vbd-bench against '$kind' did not say one line: $out"
    echo "$kind: $out"
done
echo OK
