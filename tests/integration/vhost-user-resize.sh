#!/bin/bash
# A grown image reaches the guest: the file is resized under vbd-daemon,
# SIGHUP makes it re-read the size, and the vhost-user-blk export sends
# VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the back-end channel. Checked with
# a raw front end (the message arrives, GET_CONFIG has the new capacity) and
# with a Linux guest under QEMU (/sys/block/vda/size changes, the new end is
# usable and the data lands in the file).
. "$(dirname "$0")/lib.sh"
need python3
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
img=$T/disk.img

step "raw front end: BACKEND_REQ offered, the config change arrives after truncate + SIGHUP, GET_CONFIG has the new size"
truncate -s 64M "$img"
start_daemon --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$S",writable=on
python3 - "$S" "$img" "$dpid" <<'PY' || fail "raw front end"
import os, signal, socket, struct, sys
sock, img, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
def msg(req, payload=b'', flags=1):
    return struct.pack('<III', req, flags, len(payload)) + payload
def recv(s):
    h = s.recv(12, socket.MSG_WAITALL)
    assert len(h) == 12, 'connection closed'
    req, flags, size = struct.unpack('<III', h)
    return req, flags, s.recv(size, socket.MSG_WAITALL) if size else b''
def capacity(a):
    a.sendall(msg(24, struct.pack('<III', 0, 60, 0) + bytes(60)))   # GET_CONFIG
    _, _, p = recv(a)
    return struct.unpack_from('<Q', p, 12)[0]
a = socket.socket(socket.AF_UNIX); a.connect(sock); a.settimeout(20)
a.sendall(msg(1)); recv(a)                          # GET_FEATURES
a.sendall(msg(15)); _, _, p = recv(a)               # GET_PROTOCOL_FEATURES
pf = struct.unpack('<Q', p)[0]
assert pf >> 5 & 1, 'BACKEND_REQ (protocol feature 5) not offered'
a.sendall(msg(16, struct.pack('<Q', pf)))           # SET_PROTOCOL_FEATURES, REPLY_ACK included
ours, theirs = socket.socketpair()
ours.settimeout(20)
a.sendmsg([msg(21, b'', flags=1 | 8)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', theirs.fileno()))])
_, _, p = recv(a)                                   # SET_BACKEND_REQ_FD, acked
assert struct.unpack('<Q', p)[0] == 0, 'SET_BACKEND_REQ_FD refused'
theirs.close()
assert capacity(a) == 64 * 2048
os.truncate(img, 96 << 20)
os.kill(pid, signal.SIGHUP)
h = ours.recv(12, socket.MSG_WAITALL)
req, flags, size = struct.unpack('<III', h)
assert req == 2 and size == 0 and flags & 3 == 1, ('not a CONFIG_CHANGE_MSG', req, flags, size)
assert capacity(a) == 96 * 2048, capacity(a)
a.close()
PY
grep -q "SIGHUP: node 'disk0' is now 100663296 bytes" "$T/daemon.log" || fail "no log line for the new size"
grep -q "capacity 131072 -> 196608 sectors" "$T/daemon.log" || fail "no log line for the new capacity"
stop_daemon

if command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null && ls /boot/vmlinuz-* >/dev/null 2>&1; then
    step "a guest sees the disk grow from 64 to 96 MiB and uses the new end"
    G=$VBD_ROOT/tests/guest
    truncate -s 0 "$img"; truncate -s 64M "$img"
    start_daemon --drive file="$img",format=raw,cache=writeback --vhost-user "$S"
    "$G/run-guest.sh" --vhost-user "$S" --timeout 300 --log "$T/console.log" --workload "$G/workloads/resize.sh" \
        --env VBD_OLD_SECTORS=131072 --env VBD_NEW_SECTORS=196608 --env VBD_SEED=grow >"$T/guest.out" 2>&1 &
    gpid=$!
    # a TCG boot under load can take minutes: the wait is bounded by the
    # guest's own --timeout (it ends), not by a guess of how long it boots
    for _ in $(seq 6000); do grep -q "resize: ready" "$T/console.log" 2>/dev/null && break; kill -0 $gpid 2>/dev/null || break; sleep 0.05; done
    grep -q "resize: ready" "$T/console.log" || { kill $gpid; cat "$T/guest.out"; fail "the guest did not get ready"; }
    truncate -s 96M "$img"
    kill -HUP $dpid
    wait $gpid || { cat "$T/guest.out" "$T/daemon.log"; fail "guest: the disk did not grow"; }
    tail -1 "$T/guest.out"
    stop_daemon
    want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=grow; pattern $((196608 - 2048)) 2048" | md5sum)
    got=$(dd if="$img" bs=512 skip=$((196608 - 2048)) count=2048 2>/dev/null | md5sum)
    [ "$want" = "$got" ] || fail "the guest's last MiB is not at the end of the grown file"
else
    echo "(guest part skipped: no qemu-system-x86_64, busybox or guest kernel)"
fi
echo OK
