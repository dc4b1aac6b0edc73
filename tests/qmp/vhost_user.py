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
