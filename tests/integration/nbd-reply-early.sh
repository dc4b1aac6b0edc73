#!/bin/bash
# The order of the NBD server's replies: those of requests that finished in
# one loop iteration leave in one send (the connection's flusher, after the
# iteration's last request), a request alone in flight sends its own (a
# synchronous flush, a QD1 stretch), and both take the queue under the send
# lock; against real clients keeping many requests in flight, over unix and
# TCP (the name is from round 26's VBD_NBD_REPLY_EARLY knob, removed in
# round 27: no batch position to send from paid):
# - qemu-io (QEMU's NBD client: structured replies, up to 16 requests in
#   flight): rounds of asynchronous 4K writes, every third with FUA, write
#   zeroes, 128K writes, synchronous flushes in the middle of the stream,
#   and reads of the previous round's blocks (-P: each must return what
#   its round wrote) interleaved with the next round's writes; a reply
#   lost leaves qemu-io waiting (the timeout fails the test), a duplicated
#   or foreign cookie makes QEMU's client drop the connection (the
#   commands fail), a reply sent before its write was done shows as a
#   later read of old data. Then qemu-img compare against a shadow copy
#   that the same commands made on a local file.
# - fio's nbd engine (libnbd) at QD32, a flush every 7 writes, then every
#   block read back and checked (crc32c, verify_fatal).
# No timing is asserted: the batching only steers the server's paths. A
# request that sent the queue without taking it (the flusher then sends
# those replies again) fails it: qemu-io never finishes.
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-img fio python3
img=$T/disk.img
size=$((32 << 20))
half=$((16 << 20)) fio_size=$((4 << 20))
python3 - "$T/cmds" <<'PY'
import random, sys
rnd = random.Random(26)
K = 4096
out = []
blocks = list(range(0, 2048))  # the first 8 MiB in 4K blocks
rnd.shuffle(blocks)
rounds = [blocks[i * 192:(i + 1) * 192] for i in range(4)]
pat = {}
prev = []
for r, cur in enumerate(rounds):
    reads = list(prev)
    rnd.shuffle(reads)
    for i, b in enumerate(cur):
        p = (r * 41 + i) % 250 + 1
        if i % 11 == 5:
            out.append(f"aio_write -q -z {b * K} {K}")
            pat[b] = 0
        else:
            out.append(f"aio_write -q {'-f ' if i % 3 == 0 else ''}-P {p} {b * K} {K}")
            pat[b] = p
        if reads:
            rb = reads.pop()
            out.append(f"aio_read -q -P {pat[rb]} {rb * K} {K}")
        if i % 64 == 63:
            out.append("flush")
    for rb in reads:
        out.append(f"aio_read -q -P {pat[rb]} {rb * K} {K}")
    out.append("aio_flush")  # this round's replies all in before its blocks are read
    prev = cur
for rb in prev:
    out.append(f"aio_read -q -P {pat[rb]} {rb * K} {K}")
# 128K extents in 8-16 MiB: every other one written, reads of both kinds
# (data and never-written holes) mixed with more small writes and reads
big = 128 * 1024
ext = list(range(64))
for e in ext:
    if e % 2 == 0:
        out.append(f"aio_write -q {'-f ' if e % 4 == 0 else ''}-P {e % 200 + 7} {8 * 1024 * 1024 + e * big} {big}")
out.append("flush")
out.append("aio_flush")
rnd.shuffle(ext)
for j, e in enumerate(ext):
    out.append(f"aio_read -q -P {e % 200 + 7 if e % 2 == 0 else 0} {8 * 1024 * 1024 + e * big} {big}")
    b = rounds[0][j]
    out.append(f"aio_read -q -P {pat[b]} {b * K} {K}")
out.append("aio_flush")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
# qemu-io reports a failed request or a pattern mismatch on its output, not
# in its exit status
io_ok() { # LOG: qemu-io's output holds no failure
    ! grep -Eiq 'fail|error|mismatch|abort' "$1"
}
must qemu-img create -q -f raw "$T/shadow" $size
timeout 600 qemu-io -f raw "$T/shadow" <"$T/cmds" >"$T/shadow.log" 2>&1 || fail "qemu-io on the local shadow copy failed"
io_ok "$T/shadow.log" || fail "qemu-io on the local shadow copy reported: $(grep -Ei 'fail|error|mismatch|abort' "$T/shadow.log" | head -3)"
port=$(free_port 4) || fail "no free TCP port"
i=0
for via in unix tcp; do
    step "$via: qemu-io's mixed stream"
    rm -f "$img"
    must qemu-img create -q -f raw "$img" $size
    nbd_via $via $((port + i))
    nbd_raw_daemon "$img" "$addr"
    timeout 600 qemu-io -f raw "$U" <"$T/cmds" >"$T/io.log" 2>&1 ||
        fail_with_daemon_log "$via: qemu-io did not finish (rc $?; a reply lost?)"
    io_ok "$T/io.log" || fail_with_daemon_log "$via: qemu-io reported: $(grep -Ei 'fail|error|mismatch|abort' "$T/io.log" | head -3)"
    must qemu-img compare -q -f raw -F raw "$U" "$T/shadow"
    step "$via: fio (libnbd) QD32 writes with flushes, read back and checked"
    timeout 600 fio --name=v --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --iodepth=32 --offset=$half \
        --size=$fio_size --fsync=7 --verify=crc32c --verify_state_save=0 --do_verify=1 --verify_fatal=1 --output="$T/fio.log" >/dev/null 2>&1 ||
        fail_with_daemon_log "$via: fio's check failed (rc $?): $(grep -Ei 'verify|err' "$T/fio.log" | head -3)"
    grep -Eq 'err= *0' "$T/fio.log" || fail "$via: fio reported errors: $(grep -E 'err=' "$T/fio.log" | head -2)"
    kill $dpid
    wait $dpid 2>/dev/null
    i=$((i + 1))
done
echo PASS
