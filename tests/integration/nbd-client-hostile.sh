#!/bin/bash
# vbd's NBD client (the nbd protocol driver, with its 64 KiB reply
# read-ahead) against a hostile server (nbd-hostile-server.py): replies split
# at every byte, several merged in one send and reordered, structured reads
# in shuffled data and hole chunks whose headers cross the read-ahead's end.
# The data read must be the server's image exactly, writes must land exactly.
# Then replies that break the protocol (an unknown or repeated cookie, more
# data than asked, a chunk outside the read or wrapping past 2^64, a read
# left half covered, a reply cut off by a stalling server, error chunks of a
# type no spec names or too short for their error): a bounded, failing exit
# with one line naming the export and the reason, no crash; a write
# answered with an error never counts as written.
# Last, many requests in flight through the client to qemu-nbd and nbdkit,
# compared with a shadow copy written by qemu-io.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io
SRV=$VBD_ROOT/tests/integration/nbd-hostile-server.py
cd "$T"
# 8 MiB: data, zero runs and holes (sparse reads become hole chunks)
must qemu-img create -q -f raw img.raw 8M
must qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 1536k 700k" -c "write -P 0x33 4095k 2049k" \
    -c "write -P 0x44 7M 5" img.raw >/dev/null
head -c 300000 /dev/urandom | dd of=img.raw bs=1 seek=3000001 conv=notrunc status=none
pids=
on_exit 'for p in $pids; do kill $p 2>/dev/null; done'
n=0
# serve MODE: a hostile server on its own socket over its own copy of img.raw; sets U, IMG
serve() {
    n=$((n + 1))
    IMG=$T/srv$n.raw
    cp img.raw "$IMG"
    python3 "$SRV" "$T/s$n.sock" "$IMG" "$1" 2>"$T/srv$n.log" &
    pids="$pids $!"
    for _ in $(seq 1200); do [ -S "$T/s$n.sock" ] && break; sleep 0.05; done
    [ -S "$T/s$n.sock" ] || fail "the hostile server ($1) did not start: $(cat "$T/srv$n.log")"
    U="nbd+unix:///x?socket=$T/s$n.sock"
}

for mode in split merge chunks; do
    step "$mode: reads are the image exactly, writes land exactly"
    serve $mode
    must timeout 120 "$VBD_IMG" convert -f raw -O raw "$U" out.raw
    cmp out.raw img.raw || fail "$mode: what vbd-img read differs from the server's image"
    # many reads in flight on the same and overlapping ranges, each checked
    cmds=()
    for i in $(seq 0 15); do cmds+=(-c "aio_read -P 0x11 $((i * 4096)) 64k" -c "aio_read -P 0x33 $((4096 + i * 128))k 1k"); done
    must timeout 120 "$VBD_IO" -f raw "${cmds[@]}" -c aio_flush "$U" >/dev/null
    # writes in flight together, unaligned and adjacent, then the same on a shadow copy
    cp img.raw shadow.raw
    cmds=()
    for i in $(seq 0 23); do cmds+=(-c "aio_write -P $((i + 0x60)) $((i * 70001 + 3)) $((1000 + i * 997))"); done
    must timeout 120 "$VBD_IO" -f raw "${cmds[@]}" -c aio_flush "$U" >/dev/null
    must qemu-io -f raw "${cmds[@]}" -c aio_flush shadow.raw >/dev/null
    cmp "$IMG" shadow.raw || fail "$mode: the server's image differs from the shadow copy after the writes"
    must timeout 120 "$VBD_IMG" compare -q -f raw -F raw "$U" shadow.raw
done

step "chunks: vbd-bench --verify, 32 requests in flight on a 4 MiB region"
serve chunks
must timeout 120 "$VBD_BENCH" --nbd "$U" -d 32 -b 4k --verify --size 4M >bench.out 2>&1 ||
    fail "vbd-bench --verify: $(cat bench.out)"

# broken MODE REASON: a read fails in bounded time, the warning names the export and why
broken() {
    serve "$1"
    local out rc want=${2//@U/$U}
    out=$(timeout 60 "$VBD_IO" -f raw -c "read -P 0x11 0 64k" -c "read -P 0x33 4096k 64k" "$U" 2>&1); rc=$?
    [ $rc != 124 ] || fail "$1: the client hung"
    [ $rc -lt 128 ] || fail "$1: the client crashed ($rc): $out"
    [ $rc != 0 ] || fail "$1: the reads succeeded: $out"
    case "$out" in *"$want"*) ;; *) fail "$1: no '$want' in: $out" ;; esac
    echo "$1: $(printf '%s\n' "$out" | grep -m1 -F "$want")"
}
step "protocol violations: a clear error, no hang, no crash"
broken unknown "NBD connection to '@U' lost: reply for unknown handle"
broken dup "NBD connection to '@U' lost: reply for unknown handle"
broken long-simple "NBD connection to '@U' lost: bad reply magic 0xaaaaaaaa"
broken long-chunk "NBD connection to '@U' lost: data chunk of 65544 bytes at 0 outside the read of 65536 at 0"
broken wrap "NBD connection to '@U' lost: hole chunk of 8192 bytes at 18446744073709547520 outside"
broken stall "NBD connection to '@U' lost: the server closed the connection"
broken partial "NBD server '@U' replied to a read of 65536 bytes at 0 with 32768 bytes"
# the half-covered read fails alone: the stream is in sync, the next read is whole
serve partial
out=$(timeout 60 "$VBD_IO" -f raw -c "read 0 64k" -c "read -P 0x11 64k 64k" "$U" 2>&1)
case "$out" in *"read failed"*"read 65536/65536 bytes at offset 65536"*) ;; *) fail "partial: $out" ;; esac

# Error chunks: every error type fails its request, one no spec names too
# (the spec's MUST; a write answered so completed as written before), and
# the stream stays in sync (the next read is whole). An error chunk too
# short for its error, with error 0 or with a message longer than itself
# breaks the protocol: the connection is given up, with the reason. qemu-io
# fails the same writes.
step "error chunks: a failed write, never a written one"
errchunk() { # MODE WANT
    serve "$1"
    local out rc want=${2//@U/$U}
    out=$(timeout 60 "$VBD_IO" -f raw -c "write -P 0x77 0 4k" -c "read -P 0x11 4k 4k" "$U" 2>&1); rc=$?
    [ $rc != 124 ] || fail "$1: the client hung"
    [ $rc -lt 128 ] || fail "$1: the client crashed ($rc): $out"
    case "$out" in *"write failed: Input/output error"*) ;; *) fail "$1: the write did not fail: $out" ;; esac
    case "$out" in *"$want"*) ;; *) fail "$1: no '$want' in: $out" ;; esac
    out=$(timeout 60 qemu-io -f raw -c "write -P 0x77 0 4k" "$U" 2>&1)
    case "$out" in *"write failed"*) ;; *) fail "$1: qemu-io's write did not fail: $out" ;; esac
    echo "$1: $(printf '%s\n' "$out" | grep -m1 -F "write failed")"
}
errchunk err-unknown "read 4096/4096 bytes at offset 4096"
errchunk err-short "NBD connection to '@U' lost: error chunk (type 0x8001) of 4 bytes, too short for an error"
errchunk err-zero "NBD connection to '@U' lost: error chunk (type 0x8001) with error 0"
errchunk err-msglen "NBD connection to '@U' lost: error chunk (type 0x8001) of 11 bytes with a message of 100"

# An export larger than a signed 64-bit offset holds: vbd-img info printed
# "virtual size: -512 B"; now a failing open with the reason, as qemu-img's
step "an export of 2^64 - 512 bytes: refused at open"
serve size-huge
out=$(timeout 60 "$VBD_IMG" info "$U" 2>&1) && fail "size-huge: vbd-img info took it: $out"
case "$out" in *"NBD server $T/s$n.sock: the export's size (18446744073709551104 bytes) is larger than 2^63 - 1 bytes"*) ;;
*) fail "size-huge: $out" ;; esac
[ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || fail "size-huge: not one line: $out"
timeout 60 qemu-img info "$U" >/dev/null 2>&1 && fail "size-huge: qemu-img info took it"
echo "size-huge: $out"

# A reply that comes while the client still sends the request's payload
# (an early error does so too): the sending coroutine is not woken inside
# its wait for the socket. With the epoll engine as well as io_uring.
step "early: a 4 MiB write acknowledged before its payload is out"
serve early
for engine in VBD_NO_IO_URING=0 VBD_NO_IO_URING=1; do # io_uring (when the kernel has it), epoll
    out=$(env $engine timeout 60 "$VBD_IO" -f raw \
        -c "write -P 0x55 0 4M" -c "read -P 0x55 0 4M" -c "aio_write -P 0x56 4M 2M" -c "aio_write -P 0x57 6M 1M" \
        -c aio_flush -c "read -P 0x56 4M 2M" -c "read -P 0x57 6M 1M" "$U" 2>&1) || fail "early ($engine): $out"
done
echo "early: ok"

# real servers, many requests in flight: same as a shadow copy
real() { # NAME URI FILE
    local name=$1 uri=$2 file=$3
    cp img.raw shadow.raw
    local cmds=() i
    for i in $(seq 0 47); do
        cmds+=(-c "aio_write -P $((i + 0x80)) $((i * 40961 + 511)) $((4096 + i * 700))")
        cmds+=(-c "aio_read -P 0x33 $((4096 * 1024 + (i % 8) * 65536)) 64k")
    done
    must timeout 120 "$VBD_IO" -f raw "${cmds[@]}" -c aio_flush "$uri" >/dev/null
    must qemu-io -f raw "${cmds[@]}" -c aio_flush shadow.raw >/dev/null
    must timeout 120 "$VBD_BENCH" --nbd "$uri" -d 32 -b 4k -w randread -n 4000 >/dev/null
    must qemu-img compare -q -f raw -F raw "$uri" shadow.raw
    must timeout 120 "$VBD_BENCH" --nbd "$uri" -q 2 -d 32 -b 8k --verify --size 2M >bench.out 2>&1 ||
        fail "$name: vbd-bench --verify: $(cat bench.out)"
    echo "$name: shadow copy equal, verify clean"
}
if command -v qemu-nbd >/dev/null; then
    step "qemu-nbd: 96 requests in flight, then vbd-bench --verify; same as the shadow copy"
    cp img.raw q.raw
    qemu-nbd -f raw -k "$T/q.sock" -x q --persistent --shared=4 q.raw 2>qn.log &
    pids="$pids $!"
    for _ in $(seq 1200); do [ -S q.sock ] && break; sleep 0.05; done
    real qemu-nbd "nbd+unix:///q?socket=$T/q.sock" q.raw
else
    echo "qemu-nbd not installed: not tried"
fi
if command -v nbdkit >/dev/null; then
    step "nbdkit file: the same"
    cp img.raw k.raw
    nbdkit -f -U "$T/k.sock" file k.raw 2>nk.log &
    pids="$pids $!"
    for _ in $(seq 1200); do [ -S k.sock ] && break; sleep 0.05; done
    real nbdkit "nbd+unix:///?socket=$T/k.sock" k.raw
else
    echo "nbdkit not installed: not tried"
fi
echo OK
