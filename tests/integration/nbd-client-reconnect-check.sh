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

# server MODE ADDR: the scripted server on ADDR (a unix socket path or
# tcp:PORT); its log ("listening", then one line per connection after the
# first, one per request) in srv.log; pid in lpid. MODE: ro (read-only from the second
# connection on), shrink (4 MiB instead of 8), nofua (no FUA any more),
# silent (a TCP listener that accepts no more connections and drops SYNs),
# silent-open (the same from the start: not even the open's connection).
server() {
    rm -f srv.log "$2"
    touch srv.log
    python3 - "$1" "$2" "$T/srv.log" <<'PY' &
import socket, struct, sys, time
import nbdproto as P
mode, addr, log = sys.argv[1:]
def note(line):
    with open(log, 'a') as f:
        f.write(line + '\n')
if addr.startswith('tcp:'):
    port = int(addr[4:])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(0 if mode.startswith('silent') else 16)
else:
    s = socket.socket(socket.AF_UNIX)
    s.bind(addr)
    s.listen(16)
def go_silent():
    # backlog 0 holds one connection not yet accepted; the kernel drops the
    # SYNs of any after it (tcp_abort_on_overflow 0): a host that is silent
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(('127.0.0.1', port))
        fillers.append(f)
    note('silent')
    return fillers
if mode == 'silent-open':
    fillers = go_silent()
note('listening')
if mode == 'silent-open':
    while True:
        time.sleep(3600)
first = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_FUA
c, _ = s.accept()
P.serve_handshake(c, 8 << 20, first)
if mode == 'silent':
    fillers = go_silent()  # before the close: the client's reconnect finds the queue full
    c.close()
    while True:
        time.sleep(3600)
c.close()
size = 4 << 20 if mode == 'shrink' else 8 << 20
flags = first | P.TF_READ_ONLY if mode == 'ro' else first & ~P.TF_SEND_FUA if mode == 'nofua' else first
while True:
    c, _ = s.accept()
    note('conn')
    try:
        structured = P.serve_handshake(c, size, flags)
        while True:
            _, _, typ, cookie, off, ln = struct.unpack('>IHHQQI', P.recvn(c, 28))
            note('cmd %d' % typ)
            if typ == P.CMD_DISC:
                break
            if typ == P.CMD_WRITE:
                P.recvn(c, ln)
                c.sendall(P.simple_reply(cookie, 1))  # EPERM: a read-only server's answer
            elif typ == P.CMD_READ and structured:
                c.sendall(P.chunk(P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, cookie,
                                  struct.pack('>Q', off) + bytes(ln)))
            elif typ == P.CMD_READ:
                c.sendall(P.simple_reply(cookie) + bytes(ln))
            else:
                c.sendall(P.simple_reply(cookie))
    except (EOFError, OSError):
        pass
    c.close()
PY
    lpid=$!
    on_exit "kill $lpid 2>/dev/null"
    # not wait_port: its probe would be the connection taken for the open
    wait_log srv.log listening || fail "the scripted server did not start"
}
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
# ends; here it runs 3 s, and only what reached the server is checked
server ro "$SRV"
timeout 3 qemu-io --image-opts -c "write -P 0x11 0 4k" "$UNIX" >qemu-io.all 2>&1
server_stop
grep -q '^conn' srv.log || fail "qemu-io never reconnected: $(cat qemu-io.all)"
! grep -q '^cmd [01]$' srv.log || fail "qemu-io sent a request to the read-only export: $(cat qemu-io.all)"
server ro "$SRV"
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
server ro "$SRV"
ro=1 run vbd-io "$UNIX" "read 0 4k"
server_stop
grep -q '^read 4096/4096 bytes at offset 0' vbd-io.out || fail "the read-only node's read failed: $(cat vbd-io.all)"

step "an export that shrank, or lost FUA: refused (EIO), the reason said once"
for mode in shrink nofua; do
    server $mode "$SRV"
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
    server silent "tcp:$port"
    run $tool "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=$port,file.export=exp,file.reconnect-delay=1" \
        "read 0 4k" "read 0 4k"
    grep -q '^silent' srv.log || fail "$tool: the server did not go silent: $(cat $tool.all)"
    server_stop
done
diff -u qemu-io.out vbd-io.out || fail "vbd-io's output differs from qemu-io's"
[ "$(grep -c "read failed: Input/output error" vbd-io.out)" = 2 ] || fail "both reads should fail: $(cat vbd-io.all)"

step "open-timeout: an open on a TCP host that drops the SYNs fails at open-timeout (QEMU 7.2's option)"
port=$(free_port)
server silent-open "tcp:$port"
run vbd-io "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=$port,file.export=exp,file.open-timeout=1" \
    "read 0 4k"
server_stop
grep -q "Failed to connect to '127.0.0.1:$port': Connection timed out" vbd-io.out || fail "no time-out at open: $(cat vbd-io.all)"
grep -q "^exit 1" vbd-io.out || fail "vbd-io did not exit 1: $(cat vbd-io.all)"
echo PASS
