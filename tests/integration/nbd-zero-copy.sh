#!/bin/bash
# The edges of reads sent with sendfile(2) (1 MiB and up, raw over a file,
# unix and TCP): a client that stops reading its replies (a full socket:
# the reply waits and the daemon serves another client meanwhile), one that
# leaves with replies half sent, and a file cut shorter by someone else
# under a read (the promised bytes still come, the stream stays in step).
# Every byte read is checked against the file (qemu-io -P patterns).
. "$(dirname "$0")/lib.sh"
need python3 qemu-io qemu-img
# the zero-copy path (remote clients') for these local clients too: nbd-local-copy.sh
export VBD_NBD_LOCAL_ZERO_COPY=1
img=$T/disk.img
must qemu-img create -q -f raw "$img" 64M
# 1 MiB pieces, each filled with its own index (0x01 .. 0x40): every reply is known
for i in $(seq 0 63); do echo "write -P $((i + 1)) ${i}M 1M"; done >"$T/fill"
must qemu-io -f raw "$img" <"$T/fill" >/dev/null
port=$(free_port 4) || fail "no free TCP port"
nbd_raw_daemon "$img" tcp:$port
U="nbd://127.0.0.1:$port/disk"

cat >"$T/client.py" <<'PY'
import struct
import nbdproto
from nbdproto import SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC
def connect(port, structured):
    s = nbdproto.connect(f"tcp:{port}")
    nbdproto.handshake(s, "disk", structured, go=True)
    return s, lambda n: nbdproto.recvn(s, n)
def read_reply(recvn, structured, length):
    if not structured:
        magic, err, cookie = struct.unpack(">IIQ", recvn(16))
        assert magic == SIMPLE_REPLY_MAGIC and err == 0, (hex(magic), err)
        return cookie, recvn(length)
    magic, flags, typ, cookie, ln = struct.unpack(">IHHQI", recvn(20))
    assert magic == STRUCTURED_REPLY_MAGIC and typ == nbdproto.REPLY_TYPE_OFFSET_DATA and flags & 1, (hex(magic), typ, flags)
    return cookie, recvn(ln)[8:]
def req(s, typ, cookie, off, ln):
    s.sendall(nbdproto.request(typ, cookie, off, ln))
PY
export CLIENT=$T/client.py

step "16 reads of 2 MiB with the replies left unread for a while: the socket fills, the daemon goes on serving"
python3 - "$port" "$U" <<'PY' || fail "stalled reader"
import os, subprocess, sys, time
exec(open(os.environ["CLIENT"]).read())
port, uri = int(sys.argv[1]), sys.argv[2]
for structured in (False, True):
    s, recvn = connect(port, structured)
    for i in range(16):
        req(s, 0, i, (i * 4 % 62) << 20, 2 << 20)
    # the replies (32 MiB) do not fit in the socket buffers: the daemon waits on POLLOUT; another client is served meanwhile
    time.sleep(0.3)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x21 32M 1M", uri], check=True, stdout=subprocess.DEVNULL)
    for _ in range(16):
        cookie, data = read_reply(recvn, structured, 2 << 20)
        off = (cookie * 4 % 62) << 20
        exp = bytes([off // (1 << 20) + 1]) * (1 << 20) + bytes([off // (1 << 20) + 2]) * (1 << 20)
        assert data == exp, f"read at {off}: wrong data"
    s.close()
PY

step "clients that leave with 1 MiB replies half sent, 50 times: the daemon stays up and in step"
python3 - "$port" <<'PY' || fail "clients leaving mid-reply"
import sys, os
exec(open(os.environ["CLIENT"]).read())
port = int(sys.argv[1])
for k in range(50):
    s, recvn = connect(port, k % 2 == 1)
    for i in range(8):
        req(s, 0, i, (i * 3 + k) % 60 << 20, 4 << 20)
    recvn(100000 + k * 999)  # part of the first reply
    s.close()
PY
must qemu-io -f raw -c "read -P 0x05 4M 1M" -c "read -P 0x40 63M 1M" "$U" >/dev/null

step "the file cut to 40 MiB under the daemon: a read past its new end gets zeroes or an error, never a desynced stream"
must truncate -s 40M "$img"
python3 - "$port" <<'PY' || fail "read past a truncated file's end"
import sys, os, struct
exec(open(os.environ["CLIENT"]).read())
port = int(sys.argv[1])
for structured in (False, True):
    s, recvn = connect(port, structured)
    req(s, 0, 1, 39 << 20, 2 << 20)   # 1 MiB of data, then 1 MiB past the file's end
    req(s, 0, 2, 8 << 20, 1 << 20)    # a normal read after it
    got = {}
    for _ in range(2):
        if structured:
            magic, flags, typ, cookie, ln = struct.unpack(">IHHQI", recvn(20))
            assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
            body = recvn(ln)
            while not flags & 1:   # more chunks of the same reply
                magic, flags, typ2, cookie, ln = struct.unpack(">IHHQI", recvn(20))
                assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
                body += recvn(ln)
                typ = max(typ, typ2)
            got[cookie] = (typ, body)
        else:
            magic, err, cookie = struct.unpack(">IIQ", recvn(16))
            assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
            got[cookie] = (err, recvn(2 << 20 if cookie == 1 else 1 << 20) if err == 0 else b"")
    kind, body = got[2]
    assert body[-(1 << 20):] == bytes([9]) * (1 << 20), "the read after it"
    kind, body = got[1]
    if not structured and kind == 0:
        assert body == bytes([40]) * (1 << 20) + bytes(1 << 20), "past the end: not zeroes"
    s.close()
PY
must qemu-io -f raw -c "read -P 0x09 8M 1M" "$U" >/dev/null
kill $dpid
wait $dpid || fail "daemon exit: $(tail -5 "$T/daemon.log")"
echo PASS
