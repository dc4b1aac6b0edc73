#!/bin/bash
# vbd-daemon's NBD export against real clients: qemu-img, qemu-io, nbdinfo,
# nbdcopy; exports by name, read-only, multi-conn, hostile clients, SIGTERM.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdinfo nbdcopy python3 fallocate
S=$T/nbd.sock
img=$T/disk.img
must qemu-img create -q -f raw "$img" 64M
must qemu-io -f raw -c "write -P 0x5a 1M 2M" -c "write -P 0x33 40M 64k" "$img" >/dev/null
nbd_raw_daemon "$img" "$S" --export type=nbd,id=e0,node-name=disk0,name=disk,description="vbd test disk",writable=on,allocation-depth=on \
    --export type=nbd,id=e1,node-name=disk0,name=ro
U="nbd+unix:///disk?socket=$S"
RO="nbd+unix:///ro?socket=$S"

step "nbdinfo --list: both exports, description, sizes"
out=$(nbdinfo --list "nbd+unix://?socket=$S") || fail "nbdinfo --list"
echo "$out" | grep -q 'export="disk"' || fail "export 'disk' not listed: $out"
echo "$out" | grep -q 'export="ro"' || fail "export 'ro' not listed"
echo "$out" | grep -q 'description: vbd test disk' || fail "description missing"
[ "$(nbdinfo --size "$U")" = 67108864 ] || fail "size"
nbdinfo --json "$RO" | python3 -c 'import json,sys; e=json.load(sys.stdin)["exports"][0]; sys.exit(0 if e["is_read_only"] else 1)' ||
    fail "the read-only export is not flagged read-only"

step "block status: nbdinfo --map and qemu-img map see the same extents as on the file"
nbdinfo --map "$U" | awk '{print $1, $2, $3}' >"$T/nbdmap"
grep -q "^ *1048576 *2097152 *0" "$T/nbdmap" || fail "data extent at 1M not reported: $(cat "$T/nbdmap")"
qemu-img map --output=json -f raw "$U" | python3 -c '
import json, sys
m = json.load(sys.stdin)
data = [(e["start"], e["length"]) for e in m if e["data"]]
assert (1048576, 2097152) in data and (41943040, 65536) in data, data
' || fail "qemu-img map over NBD"
nbdinfo --map=qemu:allocation-depth "$U" >/dev/null || fail "qemu:allocation-depth context"
nbdinfo --json "$RO" | python3 -c 'import json,sys; e=json.load(sys.stdin)["exports"][0]; sys.exit("qemu:allocation-depth" in e["contexts"])' ||
    fail "qemu:allocation-depth offered on an export without allocation-depth=on (qsd offers it only with it)"

step "qemu-io writes with patterns (zero, discard, flush) and reads them back; the read-only export refuses writes"
must qemu-io -f raw -c "write -P 0xa1 8M 1M" -c "write -P 0xa2 9M 4k" -c "write -z 1M 64k" -c "discard 2M 64k" -c flush "$U" >/dev/null
must qemu-io -f raw -c "read -P 0x5a 1114112 983040" -c "read -P 0xa1 8M 1M" -c "read -P 0 1M 64k" "$U" >/dev/null
must_fail_with "" qemu-io -f raw -c "write -P 1 0 4k" "$RO"

step "qemu-img compare and convert over NBD"
must qemu-img convert -f raw -O raw "$U" "$T/copy.raw"
must qemu-img compare -f raw -F raw "$U" "$T/copy.raw"
must "$VBD_IMG" compare -f raw -F raw "$T/copy.raw" "$img" -U

step "nbdcopy both ways"
must nbdcopy "$U" "$T/nbdcopy.raw"
cmp "$T/nbdcopy.raw" "$T/copy.raw" || fail "nbdcopy out differs"
head -c 4M /dev/urandom >"$T/rand"
must qemu-img resize -q -f raw "$T/rand" 64M
must nbdcopy "$T/rand" "$U"
must qemu-img compare -f raw -F raw "$U" "$T/rand"

step "multi-conn: write on one connection, flush, read on another"
nbdinfo "$U" | grep -q "can_multi_conn: true" || fail "multi-conn not advertised"
must qemu-io -f raw -c "write -P 0x77 20M 64k" -c flush "$U" >/dev/null
must qemu-io -f raw -r -c "read -P 0x77 20M 64k" "$U" >/dev/null

step "hostile clients: bad magic, oversized request, out-of-range, unknown command, stall, drop mid-flight"
python3 - "$S" <<'PY' || fail "hostile client checks"
import socket, struct, sys, time
import nbdproto
path = sys.argv[1]
def hs():
    s = nbdproto.connect(path, 20)
    size, tflags = nbdproto.handshake(s)   # EXPORT_NAME "disk", simple replies
    return s, size
def req(s, typ, off, ln, flags=0, cookie=1, payload=b''):
    s.sendall(nbdproto.request(typ, cookie, off, ln, flags) + payload)
def reply(s):
    magic, err, cookie = struct.unpack('>IIQ', nbdproto.recvn(s, 16))
    assert magic == nbdproto.SIMPLE_REPLY_MAGIC, hex(magic)
    return err, cookie
s, size = hs()
req(s, 0, size - 512, 1024); e, _ = reply(s); assert e == 22, ('read past end', e)       # EINVAL
req(s, 0, 0, 64 << 20);      e, _ = reply(s); assert e == 22, ('oversized read', e)
req(s, 42, 0, 0);            e, _ = reply(s); assert e == 22, ('unknown command', e)
req(s, 0, 0, 512, flags=0x80); e, _ = reply(s); assert e == 22, ('unknown flag', e)
req(s, 0, 0, 512); e, _ = reply(s); assert e == 0; nbdproto.recvn(s, 512)                  # still usable
req(s, 1, 0, 64 << 20)       # a write too large: its payload cannot be skipped, the server closes
assert s.recv(16) in (b'',) or True
s.close()
b = socket.socket(socket.AF_UNIX); b.connect(path); b.sendall(b'\0' * 18)  # garbage handshake
b.close()
for i in range(4):           # requests in flight, then the client vanishes
    s, _ = hs()
    for c in range(32):
        req(s, 0, c * 65536, 65536, cookie=c)
    s.close()
st = socket.socket(socket.AF_UNIX); st.connect(path)   # stalls mid-handshake, stays open
s, _ = hs()                                           # others are unaffected
req(s, 0, 0, 4096); e, _ = reply(s); assert e == 0
st.close()
PY
must qemu-io -f raw -c "read -P 0x77 20M 64k" "$U" >/dev/null
kill -0 $dpid || fail "the daemon died"
grep -q "exceeds the maximum" "$T/daemon.log" || fail "no log line for the oversized write"


step "large reads interleaved with small ones: every reply whole and right"
# ADDR: a unix socket path or tcp:PORT
interleave() {
python3 - "$1" "$img" <<'PY'
import struct, sys, random
from nbdproto import SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, connect, handshake, recvn, request
addr, img = sys.argv[1], open(sys.argv[2], 'rb').read()
s = connect(addr, 30)   # a request left unanswered fails the step instead of hanging it
handshake(s)   # simple replies
rnd = random.Random(7)
reqs = {}
for cookie in range(64):   # 1-2 MiB reads over data, over data and a hole, and 4K reads, all in flight at once
    big = cookie % 4 == 0
    ln = rnd.choice((1 << 20, 2 << 20, 65536 * 3)) if big else 4096
    off = rnd.randrange(0, (len(img) - ln) // 4096) * 4096
    if cookie == 0:
        off, ln = 1 << 20, 2 << 20          # the 0x5a region exactly
    reqs[cookie] = (off, ln)
    s.sendall(request(0, cookie, off, ln))
for _ in range(64):
    magic, err, cookie = struct.unpack('>IIQ', recvn(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC and err == 0, (hex(magic), err)
    off, ln = reqs.pop(cookie)
    data = recvn(s, ln)
    assert data == img[off:off + ln], 'wrong data for cookie %d (%d bytes at %d)' % (cookie, ln, off)
assert not reqs
PY
}
interleave "$S" || fail "large/small read interleaving"
out=$(qemu-img compare -f raw -F raw "$img" "$U") || fail "qemu-img compare after large reads: $out"

step "structured reads: below 64 KiB one data chunk even over a hole, larger ones with hole chunks; the bytes are the file's"
# ADDR: a unix socket path or tcp:PORT. Over unix, reads from 64 KiB go out
# with splice as one data chunk; a TCP client on this host gets copies (holes
# as hole chunks): over TCP a 1 MiB read of a hole must be a hole chunk.
structured() {
python3 - "$1" "$img" <<'PY'
import struct, sys
from nbdproto import SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, connect, handshake, recvn, request
addr, img = sys.argv[1], open(sys.argv[2], 'rb').read()
s = connect(addr, 30)   # a request left unanswered fails the step instead of hanging it
handshake(s, structured=True)
def read(cookie, off, ln):
    s.sendall(request(0, cookie, off, ln))
def chunks(cookie):
    out = []
    while True:
        magic, flags, typ, ck, ln = struct.unpack('>IHHQI', recvn(s, 20))
        assert magic == STRUCTURED_REPLY_MAGIC and ck == cookie, (hex(magic), ck)
        p = recvn(s, ln)
        out.append((typ, p))
        if flags & 1:
            return out
cases = [(1, 30 << 20, 4096), (2, (1 << 20) + (128 << 10), 4096), (3, (3 << 20) - 4096, 65536 - 4096),
         (4, 30 << 20, 1 << 20), (5, (3 << 20) - (32 << 10), 128 << 10)]
for cookie, off, ln in cases:    # all in flight at once
    read(cookie, off, ln)
got = {}
for _ in cases:
    magic, flags, typ, ck, ln = struct.unpack('>IHHQI', recvn(s, 20))   # first chunk names the reply
    assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
    p = recvn(s, ln); lst = [(typ, p)]
    if not flags & 1:
        lst += chunks(ck)
    got[ck] = lst
for cookie, off, ln in cases:
    buf = bytearray(ln)
    for typ, p in got[cookie]:
        o = struct.unpack('>Q', p[:8])[0] - off
        assert 0 <= o <= ln, (cookie, o)
        if typ == 1:                                   # OFFSET_DATA
            buf[o:o + len(p) - 8] = p[8:]
        else:
            assert typ == 2, (cookie, typ)             # OFFSET_HOLE: buf is zeroes there already
    assert bytes(buf) == img[off:off + ln], 'wrong data for cookie %d' % cookie
    if ln < 65536:
        assert [t for t, _ in got[cookie]] == [1], 'a small read in %s chunks' % [t for t, _ in got[cookie]]
assert not addr.startswith('tcp:') or 2 in [t for t, _ in got[4]], 'a 1 MiB read of a hole sent no hole chunk'
PY
}
structured "$S" || fail "structured reads"

step "SIGTERM with a client connected: clean exit, socket removed"
python3 -c "
import socket,time,sys
s=socket.socket(socket.AF_UNIX); s.connect('$S'); s.recv(18); open('$T/greeted', 'w').close(); time.sleep(600)" &
cpid=$!
# the client is connected once it has the server's greeting; it stays
# (600 s) until long after the daemon's exit is given up on (60 s: an ASan
# daemon's exit with its leak check is slow on a loaded host), so a daemon
# that waits for its clients fails here rather than going when they go
for _ in $(seq 1200); do [ -e "$T/greeted" ] && break; kill -0 $cpid 2>/dev/null || break; sleep 0.05; done
[ -e "$T/greeted" ] || fail "the client was not greeted"
kill -TERM $dpid
for _ in $(seq 600); do kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
kill -0 $cpid 2>/dev/null || fail "the client left before the daemon's exit: nothing tested"
kill -0 $dpid 2>/dev/null && fail "vbd-daemon still running 60 s after SIGTERM with a client connected"
wait $dpid || fail "vbd-daemon exit status $? after SIGTERM"
kill $cpid 2>/dev/null
[ ! -e "$S" ] || fail "socket left behind"
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }

step "over TCP: large reads interleaved with small ones, structured reads, qemu-img compare, nbdcopy"
must fallocate -p -o $((30 << 20)) -l $((1 << 20)) "$img"   # a hole again (nbdcopy above filled the disk)
port=$(free_port) || fail "no free TCP port"
nbd_raw_daemon -l "$T/daemon-tcp.log" "$img" tcp:$port --export type=nbd,id=e0,node-name=disk0,name=disk
interleave tcp:$port || { cat "$T/daemon-tcp.log"; fail "large/small read interleaving over TCP"; }
structured tcp:$port || { cat "$T/daemon-tcp.log"; fail "structured reads over TCP"; }
out=$(qemu-img compare -f raw -F raw "$img" "nbd://127.0.0.1:$port/disk") || fail "qemu-img compare over TCP: $out"
must nbdcopy "nbd://127.0.0.1:$port/disk" "$T/copy.raw"
cmp "$img" "$T/copy.raw" || fail "nbdcopy over TCP: the copy differs"
kill -TERM $dpid
wait $dpid || fail "vbd-daemon (TCP) exit status $? after SIGTERM"
! grep -q Sanitizer "$T/daemon-tcp.log" || { cat "$T/daemon-tcp.log"; fail "sanitizer report (TCP)"; }

step "over TCP: writes in batches (32 in flight), bursts after pauses, then one at a time, then 1-100 KiB: every one answered and on disk"
# The server reads TCP requests in batches once several are in flight (a
# receive mark bounded by a timer): a lone request after a batch must still
# be answered, and payloads split across batches or larger than the read
# buffer must land whole. The expected image is kept here and compared.
wimg=$T/wdisk.img
must qemu-img create -q -f raw "$wimg" 16M
nbd_raw_daemon -l "$T/daemon-tcpw.log" "$wimg" tcp:$port
python3 - "tcp:$port" "$T/expect.img" <<'PY' || { cat "$T/daemon-tcpw.log"; fail "TCP write batches"; }
import struct, sys, random, time
from nbdproto import SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, connect, handshake, recvn, request
addr, out = sys.argv[1], sys.argv[2]
size = 16 << 20
model = bytearray(size)
s = connect(addr, 30)   # a request left unanswered fails the step instead of hanging it
handshake(s)   # simple replies
rnd = random.Random(18)
pending = set()
cookie = 0
def write_req(off, ln):
    global cookie
    cookie += 1
    data = bytes([rnd.randrange(1, 256)]) * ln
    model[off:off + ln] = data
    pending.add(cookie)
    return request(1, cookie, off, ln) + data
def reap():
    magic, err, c = struct.unpack('>IIQ', recvn(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC and err == 0 and c in pending, (hex(magic), err, c)
    pending.remove(c)
def run(n, depth, sizes):
    # the free slots' requests leave in one send: the server sees them queued together
    while n:
        if len(pending) >= depth:
            while len(pending) > depth // 2:
                reap()
        burst = b''
        while n and len(pending) < depth:
            ln = rnd.choice(sizes)
            burst += write_req(rnd.randrange(0, size - ln), ln)
            n -= 1
        s.sendall(burst)
    while pending:
        reap()
def paused(bursts, depth):
    # A batching server that finds nothing for a while waits on the socket:
    # bursts after idle pauses, each cut mid-payload by a second pause,
    # must still be read whole and answered.
    for _ in range(bursts):
        burst = b''.join(write_req(rnd.randrange(0, size - 4096), 4096) for _ in range(depth))
        cut = rnd.randrange(1, len(burst))
        s.sendall(burst[:cut])
        time.sleep(0.001)
        s.sendall(burst[cut:])
        while pending:
            reap()
        time.sleep(0.002)
run(3000, 32, (4096,))                       # batches form
paused(50, 16)                               # the client pauses between bursts
run(3000, 32, (4096,))
run(20, 1, (4096,))                          # one at a time after them
run(2000, 32, (512, 4096, 5000, 70000))      # unaligned, across batches, larger than the read-ahead
run(200, 1, (1, 4096, 100000))
run(2000, 8, range(1, 102400, 997))
s.close()
open(out, 'wb').write(model)
PY
out=$(qemu-img compare -f raw -F raw "$T/expect.img" "nbd://127.0.0.1:$port/disk") || fail "TCP write batches: $out"
kill -TERM $dpid
wait $dpid || fail "vbd-daemon (TCP writes) exit status $? after SIGTERM"
! grep -q Sanitizer "$T/daemon-tcpw.log" || { cat "$T/daemon-tcpw.log"; fail "sanitizer report (TCP writes)"; }
echo OK
