#!/bin/bash
# copy-before-write's cbw-timeout (QEMU 7.2: seconds; a guest write's copy
# that takes longer fails with ETIMEDOUT and on-cbw-error decides), by
# vbd-daemon and by qemu-storage-daemon 7.2 alike. Image fleecing as
# libvirt sets it up: the guest's export on a copy-before-write node over
# the source, cbw-timeout=1, its target a slow NBD server (nbdkit memory
# with the delay filter: every write takes 3 s, so every copy outlives the
# timeout), a snapshot-access node over it exported read-only.
#  break-guest-write: the guest's write fails and the source keeps the old
#    data; the point-in-time image reads fine;
#  break-snapshot: the guest's write goes through; every read of the
#    point-in-time image fails from then on.
# The copy that timed out goes on in the background: the daemon waits for
# it at exit (SIGTERM: exit 0, no sanitizer report), and the source image
# is qemu-img check clean. The NBD error numbers differ (QEMU's server sends
# EINVAL for the ETIMEDOUT and EACCES it has no NBD code for, vbd's EIO and
# EPERM): the test asserts that the write or the read fails, not how.
# Also the option's range, in QEMU's words.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdkit
nbdkit --filter=delay memory 1M --run true >/dev/null 2>&1 || skip "nbdkit memory plugin or delay filter not installed"
cd "$T"
must qemu-img create -q -f qcow2 src.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 0x11 0 16M' src.qcow2 >/dev/null
on_exit 'kill -9 $dpid $kpid 2>/dev/null'

for d in vbd qsd; do
    bin=$VBD_DAEMON
    [ $d = qsd ] && bin=qemu-storage-daemon
    for policy in break-guest-write break-snapshot; do
        step "$d, on-cbw-error=$policy"
        W=$T/$d-$policy
        mkdir "$W" && cd "$W"
        cp ../src.qcow2 .
        nbdkit -f -U "$W/slow.sock" --filter=delay memory 16M delay-write=3 2>nbdkit.log &
        kpid=$!
        wait_sock "$W/slow.sock" "$kpid" nbdkit.log
        "$bin" --chardev socket,id=q,path="$W/qmp.sock",server=on,wait=off --monitor chardev=q \
            --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$W"'/src.qcow2"}}' \
            --blockdev '{"driver":"raw","node-name":"slow","file":{"driver":"nbd","server":{"type":"unix","path":"'"$W"'/slow.sock"}}}' \
            --blockdev '{"driver":"copy-before-write","node-name":"cbw","file":"src","target":"slow","cbw-timeout":1,"on-cbw-error":"'$policy'"}' \
            --blockdev '{"driver":"snapshot-access","node-name":"acc","file":"cbw"}' \
            --nbd-server addr.type=unix,addr.path="$W/nbd.sock" \
            --export type=nbd,id=e0,node-name=cbw,name=disk,writable=on \
            --export type=nbd,id=e1,node-name=acc,name=snap 2>daemon.log &
        dpid=$!
        wait_sock "$W/nbd.sock" "$dpid" daemon.log
        disk="nbd+unix:///disk?socket=$W/nbd.sock" snap="nbd+unix:///snap?socket=$W/nbd.sock"
        qemu-io -f raw -c 'write -P 0x22 1M 64k' "$disk" >write.out 2>&1
        if [ $policy = break-guest-write ]; then
            grep -q "^write failed: " write.out || fail "$d: the guest's write did not fail: $(cat write.out)"
            must qemu-io -f raw -c 'read -P 0x11 1M 64k' "$disk" >/dev/null
            must qemu-io -r -f raw -c 'read -P 0x11 1M 64k' -c 'read -P 0x11 8M 64k' "$snap" >/dev/null
        else
            grep -q "^wrote 65536/65536 bytes at offset 1048576" write.out || fail "$d: the guest's write failed: $(cat write.out)"
            must qemu-io -f raw -c 'read -P 0x22 1M 64k' "$disk" >/dev/null
            qemu-io -r -f raw -c 'read -P 0x11 8M 64k' "$snap" >snap.out 2>&1
            grep -q "^read failed: " snap.out || fail "$d: the broken snapshot was read: $(cat snap.out)"
        fi
        kill -TERM $dpid; wait $dpid; rc=$?
        [ $rc = 0 ] || fail "$d exited with $rc: $(tail -5 daemon.log)"
        ! grep -q Sanitizer daemon.log || fail "$d: $(cat daemon.log)"
        kill $kpid; wait $kpid 2>/dev/null
        dpid= kpid=
        qcheck src.qcow2
        cd "$T"
    done
done

step "cbw-timeout's range"
for d in vbd qsd; do
    bin=$VBD_DAEMON
    [ $d = qsd ] && bin=qemu-storage-daemon
    out=$("$bin" --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$T"'/src.qcow2"}}' \
        --blockdev '{"driver":"copy-before-write","node-name":"cbw","file":"src","target":"src","cbw-timeout":4294967296}' 2>&1)
    [ $? != 0 ] || fail "$d took cbw-timeout=4294967296"
    echo "$out" | grep -q "Parameter 'cbw-timeout' expects uint32_t" || fail "$d: $out"
done
echo ok
