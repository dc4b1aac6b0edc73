#!/bin/bash
# Broken and hostile NBD clients against vbd-daemon, counted: 1000
# connections that stop mid-handshake, send garbage or oversized options,
# half-close their socket, vanish with requests in flight or mid-payload.
# Afterwards the daemon holds the same fds and about the same RSS, and still
# serves qemu-io. The same with broken TLS clients. Then one client pipelines 64 maximum-size reads and writes
# without reading the replies: the daemon's peak memory stays bounded (it
# does not buffer 2 GiB for one connection).
. "$(dirname "$0")/lib.sh"
need python3 qemu-io qemu-img
S=$T/nbd.sock
img=$T/disk.img
must truncate -s 64M "$img"
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" nbd_raw_daemon "$img" "$S"
U="nbd+unix:///disk?socket=$S"

step "1000 broken clients: the daemon's fds come back to where they were, RSS stays flat"
python3 - "$S" "$dpid" <<'PY' || { tail -20 "$T/daemon.log"; fail "broken clients"; }
import os, socket, struct, sys, time
from nbdproto import IHAVEOPT, NBDMAGIC, SIMPLE_REPLY_MAGIC, connect, handshake, recvn, request
path, pid = sys.argv[1], int(sys.argv[2])
def fds(): return len(os.listdir(f'/proc/{pid}/fd'))
def rss():
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1])
def conn():
    return connect(path, 60)
def hs(s):  # the greeting and the client's flags only: the broken part follows
    magic, opt, flags = struct.unpack('>QQH', recvn(s, 18))
    assert magic == NBDMAGIC, 'greeting'
    s.sendall(struct.pack('>I', 3))
def opt(s, o, data):  # an option, its replies left to the caller
    s.sendall(struct.pack('>QII', IHAVEOPT, o, len(data)) + data)
def go(s):
    return handshake(s)[0]  # EXPORT_NAME "disk"
def req(s, typ, off, ln, cookie=1, payload=b''):
    s.sendall(request(typ, cookie, off, ln) + payload)
def drained(s):  # the server closes: EOF (or a reset) comes, nothing hangs
    try:
        while s.recv(65536): pass
    except ConnectionResetError: pass
    s.close()

def k_close_at_once():
    conn().close()
def k_garbage():
    s = conn(); s.sendall(b'\xff' * 64); drained(s)
def k_bad_flags():
    s = conn(); recvn(s, 18); s.sendall(struct.pack('>I', 0xfffffff0)); drained(s)
def k_huge_option():
    s = conn(); hs(s); s.sendall(struct.pack('>QII', IHAVEOPT, 7, 0xffffffff)); drained(s)
def k_option_cut():
    s = conn(); hs(s); s.sendall(struct.pack('>QII', IHAVEOPT, 7, 4000) + b'x' * 100); s.close()
def k_bad_option_lengths():
    s = conn(); hs(s)
    opt(s, 7, struct.pack('>I', 0xffff) + b'disk')            # name length past the option
    opt(s, 9, struct.pack('>I', 4) + b'disk' + struct.pack('>I', 5) + struct.pack('>I', 0xfffffff))
    opt(s, 6, b'\0\0')
    opt(s, 2, b'')                                           # ABORT
    drained(s)
def k_unknown_export():
    s = conn(); hs(s); opt(s, 1, b'nope'); drained(s)
def k_half_closed():  # requests, then SHUT_WR: every reply still arrives, then EOF
    s = conn(); go(s)
    for c in range(8): req(s, 0, c * 4096, 4096, cookie=c)
    s.shutdown(socket.SHUT_WR)
    got = 0
    for c in range(8):
        m, e, ck = struct.unpack('>IIQ', recvn(s, 16)); assert m == SIMPLE_REPLY_MAGIC and e == 0, (m, e)
        recvn(s, 4096); got += 1
    assert got == 8
    assert s.recv(16) == b'', 'the server did not close after the client half-closed'
    s.close()
def k_vanish_in_flight():
    s = conn(); go(s)
    for c in range(32): req(s, 0, c * 65536, 65536, cookie=c)
    s.close()
def k_write_cut():
    s = conn(); go(s); req(s, 1, 0, 65536, payload=b'y' * 1000); s.close()
def k_bad_magic():
    s = conn(); go(s); s.sendall(b'\x12' * 28); drained(s)
def k_oversize_write():
    s = conn(); go(s); req(s, 1, 0, 1 << 30); drained(s)
def k_starttls():  # no TLS configured: refused, the connection goes on
    s = conn(); hs(s); opt(s, 5, b'')
    magic, o, typ, ln = struct.unpack('>QIII', recvn(s, 20)); recvn(s, ln)
    assert typ & 0x80000000, 'STARTTLS accepted without TLS'
    opt(s, 2, b''); drained(s)
kinds = [k_close_at_once, k_garbage, k_bad_flags, k_huge_option, k_option_cut, k_bad_option_lengths,
         k_unknown_export, k_half_closed, k_vanish_in_flight, k_write_cut, k_bad_magic, k_oversize_write, k_starttls]

def settle(want):  # the daemon closes its side of every connection (bounded wait)
    deadline = time.monotonic() + 60
    while fds() != want and time.monotonic() < deadline: time.sleep(0.02)
    return fds()

fd0 = fds()
for i in range(10 * len(kinds)):
    kinds[i % len(kinds)]()
f1 = settle(fd0); r1 = rss()
if f1 != fd0: sys.exit(f'fds after the warm-up: {fd0} -> {f1}')
n = 1000
for i in range(n):
    kinds[i % len(kinds)]()
f2 = settle(fd0); r2 = rss()
print(f'{n} broken clients: daemon fds {f1} -> {f2}, VmRSS {r1} -> {r2} kB')
if f2 != f1: sys.exit('the daemon leaks fds')
if r2 - r1 > 16384: sys.exit('the daemon RSS grew by %d kB' % (r2 - r1))
PY
must qemu-io -f raw -c "write -P 0x77 1M 64k" -c "read -P 0x77 1M 64k" "$U" >/dev/null
kill -0 $dpid || fail "the daemon died"
grep -q "too long, closing" "$T/daemon.log" || fail "no log line for the oversized option"
grep -q "exceeds the maximum" "$T/daemon.log" || fail "no log line for the oversized write"
stop_daemon

step "300 broken TLS clients (PSK server): STARTTLS, then garbage, a cut handshake or nothing; fds come back"
if command -v psktool >/dev/null; then
    mkdir -p "$T/psk-srv" "$T/psk-cli"
    psktool -u alice -p "$T/psk-srv/keys.psk" >/dev/null 2>&1 || fail "psktool"
    cp "$T/psk-srv/keys.psk" "$T/psk-cli/keys.psk"
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" start_daemon \
        --object tls-creds-psk,id=tls0,dir="$T/psk-srv",endpoint=server \
        --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
        --nbd-server addr.type=unix,addr.path="$S",tls-creds=tls0 \
        --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on
    python3 - "$S" "$dpid" <<'PY' || { tail -20 "$T/daemon.log"; fail "broken TLS clients"; }
import os, socket, struct, sys, time
from nbdproto import OPT_STARTTLS, connect, option, recvn
path, pid = sys.argv[1], int(sys.argv[2])
def fds(): return len(os.listdir(f'/proc/{pid}/fd'))
def starttls():  # the TLS handshake that should follow is the broken part
    s = connect(path, 60)
    recvn(s, 18); s.sendall(struct.pack('>I', 3))
    option(s, OPT_STARTTLS)  # RuntimeError if refused
    return s
def drained(s):
    try:
        while s.recv(65536): pass
    except (ConnectionResetError, socket.timeout): pass
    s.close()
# a TLS 1.2 ClientHello record header announcing more than follows
hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]) + b'\x11' * 40
kinds = [lambda: starttls().close(),
         lambda: drained((lambda s: (s.sendall(b'\x00' * 300), s)[1])(starttls())),
         lambda: (lambda s: (s.sendall(hello), s.close()))(starttls()),
         lambda: (lambda s: (s.shutdown(socket.SHUT_WR), drained(s)))(starttls())]
def settle(want):
    deadline = time.monotonic() + 60
    while fds() != want and time.monotonic() < deadline: time.sleep(0.02)
    return fds()
fd0 = fds()
for i in range(300):
    kinds[i % len(kinds)]()
f1 = settle(fd0)
print(f'300 broken TLS clients: daemon fds {fd0} -> {f1}')
if f1 != fd0: sys.exit('the daemon leaks fds on broken TLS clients')
PY
    P="driver=nbd,server.type=unix,server.path=$S,export=disk,tls-creds=tls0"
    must qemu-io --object "tls-creds-psk,id=tls0,dir=$T/psk-cli,endpoint=client,username=alice" \
        --image-opts "driver=raw,file.${P//,/,file.}" -c "read -P 0x77 1M 64k" >/dev/null
    stop_daemon
else
    echo "psktool not installed: TLS clients not tried"
fi

step "64 pipelined 32 MiB reads and writes, replies read late: the daemon's memory stays bounded"
# qcow2: reads fill the request buffers (a raw file on a unix socket would go out with sendfile)
must qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" start_daemon \
    --blockdev driver=file,node-name=file0,filename="$T/disk.qcow2" --blockdev driver=qcow2,node-name=disk0,file=file0 \
    --nbd-server addr.type=unix,addr.path="$S" \
    --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on
python3 - "$S" "$dpid" <<'PY' || { tail -20 "$T/daemon.log"; fail "pipelined maximum-size requests"; }
import struct, sys
import nbdproto
from nbdproto import CMD_READ, CMD_WRITE, SIMPLE_REPLY_MAGIC, request
path, pid = sys.argv[1], int(sys.argv[2])
def status(key):
    for l in open(f'/proc/{pid}/status'):
        if l.startswith(key + ':'): return int(l.split()[1])
def recvn(s, n, into=None):
    b = bytearray(n); v = memoryview(b); got = 0
    while got < n:
        k = s.recv_into(v[got:], n - got)
        if not k: raise EOFError('server closed')
        got += k
    return bytes(b) if into is None else None
s = nbdproto.connect(path, 120)
nbdproto.handshake(s)
base = status('VmRSS')
big = 32 << 20
for c in range(64):
    s.sendall(request(CMD_READ, c, (c % 2) * big, big))
for c in range(64):   # the replies, read only now
    m, e, ck = struct.unpack('>IIQ', recvn(s, 16)); assert m == SIMPLE_REPLY_MAGIC and e == 0, (m, e)
    recvn(s, big, into=True)
peak_reads = status('VmHWM') - base
data = b'\x5a' * big
for c in range(64):
    s.sendall(request(CMD_WRITE, c, (c % 2) * big, big) + data)
for c in range(64):
    m, e, ck = struct.unpack('>IIQ', recvn(s, 16)); assert m == SIMPLE_REPLY_MAGIC and e == 0, (m, e)
peak = status('VmHWM') - base
kept = status('VmRSS') - base
print(f'peak over the connection start: {peak_reads} kB after the reads, {peak} kB after the writes; {kept} kB kept')
s.close()
# 64 x 32 MiB would be 2 GiB; the bound is a few maximum-size requests
if peak > 512 * 1024: sys.exit(f'the daemon grew by {peak} kB for one connection')
if kept > 256 * 1024: sys.exit(f'the daemon keeps {kept} kB after the requests')
PY
kill -0 $dpid || fail "the daemon died"
stop_daemon
echo OK
