#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
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
PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$S" "$img" "$dpid" <<'PY' || fail "raw front end"
import os, signal, sys
from vhost_user import capacity, config_change, front_end
sock, img, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
a, ch = front_end(sock)
assert capacity(a) == 64 * 2048
os.truncate(img, 96 << 20)
os.kill(pid, signal.SIGHUP)
config_change(ch)
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
    "$G/run-guest.sh" --vhost-user "$S" --timeout 1200 --log "$T/console.log" --workload "$G/workloads/resize.sh" \
        --env VBD_OLD_SECTORS=131072 --env VBD_NEW_SECTORS=196608 --env VBD_SEED=grow >"$T/guest.out" 2>&1 &
    gpid=$!
    # a TCG boot under load can take minutes: the wait is bounded by the
    # guest's own --timeout (it ends), not by a guess of how long it boots
    for _ in $(seq 24000); do grep -q "resize: ready" "$T/console.log" 2>/dev/null && break; kill -0 $gpid 2>/dev/null || break; sleep 0.05; done
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
