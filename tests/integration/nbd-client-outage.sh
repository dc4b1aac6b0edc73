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
#    waiting the whole delay again; when the server is back, requests work.
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
    wait_sock "$SRV"
}
# outage MODE: a server on $SRV that answers the first connection's
# handshake (the client's open) and closes it at once, so that the
# client's first request finds the connection lost; the connections after
# it (counted: lines in lst.count) it holds without a word (silent) or
# closes at once (close). pid in lpid.
outage() {
    rm -f lst.count "$SRV"
    touch lst.count
    python3 - "$1" "$SRV" "$T/lst.count" <<'PY' &
import socket, sys
import nbdproto
mode, path, count = sys.argv[1:]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(64)
c, _ = s.accept()
nbdproto.serve_handshake(c, 8 << 20, nbdproto.TF_HAS_FLAGS | nbdproto.TF_SEND_FLUSH)
c.close()
held = []
while True:
    c, _ = s.accept()
    with open(count, "a") as f:
        f.write("x\n")
    if mode == "silent":
        held.append(c)
    else:
        c.close()
PY
    lpid=$!
    on_exit "kill $lpid 2>/dev/null"
    wait_sock "$SRV"
}
conns() { wc -l <lst.count; }
nfailed() { grep -c "read failed: Input/output error" "$1"; }

for tool in qemu-io vbd-io; do
    step "$tool: the server gone, one that takes the connection and never answers in its place: EIO at reconnect-delay, no hang"
    bin=qemu-io
    [ $tool = vbd-io ] && bin=$VBD_IO
    outage silent
    "$bin" --image-opts -c "read 0 4k" -c "read 0 4k" "$OPTS,file.reconnect-delay=3" >$tool.out 2>&1 &
    iopid=$!
    timeout 90 tail --pid=$iopid -f /dev/null || fail "$tool still waits 90 s after a silent server took its reconnect: $(cat $tool.out)"
    wait $iopid
    [ "$(conns)" -ge 1 ] || fail "$tool never reached the silent server: $(cat $tool.out)"
    [ "$(nfailed $tool.out)" = 2 ] || fail "$tool: both reads should fail with EIO: $(cat $tool.out)"
    kill $lpid; wait $lpid 2>/dev/null
done
grep -v "^vbd-io: \(warning\|info\)" vbd-io.out | diff -u qemu-io.out - || fail "vbd-io's output differs from qemu-io's"

step "after reconnect-delay ran out: one attempt per request until the server is back, then requests work"
outage close
"$VBD_IO" --image-opts -c "read 0 4k" -c "read 0 4k" -c "read 0 4k" -c "read 0 4k" -c "sleep 8000" \
    -c "read -P 0x42 0 4k" "$OPTS,file.reconnect-delay=1" >out.txt 2>&1 &
iopid=$!
for _ in $(seq 600); do [ "$(nfailed out.txt)" -ge 1 ] && break; sleep 0.05; done
[ "$(nfailed out.txt)" -ge 1 ] || fail "the first read of the outage did not fail: $(cat out.txt)"
c1=$(conns)
for _ in $(seq 600); do [ "$(nfailed out.txt)" -ge 4 ] && break; sleep 0.05; done
[ "$(nfailed out.txt)" = 4 ] || fail "the reads of the outage did not all fail: $(cat out.txt)"
c2=$(conns)
# the three reads after the first failure: at most one connection each
[ $((c2 - c1)) -le 3 ] || fail "$((c2 - c1)) connection attempts for 3 requests after reconnect-delay ran out"
kill $lpid; wait $lpid 2>/dev/null
srv_start
wait $iopid # 1: the reads of the outage failed
[ "$(grep -c '^read 4096/4096 bytes at offset 0' out.txt)" = 1 ] || fail "no last read: $(cat out.txt)"
echo PASS
