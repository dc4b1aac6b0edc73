#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# A vhost-user-blk front end that goes away and connects again at once
# (QEMU's reconnect=1, a VM that libvirt restarts) is served as soon as its
# old session is gone, even while that session still waits for requests in
# flight: never turned away, never two sessions on the device at once. A
# second front end beside a live one is refused (README). First raw front
# ends (tests/qmp/vhost_user.py) hang up and connect again 20 times; then
# a Linux guest under QEMU (reconnect=1) writes and reads back patterns
# (workloads/until-stopped.sh) through a relay (vu-proxy.py) that cuts the
# connection while the storage under vbd-daemon (qemu-nbd, stopped with
# SIGSTOP) holds a guest request: QEMU's new connection must wait, not be
# refused, while the old session drains, and be served once the storage
# answers again; the guest goes on without an error, and the image holds
# every region as the guest last wrote it (its seeds recomputed on the
# host), zeros elsewhere and the host's stop marker.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img qemu-io qemu-nbd python3 busybox ss
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
vu_export="type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$S,writable=on"

step "raw front ends: one that hangs up and connects again at once is served (20 times); a second beside a live one is refused"
start_daemon --blockdev driver=null-co,node-name=disk0,size=64M --export "$vu_export"
PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$S" <<'PY' || fail_with_daemon_log "raw front ends reconnecting"
import socket, sys
from vhost_user import GET_QUEUE_NUM, Driver
for i in range(20):
    a = Driver(sys.argv[1])  # a whole session: guest memory, a ring started
    a.s.close()              # gone; the next one connects at once
b = Driver(sys.argv[1])
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[1])
c.settimeout(60)
assert c.recv(1) == b'', 'a second front end beside a live one was not refused'
assert b.get_u64(GET_QUEUE_NUM) >= 1, 'the live front end lost its session'
b.s.close()
PY
[ "$(grep -c 'refusing a second front end' "$T/daemon.log")" = 1 ] ||
    fail_with_daemon_log "want exactly one refusal (the front end beside a live one)"
stop_daemon

step "a guest's QEMU (reconnect=1) cut off while a request is in flight connects again at once: it waits for the old session, then is served"
truncate -s 64M "$T/disk.raw"
K=$T/qnbd.sock N=$T/nbd.sock P=$T/proxy.sock
qemu-nbd -f raw -k "$K" -x disk "$T/disk.raw" 2>"$T/qemu-nbd.log" &
qpid=$!
on_exit "kill -CONT $qpid 2>/dev/null"
wait_sock "$K" "$qpid" "$T/qemu-nbd.log"
start_daemon --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$K",export=disk \
    --blockdev driver=raw,node-name=disk0,file=n0 --export "$vu_export,num-queues=2" \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=e1,node-name=disk0,name=disk,writable=on
: >"$T/proxy.log"
python3 "$VBD_ROOT/tests/integration/vu-proxy.py" "$P" "$S" "$T/proxy.log" &
ppid=$!
wait_log "$T/proxy.log" listening 1 "$ppid" || fail "the relay did not start"
: >"$T/console.log"
"$G/run-guest.sh" --vhost-user "$P" --reconnect --num-queues 2 --workload "$G/workloads/until-stopped.sh" \
    --env VBD_SEED=recon --timeout 1200 --log "$T/console.log" >"$T/guest.out" 2>&1 &
gpid=$!
stop_guest() { [ -n "${gpid:-}" ] || return 0; kill $(pgrep -P $gpid) $gpid 2>/dev/null; wait $gpid 2>/dev/null; gpid=; }
on_exit stop_guest
rounds() { tr -d '\r' <"$T/console.log" | grep -ac "vbd: round [0-9]* ok"; }
wait_rounds() { # N WHAT: the guest completes N more rounds (its own --timeout bounds the wait)
    local want=$(($(rounds) + $1))
    while [ "$(rounds)" -lt $want ]; do
        kill -0 $gpid 2>/dev/null || { cat "$T/guest.out"; tail -20 "$T/daemon.log"; fail "the guest ended before $1 more rounds ($2)"; }
        sleep 0.1
    done
}
wait_rounds 2 "first session"
# The storage stops answering; the guest's next request stays in flight in
# vbd-daemon, its NBD request unread in qemu-nbd's socket (nothing else
# reads or writes the disk).
stop_process $qpid
inflight() { ss -xHpn 2>/dev/null | awk -v p="pid=$qpid," '$2 == "ESTAB" && index($0, p) && $3 > 0' | grep -q .; }
for _ in $(seq 6000); do inflight && break; sleep 0.05; done
inflight || fail "no guest request reached the stopped NBD server in 300 s"
cut_round=$(rounds)
kill -USR1 $ppid # the front end's connection is cut; QEMU connects again a second later
wait_log "$T/proxy.log" "cut 1" 1 "$ppid" || fail "the relay did not cut the connection"
for _ in $(seq 6000); do # generous: QEMU reconnects a second after the cut, but a TCG guest at load 40 is slow
    grep -q -e "served once that session" -e "refusing a second front end" "$T/daemon.log" && break
    sleep 0.05
done
! grep -q "refusing a second front end" "$T/daemon.log" ||
    fail_with_daemon_log "the front end that came back was refused while the old session's request was in flight"
grep -q "served once that session" "$T/daemon.log" ||
    fail_with_daemon_log "QEMU did not come back in 300 s (relay: $(tr '\n' ',' <"$T/proxy.log"))"
[ "$(grep -c 'front end disconnected' "$T/daemon.log")" = 0 ] ||
    fail_with_daemon_log "the old session ended with a request of the stopped storage in flight"
[ "$(grep -c 'front end connected' "$T/daemon.log")" = 1 ] || fail_with_daemon_log "two sessions at once"
kill -CONT $qpid # the storage answers: the old session completes its requests, ends, the new one is served
wait_log "$T/daemon.log" "front end disconnected" 1 "$dpid" || fail_with_daemon_log "the old session never ended"
wait_log "$T/daemon.log" "front end connected" 2 "$dpid" || fail_with_daemon_log "the waiting front end was never served"
wait_rounds 2 "second session"
must qemu-io -f raw -c "write -P 0x53 $((64 * 1048576 - 512)) 512" "nbd+unix:///disk?socket=$N" >/dev/null
wait $gpid
grc=$?
gpid=
tail -1 "$T/guest.out"
[ $grc = 0 ] || { tail -30 "$T/console.log"; tail -30 "$T/daemon.log"; fail "the guest's workload failed (run-guest exit $grc)"; }
! tr -d '\r' <"$T/console.log" | grep -a -E "I/O error|blk_update_request|Buffer I/O" || fail "I/O errors on the guest's console"
[ "$(grep -c '^pair [0-9]*$' "$T/proxy.log")" = 2 ] || fail "QEMU had to connect more than twice: $(tr '\n' ',' <"$T/proxy.log")"
stop_daemon
kill $ppid
wait $ppid 2>/dev/null
wait $qpid || fail "qemu-nbd exited with $? ($(cat "$T/qemu-nbd.log"))"

step "the image holds each region as the guest last wrote it (before or after the cut), zeros elsewhere, the stop marker"
R=$(tr -d '\r' <"$T/console.log" | sed -n 's/.*until-stopped: done after \([0-9]*\) rounds.*/\1/p' | tail -1)
[ -n "$R" ] || fail "no round count on the guest's console"
for r in 0 1 2 3 4 5 6 7; do
    last=0 # round k writes regions 2k mod 8 and the next one, with the seed recon.k
    for k in $(seq "$R"); do [ $((2 * k % 8)) = $((r - r % 2)) ] && last=$k; done
    if [ $last = 0 ]; then
        want=$(head -c 262144 /dev/zero | md5sum)
    else
        want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=recon.$last; pattern $((r * 512)) 512" | md5sum)
    fi
    got=$(dd if="$T/disk.raw" bs=512 skip=$((r * 512)) count=512 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "region $r is not what round $last wrote"
done
must cmp -s -i $((2 << 20)):0 -n $((62 * 1048576 - 512)) "$T/disk.raw" /dev/zero
[ "$(tail -c 512 "$T/disk.raw" | tr -d S | wc -c)" = 0 ] || fail "no stop marker in the last sector"
echo "OK ($R guest rounds, the connection cut after round $cut_round)"
