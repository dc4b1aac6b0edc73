#!/bin/bash
# test-timeout: 600
# Repeated add/del cycles leak neither fds nor memory in vbd-daemon: 1000
# rounds of blockdev-add (a file node and a qcow2 node over it),
# block-export-add (NBD, writable) with an NBD client that connects, writes
# and reads back, block-export-del (BLOCK_EXPORT_DELETED) and blockdev-del,
# plus an iothread object-add/object-del and a dirty bitmap add/remove.
# /proc/PID/fd is the same after the last round as after round 100 (the
# warm-up: caches, pools and the allocator's arenas settle), and RSS grows
# by less than 8 MiB over the last 900 rounds (a leak of one 4 KiB buffer
# per round would show 3.5 MiB; ASan's quarantine is kept small so that
# freed memory does not read as growth). Then a bitmap name one byte too
# long is refused in QEMU's words.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img
cd "$T"
must qemu-img create -q -f qcow2 img.qcow2 16M
start_watched_daemon

PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$T" "$dpid" "${CYCLES:-1000}" <<'PY' || { tail -20 "$T/daemon.log"; fail "see above"; }
import os, socket, struct, sys
from qmp import QMP
from procwatch import check, Daemon
T, daemon, cycles = sys.argv[1], Daemon(sys.argv[2]), int(sys.argv[3])
m = QMP(T + "/m0.sock", negotiate=True)
def ok(cmd, **a):
    r = m.cmd(cmd, a)
    check("return" in r, f"{cmd} {a}: {r}")
    return r["return"]
NBD = T + "/nbd.sock"
ok("nbd-server-start", addr={"type": "unix", "data": {"path": NBD}})

def recv_all(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        check(c, "NBD server closed the connection")
        b += c
    return b

def nbd_round(name, pattern):
    """newstyle handshake, NBD_OPT_GO, one write and a read back, NBD_CMD_DISC"""
    s = socket.socket(socket.AF_UNIX)
    s.connect(NBD)
    hello = recv_all(s, 18)
    check(hello[:16] == b"NBDMAGICIHAVEOPT", f"greeting {hello!r}")
    s.sendall(struct.pack(">I", 1))  # fixed newstyle
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # NBD_OPT_GO
    while True:
        magic, opt, rtype, ln = struct.unpack(">QIII", recv_all(s, 20))
        recv_all(s, ln)
        check(rtype < 0x80000000, f"NBD_OPT_GO refused: {rtype:#x}")
        if rtype == 1:  # NBD_REP_ACK
            break
    payload = bytes([pattern]) * 4096
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 65536, 4096) + payload)  # write
    magic, err, h = struct.unpack(">IIQ", recv_all(s, 16))
    check(err == 0, f"NBD write error {err}")
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 2, 65536, 4096))  # read
    magic, err, h = struct.unpack(">IIQ", recv_all(s, 16))
    check(err == 0 and recv_all(s, 4096) == payload, "NBD read back differs")
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 3, 0, 0))  # disconnect
    s.close()

def cycle(i):
    ok("blockdev-add", driver="file", **{"node-name": f"f{i}", "filename": T + "/img.qcow2"})
    ok("blockdev-add", driver="qcow2", **{"node-name": f"q{i}", "file": f"f{i}"})
    ok("block-dirty-bitmap-add", node=f"q{i}", name="b", granularity=65536)
    ok("block-export-add", type="nbd", id=f"e{i}", **{"node-name": f"q{i}", "writable": True, "name": "x"})
    nbd_round("x", i & 0xff)
    ok("block-export-del", id=f"e{i}", mode="hard")  # the client may not be gone yet (safe would refuse)
    ev = m.wait_event("BLOCK_EXPORT_DELETED")
    check(ev["data"]["id"] == f"e{i}", f"event {ev}")
    ok("block-dirty-bitmap-remove", node=f"q{i}", name="b")
    ok("blockdev-del", **{"node-name": f"q{i}"})
    ok("blockdev-del", **{"node-name": f"f{i}"})
    ok("object-add", **{"qom-type": "iothread", "id": f"io{i}"})
    ok("object-del", id=f"io{i}")

warm = min(100, cycles // 2)
for i in range(warm):
    cycle(i)
fd0, rss0 = daemon.fds(), daemon.rss_kib()
for i in range(warm, cycles):
    cycle(i)
fd1, rss1 = daemon.fds(), daemon.rss_kib()
print(f"{cycles} cycles: fds {len(fd0)} -> {len(fd1)}, RSS {rss0} -> {rss1} KiB (after {warm} and {cycles})")
check(fd0 == fd1, f"fds changed: {sorted(set(fd1) - set(fd0))} new, {sorted(set(fd0) - set(fd1))} gone")
check(rss1 - rss0 < 8192, f"RSS grew by {rss1 - rss0} KiB over {cycles - warm} cycles")
# the longest bitmap name is 1023 bytes (QEMU's BDRV_BITMAP_MAX_NAME_SIZE, in QEMU's words past it)
ok("blockdev-add", driver="null-co", **{"node-name": "nul", "size": 1 << 20})
ok("block-dirty-bitmap-add", node="nul", name="x" * 1023)
r = m.cmd("block-dirty-bitmap-add", {"node": "nul", "name": "y" * 1024})
check(r.get("error", {}).get("desc", "").startswith("Bitmap name too long: yyy"), f"a 1024-byte bitmap name: {str(r)[:100]}")
ok("blockdev-del", **{"node-name": "nul"})
check(not ok("query-named-block-nodes"), "nodes left behind")
check(not ok("query-block-exports"), "exports left behind")
PY
stop_daemon
echo PASS
