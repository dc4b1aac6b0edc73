#!/bin/bash
# quorum rewrite-corrupted=on must never put older data back over an
# acknowledged write. Three raw children, vote-threshold 2; the writes of
# children 1 and 2 go through throttle nodes (iops-write 1: slow children),
# child 0 is fast. A round over NBD: a write W is sent; once child 0's
# file holds W's data (W still in flight on the slow children), a read of
# the same range is sent. Its vote sees W's data on child 0 and the old
# data on children 1 and 2: the old data wins (the read may return either,
# W being in flight), and child 0 is in the minority. The old code then
# "corrected" child 0 with the old data, after W had landed there: once W
# completed, child 0 held older data than the write the client was told
# was done (QEMU 7.2's quorum does the same: it does not serialise its
# rewrites with the writes in flight). A round counts only when the read's
# reply came before W's (the race really happened); 3 such rounds, then
# every child must hold every write (read back from the files), and a
# second race with write-zeroes instead of W.
. "$(dirname "$0")/lib.sh"
need python3
cd "$T"
for i in 0 1 2; do truncate -s 1M c$i.raw; done
S=$T/nbd.sock
start_daemon --object throttle-group,id=g1,x-iops-write=1 --object throttle-group,id=g2,x-iops-write=1 \
    --blockdev driver=file,node-name=f0,filename=c0.raw \
    --blockdev driver=file,node-name=f1,filename=c1.raw --blockdev driver=file,node-name=f2,filename=c2.raw \
    --blockdev driver=throttle,node-name=t1,throttle-group=g1,file=f1 \
    --blockdev driver=throttle,node-name=t2,throttle-group=g2,file=f2 \
    --blockdev '{"driver":"quorum","node-name":"q","children":["f0","t1","t2"],"vote-threshold":2,"rewrite-corrupted":true}' \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=q,name=q,writable=on
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
python3 - "$S" <<'PY' || fail "a quorum read's rewrite put old data over an acknowledged write (above)"
import struct, sys, time
import nbdproto
from nbdproto import CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, SIMPLE_REPLY_MAGIC, request

sk = nbdproto.connect("unix:" + sys.argv[1], timeout=120)
size, _ = nbdproto.handshake(sk, "q", go=True)
LEN = 4096

def reply(expect_read):
    magic, err, cookie = struct.unpack(">IIQ", nbdproto.recvn(sk, 16))
    assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
    if err:
        sys.exit(f"request {cookie} failed: error {err}")
    if cookie in expect_read:
        nbdproto.recvn(sk, LEN)
    return cookie

def child(i, off):
    with open(f"c{i}.raw", "rb") as f:
        f.seek(off)
        return f.read(LEN)

def race(rnd, off, data, zero):
    """W (a write of data, or write-zeroes) at off; the read once child 0 has it.
    True when the read's reply came first."""
    # a write elsewhere first: it takes the slow children's one request of
    # this second, so that W waits there
    burner = (size - LEN * (rnd + 1)) & ~(LEN - 1)
    sk.sendall(request(CMD_WRITE, 1, burner, LEN) + bytes([0x5a]) * LEN)
    if zero:
        sk.sendall(request(CMD_WRITE_ZEROES, 2, off, LEN))
    else:
        sk.sendall(request(CMD_WRITE, 2, off, LEN) + data)
    deadline = time.monotonic() + 60
    while child(0, off) != data:  # on the fast child, still in flight on the slow ones
        if time.monotonic() > deadline:
            sys.exit("child 0 never got the write")
        time.sleep(0.005)
    sk.sendall(request(CMD_READ, 3, off, LEN))
    order = [reply({3}) for _ in range(3)]
    sk.sendall(request(CMD_FLUSH, 4, 0, 0))
    reply(set())
    bad = [i for i in range(3) if child(i, off) != data]
    if bad:
        sys.exit(f"round {rnd} ({'write-zeroes' if zero else 'write'} at {off}): children {bad} do not hold "
                 f"the acknowledged write (replies in order {order})")
    return order.index(3) < order.index(2)

raced = {False: 0, True: 0}
rnd = 0
for zero in (False, True):
    while raced[zero] < (1 if zero else 3):
        if rnd == 40:
            sys.exit(f"the read never raced the write: {raced}")
        off = rnd * 65536
        if zero:  # something to zero first, on every child
            sk.sendall(request(CMD_WRITE, 5, off, LEN) + bytes([0xee]) * LEN)
            reply(set())
        raced[zero] += race(rnd, off, bytes(LEN) if zero else bytes([rnd + 1]) * LEN, zero)
        rnd += 1
print(f"{rnd} rounds, {raced[False]} writes and {raced[True]} write-zeroes raced by a read: every child holds them")
PY
stop_daemon
echo PASS
