#!/bin/bash
# An NBD connection's busy-poll follows the poll-max-ns of the loop that
# serves it (QEMU's iothread knob, changed live with qom-set): with
# poll-max-ns=0 on the export's iothread the connection no longer spins
# while its client thinks, so the thread sleeps before each request of a
# QD1 client (voluntary context switches: about one per request, where a
# spinning thread catches nearly every request awake) and an idle open
# connection costs no CPU. Counted from /proc (the iothread's
# voluntary_ctxt_switches and CPU time), over unix and TCP; the bounds are
# generous and no latency is asserted. Each step also checks the data.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img
img=$T/disk.img
must qemu-img create -q -f raw "$img" 4M
must qemu-io -f raw -c 'write -q -P 0x5a 0 4M' "$img"
S=$T/qmp.sock
port=$(free_port 1) || fail "no free TCP port"
for via in unix tcp; do
    nbd_via $via $port
    step "$via: poll-max-ns=0 on the export's iothread"
    nbd_raw_daemon "$img" "$addr" --object iothread,id=io0 --chardev socket,id=m0,path="$S",server=on,wait=off \
        --monitor m0 --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on,iothread=io0
    wait_sock "$S"
    python3 - "$where" "$S" "$dpid" <<'PY' || fail "$via: the connection's spin did not follow poll-max-ns=0"
import os, struct, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
import nbdproto as p

where, qmp, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = Session(qmp, "vbd")
tid = s.run("query-iothreads")[0]["thread-id"]


def counts():
    """the iothread's voluntary context switches and CPU time (s)"""
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        vol = next(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt_switches"))
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return vol, (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def qd1(c, n):
    """n 4 KiB reads one at a time, each checked"""
    for i in range(n):
        c.sendall(p.request(p.CMD_READ, i, (i * 4096) % (4 << 20), 4096))
        magic, err, cookie = struct.unpack(">IIQ", p.recvn(c, 16))
        if magic != p.SIMPLE_REPLY_MAGIC or err or cookie != i:
            fail(f"read {i}: reply {magic:#x} error {err} cookie {cookie}")
        if p.recvn(c, 4096) != b"\x5a" * 4096:
            fail(f"read {i}: wrong data")


s.run("qom-set", path="/objects/io0", property="poll-max-ns", value=0)
if s.run("qom-get", path="/objects/io0", property="poll-max-ns") != 0:
    fail("qom-get poll-max-ns is not 0 after qom-set")
c = p.connect(where, timeout=30, nodelay=True)
p.handshake(c, go=True)
qd1(c, 100)  # the window adapts from its start value; the bound applies from the next wait
n = 2000
v0, _ = counts()
qd1(c, n)
v1, _ = counts()
per = (v1 - v0) / n
print(f"poll-max-ns=0: {v1 - v0} voluntary context switches for {n} QD1 requests ({per:.2f} each)", file=sys.stderr)
# a thread that still spun would catch nearly every request of this client
# awake (0.0-0.1 each on the old code); one that sleeps switches about once
if per < 0.5:
    fail(f"the serving thread slept before {per:.2f} of the requests only: it still spins")
# idle: an open connection with nothing to do costs its thread no CPU
_, t0 = counts()
time.sleep(2)
_, t1 = counts()
print(f"idle 2 s: {t1 - t0:.2f} s of the iothread's CPU", file=sys.stderr)
if t1 - t0 > 0.5:
    fail(f"an idle connection cost {t1 - t0:.2f} s of CPU in 2 s")
# back to the default: served as before (no timing asserted)
s.run("qom-set", path="/objects/io0", property="poll-max-ns", value=131072)
qd1(c, 500)
c.sendall(p.request(p.CMD_DISC, 0, 0, 0))
c.close()
PY
    kill -TERM $dpid; wait $dpid || fail "$via: vbd-daemon exited with $? after SIGTERM"
    ! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
done
echo ok
