#!/usr/bin/env python3
"""A relay between a vhost-user front end (QEMU) and its back end
(vbd-daemon) that cuts the connection on demand, as the back end sees a
front end that goes away and comes back (QEMU with reconnect=1, a VM that
libvirt restarts), while the guest and its memory stay. For
vhost-user-reconnect.sh.

    vu-proxy.py LISTEN BACKEND LOG

Each front end that connects to LISTEN gets a connection of its own to
BACKEND (a pair); every message and its file descriptors (SCM_RIGHTS:
guest memory, eventfds, the inflight region) are passed on unchanged, one
message at a time: a read of a stream socket may join the bytes of a
message sent without descriptors to those of the next one, which has
some, and the descriptors must go with their own message's header. SIGUSR1 cuts the pairs connected now: both sockets
of each are shut down, so the back end sees its front end hang up and the
front end its back end go; QEMU then connects again by itself, which makes
a new pair. LOG gets a line per event: "listening", "pair N", "cut N",
"pair N closed by the front end" (or back end).
"""
import os
import signal
import socket
import struct
import sys
import threading

listen_path, backend_path, log_path = sys.argv[1:4]
MAX_FDS = 16  # vhost-user sends at most 8 with one message
log_lock = threading.Lock()
pairs = {}  # N -> [front end socket, back end socket, relays still running]
pairs_lock = threading.RLock()  # the SIGUSR1 handler runs in the main thread, which may hold it


def say(line):
    with log_lock, open(log_path, "a") as f:
        f.write(line + "\n")


def shut(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def read_message(src):
    """One vhost-user message (12-byte header: request, flags, payload size;
    then the payload) and the descriptors that came with it; None at the end."""
    data, fds = b"", []
    try:
        while len(data) < 12:  # the descriptors come with the header's first byte
            part, got, _, _ = socket.recv_fds(src, 12 - len(data), MAX_FDS)
            fds += got
            if not part:
                return None
            data += part
        size = struct.unpack("<III", data)[2]
        while len(data) < 12 + size:
            part, got, _, _ = socket.recv_fds(src, 12 + size - len(data), MAX_FDS)
            fds += got
            if not part:
                return None
            data += part
        return data, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def relay(n, src, dst, side):
    # SIGUSR1 is for the main thread: a send it interrupted could return short
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        while True:
            m = read_message(src)
            if m is None:
                break
            data, fds = m
            try:
                sent = socket.send_fds(dst, [data], fds) if fds else 0
                if sent < len(data):
                    dst.sendall(data[sent:])
            finally:
                for fd in fds:
                    os.close(fd)
    except OSError:
        pass
    with pairs_lock:
        p = pairs.get(n)
        if p is None:
            return
        if p[2] == 2:  # the first of the two relays to see the end: the other side goes too
            say(f"pair {n} closed by the {side}")
            shut(p[0])
            shut(p[1])
        p[2] -= 1
        if p[2] == 0:
            p[0].close()
            p[1].close()
            del pairs[n]


def cut(signum, frame):
    with pairs_lock:
        for n, p in pairs.items():
            if p[2] == 2:
                say(f"cut {n}")
                shut(p[1])  # the back end first: it must see its front end go before the front end can come back
                shut(p[0])


def main():
    signal.signal(signal.SIGUSR1, cut)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listen_path)
    srv.listen(8)
    say("listening")
    n = 0
    while True:
        front, _ = srv.accept()
        n += 1
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.connect(backend_path)
        except OSError as e:
            say(f"pair {n}: cannot connect to the back end: {e}")
            front.close()
            back.close()
            continue
        with pairs_lock:
            pairs[n] = [front, back, 2]
            say(f"pair {n}")
        threading.Thread(target=relay, args=(n, front, back, "front end"), daemon=True).start()
        threading.Thread(target=relay, args=(n, back, front, "back end"), daemon=True).start()


main()
