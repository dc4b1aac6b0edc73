#!/usr/bin/env python3
# A scripted NBD server for the nbd client's reconnect tests
# (nbd-client-outage.sh, nbd-client-reconnect-check.sh): no timing, each
# step happens when the client gets there. The first connection is the
# client's open: its handshake answered (8 MiB, flush and FUA) and the
# connection closed at once, so that the client's first request finds it
# lost and reconnects. What the later connections find, by MODE:
#   hold    accepted and held without a word (a hung server the kernel still accepts for)
#   close   closed at once
#   down    closed at once, the first one too (no open answered: a server
#           started for a client already connected before, whose every
#           connection is a reconnect attempt)
#   ro      served read-only (each write answered EPERM, reads with zeroes)
#   shrink  served with 4 MiB instead of 8
#   nofua   served without FUA
#   silent  (tcp) none: before the open's connection closes, the listen
#           queue is filled, so the kernel drops the SYNs of the reconnects
#           (a host that is silent; no iptables needed)
#   silent-open  (tcp) the same from the start: not even the open's connection
# LOG gets "listening" once the socket listens, then a line for each later
# connection ("conn"), each request served ("cmd TYPE") and "silent" once
# the SYNs are dropped.
# usage: nbd-outage-server.py MODE ADDR LOG (ADDR a unix socket path or tcp:PORT)
import socket
import struct
import sys
import time

import nbdproto as P

mode, addr, log = sys.argv[1:]


def note(line):
    with open(log, 'a') as f:
        f.write(line + '\n')


if addr.startswith('tcp:'):
    port = int(addr[4:])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(0 if mode.startswith('silent') else 16)
else:
    s = socket.socket(socket.AF_UNIX)
    s.bind(addr)
    s.listen(64)


def go_silent():
    # backlog 0 holds one connection not yet accepted; the kernel drops the
    # SYNs of any after it (tcp_abort_on_overflow 0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(('127.0.0.1', port))
        fillers.append(f)
    note('silent')
    return fillers


def forever():
    while True:
        time.sleep(3600)


if mode == 'silent-open':
    fillers = go_silent()
note('listening')
if mode == 'silent-open':
    forever()
first = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_FUA
if mode != 'down':
    c, _ = s.accept()
    P.serve_handshake(c, 8 << 20, first)
    if mode == 'silent':
        fillers = go_silent()  # before the close: the client's reconnect finds the queue full
        c.close()
        forever()
    c.close()
size = 4 << 20 if mode == 'shrink' else 8 << 20
flags = first | P.TF_READ_ONLY if mode == 'ro' else first & ~P.TF_SEND_FUA if mode == 'nofua' else first
held = []
while True:
    c, _ = s.accept()
    note('conn')
    if mode == 'hold':
        held.append(c)
        continue
    if mode in ('close', 'down'):
        c.close()
        continue
    try:
        structured = P.serve_handshake(c, size, flags)
        while True:
            _, _, typ, cookie, off, ln = struct.unpack('>IHHQQI', P.recvn(c, 28))
            note('cmd %d' % typ)
            if typ == P.CMD_DISC:
                break
            if typ == P.CMD_WRITE:
                P.recvn(c, ln)
                c.sendall(P.simple_reply(cookie, 1))  # EPERM: a read-only server's answer
            elif typ == P.CMD_READ and structured:
                c.sendall(P.chunk(P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, cookie,
                                  struct.pack('>Q', off) + bytes(ln)))
            elif typ == P.CMD_READ:
                c.sendall(P.simple_reply(cookie) + bytes(ln))
            else:
                c.sendall(P.simple_reply(cookie))
    except (EOFError, OSError):
        pass
    c.close()
