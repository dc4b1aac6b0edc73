#!/bin/bash
# vbd-daemon at its open-file limit (RLIMIT_NOFILE lowered under it to 12
# more than it holds with one NBD client and one vhost-user front end): NBD
# clients connect until the daemon cannot accept another; a front end
# connects to a second vhost-user export. The daemon says so once per
# listener (not every 100 ms while the clients hold it there); the
# connected front end's message with an fd is refused with the reason (not
# "more than 8 file descriptors"); the connections it has go on serving (a
# write read back on each), the QMP monitor answers. When the clients go,
# the waiting NBD client and front end are accepted (and the daemon says
# so), its fds come back to where they were, it stops cleanly (ASan).
. "$(dirname "$0")/lib.sh"
need python3
img=$T/disk.img
must truncate -s 16M "$img"
S=$T/nbd.sock
V=$T/vhost.sock
M=$T/m0.sock
nbd_raw_daemon "$img" "$S" --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on \
    --export type=vhost-user-blk,id=v0,node-name=disk0,addr.type=unix,addr.path="$V",writable=on \
    --export type=vhost-user-blk,id=v1,node-name=disk0,addr.type=unix,addr.path="$V.1",writable=on \
    --chardev socket,id=m0,path="$M",server=on,wait=off --monitor m0
wait_sock "$V" "$dpid" "$T/daemon.log"
wait_sock "$V.1" "$dpid" "$T/daemon.log"
wait_sock "$M" "$dpid" "$T/daemon.log"

PYTHONPATH=$VBD_ROOT/tests/qmp:$VBD_ROOT/tests/integration python3 - "$S" "$V" "$M" "$T/daemon.log" "$dpid" <<'PY' || {
import os, resource, select, socket, struct, sys, time
from nbdproto import connect, handshake, request, recvn, CMD_READ, CMD_WRITE, SIMPLE_REPLY_MAGIC
from procwatch import check, Daemon
from qmp import QMP
S, V, M, LOG, pid = sys.argv[1:6]
d = Daemon(pid)
DEADLINE = 60

def log():
    with open(LOG, errors="replace") as f:
        return f.read()

def wait_for(cond, what):
    end = time.monotonic() + DEADLINE
    while not cond():
        check(time.monotonic() < end, f"waited {DEADLINE} s for {what}")
        time.sleep(0.01)

def roundtrip(s, i):
    """a 4 KiB write at block i, read back"""
    data = bytes([i % 251 + 1]) * 4096
    s.sendall(request(CMD_WRITE, 2 * i, 4096 * i, 4096) + data)
    magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
    check(magic == SIMPLE_REPLY_MAGIC and err == 0 and cookie == 2 * i, f"write {i}: error {err}")
    s.sendall(request(CMD_READ, 2 * i + 1, 4096 * i, 4096))
    magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
    check(err == 0 and recvn(s, 4096) == data, f"read {i}: error {err} or other data")

m = QMP(M, negotiate=True)
first = connect(S, timeout=DEADLINE)
handshake(first, go=True)
roundtrip(first, 0)
base0 = d.nfds()
connected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a vhost-user front end, accepted below the limit
connected.connect(V)
wait_for(lambda: "export 'v0': front end connected" in log(), "the first front end to be accepted")
wait_for(lambda: d.nfds() == base0 + 1, "the front end's connection among the daemon's fds")
base = d.nfds()
limit = base + 12
_, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, hard))
print(f"daemon holds {base} fds; limit {limit}")

NBD_LINE = "nbd: cannot accept a connection: Too many open files"
served, waiting = [], None
while waiting is None:
    check(len(served) < 40, f"{len(served)} connections and the daemon still accepts at a limit of {limit} fds")
    s = connect(S, timeout=DEADLINE)
    # either the daemon greets it or it cannot accept it: wait for one of the two
    end = time.monotonic() + DEADLINE
    while True:
        if select.select([s], [], [], 0.01)[0]:
            handshake(s, go=True)
            served.append(s)
            break
        if NBD_LINE in log():
            waiting = s
            break
        check(time.monotonic() < end, "no greeting and no refusal in the log")
print(f"{len(served)} more NBD clients served, the next one waits")
check(len(served) >= 1, "no NBD client was served below the limit")
fe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
fe.connect(V + ".1")  # into the listen backlog: the daemon cannot accept it
wait_for(lambda: "export 'v1': cannot accept a connection: Too many open files" in log(),
         "the vhost-user export to say it cannot accept")
# SET_VRING_CALL (13), version 1, ring 0, with an fd the daemon has no room for
r, w = os.pipe()
socket.send_fds(connected, [struct.pack("<IIIQ", 13, 1, 8, 0)], [w])
os.close(r)
os.close(w)
wait_for(lambda: "SET_VRING_CALL: its file descriptors could not be received (too many open files?)" in log(),
         "the refused message's reason")
check("SET_VRING_CALL came with more than" not in log(), "an fd the daemon could not take was called too many")

# at the limit: every connection serves, the monitor answers
for i, s in enumerate([first] + served):
    roundtrip(s, i + 1)
r = m.cmd("query-block-exports")
check(len(r.get("return", [])) == 3, f"query-block-exports at the fd limit: {r}")
# a second held long enough for the old accept loop to say it ten times (100 ms a try)
time.sleep(1)
for s in served:
    s.close()
handshake(waiting, go=True)  # accepted now that fds are free
roundtrip(waiting, 40)
wait_for(lambda: "nbd: accepting connections again" in log(), "nbd to say it accepts again")
wait_for(lambda: "export 'v1': front end connected" in log(), "the waiting front end to be accepted")
wait_for(lambda: "export 'v1': accepting connections again" in log(), "v1 to say it accepts again")
fe.close()
waiting.close()
wait_for(lambda: "export 'v1': front end disconnected" in log(), "the waiting front end to be gone")
wait_for(lambda: d.nfds() == base, f"the daemon's fds to come back to {base} (now {d.nfds()})")
connected.close()
wait_for(lambda: "export 'v0': front end disconnected" in log(), "the first front end to be gone")
wait_for(lambda: d.nfds() == base0, f"the daemon's fds to come back to {base0} (now {d.nfds()})")
text = log()
for what in ("nbd", "export 'v1'"):
    n = text.count(f"{what}: cannot accept a connection")
    check(n == 1, f"{what} said it cannot accept {n} times (once per episode expected)")
roundtrip(first, 41)
first.close()
print("OK")
PY
    tail -20 "$T/daemon.log"
    fail "see above"
}
stop_daemon
grep "cannot accept\|accepting connections again" "$T/daemon.log"
echo OK
