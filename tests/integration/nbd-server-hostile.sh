#!/bin/bash
# Hostile NBD clients against vbd-daemon's request reading (round 6: a
# 64 KiB read-ahead, requests read in batches after timer sleeps), with the
# data checked: a python3 client keeps a shadow copy of the disk, every
# acknowledged write goes into it, every read is compared with it, and at
# the end the disk must equal it byte for byte (nothing written outside a
# request, no write applied twice or torn). Attacks: requests split at every
# byte boundary (header and payload) with pauses shorter and longer than the
# batching timer, before and after the server starts batching; 150 requests
# of mixed sizes in one send (payloads straddling the read-ahead's end,
# writes of 40 and 70 KiB read past it); NBD_CMD_DISC inside a batch with
# requests after it; disconnects mid-header, mid-batch and mid-payload;
# slow-loris connections (a header and part of a payload, then nothing)
# while other clients run (the daemon must not spin on them); 3000
# requests sent without reading a reply (the daemon's memory stays
# bounded); four clients at once. Then qemu-img compares the disk with the
# shadow copy, the daemon's fds are back where they were, it exits cleanly
# (ASan).
. "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io
S=$T/nbd.sock
img=$T/disk.img
must qemu-img create -q -f raw "$img" 16M
must qemu-io -f raw -c "write -P 0x5a 0 16M" "$img" >/dev/null
head -c 1000000 /dev/urandom | dd of="$img" bs=1 seek=123457 conv=notrunc status=none
cp "$img" "$T/shadow.img"
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" nbd_raw_daemon "$img" "$S"
U="nbd+unix:///disk?socket=$S"

step "hostile request streams, every reply and the disk checked against a shadow copy"
python3 - "$S" "$dpid" "$T/shadow.img" <<'PY' || { tail -20 "$T/daemon.log"; fail "hostile request streams"; }
import os, random, struct, sys, threading, time
from nbdproto import REQUEST_MAGIC as REQ, SIMPLE_REPLY_MAGIC as REP, connect, handshake, recvn
path, pid, shadow_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
shadow = bytearray(open(shadow_path, 'rb').read())
SIZE = len(shadow)
rng = random.Random(1234)
def fds(): return len(os.listdir(f'/proc/{pid}/fd'))
def status(key):
    for l in open(f'/proc/{pid}/status'):
        if l.startswith(key + ':'): return int(l.split()[1])
def cpu():  # the daemon's user + system time, in clock ticks
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])
def conn():
    s = connect(path, 60)
    size, flags = handshake(s)  # EXPORT_NAME
    assert size == SIZE, size
    return s
# Requests in flight together must not overlap (their order is not defined):
# each user takes ranges in turn from its own arena of the disk.
M = 1 << 20
arenas = {'main': [0, 8 * M, 0], 'flood': [8 * M, 12 * M, 8 * M]}
for i in range(3): arenas[i] = [12 * M + i * 1365 * 1024, 12 * M + (i + 1) * 1365 * 1024, 12 * M + i * 1365 * 1024]
def region(n, arena='main'):
    a = arenas[arena]
    if a[2] + n > a[1]: a[2] = a[0]
    o = a[2]; a[2] += n + random.randrange(1, 300)
    return o
class Client:
    def __init__(self): self.s = conn(); self.out = {}; self.next = 1
    def req(self, typ, off, ln, payload=b''):  # the request's bytes; remembers what its reply must be
        c = self.next; self.next += 1
        self.out[c] = (typ, off, ln, payload)
        return struct.pack('>IHHQQI', REQ, 0, typ, c, off, ln) + payload
    def write(self, off, data): return self.req(1, off, len(data), data)
    def read(self, off, ln): return self.req(0, off, ln)
    def reply(self):  # one reply: checked, writes go into the shadow
        m, e, c = struct.unpack('>IIQ', recvn(self.s, 16))
        assert m == REP, hex(m)
        assert c in self.out, f'reply for cookie {c} never sent or answered twice'
        typ, off, ln, payload = self.out.pop(c)
        assert e == 0, f'error {e} for type {typ} at {off}+{ln}'
        if typ == 0:
            got = recvn(self.s, ln)
            if got != bytes(shadow[off:off + ln]):
                bad = next(i for i in range(ln) if got[i] != shadow[off + i])
                raise AssertionError(f'read {off}+{ln}: byte {bad} differs from the shadow copy')
        elif typ == 1:
            shadow[off:off + ln] = payload
    def replies(self):
        while self.out: self.reply()
def data(n): return bytes(rng.getrandbits(8) for _ in range(n)) if n < 64 else os.urandom(n)
def pipeline(cl, n, size=512):  # n small writes and reads in sends of 8: the server starts batching
    for i in range(0, n, 8):
        b = b''
        for j in range(8):
            o = region(size)
            b += cl.write(o, data(size)) if (i + j) % 3 else cl.read(o, size)
        cl.s.sendall(b)
        cl.replies()

fd0 = fds()
pauses = [0, 0.00002, 0.0002]  # none, shorter and longer than a batch sleep (8-60 us)
cl = Client()
for warm in (False, True):
    if warm: pipeline(cl, 400)
    for k in range(1, 28 + 700):  # a write split at every byte of its header and payload
        o = region(700); r = cl.write(o, data(700))
        cl.s.sendall(r[:k]); time.sleep(pauses[k % 3]); cl.s.sendall(r[k:])
        cl.reply()
    for k in range(1, 28):  # a read split in its header, with another request in flight
        pre = cl.read(region(4096), 4096)
        r = cl.read(region(300), 300)
        cl.s.sendall(pre + r[:k]); time.sleep(pauses[k % 3]); cl.s.sendall(r[k:])
        cl.replies()
    for k in range(1, 200):  # two writes in three sends: the second's header straddles them
        a = cl.write(region(100), data(100)); b = cl.write(region(5000), data(5000))
        cut = rng.randrange(1, len(a) + len(b)); st = a + b
        cl.s.sendall(st[:min(k, cut)]); time.sleep(pauses[k % 3])
        cl.s.sendall(st[min(k, cut):cut]); time.sleep(pauses[(k + 1) % 3]); cl.s.sendall(st[cut:])
        cl.replies()
print('split requests: ok')

def send_bg(s, b):
    t = threading.Thread(target=s.sendall, args=(b,)); t.start(); return t
for rnd in range(6):  # 150 mixed requests in one send (> 64 KiB), from a thread: replies are read meanwhile
    b = b''
    for i in range(150):
        n = rng.choice([1, 27, 28, 29, 511, 4096, 6000, 12345, 32767, 32768, 40000, 70000])
        o = region(n)
        b += cl.write(o, data(n)) if i % 4 else cl.read(o, n)
    t = send_bg(cl.s, b); cl.replies(); t.join()
print('150 requests per send: ok, %d bytes in the last' % len(b))

# NBD_CMD_DISC inside a batch: the requests before it answered, none after it run
oa, ob, oc = region(4096), region(4096), region(4096)
b = cl.write(oa, data(4096)) + cl.write(ob, data(4096)) + struct.pack('>IHHQQI', REQ, 0, 2, 999, 0, 0)
after = struct.pack('>IHHQQI', REQ, 0, 1, 1000, oc, 4096) + b'\xee' * 4096
cl.s.sendall(b + after + struct.pack('>IHHQQI', REQ, 0, 0, 1001, 0, 4096))
cl.replies()
try:
    extra = cl.s.recv(16)
except ConnectionResetError:
    extra = b''
assert extra == b'', 'a reply after NBD_CMD_DISC'
cl.s.close()
print('disconnect inside a batch: ok')

# disconnects mid-header, mid-batch, mid-payload, with writes in flight
cuts = 0
def settle(want):  # the daemon closes its side of every connection (bounded wait)
    deadline = time.monotonic() + 60
    while fds() != want and time.monotonic() < deadline: time.sleep(0.002)
    assert fds() == want, f'daemon fds {want} -> {fds()}'
settle(fd0)  # no client left: the count to wait for after each one below
for i in range(60):
    c = Client()
    ws = [(region(4096), data(4096)) for _ in range(rng.randrange(0, 6))]
    b = b''.join(c.write(o, d) for o, d in ws)
    pn = (8192, 40000)[i % 2]  # a payload cut in the read-ahead, or in the straight read past it
    po = region(pn); partial = c.write(po, data(pn))
    b += partial[:rng.randrange(1, len(partial))]
    c.s.sendall(b); c.s.close()
    settle(fd0)  # its connection is closed only after the requests it read have run
    # full writes may or may not have run (no reply was read): each is wholly old or wholly new;
    # the one cut short never runs
    v = Client()
    for o, d in ws:
        v.s.sendall(v.read(o, 4096)); m, e, ck = struct.unpack('>IIQ', recvn(v.s, 16)); v.out.clear()
        got = recvn(v.s, 4096)
        assert got in (d, bytes(shadow[o:o + 4096])), f'a write cut by a disconnect is torn at {o}'
        shadow[o:o + 4096] = got
    v.s.sendall(v.read(po, pn)); v.replies(); v.s.close(); settle(fd0)
    cuts += 1
print(f'{cuts} disconnects mid-request: ok')

# slow loris: a write header and part of its payload, a bare header piece, then nothing;
# one after 400 requests (batching), one fresh. Other clients go on; the daemon does not spin.
loris = []
for n in (20000, 65536):  # a payload read through the read-ahead (batching), one read straight
    c = Client()
    if n == 20000: pipeline(c, 400)
    lo = region(n)
    c.s.sendall(c.write(lo, b'\x01' * n)[:28 + 1000])
    loris.append((c, lo, n))
c = Client(); c.s.sendall(c.read(region(512), 512)[:13]); loris.append((c, None, 0))
# a daemon that spins has no quiet second; one that waits has one soon,
# once the requests before are done (0.2 s was their time on a quiet host:
# a loaded one can still be at them, a fixed second then measured them)
deadline = time.monotonic() + 60
while True:
    t0, c0 = time.monotonic(), cpu()
    time.sleep(1.0)
    spent = (cpu() - c0) / os.sysconf('SC_CLK_TCK') / (time.monotonic() - t0)
    if spent < 0.5 or time.monotonic() > deadline:
        break
print(f'slow loris: daemon CPU {spent * 100:.0f} % while 3 connections hang mid-request')
assert spent < 0.5, f'the daemon spins on stalled connections ({spent * 100:.0f} % CPU)'

# meanwhile: 3000 requests without reading replies (memory bounded), and three more clients
base = status('VmRSS')
errors = []
def worker(seed):
    try:
        r = random.Random(seed); w = Client()
        for _ in range(30):
            b = b''
            for i in range(r.randrange(1, 40)):
                n = r.choice([512, 4096, 9000, 20000]); o = region(n, seed)
                b += w.write(o, os.urandom(n)) if r.random() < 0.6 else w.read(o, n)
            t = send_bg(w.s, b); w.replies(); t.join()
        w.s.close()
    except Exception as e:
        errors.append(repr(e))
fl = Client()
b = b''.join(fl.read(region(1024, 'flood'), 1024) if i % 3 else fl.write(region(1024, 'flood'), data(1024))
            for i in range(3000))
t = send_bg(fl.s, b)
ws = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
for w in ws: w.start()
time.sleep(0.5)  # the sender blocks: the daemon stopped reading, not buffering
peak = status('VmHWM') - base
fl.replies(); t.join(); fl.s.close()
for w in ws: w.join()
assert not errors, errors
print(f'3000 requests unread: peak {peak} kB over the start; 3 clients beside them: ok')
assert peak < 128 * 1024, f'the daemon grew by {peak} kB'

for c, lo, n in loris:
    c.s.close()
v = Client()
for c, lo, n in loris:
    if lo is not None:
        v.s.sendall(v.read(lo, n)); v.replies()  # the payload never came: nothing written
v.s.close()
settle(fd0)
open(shadow_path, 'wb').write(shadow)
print('fds back to', fd0)
PY
must qemu-img compare -q -f raw -F raw "$U" "$T/shadow.img"
must qemu-io -f raw -c "write -P 0x77 1M 64k" -c "read -P 0x77 1M 64k" "$U" >/dev/null
must qemu-io -f raw -c "write -P 0x77 1M 64k" "$T/shadow.img" >/dev/null
kill -0 $dpid || fail "the daemon died"
stop_daemon
cmp "$img" "$T/shadow.img" >/dev/null || fail "the disk differs from the shadow copy"

step "SIGTERM while one client does not read its replies and another stalls mid-payload: a clean exit, every acknowledged write on disk"
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" nbd_raw_daemon "$img" "$S"
python3 - "$S" "$T/ready" "$T/written" <<'PY' &
import os, struct, sys, threading, time
from nbdproto import CMD_READ, CMD_WRITE, SIMPLE_REPLY_MAGIC, connect, handshake, recvn, request
path, ready, written = sys.argv[1:4]
def conn():
    s = connect(path); handshake(s)
    return s
lo = conn()  # a 20 KiB write at 15 MiB whose payload stops after 1000 bytes
lo.sendall(request(CMD_WRITE, 1, 15 << 20, 20000) + b'\x01' * 1000)
fl = conn()  # 200 writes, then 2000 64 KiB reads whose replies are never read
data = os.urandom(200 * 4096)
b = b''.join(request(CMD_WRITE, i, i * 8192, 4096) + data[i * 4096:(i + 1) * 4096] for i in range(200))
b += b''.join(request(CMD_READ, 1000 + i, 0, 65536) for i in range(2000))
threading.Thread(target=fl.sendall, args=(b,), daemon=True).start()
acked = 0
while acked < 200:  # the write replies (read replies in between are skipped)
    m, e, c = struct.unpack('>IIQ', recvn(fl, 16))
    assert m == SIMPLE_REPLY_MAGIC and e == 0, (m, e)
    if c < 200: acked += 1
    else: recvn(fl, 65536)
open(written, 'wb').write(data)
open(ready, 'w').write('ready')
time.sleep(120)  # holds both connections, reads nothing more
PY
cpid=$!
on_exit "kill $cpid 2>/dev/null"
for _ in $(seq 600); do [ -e "$T/ready" ] && break; kill -0 $cpid 2>/dev/null || break; sleep 0.1; done
[ -e "$T/ready" ] || fail "the hostile clients did not get their write replies"
kill -TERM $dpid
for _ in $(seq 600); do kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
kill -0 $dpid 2>/dev/null && fail "SIGTERM did not stop the daemon in 60 s while a client does not read its replies"
wait $dpid || { cat "$T/daemon.log"; fail "vbd-daemon exited with $? after SIGTERM"; }
! grep -q "Sanitizer" "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
dpid=
kill $cpid 2>/dev/null
python3 - "$img" "$T/shadow.img" "$T/written" <<'PY' || fail "the disk after SIGTERM"
import sys
disk, old, data = (open(f, 'rb').read() for f in sys.argv[1:4])
for i in range(200):
    assert disk[i * 8192:i * 8192 + 4096] == data[i * 4096:(i + 1) * 4096], f'acknowledged write {i} is not on disk'
assert disk[15 << 20:(15 << 20) + 20000] == old[15 << 20:(15 << 20) + 20000], 'the write cut short reached the disk'
print('200 acknowledged writes on disk, the cut one not')
PY
echo OK
