#!/bin/bash
# 1000 chardev-add/chardev-remove (and chardev-change) rounds over every
# backend vbd-daemon makes at run time leave no file descriptor and no
# memory behind (the fds counted before and after; ASan's leak check at
# exit), and every socket path a server chardev made is gone again.
. "$(dirname "$0")/lib.sh"
need python3
S=$T/qmp.sock
mkfifo "$T/p.in" "$T/p.out"
start_daemon --chardev socket,id=m,path=$S,server=on,wait=off --monitor chardev=m
qmp_py "$S" <<PY || fail "chardev cycles (above)"
import socket, threading
T = "$T"
pid = $dpid
# the peer of the client chardevs: takes each connection and closes it
peer = socket.socket(socket.AF_UNIX)
peer.bind(f"{T}/peer.sock")
peer.listen(64)
def serve():
    while True:
        try:
            c, _ = peer.accept()
        except OSError:
            return
        c.close()
threading.Thread(target=serve, daemon=True).start()
def fds():
    return sorted(os.listdir(f"/proc/{pid}/fd"))
backends = [
    {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": f"{T}/c.sock"}}, "wait": False}},
    {"type": "socket", "data": {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}}},
    {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": f"{T}/peer.sock"}}, "server": False}},
    {"type": "file", "data": {"out": f"{T}/f.out", "in": f"{T}/f.out"}},
    {"type": "pipe", "data": {"device": f"{T}/p"}},
    {"type": "null", "data": {}},
    {"type": "ringbuf", "data": {"size": 4096}},
    {"type": "memory", "data": {}},
]
before = fds()
for i in range(1000):
    b = backends[i % len(backends)]
    ok("chardev-add", id="c", backend=b)
    if b["type"] in ("ringbuf", "memory"):
        ok("ringbuf-write", device="c", data="x" * 100)
        ok("ringbuf-read", device="c", size=50)
    ok("chardev-change", id="c", backend=backends[(i + 3) % len(backends)])
    r = m.cmd("chardev-add", {"id": "c", "backend": b})
    assert "error" in r, r
    ok("chardev-remove", id="c")
    # a failing add or change leaves nothing open either
    r = m.cmd("chardev-add", {"id": "bad", "backend": {"type": "file", "data": {"out": f"{T}/f.out", "in": f"{T}/none"}}})
    assert "error" in r, r
after = fds()
if before != after:
    print(f"FAIL: fds before {before}, after {after}", file=sys.stderr)
    sys.exit(1)
assert not os.path.exists(f"{T}/c.sock"), "c.sock left behind"
print(f"1000 rounds, {len(after)} fds before and after")
PY
stop_daemon
echo PASS
