#!/bin/bash
# Clients that send their requests, shut down their sending side
# (shutdown(SHUT_WR): a FIN) and then read none of the replies, against
# vbd-daemon: NBD over a unix socket (replies through the send queue) and
# over TCP, NBD 1 MiB reads (zero-copy replies, spliced), and a QMP client
# that floods 10,000 commands. The daemon fills the socket and then waits:
# it must go quiet (io_uring's poll reports such a peer's POLLRDHUP to a
# wait for POLLOUT at once, and the send that waited failed with EAGAIN
# again and again: a full CPU for as long as the client pleased). Meanwhile
# another client is served; then the stalled client reads every reply, each
# with the right data, and the daemon closes its end; the daemon's fds are
# back where they were.
. "$(dirname "$0")/lib.sh"
need python3 qemu-io
img=$T/disk.img
python3 -c "
import sys
with open(sys.argv[1], 'wb') as f:
    for i in range(64 * 256):   # 64 MiB of 4 KiB blocks, each naming itself
        f.write((b'%08d' % i) * 512)
" "$img" || fail "image"
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" nbd_raw_daemon "$img" "$T/s.sock" \
    --chardev socket,id=m0,path="$T/m0.sock",server=on,wait=off --monitor m0 \
    --export type=nbd,id=e0,node-name=disk0,name=disk
unix_pid=$dpid
fds0=$(ls /proc/$unix_pid/fd | wc -l)
port=$(free_port)
must cp "$img" "$T/tcp.img" # a daemon of its own for TCP (one NBD server a daemon), on its own copy
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" nbd_raw_daemon -l "$T/tcp.log" "$T/tcp.img" tcp:$port \
    --export type=nbd,id=e0,node-name=disk0,name=disk
tcp_pid=$dpid
wait_sock "$T/m0.sock" "$unix_pid" "$T/daemon.log"

# stall WHAT PID KIND ADDR ARGS...: the python client; KIND nbd (ADDR, length, count, URI) or qmp (ADDR)
stall() {
    python3 - "$@" <<'PY'
import os, socket, struct, subprocess, sys, time
from nbdproto import CMD_READ, SIMPLE_REPLY_MAGIC, connect, handshake, recvn, request
what, pid, kind, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def ticks():
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime, clock ticks
def wait_quiet():
    """until the daemon used at most 3 ticks in 2 s (it waits for the client
    now), up to 60 s: a daemon that spins never gets there"""
    hz, samples, start = os.sysconf('SC_CLK_TCK'), [ticks()], time.monotonic()
    while len(samples) < 5 or samples[-1] - samples[-5] > 3:
        if time.monotonic() - start > 60:
            sys.exit(f'{what}: the daemon used {(samples[-1] - samples[0]) / hz:.1f} s of CPU in 60 s '
                     'while its half-closed client read nothing (it should wait)')
        time.sleep(0.5)
        samples.append(ticks())
    return (samples[-1] - samples[0]) / hz
if kind == 'nbd':
    ln, n, uri = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    disk = open(sys.argv[8], 'rb').read()
    offs = [(i * 1048576 + i * 4096) % (len(disk) - ln) for i in range(n)]
    s = connect(addr, 120)
    handshake(s, go=True)
    s.sendall(b''.join(request(CMD_READ, i, offs[i], ln) for i in range(n)))
else:
    n = 10000
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(addr)
    s.settimeout(120)
    s.sendall(b'{"execute": "qmp_capabilities"}\n' + b'{"execute": "query-version", "id": 7}\n' * n)
s.shutdown(socket.SHUT_WR)
cpu = wait_quiet()
# another client is served meanwhile
if kind == 'nbd':
    r = subprocess.run(['qemu-io', '-r', '-f', 'raw', '-c', 'read -P 0x30 0 8', uri], capture_output=True, text=True)
    if r.returncode or 'Pattern verification failed' in r.stdout:
        sys.exit(f'{what}: another client was not served meanwhile: {r.stdout} {r.stderr}')
# now every reply, then the end
if kind == 'nbd':
    seen = set()
    for _ in range(n):
        magic, err, cookie = struct.unpack('>IIQ', recvn(s, 16))
        if magic != SIMPLE_REPLY_MAGIC or err or cookie in seen or cookie >= n:
            sys.exit(f'{what}: reply {magic:#x} error {err} cookie {cookie}')
        seen.add(cookie)
        if recvn(s, ln) != disk[offs[cookie]:offs[cookie] + ln]:
            sys.exit(f'{what}: read {cookie} at {offs[cookie]} returned other data')
    got = f'{n} replies with their data'
else:
    data = b''
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
    lines = data.decode().splitlines()
    ok = sum(1 for l in lines if '"return"' in l)
    if ok != n + 1 or len(lines) != n + 2:
        sys.exit(f'{what}: {len(lines)} lines, {ok} returns (want the greeting and {n + 1} returns)')
    got = f'the greeting and {n + 1} returns'
if kind == 'nbd' and s.recv(16) != b'':
    sys.exit(f'{what}: the daemon did not close after the last reply')
s.close()
print(f'{what}: quiet after {cpu:.2f} s of CPU; then {got}')
PY
}

step "NBD over a unix socket, 400 reads of 60000 bytes, half-closed, none read"
stall "unix 60000" $unix_pid nbd "$T/s.sock" 60000 400 "nbd+unix:///disk?socket=$T/s.sock" "$img" ||
    fail_with_daemon_log "half-closed NBD client (unix)"
step "NBD over a unix socket, 40 reads of 1 MiB (zero-copy replies), half-closed, none read"
stall "unix 1M" $unix_pid nbd "$T/s.sock" 1048576 40 "nbd+unix:///disk?socket=$T/s.sock" "$img" ||
    fail_with_daemon_log "half-closed NBD client (unix, zero-copy)"
step "NBD over TCP, 400 reads of 60000 bytes, half-closed, none read"
stall "tcp 60000" $tcp_pid nbd "tcp:127.0.0.1:$port" 60000 400 "nbd://127.0.0.1:$port/disk" "$img" ||
    { tail -20 "$T/tcp.log"; fail "half-closed NBD client (TCP)"; }
step "QMP: 10,000 commands, half-closed, no reply read"
stall "qmp" $unix_pid qmp "$T/m0.sock" || fail_with_daemon_log "half-closed QMP client"

step "the daemon's fds are back where they were; clean exits"
for _ in $(seq 1200); do [ "$(ls /proc/$unix_pid/fd | wc -l)" = "$fds0" ] && break; sleep 0.05; done
fds1=$(ls /proc/$unix_pid/fd | wc -l)
[ "$fds1" = "$fds0" ] || fail "daemon fds $fds0 -> $fds1"
echo "daemon fds $fds0 -> $fds1"
kill -TERM $tcp_pid && wait $tcp_pid || fail "the TCP daemon exited with $? after SIGTERM"
! grep -q Sanitizer "$T/tcp.log" || fail "sanitizer report (TCP daemon): $(cat "$T/tcp.log")"
dpid=$unix_pid S=$T/s.sock stop_daemon
echo OK
