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
# usage: nbd-hostile-server.py SOCKET IMAGE MODE
import os, random, select, socket, struct, sys, threading, time

path, image, mode = sys.argv[1], sys.argv[2], sys.argv[3]
size = os.path.getsize(image)
fd = os.open(image, os.O_RDWR)
rng = random.Random(7)
lock = threading.Lock()

def recvn(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return bytes(b)

def opt_reply(s, opt, typ, data=b''):
    s.sendall(struct.pack('>QIII', 0x3e889045565a9, opt, typ, len(data)) + data)

def handshake(s):
    s.sendall(struct.pack('>QQH', 0x4e42444d41474943, 0x49484156454F5054, 3))
    recvn(s, 4)
    structured = False
    while True:
        magic, opt, ln = struct.unpack('>QII', recvn(s, 16))
        data = recvn(s, ln)
        if opt == 8:  # STRUCTURED_REPLY
            structured = True
            opt_reply(s, opt, 1)
        elif opt == 7:  # GO
            opt_reply(s, opt, 3, struct.pack('>HQH', 0, size, 1 | 4 | 8))  # HAS_FLAGS SEND_FLUSH SEND_FUA
            opt_reply(s, opt, 1)
            return structured
        elif opt == 2:
            raise EOFError
        else:
            opt_reply(s, opt, 0x80000001)  # unsupported (meta contexts too)

def chunk(flags, typ, cookie, payload):
    return struct.pack('>IHHQI', 0x668e33ef, flags, typ, cookie, len(payload)) + payload

def read_reply(structured, cookie, off, ln):
    data = os.pread(fd, ln, off)
    if not structured:
        return struct.pack('>IIQ', 0x67446698, 0, cookie) + data
    if mode == 'long-chunk':
        return chunk(1, 1, cookie, struct.pack('>Q', off) + data + b'\xaa' * 8)
    if mode == 'wrap':
        return chunk(1, 2, cookie, struct.pack('>QI', (1 << 64) - 4096, 8192 + off))
    if mode == 'partial':
        return chunk(1, 1, cookie, struct.pack('>Q', off) + data[:ln // 2])
    if mode != 'chunks':
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
    rng.shuffle(pieces)
    out = b''.join(chunk(0, t, cookie, p) for t, p in pieces)
    return out + chunk(1, 0, cookie, b'')  # NONE, DONE

def ok_reply(cookie):
    return struct.pack('>IIQ', 0x67446698, 0, cookie)

def serve(s):
    structured = handshake(s)
    pending = b''
    reads = 0
    while True:
        batch = []
        while True:  # the requests that came together
            h = recvn(s, 28)
            magic, flags, typ, cookie, off, ln = struct.unpack('>IHHQQI', h)
            assert magic == 0x25609513, hex(magic)
            if typ == 1 and mode == 'early' and ln >= 1 << 20:
                s.sendall(ok_reply(cookie))
                time.sleep(0.2)
                with lock:
                    os.pwrite(fd, recvn(s, ln), off)
            elif typ == 1:
                batch.append((typ, cookie, off, ln, recvn(s, ln)))
            else:
                batch.append((typ, cookie, off, ln, None))
            if not batch:
                continue
            if typ == 2 or not select.select([s], [], [], 0.002)[0]:
                break
        out = []
        for typ, cookie, off, ln, payload in batch:
            if typ == 2:
                return
            if typ == 0:
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
            elif typ == 1:
                with lock:
                    os.pwrite(fd, payload, off)
                r = ok_reply(cookie)
            else:  # flush and everything else: nothing to do
                r = ok_reply(cookie)
            out.append(r)
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
