#!/bin/bash
# Hostile QMP clients cannot stop vbd-daemon serving or grow it:
#  - malformed, truncated and non-UTF-8 JSON, deep nesting, huge numbers,
#    a request over the 1 MiB bound: each gets an error reply (GenericError,
#    as qemu-storage-daemon) and the same connection goes on serving; a
#    client that keeps sending past the bound is disconnected;
#  - a client that sends requests and never reads the replies: the daemon
#    stops reading it (back-pressure) and a second monitor keeps serving;
#    the daemon's RSS stays bounded while the client pushes 64 MiB;
#  - 1000 hostile connections (garbage, half requests, deep nesting,
#    unread greetings, abrupt closes): fd count flat and RSS flat (/proc).
. "$(dirname "$0")/lib.sh"
need python3
cd "$T"
start_watched_daemon --chardev socket,id=m1,path=$T/m1.sock,server=on,wait=off --monitor m1
wait_sock "$T/m1.sock" "$dpid" "$T/daemon.log"

PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$T" "$dpid" "${HOSTILE_CONNS:-1000}" <<'PY' || { cat "$T/daemon.log"; fail "see above"; }
import json, os, socket, sys, threading, time
from qmp import QMP
from procwatch import check, Daemon
T, daemon, nconns = sys.argv[1], Daemon(sys.argv[2]), int(sys.argv[3])
def parse_error(r, what):
    check(r.get("error", {}).get("class") == "GenericError" and "id" not in r, f"{what}: {r}")
    return r["error"]["desc"]
def alive(m, what):
    r = m.cmd("query-version", id=what)
    check("return" in r and r.get("id") == what, f"no service after {what}: {r}")

m = QMP(T + "/m0.sock", negotiate=True)
cases = [
    (b'{"execute": "query-version" x}\n', "malformed"),
    (b'{"execute": "query-version",}\n', "trailing comma"),
    (b'{"execute": \xff}\n', "stray byte"),
    (b'{"execute": "query-\xc3\x28version"}\n', "invalid UTF-8"),
    (b'{"execute": "query-version", "id": "\xed\xa0\x80"}\n', "UTF-8 surrogate"),
    (b'{"execute": "query-version", "id": "\xc0\x80"}\n', "overlong UTF-8"),
    (b'{"execute": "query-version", "id": "\xf4\x90\x80\x80"}\n', "UTF-8 above U+10FFFF"),
    (b'{"execute": "query-version", "execute": "quit"}\n', "duplicate key"),
    (b'{"execute": "query-version", "arguments": {"a": {"b": [{"c": 1, "c": 2}]}}}\n', "nested duplicate key"),
    (b'\x00\n', "NUL"),
    # a \u0000 escape would end the string where vbd reads it as a C string
    # ("x.img\u0000y" naming x.img): refused, in a value, in a key, at the end
    (b'{"execute": "query-version", "id": "a\\u0000b"}\n', "NUL escape in a value"),
    (b'{"execute": "query-version", "arguments": {"x\\u0000": 1}}\n', "NUL escape in a key"),
    (b'{"execute": "query-version", "id": "\\u0000"}\n', "NUL escape alone"),
    (b'[' * 65 + b']' * 65 + b'\n', "65 levels"),
    (b'{"a":' * 100000 + b'\n', "100000 levels"),
    (b'}}}]]]\n', "closing brackets"),
]
for data, what in cases:
    m.send_raw(data)
    parse_error(m.recv(), what)
    alive(m, what)
# the escape split over two reads; U+0001 and an escaped backslash before "u0000" are fine
m.send_raw(b'{"execute": "query-version", "id": "a\\u00')
time.sleep(0.05)  # (only to make two reads likely; the result does not depend on it)
m.send_raw(b'00"}\n')
parse_error(m.recv(), "NUL escape split over two reads")
for ok_id in ("a\\u0001b", "\\\\u0000"):
    m.send_raw(b'{"execute": "query-version", "id": "' + ok_id.encode() + b'"}\n')
    r = m.recv()
    check("return" in r and r.get("id") == json.loads('"' + ok_id + '"'), f"id {ok_id}: {r}")
# 64 levels are fine (and a JSON array is no request)
m.send_raw(b'[' * 64 + b']' * 64 + b'\n')
check(m.recv()["error"]["desc"] == "QMP input must be a JSON object", "64 levels refused")
# huge numbers parse (as QEMU, the value is not an error)
for num in ["1e999", "-1e999", "123456789012345678901234567890", "0." + "1" * 5000]:
    m.send_raw('{"execute": "query-version", "id": %s}\n' % num)
    r = m.recv()
    check("return" in r and "id" in r, f"number {num[:20]}: {r}")
# a request just under the bound is served; one over it is refused, the connection lives on
pad = 1024 * 1024 - 200
m.send_raw(json.dumps({"execute": "query-version", "id": "x" * pad}) + "\n")
r = m.recv()
check("return" in r and len(r["id"]) == pad, "a request under 1 MiB refused")
m.send_raw(json.dumps({"execute": "query-version", "id": "x" * (2 * 1024 * 1024)})[:-1] + "\n")
check("larger than" in parse_error(m.recv(), "2 MiB request"), "2 MiB request: wrong error")
alive(m, "2 MiB request")
# truncated: the rest of a request never comes; the client goes away, the next one is served
m.send_raw(b'{"execute": "query-version", "id": "trunc')
m.close()
m = QMP(T + "/m0.sock", negotiate=True)
alive(m, "truncated request")
m.close()  # one client per chardev: the next one is served once this one left
# a client that goes on past the bound after the error is disconnected
big = socket.socket(socket.AF_UNIX)
big.connect(T + "/m0.sock")
big.settimeout(60)
try:
    big.sendall(b'{"execute": "query-version", "id": "' + b"y" * (4 * 1024 * 1024))
except OSError:
    pass  # reset by the daemon: what we want
data = b""
try:
    while True:
        x = big.recv(65536)
        if not x:
            break
        data += x
except OSError:
    pass
check(b"larger than" in data, f"4 MiB without newline: no error reply before the disconnect: {data[-200:]!r}")
big.close()

# a client that never reads: the daemon stops reading it; monitor m1 keeps serving
lazy = QMP(T + "/m0.sock", negotiate=True)
lazy.sock.setblocking(False)
req = (json.dumps({"execute": "query-qmp-schema"}) + "\n").encode()
base = daemon.rss_kib()
sent, chunk = 0, req * 1000
stalled = 0
other = QMP(T + "/m1.sock", negotiate=True)
while sent < 64 * 1024 * 1024:
    try:
        sent += lazy.sock.send(chunk)
        stalled = 0
    except BlockingIOError:
        # the daemon stopped reading us: prove the other monitor is served meanwhile
        alive(other, "a client that does not read")
        stalled += 1
        if stalled >= 200:
            break
check(stalled >= 200, f"the daemon read {sent} bytes of requests from a client that reads no replies")
grown = daemon.rss_kib() - base
print(f"non-reading client: the daemon took {sent} bytes of requests, RSS grew {grown} KiB")
check(grown < 48 * 1024, f"RSS grew {grown} KiB for a client that does not read")
lazy.close()
alive(other, "the non-reading client left")
other.close()

# 1000 hostile connections, one after another
def hostile(i):
    s = socket.socket(socket.AF_UNIX)
    s.connect(T + "/m0.sock")
    kind = i % 6
    try:
        if kind == 0:
            pass  # connect, close without reading the greeting
        elif kind == 1:
            s.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "query-version", "id": "half')
        elif kind == 2:
            s.sendall(b'[' * 1000 + b'\n' + b'\xff\xfe' * 100 + b'\n')
        elif kind == 3:
            s.sendall(os.urandom(4096))
        elif kind == 4:
            s.sendall(b'{"execute": "qmp_capabilities"}\n' + b'{"execute": "query-qmp-schema"}\n' * 50)
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')  # RST
            s.sendall(b'{"execute": "query-commands"}')
    except OSError:
        pass
    s.close()
def probe():
    # one client at a time: once this one is served, every earlier one is gone
    deadline = time.monotonic() + 60
    while True:
        try:
            c = QMP(T + "/m0.sock", negotiate=True)
            break
        except BlockingIOError:  # the listen backlog is full of hostile clients: wait for a place
            check(time.monotonic() < deadline, "no place in the listen backlog for 60 s")
            time.sleep(0.01)
    alive(c, "hostile connections")
    return c
for i in range(100):
    hostile(i)
c = probe()
fds0, rss0 = daemon.nfds(), daemon.rss_kib()
c.close()
for i in range(nconns):
    hostile(i)
c = probe()
fds1, rss1 = daemon.nfds(), daemon.rss_kib()
c.close()
print(f"{nconns} hostile connections: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
check(fds1 == fds0, f"fd count {fds0} -> {fds1} after {nconns} connections")
check(rss1 - rss0 < 16 * 1024, f"RSS grew {rss1 - rss0} KiB over {nconns} connections")
PY
stop_daemon
echo PASS
