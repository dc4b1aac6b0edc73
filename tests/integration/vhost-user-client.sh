#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# test-timeout: 2700 (run.sh: two guests that may each take --timeout 1200 without KVM)
# Client mode (server=off): QEMU listens on the socket (-chardev
# socket,...,server=on,wait=off) and vbd-daemon connects to it, retrying
# until the socket is there. A guest runs the basic workload, powers off, and
# a second QEMU on the same path gets the daemon back (it reconnects); the
# --drive short form has no server=off, so this uses --export.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img busybox
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
G=$VBD_ROOT/tests/guest
S=$T/vm.sock
img=$T/disk.img
must qemu-img create -q -f raw "$img" 64M
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'

step "vbd-daemon starts first and waits for the VMM's socket"
"$VBD_DAEMON" --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$S",writable=on,num-queues=2,server=off \
    2>"$T/daemon.log" &
dpid=$!
for _ in $(seq 600); do grep -q "cannot connect to '$S'" "$T/daemon.log" && break; sleep 0.1; done
grep -q "cannot connect to '$S'.*retrying every second" "$T/daemon.log" || { cat "$T/daemon.log"; fail "no retry message"; }
[ ! -e "$S" ] || fail "the daemon created the socket in client mode"

step "QEMU listens; the daemon connects; the guest runs basic.sh on 2 queues"
"$G/run-guest.sh" --vhost-user "$S" --listen --num-queues 2 --timeout 1200 --workload "$G/workloads/basic.sh" \
    --env VBD_SEED=client || { cat "$T/daemon.log"; fail "guest with QEMU listening"; }
grep -q "front end connected" "$T/daemon.log" || fail "the daemon never logged the connection"
want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=client; pattern 0 2048" | md5sum)
got=$(dd if="$img" bs=512 count=2048 2>/dev/null | md5sum)
[ "$want" = "$got" ] || fail "the guest's first MiB is not in the image file"

step "the VM is gone; a new QEMU on the same path gets the daemon again"
"$G/run-guest.sh" --vhost-user "$S" --listen --timeout 1200 --workload "$G/workloads/fs.sh" ||
    { cat "$T/daemon.log"; fail "second guest"; }
[ "$(grep -c "front end connected" "$T/daemon.log")" -ge 2 ] || fail "the daemon did not reconnect"

step "SIGTERM while waiting for a VMM: clean exit"
kill -TERM $dpid; wait $dpid; rc=$?
[ $rc = 0 ] || { cat "$T/daemon.log"; fail "vbd-daemon exited with $rc"; }
dpid=
! grep -q "Sanitizer" "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
echo OK
