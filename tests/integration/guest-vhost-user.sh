#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# A Linux guest under QEMU uses a disk served by vbd-daemon over
# vhost-user-blk: block and filesystem workloads, 1 and 2 queues, cache
# modes, 4K sectors, a range= window, read-only, a back end restarted
# under a running guest, the guest's view of a disk compared with the same
# disk served by qemu-storage-daemon, the driver unbound and bound again
# under I/O, and the protocol seen by a raw front end.
# test-timeout: 2400 (run.sh: its guest may take --timeout 2000 without KVM)
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
export_opts="type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=disk0"

# All the guest cases share one boot: each has a disk of its own, served by
# a vbd-daemon of its own (start_named), and its workloads run on that disk;
# the disks side by side (--parallel), a disk's workloads one after the other.
vu() { echo "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$T/$1.sock,node-name=disk0"; }
raw_node() { echo "--blockdev driver=file,node-name=file0,filename=$1 --blockdev driver=raw,node-name=disk0,file=file0"; }
iot="--object iothread,id=io0 --object iothread,id=io1"
args=()
for n in raw wb wt ro win 4k qcow2 restart; do must qemu-img create -q -f raw "$T/$n.img" 64M; done

# disk0: raw image, 1 queue, basic workload; data lands in the file (checked after the boot)
start_named raw $(raw_node "$T/raw.img") --export "$(vu raw),writable=on"
args+=(--vhost-user "$T/raw.sock" --workload "$G/workloads/basic.sh" --env VBD_SEED=hostchk)
# disk1: 2 queues, --drive short form, cache=writeback, discard=unmap: basic and fs
start_named wb --drive file="$T/wb.img",format=raw,cache=writeback,discard=unmap,num-queues=2 --vhost-user "$T/wb.sock"
args+=(--vhost-user "$T/wb.sock" --num-queues 2 --workload "$G/workloads/basic.sh" --workload "$G/workloads/fs.sh")
# disk2: writethrough (the --drive default), ACRN spelling
start_named wt --drive "$T/wt.img,writethru" --vhost-user "$T/wt.sock"
args+=(--vhost-user "$T/wt.sock" --workload "$G/workloads/basic.sh")
# disk3: read-only export
start_named ro --blockdev driver=file,node-name=file0,filename="$T/ro.img",read-only=on \
    --blockdev driver=raw,node-name=disk0,file=file0,read-only=on --export "$(vu ro),writable=off"
args+=(--vhost-user "$T/ro.sock" --workload "$G/workloads/readonly.sh")
# disk4: sectorsize=4096 and a range= window: the guest sees only the window (bytes checked after the boot)
start_named win --drive file="$T/win.img",format=raw,sectorsize=4096,range=2048/65536 --vhost-user "$T/win.sock"
args+=(--vhost-user "$T/win.sock" --workload "$G/workloads/fill.sh" --env VBD_EXPECT_SIZE=$((65536 * 512))
       --env VBD_EXPECT_LBS=4096 --env VBD_FILL_BYTE=W)
# disk5: sectorsize=4096 over the whole file: basic
start_named 4k --drive file="$T/4k.img",format=raw,sectorsize=4096 --vhost-user "$T/4k.sock"
args+=(--vhost-user "$T/4k.sock" --workload "$G/workloads/basic.sh" --env VBD_EXPECT_LBS=4096)
# disk6: qcow2 image, 2 queues on 2 iothreads: block workload (writers on every queue), fs workload, qemu-img check clean after
q=$T/disk.qcow2
if "$VBD_IMG" create -q -f qcow2 "$T/probe.qcow2" 1M >/dev/null 2>&1; then
    must qemu-img create -q -f qcow2 "$q" 64M
    start_named qcow2 $iot --blockdev driver=file,node-name=file0,filename="$q" --blockdev driver=qcow2,node-name=disk0,file=file0 \
        --export "$(vu qcow2),writable=on,num-queues=2,iothread.0=io0,iothread.1=io1"
    args+=(--vhost-user "$T/qcow2.sock" --num-queues 2 --workload "$G/workloads/basic.sh" --workload "$G/workloads/fs.sh")
    rd=disk7
else
    echo "(qcow2 part skipped: vbd-img cannot create qcow2 yet)"
    rd=disk6
fi
# last: the back end (2 queues on 2 iothreads) is killed (-9) and restarted under a running fs workload
restart_args=($iot $(raw_node "$T/restart.img"))
start_named restart "${restart_args[@]}" --export "$(vu restart),writable=on,num-queues=2,iothread.0=io0,iothread.1=io1"
args+=(--vhost-user "$T/restart.sock" --reconnect --num-queues 2 --workload "$G/workloads/fs.sh" --env VBD_FILES=300)

# then a vbd-daemon and a qemu-storage-daemon with the same command line (2 queues on an iothread,
# discard=unmap): the guest's view of each disk (view.sh, compared after the boot), then each
# disk's driver unbound and bound again under direct I/O (rebind.sh)
vd=disk$((${rd#disk} + 1)) qd=disk$((${rd#disk} + 2))
view_args() { echo "--object iothread,id=io0 --blockdev driver=file,node-name=file0,filename=$1,discard=unmap" \
    "--blockdev driver=raw,node-name=disk0,file=file0,discard=unmap"; }
must qemu-img create -q -f raw "$T/view.img" 64M
must qemu-img create -q -f raw "$T/qview.img" 64M
start_named view $(view_args "$T/view.img") --export "$(vu view),writable=on,num-queues=2,iothread=io0"
args+=(--vhost-user "$T/view.sock" --num-queues 2 --workload "$G/workloads/view.sh" --workload "$G/workloads/rebind.sh")
qsd=
if command -v qemu-storage-daemon >/dev/null; then
    qemu-storage-daemon $(view_args "$T/qview.img") --export "$(vu qview),writable=on,num-queues=2,iothread=io0" \
        2>"$T/qview.log" &
    qsd=$!
    on_exit '[ -n "$qsd" ] && kill -9 $qsd 2>/dev/null'
    wait_sock "$T/qview.sock" "$qsd" "$T/qview.log"
    args+=(--vhost-user "$T/qview.sock" --num-queues 2 --workload "$G/workloads/view.sh" --workload "$G/workloads/rebind.sh")
else
    echo "(qemu-storage-daemon not installed: the guest's view is not compared)"
fi

step "one boot, a disk per case: raw 1 queue; --drive 2 queues writeback discard; writethrough; read-only;" \
    "4096-byte sectors with a range= window and without; qcow2 on 2 iothreads; back end killed and restarted ($rd);" \
    "vbd-daemon ($vd) and qemu-storage-daemon ($qd) with the same options: the guest's view, the driver rebound"
"$G/run-guest.sh" "${args[@]}" --parallel --timeout 2000 --log "$T/console.log" >"$T/guest.out" 2>&1 &
gpid=$!
on_exit '[ -n "${gpid:-}" ] && kill -9 $gpid 2>/dev/null'
# kill the restart case's back end the moment its workload starts: mkfs and everything after it need the back end
for _ in $(seq 40000); do grep -q "$rd: fs: mkfs" "$T/console.log" 2>/dev/null && break; kill -0 $gpid 2>/dev/null || break; sleep 0.05; done
grep -q "$rd: fs: mkfs" "$T/console.log" || { cat "$T/guest.out"; fail "the restart case's fs workload never started"; }
kill -9 ${dpids[restart]}; wait ${dpids[restart]} 2>/dev/null
! grep -q "$rd: fs: done" "$T/console.log" || fail "the workload ended before the back end was killed: nothing tested"
start_named restart "${restart_args[@]}" --export "$(vu restart),writable=on,num-queues=2,iothread=io1"
wait $gpid || { cat "$T/guest.out" "$T/restart.log"; fail "the guest failed (or did not survive the back end's restart)"; }
gpid=
grep -q "front end connected" "$T/restart.log" || fail "QEMU never reconnected"
cat "$T/guest.out"
for n in "${!dpids[@]}"; do stop_named $n; done

if [ -n "$qsd" ]; then
    kill $qsd; wait $qsd; qsd=
    step "the guest's view of the vbd-daemon disk is the qemu-storage-daemon disk's, but for the deliberate differences"
    # max_segments/max_segment_size: vbd offers 254 segments of up to 1 MiB (qsd 126, size_max 0: 4 KiB);
    # write_cache: vbd reports its write-back cache, qsd write through (README, vhost-user-parity.sh)
    view() { tr -d '\r' <"$T/console.log" | sed -n "s/^.*vbd: $1: view: //p" |
        grep -v -e '^max_segments ' -e '^max_segment_size ' -e '^write_cache ' | sort; }
    [ "$(view $vd | wc -l)" -ge 15 ] || fail "no view of the vbd disk ($vd) in the console log"
    diff <(view $qd) <(view $vd) || fail "the guest sees the vbd disk differently from the qsd disk (< qsd, > vbd)"
    tr -d '\r' <"$T/console.log" | grep -e "$vd: view: write_cache\|$qd: view: write_cache\|$vd: view: max_seg\|$qd: view: max_seg"
fi
step "raw: the guest's data landed in the file"
want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=hostchk; pattern 0 2048" | md5sum)
got=$(dd if="$T/raw.img" bs=512 count=2048 2>/dev/null | md5sum)
[ "$want" = "$got" ] || fail "the guest's first MiB is not in the image file"
want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=hostchk; pattern $((131072 - 2048)) 2048" | md5sum)
got=$(dd if="$T/raw.img" bs=512 skip=$((131072 - 2048)) count=2048 2>/dev/null | md5sum)
[ "$want" = "$got" ] || fail "the guest's last MiB is not in the image file"
step "range= window: only the window's bytes changed"
python3 - "$T/win.img" <<'PY' || fail "the window's bytes are wrong or bytes outside it changed"
import sys
d = open(sys.argv[1], 'rb').read()
a, b = 2048 * 512, (2048 + 65536) * 512
ok = d[:a].count(0) == a and d[a:b].count(b'W') == b - a and d[b:].count(0) == len(d) - b
sys.exit(0 if ok else 1)
PY
[ ! -e "$q" ] || { step "qcow2: qemu-img check clean"; qcheck "$q"; }

step "a raw front end: features offered, a second one beside it refused, one after it served, unknown message answered"
start_daemon --blockdev driver=null-co,node-name=disk0,size=64M --export "$export_opts,writable=on"
PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$S" <<'PY' || fail "raw vhost-user front end"
import socket, struct, sys
from vhost_user import (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, NEED_REPLY, SET_PROTOCOL_FEATURES,
                        SET_VRING_NUM, V1, capacity, msg, recv, u64)
a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[1])
a.sendall(msg(GET_FEATURES))
req, flags, p = recv(a)
f = u64(p)
assert req == GET_FEATURES and flags & 4, (req, flags)
for bit in (32, 28, 29, 30, 9, 11, 12, 14):          # VERSION_1 INDIRECT EVENT_IDX PROTOCOL FLUSH CONFIG_WCE MQ WRITE_ZEROES
    assert f >> bit & 1, 'feature bit %d missing' % bit
a.sendall(msg(GET_PROTOCOL_FEATURES))
pf = u64(recv(a)[2])
for bit in (0, 3, 9, 12, 13, 15):
    assert pf >> bit & 1, 'protocol feature %d missing' % bit
a.sendall(msg(SET_PROTOCOL_FEATURES, struct.pack('<Q', pf)))
a.sendall(msg(GET_QUEUE_NUM))
assert u64(recv(a)[2]) >= 1
cap = capacity(a)
assert cap == 64 * 2048, cap
a.sendall(msg(99, flags=V1 | NEED_REPLY))           # unknown
assert u64(recv(a)[2]) != 0, 'unknown message acked as success'
a.sendall(msg(SET_VRING_NUM, struct.pack('<II', 0, 5000), flags=V1 | NEED_REPLY))   # too large
assert u64(recv(a)[2]) != 0, 'ring size 5000 accepted'
b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1]); b.settimeout(60)  # the refusal comes as EOF; at load 30 it may take seconds
assert b.recv(1) == b'', 'a second front end beside a live one was not refused'
a.sendall(msg(GET_QUEUE_NUM)); recv(a)               # the first one still works
a.close()
# one that connects as soon as the first hung up is served, not refused: it
# waits for the first's session to end (README; vhost-user-reconnect.sh)
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); c.settimeout(60)
c.sendall(msg(GET_FEATURES))
assert recv(c)[0] == GET_FEATURES, 'the front end after the first was not served'
c.close()
PY
[ "$(grep -c "refusing a second front end" "$T/daemon.log")" = 1 ] || fail "want one log line for the one refused front end"
grep -q "unsupported vhost-user message 99" "$T/daemon.log" || fail "no log line for the unknown message"
stop_daemon
echo OK
