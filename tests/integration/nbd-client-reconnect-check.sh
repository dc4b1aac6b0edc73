#!/bin/bash
# What the nbd client accepts on a reconnect (reconnect-delay set), beside
# QEMU 7.2's nbd driver where it decides the same:
#  - an export that comes back read-only under a writable node is refused
#    (QEMU: nbd_handle_updated_info, "NBD export is read-only"): no request
#    reaches that server (vbd took it and the write failed with EPERM); the
#    write and the read after it fail with EIO once reconnect-delay is over
#    (qemu-io 7.2 retries for ever there: see the step);
#  - one that shrank, or lost FUA the node relied on, is refused too (QEMU
#    7.2 takes them: requests past the new end fail, and a FUA write to a
#    server without FUA trips an assertion in QEMU);
#  - a TCP connect to a host that drops the SYNs (a listener whose accept
#    queue is full: the kernel drops the SYNs beyond it, no iptables needed)
#    ends at reconnect-delay, as the handshake's wait does: before, it waited
#    for the kernel's SYN retries (127 s) per request; and the open, with
#    QEMU's open-timeout (vbd refused the option).
# The servers are scripted (no timing): the first connection is the
# client's open, closed at once after the handshake, so that the first
# request finds the connection lost; the ones after it are counted.
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
cd "$T"

# The scripted servers: lib.sh's nbd_outage_server (MODE ro, shrink,
# nofua, silent, silent-open; its log srv.log: a line per connection after
# the open's, one per request).
server_stop() { kill $lpid; wait $lpid 2>/dev/null; }
# run TOOL OPTS CMD...: TOOL (qemu-io or vbd-io) on OPTS with the commands
# (-r if ro is set), bounded: out in TOOL.out (vbd-io's warning and info
# lines in TOOL.log)
run() {
    local tool=$1 opts=$2 bin=qemu-io a args=()
    shift 2
    [ "$tool" = vbd-io ] && bin=$VBD_IO
    for a in "$@"; do args+=(-c "$a"); done
    timeout 60 "$bin" ${ro:+-r} --image-opts "${args[@]}" "$opts" >"$tool.all" 2>&1
    local rc=$?
    [ $rc != 124 ] || fail "$tool still runs 60 s on: $(cat "$tool.all")"
    grep -v "^vbd-io: \(warning\|info\)" "$tool.all" >"$tool.out"
    grep "^vbd-io: \(warning\|info\)" "$tool.all" >"$tool.log"
    echo "exit $rc" >>"$tool.out"
}
SRV=$T/srv.sock
UNIX="driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$SRV,file.export=exp,file.reconnect-delay=1"

step "an export back read-only under a writable node: refused as QEMU refuses it, the write and the read fail with EIO"
# qemu-io 7.2 refuses it too (no request reaches it) but never gives up:
# each refused attempt re-arms its reconnect-delay timer, so it reconnects
# without a pause (~760 connections a second here) and its write never
# ends; here it is stopped after 50 refused connections, and only what
# reached the server is checked
nbd_outage_server ro "$SRV"
timeout 60 qemu-io --image-opts -c "write -P 0x11 0 4k" "$UNIX" >qemu-io.all 2>&1 &
qio=$!
for _ in $(seq 1200); do
    [ "$(grep -c '^conn' srv.log)" -ge 50 ] && break
    kill -0 $qio 2>/dev/null || break
    sleep 0.05
done
kill $qio 2>/dev/null
wait $qio 2>/dev/null
server_stop
grep -q '^conn' srv.log || fail "qemu-io never reconnected: $(cat qemu-io.all)"
! grep -q '^cmd [01]$' srv.log || fail "qemu-io sent a request to the read-only export: $(cat qemu-io.all)"
nbd_outage_server ro "$SRV"
run vbd-io "$UNIX" "write -P 0x11 0 4k" "read 0 4k"
server_stop
grep -q '^conn' srv.log || fail "vbd-io never reconnected: $(cat vbd-io.all)"
! grep -q '^cmd [01]$' srv.log || fail "vbd-io sent a request to the read-only export: $(grep -v '^conn' srv.log | sort | uniq -c; cat vbd-io.all)"
grep -q "^write failed: Input/output error" vbd-io.out || fail "the write did not fail with EIO: $(cat vbd-io.all)"
grep -q "^read failed: Input/output error" vbd-io.out || fail "the read did not fail with EIO: $(cat vbd-io.all)"
grep -q "refused on reconnect: the export is read-only now and the node is writable" vbd-io.log ||
    fail "no line for the refusal: $(cat vbd-io.log)"
[ "$(grep -c "refused on reconnect" vbd-io.log)" = 1 ] || fail "the refusal said more than once: $(cat vbd-io.log)"

step "the same read-only export under a read-only node (-r): taken, the read works"
nbd_outage_server ro "$SRV"
ro=1 run vbd-io "$UNIX" "read 0 4k"
server_stop
grep -q '^read 4096/4096 bytes at offset 0' vbd-io.out || fail "the read-only node's read failed: $(cat vbd-io.all)"

step "an export that shrank, or lost FUA: refused (EIO), the reason said once"
for mode in shrink nofua; do
    nbd_outage_server $mode "$SRV"
    run vbd-io "$UNIX" "read 0 4k" "read 0 4k"
    server_stop
    [ "$(grep -c "read failed: Input/output error" vbd-io.out)" = 2 ] || fail "$mode: both reads should fail: $(cat vbd-io.all)"
    ! grep -q '^cmd [^2]' srv.log || fail "$mode: a request reached the changed export: $(cat srv.log)"
    case $mode in
    shrink) want="the export shrank from 8388608 to 4194304 bytes" ;;
    nofua) want="the server no longer offers FUA writes" ;;
    esac
    grep -q "refused on reconnect: $want" vbd-io.log || fail "$mode: no line for the refusal: $(cat vbd-io.log)"
done

step "a TCP host that drops the SYNs: each read fails at reconnect-delay, as qemu-io's"
for tool in qemu-io vbd-io; do
    port=$(free_port)
    nbd_outage_server silent "tcp:$port"
    run $tool "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=$port,file.export=exp,file.reconnect-delay=1" \
        "read 0 4k" "read 0 4k"
    grep -q '^silent' srv.log || fail "$tool: the server did not go silent: $(cat $tool.all)"
    server_stop
done
diff -u qemu-io.out vbd-io.out || fail "vbd-io's output differs from qemu-io's"
[ "$(grep -c "read failed: Input/output error" vbd-io.out)" = 2 ] || fail "both reads should fail: $(cat vbd-io.all)"

step "open-timeout: an open on a TCP host that drops the SYNs fails at open-timeout (QEMU 7.2's option)"
port=$(free_port)
nbd_outage_server silent-open "tcp:$port"
run vbd-io "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=$port,file.export=exp,file.open-timeout=1" \
    "read 0 4k"
server_stop
grep -q "Failed to connect to '127.0.0.1:$port': Connection timed out" vbd-io.out || fail "no time-out at open: $(cat vbd-io.all)"
grep -q "^exit 1" vbd-io.out || fail "vbd-io did not exit 1: $(cat vbd-io.all)"
echo PASS
