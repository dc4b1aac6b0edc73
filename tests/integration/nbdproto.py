# The NBD wire protocol as the integration tests' own clients and servers
# speak it (fixed newstyle only; see the NBD protocol document, proto.md):
# constants, both sides of the handshake, requests and replies. Tests that
# send broken or hostile bytes on purpose build those bytes themselves and
# use this only for the well-formed parts. Imported from tests/integration
# (scripts there find it next to them; heredoc scripts get it on PYTHONPATH
# from lib.sh).
import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2               # handshake flags (both ways)
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 1, 2, 3, 5, 6, 7, 8
OPT_SET_META_CONTEXT = 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = 0x80000001
INFO_EXPORT = 0
# transmission flags
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_BLOCK_STATUS = 0, 1, 2, 5
REPLY_TYPE_ERROR = 0x8001


def connect(addr, timeout=None, nodelay=False):
    """addr: unix:PATH, tcp:PORT (127.0.0.1) or tcp:HOST:PORT, or a bare unix
    socket path. timeout: seconds a receive may wait (None: forever).
    nodelay: TCP_NODELAY (off by default: small sends may coalesce, as the
    tests that leave it off were written for)."""
    if addr.startswith('tcp:'):
        host, _, port = addr[4:].rpartition(':')
        s = socket.create_connection((host or '127.0.0.1', int(port)))
        if nodelay:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr[5:] if addr.startswith('unix:') else addr)
    s.settimeout(timeout)
    return s


def recvn(s, n, piece=None):
    """n bytes exactly; EOFError if the peer closes first. piece: take at most
    that many bytes per recv (a slow client). With a timeout the socket is
    non-blocking underneath, so MSG_WAITALL could return less: loop."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = s.recv_into(view[got:], min(n - got, piece or n))
        if not k:
            raise EOFError(f'connection closed after {got} of {n} bytes')
        got += k
    return bytes(buf)


def request(typ, cookie, off, ln, flags=0):
    """a request header (the payload of a write follows it)"""
    return struct.pack('>IHHQQI', REQUEST_MAGIC, flags, typ, cookie, off, ln)


def simple_reply(cookie, err=0):
    return struct.pack('>IIQ', SIMPLE_REPLY_MAGIC, err, cookie)


def chunk(flags, typ, cookie, payload):
    """a structured reply chunk"""
    return struct.pack('>IHHQI', STRUCTURED_REPLY_MAGIC, flags, typ, cookie, len(payload)) + payload


# client side

def option(s, opt, data=b''):
    """sends option opt and reads its replies up to the ACK: a list of
    (reply type, payload); RuntimeError if the server refuses it"""
    s.sendall(struct.pack('>QII', IHAVEOPT, opt, len(data)) + data)
    replies = []
    while True:
        magic, o, typ, ln = struct.unpack('>QIII', recvn(s, 20))
        assert magic == OPT_REPLY_MAGIC and o == opt, (hex(magic), o)
        payload = recvn(s, ln)
        if typ == REP_ACK:
            return replies
        if typ & 0x80000000:
            raise RuntimeError(f'option {opt} refused: {typ:#x} {payload!r}')
        replies.append((typ, payload))


def handshake(s, export='disk', structured=False, go=False):
    """the client's fixed newstyle handshake (no zeroes), with structured
    replies if asked, into export with NBD_OPT_GO (go) or NBD_OPT_EXPORT_NAME;
    returns (export size, transmission flags)"""
    magic, ihaveopt, _ = struct.unpack('>QQH', recvn(s, 18))
    assert magic == NBDMAGIC and ihaveopt == IHAVEOPT, 'not a newstyle NBD greeting'
    s.sendall(struct.pack('>I', FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    if structured:
        option(s, OPT_STRUCTURED_REPLY)
    name = export.encode()
    if not go:
        s.sendall(struct.pack('>QII', IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        return struct.unpack('>QH', recvn(s, 10))
    info = option(s, OPT_GO, struct.pack('>I', len(name)) + name + struct.pack('>H', 0))
    return next(struct.unpack('>QH', p[2:12]) for t, p in info
                if t == REP_INFO and struct.unpack('>H', p[:2])[0] == INFO_EXPORT)


# server side

def opt_reply(s, opt, typ, data=b''):
    s.sendall(struct.pack('>QIII', OPT_REPLY_MAGIC, opt, typ, len(data)) + data)


def serve_handshake(s, size, tflags, meta_id=None):
    """the server's fixed newstyle handshake up to NBD_OPT_GO (export names
    are not checked; other options are refused as unsupported); returns
    whether the client asked for structured replies, EOFError if it aborts.
    meta_id: NBD_OPT_SET_META_CONTEXT is answered with base:allocation under
    that context id (whatever the client asked for)"""
    s.sendall(struct.pack('>QQH', NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    recvn(s, 4)
    structured = False
    while True:
        magic, opt, ln = struct.unpack('>QII', recvn(s, 16))
        recvn(s, ln)
        if opt == OPT_STRUCTURED_REPLY:
            structured = True
            opt_reply(s, opt, REP_ACK)
        elif opt == OPT_GO:
            opt_reply(s, opt, REP_INFO, struct.pack('>HQH', INFO_EXPORT, size, tflags))
            opt_reply(s, opt, REP_ACK)
            return structured
        elif opt == OPT_SET_META_CONTEXT and meta_id is not None:
            opt_reply(s, opt, REP_META_CONTEXT, struct.pack('>I', meta_id) + b'base:allocation')
            opt_reply(s, opt, REP_ACK)
        elif opt == OPT_ABORT:
            raise EOFError
        else:
            opt_reply(s, opt, REP_ERR_UNSUP)
