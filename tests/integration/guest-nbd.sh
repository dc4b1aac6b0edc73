#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# QEMU as the NBD client of vbd-daemon's NBD export: a Linux guest runs the
# block and filesystem workloads on it, and reads a read-only export.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/nbd.sock
img=$T/disk.img
must qemu-img create -q -f raw "$img" 64M
nbd_raw_daemon -o ,discard=unmap "$img" "$S" \
    --export type=nbd,id=e0,node-name=disk0,name=vbd,writable=on --export type=nbd,id=e1,node-name=disk0,name=ro
# one boot, a disk per case: the first two on the same writable export (used
# one after the other), the third on the read-only one
step "one boot: basic workload over NBD (2 queues), fs workload over NBD, read-only export"
"$G/run-guest.sh" --timeout 1200 --nbd "nbd+unix:///vbd?socket=$S" --num-queues 2 --workload "$G/workloads/basic.sh" \
    --nbd "nbd+unix:///vbd?socket=$S" --workload "$G/workloads/fs.sh" \
    --nbd "nbd+unix:///ro?socket=$S" --readonly --workload "$G/workloads/readonly.sh" || fail "guest"
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $? after SIGTERM"
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
echo OK
