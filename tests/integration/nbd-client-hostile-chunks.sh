#!/bin/bash
# vbd's NBD client against a hostile server (nbd-hostile-server.py) whose
# structured replies break the spec's rules on chunks, as QEMU's client
# checks them: read chunks that overlap (so that their bytes add up to the
# read's length with a part never sent: the read succeeded, that part as
# the caller's buffer held it), a hole of 0 bytes, a simple reply to a read
# once structured replies are negotiated, a chunk type no spec names, NONE
# without DONE, and block status answered with an extent of 0 bytes (taken
# as data), with no extent (data too), for another context or twice. Each:
# a failing, bounded exit with one line naming the export and the reason.
# A server that broke the protocol is not connected to again (QEMU's
# client quits too): with reconnect-delay the read was sent to it again
# and again and never ended (a data chunk longer than the read, too). qemu-io/qemu-img against the same server,
# for the record (QEMU 7.2 takes the overlapping chunks too).
. "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io
SRV=$VBD_ROOT/tests/integration/nbd-hostile-server.py
cd "$T"
must qemu-img create -q -f raw img.raw 8M
must qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x33 4M 1M" img.raw >/dev/null
pids=
on_exit 'for p in $pids; do kill $p 2>/dev/null; done'
n=0
# serve MODE: a hostile server on its own socket over its own copy of img.raw; sets U
serve() {
    n=$((n + 1))
    cp img.raw "srv$n.raw"
    python3 "$SRV" "$T/s$n.sock" "srv$n.raw" "$1" 2>"$T/srv$n.log" &
    pids="$pids $!"
    for _ in $(seq 1200); do [ -S "$T/s$n.sock" ] && break; sleep 0.05; done
    [ -S "$T/s$n.sock" ] || fail "the hostile server ($1) did not start: $(cat "$T/srv$n.log")"
    U="nbd+unix:///x?socket=$T/s$n.sock"
}
# expect_fail MODE WANT OUT RC: a failing exit in bounded time, no crash, WANT in OUT
expect_fail() {
    [ "$4" != 124 ] || fail "$1: the client hung: $3"
    [ "$4" -lt 128 ] || fail "$1: the client crashed ($4): $3"
    [ "$4" != 0 ] || fail "$1: it succeeded: $3"
    case "$3" in *"$2"*) ;; *) fail "$1: no '$2' in: $3" ;; esac
    echo "$1: $(printf '%s\n' "$3" | grep -m1 -F "$2")"
}
# broken MODE WANT: reads of the server fail with WANT; qemu-io's answer after
broken() {
    serve "$1"
    local out rc
    out=$(timeout 60 "$VBD_IO" -f raw -c "read -P 0x11 0 64k" -c "read -P 0x33 4096k 64k" "$U" 2>&1); rc=$?
    expect_fail "$1" "${2//@U/$U}" "$out" $rc
    echo "$1, qemu-io: $(timeout 60 qemu-io -f raw -c "read -P 0x11 0 64k" "$U" 2>&1 | grep -m1 .)"
}

step "read chunks that break the protocol"
broken overlap "NBD connection to '@U' lost: data chunk of 32768 bytes at 16384 overlaps an earlier chunk of the read of 65536 at 0"
broken overlap-hole "NBD connection to '@U' lost: data chunk of 16384 bytes at 32768 overlaps an earlier chunk of the read of 65536 at 0"
broken hole-zero "NBD connection to '@U' lost: hole chunk of 0 bytes at 0"
broken simple-read "NBD connection to '@U' lost: simple reply to a read request when structured reply chunk was expected"
broken chunk-type "NBD connection to '@U' lost: reply chunk of unknown type 7 for a read request"

step "a write answered with NONE without DONE: failed, as by qemu-io"
serve none-flags
out=$(timeout 60 "$VBD_IO" -f raw -c "write -P 0x77 0 4k" "$U" 2>&1); rc=$?
expect_fail none-flags "NBD connection to '$U' lost: NONE chunk without the DONE flag" "$out" $rc
case "$out" in *"write failed"*) ;; *) fail "none-flags: the write did not fail: $out" ;; esac
timeout 60 qemu-io -f raw -c "write -P 0x77 0 4k" "$U" >qio.out 2>&1
grep -q "write failed" qio.out || fail "none-flags: qemu-io's write did not fail: $(cat qio.out)"

# (2500 reconnects in 15 s before, the read never done)
step "reconnect-delay: no reconnect to a server that broke the protocol"
for mode in long-chunk overlap; do
    serve $mode
    out=$(timeout 120 "$VBD_IO" --image-opts -c "read 0 64k" -c "read 64k 64k" \
        "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$T/s$n.sock,file.reconnect-delay=30" 2>&1); rc=$?
    expect_fail "$mode, reconnect-delay=30" "(not reconnecting to a server that broke the protocol)" "$out" $rc
    [ "$(printf '%s\n' "$out" | grep -c "read failed")" = 2 ] || fail "$mode, reconnect-delay=30: not two failed reads: $out"
    case "$out" in *"re-established"*) fail "$mode, reconnect-delay=30: reconnected: $out" ;; esac
done

# base:allocation is negotiated in these modes; an extent of 0 bytes, none,
# one for another context or a second one: the map fails, as qemu-img's
step "block status answers that break the protocol"
bstatus() { # MODE WANT
    serve "$1"
    local out rc
    out=$(timeout 60 "$VBD_IMG" map --output=json -f raw "$U" 2>&1); rc=$?
    expect_fail "$1" "${2//@U/$U}" "$out" $rc
    timeout 60 qemu-img map --output=json -f raw "$U" >qim.out 2>&1 && fail "$1: qemu-img map took it: $(cat qim.out)"
    echo "$1, qemu-img: $(grep -m1 . qim.out)"
}
bstatus bs-zero "NBD connection to '@U' lost: block status extent of 0 bytes at 0"
bstatus bs-none "NBD server '@U' replied to block status at 0 with no extent"
bstatus bs-ctx "NBD connection to '@U' lost: block status chunk for context 2, not the negotiated 1"
bstatus bs-twice "NBD connection to '@U' lost: several block status chunks for one request"
# no extent fails that request alone: the connection stays, reads go on
serve bs-none
out=$(timeout 60 "$VBD_IO" -f raw -c "map" -c "read -P 0x11 0 64k" "$U" 2>&1)
case "$out" in *"read 65536/65536 bytes at offset 0"*) ;; *) fail "bs-none: the read after the map: $out" ;; esac
case "$out" in *"lost"*) fail "bs-none: the connection was dropped: $out" ;; esac

# A guard more than a reproducer: seeded mutations of chunked reads (one
# chunk repeated, dropped, moved or retyped, a hole of 0 bytes or over
# data). A convert either fails with the reason or is the image exactly.
step "mutated chunked reads: a failure or the image exactly, never stale bytes"
head -c 300000 /dev/urandom | dd of=img.raw bs=1 seek=3000001 conv=notrunc status=none
fails=0
for seed in $(seq 1 6); do
    serve "mutate:$seed"
    rm -f out.raw
    out=$(timeout 60 "$VBD_IMG" convert -f raw -O raw "$U" out.raw 2>&1); rc=$?
    [ $rc != 124 ] || fail "mutate:$seed: the client hung: $out"
    [ $rc -lt 128 ] || fail "mutate:$seed: the client crashed ($rc): $out"
    if [ $rc = 0 ]; then
        cmp -s out.raw img.raw || fail "mutate:$seed: the convert succeeded with bytes the server did not send"
    else
        fails=$((fails + 1))
    fi
done
echo "mutate: $fails of 6 converts failed with a reason, the others read the image exactly"
echo OK
