#!/usr/bin/env python3
# Reads racing writes through one NBD export, checked sector by sector
# against a model (used by nbd-read-race.sh; not a benchmark).
#
#   nbd-read-race.py unix:PATH|tcp:HOST:PORT EXPORT IMAGE_SIZE SHADOW_OUT SEED OPS [structured]
#
# The client speaks the protocol itself (simple or structured replies) so
# that it can keep reads of 1 MiB and odd sizes in flight, pipelined with
# writes to the same and neighbouring sectors on the same connection. Every
# write fills each 512-byte sector it covers with (write id, sector) in a
# pattern, so any sector read identifies the write it came from. A sector a
# read returns must be:
#   - exact: the last write to it completed before the read was sent, when
#     no write to it was in flight at any time while the read was;
#   - otherwise old or new: that value or one of the writes in flight
#     during the read, byte by byte. Not whole sectors: the page cache has
#     no sector atomicity between a pread(2) and a pwrite(2) of the same
#     page (the server's copying path gave sectors mixing two writes at
#     32-byte steps), so a sector may mix old and new; never other data.
# A read's life is the client's: from its send to the last byte of its
# reply received. A server that sends page-cache pages by reference
# (sendfile) lets writes land until the client copies them; those writes
# were sent before the reply was received, so they are in flight by this
# model; a write sent after a reply came is never allowed in it.
# Writes to one sector are never in flight together, so "the last completed
# write" is always well defined. At the end the model is written to
# SHADOW_OUT for qemu-img compare against the export.
import random
import struct
import sys
import threading
import time

import nbdproto
from nbdproto import CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, request

SECTOR = 512
addr, export, size, shadow_out, seed, nops = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
structured = len(sys.argv) > 7 and sys.argv[7] == "structured"
rng = random.Random(seed)
nsec = size // SECTOR


def pattern(wid, s):
    return struct.pack("<QQ", wid, s) * (SECTOR // 16)


def recvn(sk, n):
    # small receives: the reply's bytes are taken from the socket in many
    # pieces, as slowly as a busy client would
    return nbdproto.recvn(sk, n, 16384)


sk = nbdproto.connect(addr, nodelay=True)
esize, _ = nbdproto.handshake(sk, export, structured, go=True)
assert esize == size, (esize, size)

lock = threading.Lock()
clock = 0                     # events: sends and completed replies, in order
# id of the last completed write per sector: what the image holds now (the
# shadow, the export's content when this run starts; 0 is the initial fill)
with open(shadow_out, "rb") as f:
    img = f.read(size)
last = [struct.unpack_from("<Q", img, s * SECTOR)[0] for s in range(nsec)]
assert all(img[s * SECTOR:(s + 1) * SECTOR] == pattern(last[s], s) for s in range(nsec)), "shadow is not a model image"
del img
busy = [None] * nsec          # the write in flight on a sector, if any
active = {}                   # write id -> (first sector, last sector + 1, sent at)
history = {}                  # write id -> (sent at, completed at)
pending = {}                  # cookie -> request
slots = threading.Semaphore(24)
failures = []
mixed = [0]                   # sectors that were a mixture of old and new
sendlock = threading.Lock()


def send(hdr, data=b""):
    with sendlock:
        sk.sendall(hdr + data)


def check_read(req, data):
    off, ln, sent, done, snap = req["off"], req["len"], req["sent"], req["done"], req["snap"]
    for s in range(off // SECTOR, (off + ln + SECTOR - 1) // SECTOR):
        a, b = max(off, s * SECTOR), min(off + ln, (s + 1) * SECTOR)
        got = data[a - off:b - off]
        ok = [snap[s - off // SECTOR]]
        # writes to s in flight while the read was: sent before it completed, completed after it was sent
        ok += [w for w in req["cands"].get(s, ()) if history[w][0] < done and (history[w][1] is None or history[w][1] > sent)]
        pats = [pattern(w, s)[a - s * SECTOR:b - s * SECTOR] for w in ok]
        if any(p == got for p in pats):
            continue
        # with writes in flight the page cache gives no sector atomicity: a
        # read copying a page while a write copies into it gets a mixture
        # (measured with the server's copying path too); every byte must
        # still be old or new, never anything else
        if len(pats) > 1 and all(any(p[i] == got[i] for p in pats) for i in range(len(got))):
            mixed[0] += 1
            continue
        units = [struct.unpack_from("<QQ", got, i) for i in range((16 - (a % 16)) % 16, len(got) - 15, 16)]
        tags = [(u, (16 - (a % 16)) % 16 + 16 * i) for i, u in enumerate(units) if i == 0 or units[i - 1] != u]
        failures.append(f"read {off}+{ln}: sector {s} bytes {a}-{b}: allowed writes {ok}, "
                        f"it holds (write, sector) from byte: {tags}")
        return


def reader():
    global clock
    try:
        while True:
            hdr = recvn(sk, 4)
            magic = struct.unpack(">I", hdr)[0]
            if magic == SIMPLE_REPLY_MAGIC:
                err, cookie = struct.unpack(">IQ", recvn(sk, 12))
                req = pending[cookie]
                data = recvn(sk, req["len"]) if req["type"] == 0 and not err else b""
                final = True
            elif magic == STRUCTURED_REPLY_MAGIC:  # a chunk
                flags, ctype, cookie, ln = struct.unpack(">HHQI", recvn(sk, 16))
                req = pending[cookie]
                payload = recvn(sk, ln)
                err = 0
                if ctype == 1:  # OFFSET_DATA
                    o = struct.unpack(">Q", payload[:8])[0] - req["off"]
                    req["buf"][o:o + ln - 8] = payload[8:]
                elif ctype == 2:  # OFFSET_HOLE
                    o, hl = struct.unpack(">QI", payload)
                    o -= req["off"]
                    req["buf"][o:o + hl] = bytes(hl)
                elif ctype == 0:  # NONE
                    pass
                else:
                    err = 1
                final = bool(flags & 1)
                data = bytes(req["buf"]) if req["type"] == 0 else b""
            else:
                raise RuntimeError(f"bad reply magic {magic:#x}")
            if not final:
                continue
            if err:
                failures.append(f"request {req} failed: {err}")
            with lock:
                clock += 1
                req["done"] = clock
                del pending[cookie]
                if req["type"] == 1:
                    wid = req["wid"]
                    history[wid] = (history[wid][0], clock)
                    for s in range(req["off"] // SECTOR, (req["off"] + req["len"]) // SECTOR):
                        last[s] = wid
                        busy[s] = None
                    del active[wid]
                if req.get("last"):
                    return
            if req["type"] == 0:
                check_read(req, data)
            slots.release()
    except Exception as e:  # noqa: BLE001 -- reported as a failure
        failures.append(f"reader: {e!r}")
        for _ in range(64):
            slots.release()


t = threading.Thread(target=reader, daemon=True)
t.start()
cookie = 0
wid = max(last)  # ids go on from the previous run on this image
# a hot window of a few MiB: reads and writes keep landing on the same and neighbouring sectors
hot = min(size, 8 << 20)
read_sizes = [1 << 20, (1 << 20) + 512 * 3, 65536, 65536 + 7, 4096, 512 * 5 + 123, 131072 - 1, 777]
for i in range(nops):
    slots.acquire()
    if failures:
        break
    cookie += 1
    if rng.random() < 0.45:
        # a sector-aligned write of 512 B - 256 KiB whose sectors have no write in flight
        for _ in range(50):
            n = rng.choice([1, 2, 8, 64, 512]) * SECTOR if rng.random() < 0.5 else rng.randrange(1, 512) * SECTOR
            off = rng.randrange(0, (hot - n) // SECTOR + 1) * SECTOR
            with lock:
                if all(busy[s] is None for s in range(off // SECTOR, (off + n) // SECTOR)):
                    wid += 1
                    for s in range(off // SECTOR, (off + n) // SECTOR):
                        busy[s] = wid
                    clock += 1
                    active[wid] = (off // SECTOR, (off + n) // SECTOR, clock)
                    history[wid] = (clock, None)
                    req = {"type": 1, "off": off, "len": n, "wid": wid}
                    pending[cookie] = req
                    # reads in flight may see it: they learn of it before it is sent
                    for r in pending.values():
                        if r["type"] == 0 and r["done"] is None:
                            a, b = r["off"] // SECTOR, (r["off"] + r["len"] + SECTOR - 1) // SECTOR
                            for s in range(max(a, off // SECTOR), min(b, (off + n) // SECTOR)):
                                r["cands"].setdefault(s, []).append(wid)
                    break
        else:
            slots.release()
            continue
        data = b"".join(pattern(req["wid"], s) for s in range(off // SECTOR, (off + n) // SECTOR))
        send(request(CMD_WRITE, cookie, off, n), data)
    else:
        n = rng.choice(read_sizes)
        off = rng.randrange(0, hot - n + 1)
        if rng.random() < 0.3:
            off -= off % SECTOR
        s0, s1 = off // SECTOR, (off + n + SECTOR - 1) // SECTOR
        with lock:
            clock += 1
            req = {"type": 0, "off": off, "len": n, "sent": clock, "done": None, "buf": bytearray(n),
                   "snap": last[s0:s1], "cands": {}}
            # writes in flight now or sent until the reply comes may land: record them as they are sent
            for w, (a, b, _) in active.items():
                for s in range(max(a, s0), min(b, s1)):
                    req["cands"].setdefault(s, []).append(w)
            pending[cookie] = req
        send(request(CMD_READ, cookie, off, n))
# drain: every reply in, then a flush as the last request
for _ in range(6000):
    with lock:
        if not pending or failures:
            break
    time.sleep(0.01)
cookie += 1
with lock:
    pending[cookie] = {"type": 3, "off": 0, "len": 0, "last": True}
send(request(CMD_FLUSH, cookie, 0, 0))
t.join(120)
if t.is_alive():
    failures.append("replies did not all come")
with lock:
    if len(pending) and not failures:
        failures.append(f"{len(pending)} requests unanswered")
send(request(CMD_DISC, cookie + 1, 0, 0))
sk.close()
if failures:
    print("\n".join(failures[:10]), file=sys.stderr)
    sys.exit(1)
with open(shadow_out, "r+b") as f:
    for s in range(hot // SECTOR):
        if True:
            f.seek(s * SECTOR)
            f.write(pattern(last[s], s))
print(f"ok: {nops} requests, {len(history)} writes, {mixed[0]} sectors read as a mixture of old and new")
