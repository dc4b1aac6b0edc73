#!/bin/bash
# Stopping the daemon while its storage does not answer: SIGTERM waits for
# the requests in flight and the nodes' flush (nothing acknowledged is
# dropped), says after 5 s what it waits for, and a second SIGTERM exits at
# once; after QMP's quit the first SIGTERM is the first signal, and quit's
# reply waits for the flush. The
# storage is a real NBD server (nbdkit) stopped with SIGSTOP; the
# data flushed before it stopped is there when it comes back.
. "$(dirname "$0")/lib.sh"
need nbdkit qemu-io qemu-img
cd "$T"
nbdkit -f -U "$T/kit.sock" memory 64M &
kpid=$!
on_exit "kill -CONT $kpid 2>/dev/null; kill $kpid 2>/dev/null"
wait_sock "$T/kit.sock" "$kpid"
S=$T/vbd.sock
start_daemon --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/kit.sock" \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=n0,writable=on
on_exit "kill -9 $dpid 2>/dev/null"

step "a write through vbd-daemon, flushed, reaches nbdkit"
must qemu-io -f raw -c 'write -P 0x5a 0 1M' -c flush "nbd+unix:///n0?socket=$S" >/dev/null
# a second write left unflushed: the stopping daemon's flush carries it
must qemu-io -f raw -t writeback -c 'write -P 0x6b 1M 1M' "nbd+unix:///n0?socket=$S" >/dev/null

step "nbdkit stops answering; SIGTERM: the daemon waits and says why"
stop_process $kpid
kill -TERM $dpid
# each wait for a line up to 300 s (was 30 s): a starved ASan daemon at load
# 40 writes its 5 s hint late, as daemon-sighup-graph saw
for _ in $(seq 6000); do grep -q "still stopping after 5 s" "$T/daemon.log" && break
    kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
grep -q "still stopping after 5 s" "$T/daemon.log" || { cat "$T/daemon.log"; fail "no hint while stopping"; }
kill -0 $dpid 2>/dev/null || fail "the daemon exited while its flush had no answer"
[ "$(grep -c 'still stopping' "$T/daemon.log")" = 1 ] || fail "the hint is not one line"

step "a second SIGTERM exits at once with status 1"
kill -TERM $dpid
wait $dpid; rc=$?
[ $rc = 1 ] || { cat "$T/daemon.log"; fail "exit status $rc after the second SIGTERM, want 1"; }
grep -q "second signal while stopping: exiting without waiting" "$T/daemon.log" || fail "no message"
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }

step "nbdkit back: both acknowledged writes are there"
kill -CONT $kpid
must qemu-io -f raw -r -c "read -P 0x5a 0 1M" -c "read -P 0x6b 1M 1M" "nbd+unix:///?socket=$T/kit.sock" >/dev/null

step "QMP quit while nbdkit does not answer: a SIGTERM then is the first signal (waits), the flush completes, status 0"
Q=$T/qmp.sock
start_daemon --chardev socket,id=m0,path="$Q",server=on,wait=off --monitor chardev=m0 \
    --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/kit.sock" \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=n0,writable=on
must qemu-io -f raw -t writeback -c 'write -P 0x3c 3M 1M' "nbd+unix:///n0?socket=$S" >/dev/null
stop_process $kpid
# quit's reply comes once the nodes are flushed (as qsd's, after its
# bdrv_close_all): the client waits for it in the background
qmp_py "$Q" >"$T/quit.out" <<'PY' &
m.send_raw('{"execute": "quit", "id": "bye"}\n')
print(json.dumps(m.recv()), flush=True)
PY
qpid=$!
for _ in $(seq 6000); do grep -q "still stopping after 5 s" "$T/daemon.log" && break
    kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
grep -q "still stopping after 5 s" "$T/daemon.log" || { cat "$T/daemon.log"; fail "no hint while stopping after quit"; }
kill -TERM $dpid
# the handler's line is the sync point: it is written before it returns
for _ in $(seq 6000); do grep -q "already stopping" "$T/daemon.log" && break
    kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
grep -q "already stopping (QMP quit" "$T/daemon.log" || { cat "$T/daemon.log"; fail "the SIGTERM after quit forced the exit"; }
kill -0 $dpid 2>/dev/null || fail "the daemon exited while its flush had no answer"
[ ! -s "$T/quit.out" ] || fail "quit's reply came before the flush: $(cat "$T/quit.out")"
kill -CONT $kpid
wait $dpid; rc=$?
wait $qpid || fail "no reply to quit"
[ "$(cat "$T/quit.out")" = '{"return": {}, "id": "bye"}' ] || fail "quit's reply: $(cat "$T/quit.out")"
[ $rc = 0 ] || { cat "$T/daemon.log"; fail "exit status $rc after quit and one SIGTERM, want 0"; }
! grep -q -e "second signal" -e Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "forced exit or sanitizer report"; }
must qemu-io -f raw -r -c 'read -P 0x3c 3M 1M' "nbd+unix:///?socket=$T/kit.sock" >/dev/null

step "a daemon whose storage answers stops at the first SIGTERM, status 0, no hint"
start_daemon --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/kit.sock" \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=n0,writable=on
must qemu-io -f raw -c 'write -P 0x7c 2M 1M' "nbd+unix:///n0?socket=$S" >/dev/null
t0=${EPOCHREALTIME/./}
stop_daemon
took=$(((${EPOCHREALTIME/./} - t0) / 1000)) # ms
# the hint is due 5 s into any stop: a stop that took less must not have
# printed it; one that took longer (a starved daemon at load 30-40: its
# nodes' close and the sanitizers' exit) may, and then says nothing here
if [ $took -lt 5000 ]; then
    ! grep -q "still stopping" "$T/daemon.log" || fail "hint without a reason (the stop took $took ms)"
else
    echo "the stop took $took ms at load $(cut -d' ' -f1 /proc/loadavg): the hint is allowed"
fi
must qemu-io -f raw -r -c 'read -P 0x7c 2M 1M' "nbd+unix:///?socket=$T/kit.sock" >/dev/null
echo PASS
