#!/bin/bash
# Command flags on every NBD command, against qemu-nbd 7.2 on the same
# image: FUA must be accepted on every command (the NBD spec: with
# NBD_FLAG_SEND_FUA advertised the server MUST accept it, ignoring it where
# nothing is written), DF is advertised and accepted only with structured
# replies (the spec: the flag MUST be clear otherwise; qemu-nbd refuses DF
# then with EINVAL), and every other flag on every command gets the same
# answer from both servers, with and without structured replies. Each
# reply's error (0 or errno) is compared; the data both servers wrote must
# then be equal.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-nbd python3
must qemu-img create -q -f raw "$T/v.img" 16M
must qemu-img create -q -f raw "$T/q.img" 16M
nbd_raw_daemon "$T/v.img" "$T/v.sock"
qemu-nbd -f raw -t -x disk -k "$T/q.sock" "$T/q.img" 2>"$T/qemu-nbd.log" &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
wait_sock "$T/q.sock" "$qpid" "$T/qemu-nbd.log"

probe() { # SOCKET: one line per (reply kind, command, flag): the error
    python3 - "$1" <<'PY'
import struct, sys
from nbdproto import *
FLAGS = {'none': 0, 'FUA': 1, 'NO_HOLE': 2, 'DF': 4, 'REQ_ONE': 8, 'FAST_ZERO': 16}
CMDS = {'read': 0, 'write': 1, 'flush': 3, 'trim': 4, 'cache': 5, 'write_zeroes': 6, 'block_status': 7}
def reply(s, cookie, read):
    magic, = struct.unpack('>I', recvn(s, 4))
    if magic == SIMPLE_REPLY_MAGIC:
        err, c = struct.unpack('>IQ', recvn(s, 12))
        assert c == cookie, (c, cookie)
        if read and not err:
            recvn(s, 4096)
        return err
    assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
    err = 0
    while True:
        fl, typ, c, ln = struct.unpack('>HHQI', recvn(s, 16))
        assert c == cookie, (c, cookie)
        p = recvn(s, ln)
        if typ & 0x8000:
            err = struct.unpack('>I', p[:4])[0]
        if fl & REPLY_FLAG_DONE:
            return err
        magic, = struct.unpack('>I', recvn(s, 4))
        assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
for structured in (False, True):
    kind = 'structured' if structured else 'simple'
    s = connect(sys.argv[1])
    size, tflags = handshake(s, structured=structured, go=True)
    print(kind, 'SEND_FUA', bool(tflags & TF_SEND_FUA), 'SEND_DF', bool(tflags & 0x80))
    cookie = 1
    for cn, ct in CMDS.items():
        for fn, fv in FLAGS.items():
            off, ln = (0, 0) if cn == 'flush' else (65536 * cookie, 4096)
            s.sendall(request(ct, cookie, off, ln, fv) + (bytes([cookie]) * 4096 if cn == 'write' else b''))
            print(kind, cn, fn, reply(s, cookie, cn == 'read'))
            cookie += 1
    s.sendall(request(CMD_DISC, cookie, 0, 0))
    s.close()
PY
}

step "every command with every flag, simple and structured replies: the same answers as qemu-nbd"
probe "$T/v.sock" >"$T/vbd.out" || fail "probe of vbd-daemon"
probe "$T/q.sock" >"$T/qemu.out" || fail "probe of qemu-nbd"
diff "$T/qemu.out" "$T/vbd.out" >"$T/diff" || { cat "$T/diff"; fail "vbd's answers differ from qemu-nbd's (< qemu-nbd, > vbd)"; }
grep -q '^simple read FUA 0$' "$T/vbd.out" || fail "FUA on a read refused"
grep -q '^simple SEND_FUA True SEND_DF False$' "$T/vbd.out" || fail "DF advertised without structured replies"
grep -q '^structured SEND_FUA True SEND_DF True$' "$T/vbd.out" || fail "DF not advertised with structured replies"

step "what both servers wrote is equal"
kill $qpid && wait $qpid 2>/dev/null
S=$T/v.sock stop_daemon
must qemu-img compare -q -f raw -F raw "$T/v.img" "$T/q.img"
