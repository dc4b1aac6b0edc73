#!/usr/bin/env python3
# A hostile NBD server for nbd-client-hostile.sh: fixed newstyle, structured
# replies, an export backed by IMAGE (reads and writes go to the file), and
# replies sent in the way MODE says:
#   split    every reply's first 64 bytes one byte per send, the rest in 1000-byte pieces
#   merge    the requests that came together answered in reverse order in one send
#   chunks   structured reads in many data and hole chunks of odd sizes (some >= 32 KiB),
#            in shuffled order, all replies of a batch in one send (headers cross 64 KiB)
#   unknown  a read's reply names a cookie never sent
#   dup      a read's reply is sent twice
#   long-simple  a simple read reply with 512 bytes more than asked
#   long-chunk   a data chunk 8 bytes longer than the read
#   wrap     a hole chunk whose offset + length wraps past 2^64
#   partial  a read answered with data for its first half only, DONE (the next request is fine)
#   stall    half a read reply, a pause, then the server closes
#   early    a write of 1 MiB or more acknowledged as soon as its header came, its
#            payload read 0.2 s later (the client is still sending when the reply arrives)
#   err-unknown  writes answered with an error chunk of a type no spec names (0x8123), EIO
#   err-short    writes answered with an error chunk of 4 bytes (no room for its message length)
#   err-zero     writes answered with an error chunk whose error is 0
#   err-msglen   writes answered with an error chunk whose message is longer than the chunk
#   (the err-* modes write nothing: the writes must fail)
#   size-huge    an export of 2^64 - 512 bytes (past what a signed 64-bit offset holds)
#   overlap      a read in data chunks [0, 1/2) and [1/4, 3/4): their bytes add up to the
#                read's length, the last quarter never sent
#   overlap-hole a read as a hole [1/2, 1), data [0, 1/4) and data [1/2, 3/4): the same sum,
#                the second quarter never sent (chunks out of order)
#   hole-zero    a read's data, and a hole chunk of 0 bytes
#   simple-read  reads answered with simple replies though structured ones were negotiated
#   chunk-type   a read's data, after a chunk of a type no spec names (7) with 4 bytes
#   none-flags   a write answered with a NONE chunk without the DONE flag
#   mutate:SEED  structured reads in data and hole chunks, in order or shuffled; a third of
#                them broken one way (a chunk repeated, dropped, moved, retyped, a hole of 0
#                bytes or over a data chunk) and the connection closed after that reply
#   (the bs-* modes negotiate base:allocation as context 1; their reads are whole)
#   bs-zero      block status answered with an extent of 0 bytes
#   bs-none      block status answered with NONE, DONE: no extent
#   bs-ctx       block status answered for context 2
#   bs-twice     block status answered with two chunks for context 1
# usage: nbd-hostile-server.py SOCKET IMAGE MODE
import os, random, select, socket, struct, sys, threading, time
from nbdproto import (CMD_BLOCK_STATUS, CMD_DISC, CMD_READ, CMD_WRITE, REQUEST_MAGIC, TF_HAS_FLAGS, TF_SEND_FLUSH,
                      TF_SEND_FUA, chunk, recvn, serve_handshake, simple_reply)

path, image, mode = sys.argv[1], sys.argv[2], sys.argv[3]
size = os.path.getsize(image)
if mode.startswith('mutate:'):
    seed = int(mode.split(':')[1])
if mode == 'size-huge':
    size = (1 << 64) - 512
fd = os.open(image, os.O_RDWR)
rng = random.Random(seed if mode.startswith('mutate:') else 7)
lock = threading.Lock()

def read_reply(structured, cookie, off, ln):
    data = os.pread(fd, ln, off)
    if not structured:
        return simple_reply(cookie) + data
    if mode == 'long-chunk':
        return chunk(1, 1, cookie, struct.pack('>Q', off) + data + b'\xaa' * 8)
    if mode == 'wrap':
        return chunk(1, 2, cookie, struct.pack('>QI', (1 << 64) - 4096, 8192 + off))
    if mode == 'partial':
        return chunk(1, 1, cookie, struct.pack('>Q', off) + data[:ln // 2])
    q = ln // 4
    if mode == 'overlap':
        return (chunk(0, 1, cookie, struct.pack('>Q', off) + data[:2 * q]) +
                chunk(1, 1, cookie, struct.pack('>Q', off + q) + data[q:3 * q]))
    if mode == 'overlap-hole':
        return (chunk(0, 2, cookie, struct.pack('>QI', off + 2 * q, 2 * q)) +
                chunk(0, 1, cookie, struct.pack('>Q', off) + data[:q]) +
                chunk(1, 1, cookie, struct.pack('>Q', off + 2 * q) + data[2 * q:3 * q]))
    if mode == 'hole-zero':
        return (chunk(0, 1, cookie, struct.pack('>Q', off) + data) +
                chunk(1, 2, cookie, struct.pack('>QI', off, 0)))
    if mode == 'simple-read':
        return simple_reply(cookie) + data
    if mode == 'chunk-type':
        return chunk(0, 7, cookie, b'\0' * 4) + chunk(1, 1, cookie, struct.pack('>Q', off) + data)
    if mode != 'chunks' and not mode.startswith('mutate'):
        return chunk(1, 1, cookie, struct.pack('>Q', off) + data)
    pieces, pos = [], 0
    while pos < ln:
        n = min(rng.choice([1, 7, 511, 4093, 33000, 40000]), ln - pos)
        part = data[pos:pos + n]
        if part.count(0) == n and rng.random() < 0.7:
            pieces.append((2, struct.pack('>QI', off + pos, n)))
        else:
            pieces.append((1, struct.pack('>Q', off + pos) + part))
        pos += n
    if mode.startswith('mutate'):
        return mutate(pieces, cookie, off, ln)
    rng.shuffle(pieces)
    out = b''.join(chunk(0, t, cookie, p) for t, p in pieces)
    return out + chunk(1, 0, cookie, b'')  # NONE, DONE

broke = False  # mutate: a reply was broken; the connection ends after its batch

def mutate(pieces, cookie, off, ln):
    global broke
    if rng.random() < 0.5:
        rng.shuffle(pieces)
    if rng.random() < 0.33:
        broke = True
        i = rng.randrange(len(pieces))
        t, p = pieces[i]
        how = rng.choice(['dup', 'drop', 'move', 'retype', 'hole0', 'hole-over'])
        if how == 'dup':
            pieces.insert(rng.randrange(len(pieces) + 1), (t, p))
        elif how == 'drop':
            del pieces[i]
        elif how == 'move':
            o = struct.unpack('>Q', p[:8])[0] + rng.choice([-4096, -1, 1, 4096, ln])
            pieces[i] = (t, struct.pack('>Q', o % (1 << 64)) + p[8:])
        elif how == 'retype':
            pieces[i] = (rng.choice([0, 1, 2, 3, 5, 7, 0x8001, 0x8002, 0x8123]), p)
        elif how == 'hole0':
            pieces.insert(rng.randrange(len(pieces) + 1), (2, struct.pack('>QI', off + rng.randrange(ln), 0)))
        else:
            o = struct.unpack('>Q', p[:8])[0]
            pieces.append((2, struct.pack('>QI', o, min(4096, off + ln - o))))
    out = b''.join(chunk(0, t, cookie, p) for t, p in pieces)
    return out + chunk(1, 0, cookie, b'')  # NONE, DONE

def serve(s):
    # meta contexts refused but in the bs-* modes
    structured = serve_handshake(s, size, TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA,
                                 1 if mode.startswith('bs-') else None)
    pending = b''
    reads = 0
    while True:
        batch = []
        while True:  # the requests that came together
            h = recvn(s, 28)
            magic, flags, typ, cookie, off, ln = struct.unpack('>IHHQQI', h)
            assert magic == REQUEST_MAGIC, hex(magic)
            if typ == CMD_WRITE and mode == 'early' and ln >= 1 << 20:
                s.sendall(simple_reply(cookie))
                time.sleep(0.2)
                with lock:
                    os.pwrite(fd, recvn(s, ln), off)
            elif typ == CMD_WRITE:
                batch.append((typ, cookie, off, ln, recvn(s, ln)))
            else:
                batch.append((typ, cookie, off, ln, None))
            if not batch:
                continue
            if typ == CMD_DISC or not select.select([s], [], [], 0.002)[0]:
                break
        out = []
        for typ, cookie, off, ln, payload in batch:
            if typ == CMD_DISC:
                return
            if typ == CMD_READ:
                reads += 1
                if mode == 'unknown':
                    cookie ^= 0xabcdef00
                if mode == 'partial' and reads > 1:
                    r = chunk(1, 1, cookie, struct.pack('>Q', off) + os.pread(fd, ln, off))
                else:
                    r = read_reply(structured, cookie, off, ln)
                if mode == 'long-simple':
                    r += b'\xaa' * 512
                if mode == 'dup':
                    r += r
                if mode == 'stall':
                    s.sendall(r[:len(r) // 2])
                    time.sleep(0.5)
                    return
            elif typ == CMD_BLOCK_STATUS:
                r = {'bs-zero': chunk(1, 5, cookie, struct.pack('>III', 1, 0, 0)),
                     'bs-none': chunk(1, 0, cookie, b''),
                     'bs-ctx': chunk(1, 5, cookie, struct.pack('>III', 2, ln, 0)),
                     'bs-twice': chunk(0, 5, cookie, struct.pack('>III', 1, ln, 0)) +
                                 chunk(1, 5, cookie, struct.pack('>III', 1, ln, 0))}[mode]
            elif typ == CMD_WRITE and mode == 'none-flags':
                r = chunk(0, 0, cookie, b'')
            elif typ == CMD_WRITE and mode.startswith('err-'):
                r = {'err-unknown': chunk(1, 0x8123, cookie, struct.pack('>IH', 5, 0)),
                     'err-short': chunk(1, 0x8001, cookie, struct.pack('>I', 5)),
                     'err-zero': chunk(1, 0x8001, cookie, struct.pack('>IH', 0, 0)),
                     'err-msglen': chunk(1, 0x8001, cookie, struct.pack('>IH', 5, 100) + b'short')}[mode]
            elif typ == CMD_WRITE:
                with lock:
                    os.pwrite(fd, payload, off)
                r = simple_reply(cookie)
            else:  # flush and everything else: nothing to do
                r = simple_reply(cookie)
            out.append(r)
        if broke:
            s.sendall(b''.join(out))
            time.sleep(0.1)
            return
        if mode in ('merge', 'chunks'):
            s.sendall(b''.join(reversed(out)))
        elif mode == 'split':
            for r in out:
                for i in range(min(64, len(r))):
                    s.sendall(r[i:i + 1])
                    if i % 3 == 0:
                        time.sleep(0.0001)
                for i in range(64, len(r), 1000):
                    s.sendall(r[i:i + 1000])
        else:
            for r in out:
                s.sendall(r)

def conn(s):
    try:
        serve(s)
    except (EOFError, ConnectionError, BrokenPipeError):
        pass
    finally:
        s.close()

ls = socket.socket(socket.AF_UNIX)
ls.bind(path + '.tmp')
ls.listen(16)
os.rename(path + '.tmp', path)  # the socket appears only once it is listening
while True:
    c, _ = ls.accept()
    threading.Thread(target=conn, args=(c,), daemon=True).start()
