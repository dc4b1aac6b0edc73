#!/bin/bash
# Dirty logging (vhost-user "Migration"), message by message, against
# vbd-daemon (the ring on the main loop, then on an iothread) and against
# qemu-storage-daemon 7.2 with the same script, whose transcripts must be
# the same: VHOST_F_LOG_ALL and LOG_SHMFD offered (QEMU refuses to migrate a
# VM without them); with the log on (SET_LOG_BASE answered, SET_FEATURES
# with LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG on the running ring)
# a read marks exactly the pages of its data and status byte and the used
# ring's page (not its header's), a write only the status byte's, GET_ID its
# buffer's two pages, and the log fd is kicked; with the log off again
# nothing is marked. Then block-export-del (mode=safe, the default) with
# the front end connected: qsd deletes the export (an answer and
# BLOCK_EXPORT_DELETED), the front end sees its socket closed, the socket
# file goes, and the export can be added again on the node; vbd refused
# ("export 'e0' still in use") before.
. "$(dirname "$0")/lib.sh"
need python3
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
must qemu-img create -q -f raw "$T/disk.img" 16M
python3 -c "open('$T/disk.img', 'r+b').write(bytes(range(256)) * 4096 * 4)"

# the script: one daemon's transcript on stdout (assertions fail it at once)
cat >"$T/log.py" <<'PY'
import mmap, os, struct, sys
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from qmp import QMP
from vhost_user import (Driver, F_LOG_ALL, PROTOCOL_F_LOG_SHMFD, T_GET_ID, T_IN, T_OUT)
vu, qmp = sys.argv[1], sys.argv[2]
P = 4096
d = Driver(vu, protocol=1 << PROTOCOL_F_LOG_SHMFD)
print("LOG_ALL offered:", d.features >> F_LOG_ALL & 1, "LOG_SHMFD offered:", d.protocol_features >> PROTOCOL_F_LOG_SHMFD & 1)
assert d.features >> F_LOG_ALL & 1, "VHOST_F_LOG_ALL (feature 26) not offered: QEMU refuses to migrate the VM"
assert d.protocol_features >> PROTOCOL_F_LOG_SHMFD & 1, "VHOST_USER_PROTOCOL_F_LOG_SHMFD not offered"
pages = d.MEM // P
size = pages // 8  # QEMU's log: one bit per page of guest memory
logfd = os.memfd_create("vhost-log", 0)
os.ftruncate(logfd, size)
log = mmap.mmap(logfd, size)
kick = os.eventfd(0, os.EFD_NONBLOCK)
def marked():
    return [p for p in range(pages) if log[p // 8] >> (p % 8) & 1]
def kicked():
    try:
        return os.eventfd_read(kick) > 0
    except BlockingIOError:
        return False
def check(what, status, want, data=None):
    got = marked()
    print("%s: status %d, pages marked %s, log fd kicked %s" % (what, status, got, kicked()))
    assert status == 0, (what, "status", status)
    assert got == want, (what, "marked", got, "want", want)
    log[:] = bytes(size)

st, _, data = d.request(T_IN, 8, 4096, at=(5 * P, 8 * P + 2048, 20 * P + 7))
check("read before logging", st, [])
ack = d.start_logging(logfd, size, kick)
print("SET_FEATURES with LOG_ALL acked:", ack)
assert ack == 0, "LOG_ALL refused"
log[:] = bytes(size)
kicked()
# the used ring sits at guest address 2048: page 0 (the descriptors and
# the available ring too, which the device only reads)
st, used, data = d.request(T_IN, 8, 3 * P, at=(5 * P, 8 * P + 2048, 20 * P + 7))
assert data == bytes(range(256)) * 48, "the read's data"
check("read of 12 KiB at page 8 + 2048, status byte on page 20, header on 5", st, [0, 8, 9, 10, 11, 20])
st, _, _ = d.request(T_OUT, 64, 2 * P, at=(35 * P, 30 * P, 40 * P))
check("write of 8 KiB from page 30, status byte on page 40", st, [0, 40])
st, used, data = d.request(T_GET_ID, 0, 20, at=(45 * P, 50 * P + 4090, 60 * P))
check("GET_ID into 20 bytes at page 50 + 4090, status byte on page 60", st, [0, 50, 51, 60])
d.stop_logging()
log[:] = bytes(size)
st, _, _ = d.request(T_IN, 8, 4096, at=(5 * P, 8 * P, 20 * P))
check("read after logging stopped", st, [])

# block-export-del with this front end connected, the default mode (safe)
m = QMP(qmp, negotiate=True)
m.send_raw(b'{"execute": "block-export-del", "arguments": {"id": "e0"}}\n')
# (qsd sends the event before the answer, vbd after it: its events go out
# from a bottom half, whatever the command)
got = sorted(("event %s %s" % (x["event"], x["data"])) if "event" in x else "answer %s" % x
             for x in (m._read(), m._read()))
print("block-export-del:", got)
d.s.settimeout(60)
print("the front end's socket:", "closed" if d.s.recv(1) == b"" else "open")
print("socket file left:", os.path.exists(vu))
print("query-block-exports:", m.execute("query-block-exports"))
print("block-export-add:", m.cmd("block-export-add", {"type": "vhost-user-blk", "id": "e0", "node-name": "disk0",
                                                      "addr": {"type": "unix", "path": vu}, "writable": True}))
d2 = Driver(vu)
st, _, data = d2.request(T_IN, 8, 512)
print("added again, a read:", st, data == bytes(range(256)) * 2)
d2.close()
PY

export VBD_QMP_PY=$VBD_ROOT/tests/qmp
run() { # NAME DAEMON ARGS...: the script against it, transcript in $T/NAME.out
    local name=$1 bin=$2; shift 2
    rm -f "$T/vu.sock" "$T/qmp.sock"
    "$bin" --blockdev driver=file,node-name=file0,filename="$T/disk.img" \
        --blockdev driver=raw,node-name=disk0,file=file0 "$@" \
        --chardev socket,id=m0,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m0 2>"$T/$name.log" &
    dpid=$!
    wait_sock "$T/vu.sock" "$dpid" "$T/$name.log"
    wait_sock "$T/qmp.sock" "$dpid" "$T/$name.log"
    timeout 300 python3 "$T/log.py" "$T/vu.sock" "$T/qmp.sock" >"$T/$name.out" 2>&1 ||
        { cat "$T/$name.out" "$T/$name.log"; fail "$name: see above"; }
    kill -TERM $dpid; wait $dpid; local rc=$?
    dpid=
    [ $rc = 0 ] || { cat "$T/$name.log"; fail "$name exited with $rc after SIGTERM"; }
    ! grep -q "Sanitizer" "$T/$name.log" || { cat "$T/$name.log"; fail "$name: sanitizer report"; }
}
exp="type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$T/vu.sock,writable=on"
step "vbd-daemon, the ring on the main loop"
run vbd "$VBD_DAEMON" --export "$exp"
cat "$T/vbd.out"
grep -q "dirty logging on" "$T/vbd.log" || fail "no log line for the dirty log"
step "vbd-daemon, the ring on an iothread"
run vbd-iothread "$VBD_DAEMON" --object iothread,id=io0 --export "$exp,iothread=io0"
diff "$T/vbd.out" "$T/vbd-iothread.out" || fail "the ring on an iothread logs otherwise (< main loop, > iothread)"
if command -v qemu-storage-daemon >/dev/null; then
    step "qemu-storage-daemon, the same script"
    run qsd qemu-storage-daemon --export "$exp"
    diff "$T/qsd.out" "$T/vbd.out" || fail "vbd's transcript differs from qsd's (< qsd, > vbd)"
else
    echo "(qemu-storage-daemon not installed: not compared)"
fi
echo OK
