#!/bin/bash
# A qcow2 write that fails in the file under it (blkdebug injects one EIO
# into the Nth write the allocation makes: the new L2 table, the refcount
# flush, the L1 entry, the data) reports the error, and the next write to
# that range allocates again and succeeds: qemu-io reads the data back and
# qemu-img check finds no error and no leak. Through blkdebug the qcow2
# file grows as it does on a plain file (writes past its end used to fail
# with EINVAL there, the first symptom of this bug).
# Last: blockdev-snapshot-delete-internal-sync while a table the guest's
# write changed (cached) cannot be written: the delete fails and changes
# nothing (it went on, and the next writeback wrote that table over the
# image's header).
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
cd "$T" || exit 1
B="driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/a.qcow2"

# check_image: what a user checks after the retries
check_image() {
    qemu-img check a.qcow2 >"$T/check.out" 2>&1 || fail "$1: qemu-img check: $(cat "$T/check.out")"
    grep -q "No errors were found on the image." "$T/check.out" || fail "$1: qemu-img check: $(cat "$T/check.out")"
    must qemu-io -f qcow2 -c "read -P 0x22 64k 4k" -c "read -P 0 0 64k" -c "read -P 0 68k 956k" \
        -c "read -P 0x33 1M 4k" -c "read -P 0x44 2M 128k" a.qcow2 >/dev/null
}

step "no error injected: the qcow2 file grows through blkdebug"
must qemu-img create -q -f qcow2 a.qcow2 4M
must "$VBD_IO" --image-opts "$B" -c "write -P 0x22 64k 4k" -c "write -P 0x33 1M 4k" -c "write -P 0x44 2M 128k" >/dev/null
check_image "no error"

for skip in 0 1 2 3 4 5; do
    step "the write number $skip of a first allocation fails once: the retry allocates again"
    must qemu-img create -q -f qcow2 a.qcow2 4M
    "$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on,file.inject-error.0.x-skip=$skip" \
        -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" -c "read -P 0x22 64k 4k" \
        -c "write -P 0x33 1M 4k" -c "write -P 0x44 2M 128k" >"$T/v.out" 2>&1
    grep -v "ops;" "$T/v.out" | tr '\n' '|' | grep -qx "write failed: Input/output error|wrote 4096/4096 bytes at offset 65536|read 4096/4096 bytes at offset 65536|wrote 4096/4096 bytes at offset 1048576|wrote 131072/131072 bytes at offset 2097152|" ||
        fail "x-skip=$skip: $(cat "$T/v.out")"
    check_image "x-skip=$skip"
done

step "as QEMU: the first data write fails under qemu-io too, and its retry succeeds"
must qemu-img create -q -f qcow2 a.qcow2 4M
qemu-io --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on" \
    -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" 2>&1 | grep -v "ops;" >"$T/q.out"
must qemu-img create -q -f qcow2 a.qcow2 4M
"$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on" \
    -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" 2>&1 | grep -v "ops;" >"$T/v.out"
diff -u "$T/q.out" "$T/v.out" || fail "vbd-io and qemu-io differ"

step "a table shared with an internal snapshot: a failed copy leaves the snapshot's table, the retry copies again"
for skip in 0 1 2 3; do
    must qemu-img create -q -f qcow2 a.qcow2 4M
    must qemu-io -f qcow2 -c "write -P 0x55 0 128k" a.qcow2 >/dev/null
    must qemu-img snapshot -c s1 a.qcow2
    "$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on,file.inject-error.0.x-skip=$skip" \
        -c "write -P 0x66 64k 4k" -c "write -P 0x66 64k 4k" >"$T/v.out" 2>&1
    grep -v "ops;" "$T/v.out" | tr '\n' '|' | grep -qx "write failed: Input/output error|wrote 4096/4096 bytes at offset 65536|" ||
        fail "snapshot, x-skip=$skip: $(cat "$T/v.out")"
    qemu-img check a.qcow2 >"$T/check.out" 2>&1 && grep -q "No errors were found on the image." "$T/check.out" ||
        fail "snapshot, x-skip=$skip: qemu-img check: $(cat "$T/check.out")"
    must qemu-io -f qcow2 -c "read -P 0x55 0 64k" -c "read -P 0x66 64k 4k" -c "read -P 0x55 68k 60k" a.qcow2 >/dev/null
    must qemu-img snapshot -a s1 a.qcow2
    must qemu-io -f qcow2 -c "read -P 0x55 0 128k" a.qcow2 >/dev/null
done

step "an internal snapshot deleted over QMP while a cached L2 table cannot be written: the delete fails, nothing changes"
must qemu-img create -q -f qcow2 a.qcow2 4M
must qemu-io -f qcow2 -c "write -P 0x55 0 128k" a.qcow2 >/dev/null
must qemu-img snapshot -c s1 a.qcow2
must qemu-io -f qcow2 -c "write -P 0x66 0 4k" a.qcow2 >/dev/null # the active L2 table is its own now
l2=$(python3 -c '
import struct, sys
d = open(sys.argv[1], "rb").read()
l1 = struct.unpack(">Q", d[40:48])[0]
print((struct.unpack(">Q", d[l1:l1 + 8])[0] & 0x00fffffffffffe00) // 512)' a.qcow2)
S=$T/qmp.sock
start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q \
    --blockdev driver=file,node-name=f0,filename="$T/a.qcow2" \
    --blockdev driver=blkdebug,node-name=dbg,image=f0,inject-error.0.event=write_aio,inject-error.0.iotype=write,inject-error.0.sector=$l2,inject-error.0.once=on \
    --blockdev driver=qcow2,node-name=disk,file=dbg --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
    --export type=nbd,id=n,node-name=disk,name=disk,writable=on
wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
python3 - "$S" "$T/nbd.sock" <<'PY' || fail "the delete with a table that cannot be written"
import os, struct, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
import nbdproto as P
m = QMP(sys.argv[1], negotiate=True)
s = P.connect(sys.argv[2])
P.handshake(s, "disk", go=True)
def nbd(cmd, cookie, off, data=b"", ln=None):
    s.sendall(P.request(cmd, cookie, off, len(data) if ln is None else ln) + data)
    magic, err, c = struct.unpack(">IIQ", P.recvn(s, 16))
    assert magic == P.SIMPLE_REPLY_MAGIC and c == cookie, (magic, c)
    return err
# a new cluster in the active table: its entry waits in the cache (no flush)
assert nbd(P.CMD_WRITE, 1, 1 << 20, bytes([0x77]) * 4096) == 0
r = m.cmd("blockdev-snapshot-delete-internal-sync", {"device": "disk", "name": "s1"})
if "error" not in r or "Input/output error" not in r["error"]["desc"]:
    sys.exit(f"the delete with a table that cannot be written: {r}")
print("delete refused:", r["error"]["desc"])
assert nbd(P.CMD_WRITE, 2, 2 << 20, bytes([0x88]) * 4096) == 0
assert nbd(P.CMD_FLUSH, 3, 0, ln=0) == 0
PY
stop_daemon
qemu-img check a.qcow2 >"$T/check.out" 2>&1 && grep -q "No errors were found on the image." "$T/check.out" ||
    fail "after the failed delete: qemu-img check: $(cat "$T/check.out")"
must qemu-io -f qcow2 -c "read -P 0x66 0 4k" -c "read -P 0x55 4k 124k" -c "read -P 0x77 1M 4k" -c "read -P 0x88 2M 4k" a.qcow2 >/dev/null
qemu-img snapshot -l a.qcow2 | grep -qw s1 || fail "snapshot s1 is gone after its delete failed"
must qemu-img snapshot -a s1 a.qcow2
must qemu-io -f qcow2 -c "read -P 0x55 0 128k" -c "read -P 0 1M 4k" a.qcow2 >/dev/null
echo OK
