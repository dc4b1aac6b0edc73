#!/bin/bash
# Image locks interoperate with QEMU: qemu-io cannot open for write an image
# vbd holds, vbd cannot open for write an image QEMU holds; -U skips locks.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon
img=$T/disk.raw
qemu-img create -q -f raw "$img" 4M
# wait until a writer's "no other writer" lock byte (201) shows in /proc/locks
wait_locked() { local ino; ino=$(stat -c %i "$img"); for _ in $(seq 1200); do grep -q ":$ino 201 201" /proc/locks && return 0; sleep 0.05; done; fail "lock never taken"; }

step "vbd-io holds the image writable"
"$VBD_IO" -f raw -c 'sleep 600000' "$img" &
pid=$!; on_exit "kill $pid 2>/dev/null"
wait_locked
out=$(qemu-io -f raw -c 'write 0 512' "$img" 2>&1) && fail "qemu-io wrote to an image vbd holds"
case "$out" in *'Failed to get "write" lock'*) ;; *) fail "unexpected qemu-io error: $out" ;; esac
out=$(qemu-img resize -f raw "$img" 8M 2>&1) && fail "qemu-img resized an image vbd holds"
case "$out" in *'lock'*) ;; *) fail "unexpected qemu-img error: $out" ;; esac
# a raw reader shares writes, in QEMU as in vbd
must qemu-img info -f raw "$img" >/dev/null
kill $pid; wait $pid 2>/dev/null

step "QEMU holds the image writable"
qemu-io -f raw -c 'sleep 600000' "$img" >/dev/null &
qpid=$!; on_exit "kill $qpid 2>/dev/null"
ino=$(stat -c %i "$img")
held=
for _ in $(seq 1200); do grep -Eq ":$ino 10[01] 101" /proc/locks && { held=1; break; }; sleep 0.05; done
[ -n "$held" ] || fail "qemu-io never took its write lock"
must_fail_with 'Failed to get shared "write" lock' "$VBD_IO" -f raw -c 'write 0 512' "$img"
must_fail_with 'lock' "$VBD_IMG" resize -f raw "$img" 8M
must "$VBD_IMG" info -f raw "$img" >/dev/null
must "$VBD_IO" -f raw -r -c 'read 0 512' "$img" >/dev/null
kill $qpid; wait $qpid 2>/dev/null

step "two vbd writers exclude each other; readers with -U coexist"
"$VBD_IO" -f raw -c 'sleep 600000' "$img" &
pid=$!; on_exit "kill $pid 2>/dev/null"
wait_locked
must_fail_with 'Failed to get "write" lock' "$VBD_IO" -f raw -c 'write 0 512' "$img"
must "$VBD_IO" -f raw -r -U -c 'read 0 512' "$img" >/dev/null
must "$VBD_IO" -f raw -r -c 'read 0 512' "$img" >/dev/null
kill $pid; wait $pid 2>/dev/null
step "after the holder exits, writing works again"
must qemu-io -f raw -c 'write 0 512' "$img" >/dev/null
echo ok
