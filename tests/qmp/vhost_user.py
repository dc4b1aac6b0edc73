#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A vhost-user front end written by hand, message by message, for the
tests that talk to vbd-daemon's vhost-user-blk export without a VMM
(vhost-user-resize.sh, qmp-block-resize.sh, guest-vhost-user.sh)."""
import socket
import struct

# front-end requests (the vhost-user spec's numbers)
GET_FEATURES = 1
SET_VRING_NUM = 8
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_BACKEND_REQ_FD = 21
GET_CONFIG = 24
# flags: version 1, NEED_REPLY
V1 = 1
NEED_REPLY = 8
# back-end request on the back-end channel
CONFIG_CHANGE_MSG = 2
PROTOCOL_F_BACKEND_REQ = 5


def msg(req, payload=b'', flags=V1):
    return struct.pack('<III', req, flags, len(payload)) + payload


def recv(s):
    """One message: (request, flags, payload)."""
    h = s.recv(12, socket.MSG_WAITALL)
    assert len(h) == 12, 'connection closed'
    req, flags, size = struct.unpack('<III', h)
    return req, flags, s.recv(size, socket.MSG_WAITALL) if size else b''


def u64(payload):
    return struct.unpack('<Q', payload)[0]


def capacity(a):
    """The virtio-blk config's capacity (512-byte sectors), by GET_CONFIG."""
    a.sendall(msg(GET_CONFIG, struct.pack('<III', 0, 60, 0) + bytes(60)))
    _, _, p = recv(a)
    return struct.unpack_from('<Q', p, 12)[0]


def front_end(path):
    """Connects to the export at path and sets up a back-end channel
    (BACKEND_REQ must be offered): (the front end's socket, ours of the
    channel)."""
    a = socket.socket(socket.AF_UNIX)
    a.connect(path)
    a.settimeout(20)
    a.sendall(msg(GET_FEATURES))
    recv(a)
    a.sendall(msg(GET_PROTOCOL_FEATURES))
    pf = u64(recv(a)[2])
    assert pf >> PROTOCOL_F_BACKEND_REQ & 1, 'BACKEND_REQ (protocol feature 5) not offered'
    a.sendall(msg(SET_PROTOCOL_FEATURES, struct.pack('<Q', pf)))  # REPLY_ACK included
    ours, theirs = socket.socketpair()
    ours.settimeout(20)
    a.sendmsg([msg(SET_BACKEND_REQ_FD, flags=V1 | NEED_REPLY)],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', theirs.fileno()))])
    assert u64(recv(a)[2]) == 0, 'SET_BACKEND_REQ_FD refused'
    theirs.close()
    return a, ours


def config_change(channel):
    """The next message on the back-end channel is CONFIG_CHANGE_MSG
    without a reply wanted."""
    req, flags, size = struct.unpack('<III', channel.recv(12, socket.MSG_WAITALL))
    assert req == CONFIG_CHANGE_MSG and size == 0 and flags & 3 == 1, ('not a CONFIG_CHANGE_MSG', req, flags, size)


# ---- a minimal virtio-blk driver over vhost-user (one ring) -------------
SET_FEATURES = 2
SET_OWNER = 3
SET_MEM_TABLE = 5
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ENABLE = 18
SET_CONFIG = 25
GET_MAX_MEM_SLOTS = 36
SET_LOG_BASE = 6
SET_LOG_FD = 7
F_VERSION_1 = 32
F_LOG_ALL = 26
PROTOCOL_F_LOG_SHMFD = 1
VRING_F_LOG = 1
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_PROTOCOL_FEATURES = 30
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_CONFIG = 9
T_IN, T_OUT, T_GET_ID = 0, 1, 8


class Driver:
    """Plays a VMM and a guest driver at once against a vhost-user-blk back
    end (ours or qemu-storage-daemon's): features, one ring of QSIZE
    entries in a memfd of MEM bytes, and requests one at a time (GET_ID,
    reads: request) or many in flight (submit, completions)."""
    QVA = 0x7f0000000000  # where the "VMM" pretends to map guest memory

    def __init__(self, path, timeout=60, protocol=0, qsize=16, mem=1 << 20):
        """protocol: protocol feature bits to take besides REPLY_ACK and
        CONFIG, when offered. qsize: the ring's entries (a power of two),
        mem: the guest memory's bytes."""
        import mmap
        import os
        self.QSIZE, self.MEM = qsize, mem
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.timeout = timeout
        self.features = self.get_u64(GET_FEATURES)
        self.protocol_features = self.get_u64(GET_PROTOCOL_FEATURES)
        self.send(SET_PROTOCOL_FEATURES, struct.pack('<Q', self.protocol_features &
                                                     (1 << PROTOCOL_F_REPLY_ACK | 1 << PROTOCOL_F_CONFIG | protocol)))
        self.send(SET_OWNER)
        # what a guest driver takes, less the ring features this one does not do
        self.acked = self.features & ~(1 << F_INDIRECT_DESC | 1 << F_EVENT_IDX | 1 << F_LOG_ALL)
        self.send(SET_FEATURES, struct.pack('<Q', self.acked))
        self.memfd = os.memfd_create('guest-ram', 0)
        os.ftruncate(self.memfd, self.MEM)
        self.mem = mmap.mmap(self.memfd, self.MEM)
        self.send(SET_MEM_TABLE, struct.pack('<II4Q', 1, 0, 0, self.MEM, self.QVA, 0), fds=[self.memfd])
        # descriptors at 0, then the available ring, the used ring (each on
        # a KiB boundary) and the buffers (on a page): with 16 entries at
        # 0, 1024, 2048 and 4096
        def up(n, a):
            return (n + a - 1) // a * a
        self.desc = 0
        self.avail = up(16 * qsize, 1024)
        self.used = self.avail + up(6 + 2 * qsize, 1024)
        self.buf = up(self.used + 6 + 8 * qsize, 4096)
        # the available index, published by one 16-bit store: struct.pack_into
        # zeroes its bytes before it writes them, and a back end that reads
        # the index in between sees it jump back (vbd stops the ring then)
        import ctypes
        self.avail_idx_word = ctypes.c_uint16.from_buffer(self.mem, self.avail + 2)
        self.send(SET_VRING_NUM, struct.pack('<II', 0, self.QSIZE))
        self.send(SET_VRING_BASE, struct.pack('<II', 0, 0))
        self.set_vring_addr()
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.kick_fd = os.eventfd(0)
        self.send(SET_VRING_CALL, struct.pack('<Q', 0), fds=[self.call_fd])
        self.send(SET_VRING_KICK, struct.pack('<Q', 0), fds=[self.kick_fd])
        self.send(SET_VRING_ENABLE, struct.pack('<II', 0, 1))
        self.avail_idx = self.used_idx = 0

    def set_vring_addr(self, log_used=None):
        """SET_VRING_ADDR of ring 0; log_used: the guest address its used
        ring's writes are logged at (VHOST_VRING_F_LOG), or None."""
        return self.send(SET_VRING_ADDR, struct.pack('<II4Q', 0, 0 if log_used is None else VRING_F_LOG,
                                                     self.QVA + self.desc, self.QVA + self.used, self.QVA + self.avail,
                                                     log_used or 0))

    def start_logging(self, log_fd, size, log_call_fd=None):
        """What QEMU does when a migration starts: SET_LOG_BASE (the log, a
        memfd of size bytes; the back end replies), SET_FEATURES with
        LOG_ALL, used-ring logging at the used ring's guest address.
        Returns SET_FEATURES's ack."""
        if log_call_fd is not None:
            self.send(SET_LOG_FD, fds=[log_call_fd])
        self.s.sendmsg([msg(SET_LOG_BASE, struct.pack('<QQ', size, 0))],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', log_fd))])
        r, flags, _ = recv(self.s)
        assert r == SET_LOG_BASE and flags & 4, ('SET_LOG_BASE not answered', r, flags)
        ack = self.send(SET_FEATURES, struct.pack('<Q', self.acked | 1 << F_LOG_ALL))
        self.set_vring_addr(log_used=self.used)
        return ack

    def stop_logging(self):
        self.send(SET_FEATURES, struct.pack('<Q', self.acked))
        self.set_vring_addr()

    def send(self, req, payload=b'', fds=(), ack=True):
        """Sends a message; with REPLY_ACK negotiated waits for its ack and
        returns it (0: done), else returns None."""
        ack = ack and self.protocol_features >> PROTOCOL_F_REPLY_ACK & 1
        m = msg(req, payload, V1 | (NEED_REPLY if ack else 0))
        if fds:
            self.s.sendmsg([m], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('%di' % len(fds), *fds))])
        else:
            self.s.sendall(m)
        if ack:
            r, _, p = recv(self.s)
            assert r == req, ('reply to', r, 'for', req)
            return u64(p)
        return None

    def get_u64(self, req):
        self.s.sendall(msg(req))
        r, _, p = recv(self.s)
        assert r == req
        return u64(p)

    def get_config(self, offset, size, sent=None):
        """GET_CONFIG: the reply's payload after its 12-byte header, or None
        when the back end answered with no config (an error) or hung up."""
        sent = size if sent is None else sent
        self.s.sendall(msg(GET_CONFIG, struct.pack('<III', offset, size, 0) + bytes(sent)))
        try:
            r, _, p = recv(self.s)
        except (AssertionError, OSError):
            return None
        return p[12:] if len(p) >= 12 else None

    def request(self, type_, sector, data_len, at=None, out=None):
        """One request: header, data_len bytes for the device to write, the
        status byte. Returns (status, used length, the data bytes). at: the
        guest addresses of (header, data, status) instead of the defaults.
        out: the bytes the device reads instead (a write's data, discard or
        write-zeroes segments); data_len is then their length."""
        if out is not None:
            data_len = len(out)
        hdr, data, st = at or (self.buf, self.buf + 64, self.buf + 64 + max(data_len, 1) + 64)
        self.mem[hdr:hdr + 16] = struct.pack('<IIQ', type_, 0, sector)
        self.mem[data:data + data_len] = b'\xa5' * data_len if out is None else out
        self.mem[st] = 0xff
        dflag = 0 if type_ == T_OUT or out is not None else 2  # 2: WRITE (device-writable)
        self.submit([(hdr, 16, 0)] + ([(data, data_len, dflag)] if data_len else []) + [(st, 1, 2)])
        [(_, used_len)] = self.completions()
        return self.mem[st], used_len, bytes(self.mem[data:data + data_len])

    def submit(self, chain, head=0):
        """Puts a descriptor chain, [(guest address, length, flags)], in
        the descriptors from head on, offers it and kicks; returns at once
        (its completion: completions(), under the id head)."""
        import os
        for i, (a, n, f) in enumerate(chain):
            nxt = 1 if i < len(chain) - 1 else 0
            struct.pack_into('<QIHH', self.mem, self.desc + 16 * (head + i), a, n, f | nxt, head + i + 1 if nxt else 0)
        struct.pack_into('<H', self.mem, self.avail + 4 + 2 * (self.avail_idx % self.QSIZE), head)
        self.avail_idx = (self.avail_idx + 1) & 0xffff
        self.avail_idx_word.value = self.avail_idx
        os.eventfd_write(self.kick_fd, 1)

    def completions(self):
        """Waits for the back end to complete something (up to the
        timeout), then takes every element off the used ring: [(id, used
        length)]."""
        import os
        import select
        while struct.unpack_from('<H', self.mem, self.used + 2)[0] == self.used_idx:
            if not select.select([self.call_fd], [], [], self.timeout)[0]:
                raise TimeoutError('no completion in %d s' % self.timeout)
            try:
                os.eventfd_read(self.call_fd)
            except BlockingIOError:
                pass
        done = []
        end = struct.unpack_from('<H', self.mem, self.used + 2)[0]
        while self.used_idx != end:
            done.append(struct.unpack_from('<II', self.mem, self.used + 4 + 8 * (self.used_idx % self.QSIZE)))
            self.used_idx = (self.used_idx + 1) & 0xffff
        return done

    def close(self):
        import os
        self.s.close()
        del self.avail_idx_word  # a view of the mapping: it would keep it from closing
        self.mem.close()
        for fd in (self.memfd, self.call_fd, self.kick_fd):
            os.close(fd)
