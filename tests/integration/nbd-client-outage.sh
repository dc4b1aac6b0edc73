#!/bin/bash
# The nbd client's requests while its server is away (reconnect-delay set),
# as QEMU 7.2's nbd driver behaves:
#  - a server that takes the connection and never answers (stopped, hung:
#    the kernel still accepts on its socket) ends the reconnect at
#    reconnect-delay: the request fails with EIO, nothing hangs (qemu-io
#    runs the same commands and must print the same);
# (the outage is scripted by a small server of ours: no timing involved)
#  - once reconnect-delay has run out, each request makes one attempt and
#    fails if no server is there (QEMU's CONNECTING_NOWAIT), instead of
#    waiting the whole delay again; when the server is back, the next
#    request works (its one attempt finds it).
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-nbd qemu-img python3
cd "$T"
qemu-img create -q -f raw disk.raw 8M
must qemu-io -f raw -c "write -P 0x42 0 64k" disk.raw >/dev/null
SRV=$T/srv.sock
OPTS="driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$SRV,file.export=exp"

srv_start() {
    rm -f "$SRV"
    qemu-nbd -f raw -k "$SRV" -x exp --persistent disk.raw 2>/dev/null &
    spid=$!
    on_exit "kill -9 $spid 2>/dev/null"
    wait_sock "$SRV" "$spid"
}
# The outage: lib.sh's nbd_outage_server on $SRV: the client's open
# answered and closed at once, so that the client's first request finds
# the connection lost; the connections after it (counted: "conn" lines in
# srv.log) it holds without a word (hold) or closes at once (close).
conns() { grep -c '^conn' srv.log; }
nfailed() { grep -c "read failed: Input/output error" "$1"; }

for tool in qemu-io vbd-io; do
    step "$tool: the server gone, one that takes the connection and never answers in its place: EIO at reconnect-delay, no hang"
    bin=qemu-io
    [ $tool = vbd-io ] && bin=$VBD_IO
    nbd_outage_server hold "$SRV"
    "$bin" --image-opts -c "read 0 4k" -c "read 0 4k" "$OPTS,file.reconnect-delay=3" >$tool.out 2>&1 &
    iopid=$!
    timeout 90 tail --pid=$iopid -f /dev/null || fail "$tool still waits 90 s after a silent server took its reconnect: $(cat $tool.out)"
    wait $iopid
    # (the server notes a connection when it accepts it: maybe after the tool ended)
    wait_log srv.log conn || fail "$tool never reached the silent server: $(cat $tool.out)"
    [ "$(nfailed $tool.out)" = 2 ] || fail "$tool: both reads should fail with EIO: $(cat $tool.out)"
    kill $lpid; wait $lpid 2>/dev/null
done
grep -v "^vbd-io: \(warning\|info\)" vbd-io.out | diff -u qemu-io.out - || fail "vbd-io's output differs from qemu-io's"

step "after reconnect-delay ran out: one attempt per request until the server is back, then requests work"
# each read sent when the test gets there (lib.sh's io_start): the last one
# once the server is back
nbd_outage_server close "$SRV"
io_start out.txt --image-opts "$OPTS,file.reconnect-delay=1"
io_cmd "read 0 4k"
io_wait "read failed: Input/output error"
# The reconnect has given up. The requests after it meet a server of their
# own ("down": every connection closed at once), so that each connection
# it notes is one of theirs: counted on the first server, the attempts of
# the reconnect it had not accepted and noted yet (a starved server lags
# its client) were counted as theirs. Each request makes its attempt
# itself (no timer makes any once the delay ran out), so the bound below
# holds however slow the host; a lagging server only notes fewer. The old
# client waited the whole delay again for each, attempting every 200 ms.
kill $lpid; wait $lpid 2>/dev/null
nbd_outage_server down "$SRV"
io_cmd "read 0 4k" "read 0 4k" "read 0 4k"
io_wait "read failed: Input/output error" 4
# what the user sees: each of the three fails (EIO, as the first), and
# they did not each reconnect for reconnect-delay: at most one connection each
n=$(conns)
echo "    $n connection attempts for the 3 requests"
[ "$n" -le 3 ] || fail "$n connection attempts for 3 requests after reconnect-delay ran out"
kill $lpid; wait $lpid 2>/dev/null
srv_start
io_cmd "read -P 0x42 0 4k"
io_end
wait $iopid # 1: the reads of the outage failed
[ "$(nfailed out.txt)" = 4 ] || fail "not 4 failed reads: $(cat out.txt)"
[ "$(grep -c 'read 4096/4096 bytes at offset 0' out.txt)" = 1 ] || fail "no last read: $(cat out.txt)"
! grep -q "Pattern verification failed" out.txt || fail "the last read: $(cat out.txt)"
echo PASS
