#!/bin/bash
# Clients that pace their requests the ways that move the NBD server's
# busy-poll window (conn_recv: it grows when a request comes soon after the
# spin ran out, shrinks to nothing when requests come further apart than
# its bound, the loop's poll-max-ns): back to back, short pauses, long pauses, back to back
# again, and request headers and write payloads split by a pause (the wait
# armed with part of a request read). Two connections at once, each with
# its own pace, over unix and TCP. What a user sees: every read returns
# what was written last, every reply comes with its request's cookie, and
# qemu-img compare finds the export equal to the client's shadow copy. No
# timing is asserted: the pauses only steer the server's paths.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
img=$T/disk.img
size=$((4 << 20))
must qemu-img create -q -f raw "$img" $size
cp "$img" "$T/shadow"
port=$(free_port 4) || fail "no free TCP port"
for via in unix tcp; do
    nbd_via $via $port
    nbd_raw_daemon "$img" "$addr"
    seed=${SEED:-$RANDOM}
    step "$via, two paced connections (seed $seed)"
    python3 - "$where" $size "$T/shadow" $seed <<'PY' || fail "$via: a reply was wrong (seed $seed)"
import random, struct, sys, threading, time
import nbdproto as p

where, size, shadow_path, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
half = size // 2
errors = []

def pause(kind, rnd):
    """the pauses that move the window: none, within its bound, beyond it"""
    if kind == 'short':
        time.sleep(rnd.choice((0.00003, 0.00008, 0.0002)))
    elif kind == 'long':
        time.sleep(rnd.choice((0.002, 0.005)))

def client(idx):
    rnd = random.Random(seed * 2 + idx)
    base = idx * half  # each connection owns half the image: its shadow is exact
    with open(shadow_path, 'rb') as f:
        f.seek(base)
        mine = bytearray(f.read(half))
    s = p.connect(where, timeout=30, nodelay=True)
    try:
        p.handshake(s, go=True)
        # phases: (requests, pause between them, split headers/payloads)
        phases = [(300, 'none', False), (60, 'short', False), (20, 'long', False),
                  (300, 'none', False), (40, 'short', True), (10, 'long', True), (200, 'none', False)]
        if idx:
            phases.reverse()
        cookie = idx << 32
        for n, kind, split in phases:
            for _ in range(n):
                cookie += 1
                ln = rnd.choice((512, 4096, 4096, 12288, 65536, 100000))
                off = rnd.randrange(0, half - ln + 1)
                write = rnd.random() < 0.4
                if write:
                    data = bytes([rnd.randrange(256)]) * (ln // 2) + rnd.randbytes(ln - ln // 2)
                    msg = p.request(p.CMD_WRITE, cookie, base + off, ln) + data
                else:
                    msg = p.request(p.CMD_READ, cookie, base + off, ln)
                if split:
                    cut = rnd.choice((1, 10, 27, 28 + min(ln, 100))) if write else rnd.choice((1, 10, 27))
                    s.sendall(msg[:cut])
                    pause(kind, rnd)
                    s.sendall(msg[cut:])
                else:
                    s.sendall(msg)
                magic, err, got = struct.unpack('>IIQ', p.recvn(s, 16))
                if magic != p.SIMPLE_REPLY_MAGIC or err or got != cookie:
                    raise AssertionError(f'reply {magic:#x} err {err} cookie {got:#x}, wanted {cookie:#x}')
                if write:
                    mine[off:off + ln] = data
                else:
                    back = p.recvn(s, ln)
                    if back != mine[off:off + ln]:
                        raise AssertionError(f'read {off}+{ln} ({kind}) differs from what was written')
                if not split:
                    pause(kind, rnd)
        s.sendall(p.request(p.CMD_DISC, cookie + 1, 0, 0))
    except Exception as e:
        errors.append(f'connection {idx}: {e!r}')
    finally:
        s.close()
    results[idx] = mine

results = [None, None]
threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit('\n'.join(errors))
with open(shadow_path, 'r+b') as f:
    f.write(results[0])
    f.write(results[1])
PY
    must qemu-img compare -q -f raw -F raw "$U" "$T/shadow"
    kill $dpid
    wait $dpid || fail "daemon exit: $(cat "$T/daemon.log")"
    port=$((port + 1))
done
echo PASS
