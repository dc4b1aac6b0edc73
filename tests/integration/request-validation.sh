#!/bin/bash
# Requests the library must refuse, at every entry: out of range, straddling
# the end, overflowing the 64-bit offset, writes/zeroes/discards on a
# read-only image. Through vbd-io each gets one clear line; through the NBD
# export each gets the error the NBD spec names (EINVAL, ENOSPC for writes
# and write zeroes, EPERM on a read-only export) and the connection goes on. Afterwards every
# image is byte for byte what it was, except for the valid writes at the
# very last bytes, which land exactly there (cmp against a copy that got the
# same writes from qemu-io; qemu-img check for qcow2).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
M=1048576

step "images: raw, qcow2, a raw window into a bigger file, and their copies"
must qemu-img create -q -f raw "$T/a.raw" 1M
must qemu-io -f raw -c "write -P 0x5a 0 1M" -c "write -P 0xa5 1020k 4k" "$T/a.raw" >/dev/null
must qemu-img create -q -f qcow2 "$T/a.qcow2" 1M
must qemu-io -f qcow2 -c "write -P 0x5a 0 64k" -c "write -P 0xa5 960k 64k" "$T/a.qcow2" >/dev/null
must qemu-img create -q -f raw "$T/w.raw" 2M
must qemu-io -f raw -c "write -P 0x77 0 2M" "$T/w.raw" >/dev/null
for f in a.raw a.qcow2 w.raw; do cp "$T/$f" "$T/$f.orig"; done
# the window: 1 MiB at 512k of w.raw, so both of its ends have data beyond them
WIN="driver=raw,offset=512k,size=1M,file.driver=file,file.filename=$T/w.raw"

# bad CASE-ARGS...: every request here must fail with its one line, whatever the image
bad_requests() {
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -P 0x11 1M 512"
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -P 0x11 1044480 8k"
    must_fail_with "writev failed: Input/output error" "$VBD_IO" "$@" -c "writev -P 0x11 1040384 4k 4k 4k"
    must_fail_with "read failed: Input/output error" "$VBD_IO" "$@" -c "read 1020k 8k"
    must_fail_with "read failed: Input/output error" "$VBD_IO" "$@" -c "read 2M 512"
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -z 1020k 8k"
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -z -u 1M 64k"
    must_fail_with "discard failed: Input/output error" "$VBD_IO" "$@" -c "discard 1020k 8k"
    # offset + length past 2^63 (the largest offset the tools take)
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -P 0x11 9223372036854775296 1024"
    must_fail_with "read failed: Input/output error" "$VBD_IO" "$@" -c "read 9223372036854775807 1"
    must_fail_with "write failed: Input/output error" "$VBD_IO" "$@" -c "write -z 9223372036854775296 1024"
    must_fail_with "discard failed: Input/output error" "$VBD_IO" "$@" -c "discard 9223372036854775296 1024"
    # read-only: every kind of write (vbd-io refuses it before the request,
    # as qemu-io; the library's own refusal is the NBD export's EPERM below)
    must_fail_with "Block node is read-only" "$VBD_IO" -r "$@" -c "write -P 0x11 0 512"
    must_fail_with "Block node is read-only" "$VBD_IO" -r "$@" -c "write -z 0 64k"
    must_fail_with "Block node is read-only" "$VBD_IO" -r "$@" -c "discard 0 64k"
}

step "vbd-io, raw"
bad_requests -f raw "$T/a.raw"
step "vbd-io, raw with cache=none (read-modify-write path)"
if "$VBD_IO" -f raw -t none -c "read 0 512" "$T/a.raw" >/dev/null 2>&1; then
    bad_requests -f raw -t none "$T/a.raw"
    must_fail_with "write failed: Input/output error" "$VBD_IO" -f raw -t none -c "write -P 0x11 1048000 1000" "$T/a.raw"
else
    echo "O_DIRECT not available here: skipped"
fi
step "vbd-io, the bare file as the drive (it does not grow)"
bad_requests -f file "$T/a.raw"
[ "$(stat -c %s "$T/a.raw")" = $M ] || fail "a.raw grew"
step "vbd-io, qcow2"
bad_requests -f qcow2 "$T/a.qcow2"
step "vbd-io, a raw window (offset=512k,size=1M): nothing lands outside it"
bad_requests --image-opts "$WIN"

step "vbd-io: the valid requests at the very end go through, and only there"
must "$VBD_IO" -f raw -c "write -P 0x3c 1047552 1024" -c "read -P 0x3c 1047552 1024" "$T/a.raw" >/dev/null
must qemu-io -f raw -c "write -P 0x3c 1047552 1024" "$T/a.raw.orig" >/dev/null
must "$VBD_IO" -f qcow2 -c "write -P 0x3c 1047552 1024" -c "write -z 1040384 4k" "$T/a.qcow2" >/dev/null
must qemu-io -f qcow2 -c "write -P 0x3c 1047552 1024" -c "write -z 1040384 4k" "$T/a.qcow2.orig" >/dev/null
must "$VBD_IO" --image-opts -c "write -P 0x3c 1047552 1024" "$WIN" >/dev/null
must qemu-io -f raw -c "write -P 0x3c $((512 * 1024 + 1047552)) 1024" "$T/w.raw.orig" >/dev/null
cmp "$T/a.raw" "$T/a.raw.orig" || fail "raw: a refused request changed the image"
cmp "$T/w.raw" "$T/w.raw.orig" || fail "raw window: a refused request changed the file"
qcheck "$T/a.qcow2"
must qemu-img compare -q -f qcow2 -F qcow2 "$T/a.qcow2" "$T/a.qcow2.orig"

step "NBD export: a raw and a qcow2 export, writable and read-only"
S=$T/nbd.sock
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
nbd_raw_daemon "$T/a.raw" "$S" \
    --blockdev driver=file,node-name=f1,filename="$T/a.qcow2" --blockdev driver=qcow2,node-name=q0,file=f1 \
    --export type=nbd,id=e0,node-name=disk0,name=raw,writable=on \
    --export type=nbd,id=e1,node-name=q0,name=qcow2,writable=on \
    --export type=nbd,id=e2,node-name=disk0,name=ro
python3 - "$S" <<'PY' || { tail -20 "$T/daemon.log"; fail "NBD requests"; }
import struct, sys
import nbdproto
from nbdproto import (CMD_CACHE as CACHE, CMD_DISC as DISC, CMD_FLUSH as FLUSH, CMD_READ as READ, CMD_TRIM as TRIM,
                      CMD_WRITE as WRITE, CMD_WRITE_ZEROES as ZEROES, recvn, request)
path = sys.argv[1]
EPERM, EINVAL, ENOSPC = 1, 22, 28
MiB = 1 << 20
def connect(name):
    s = nbdproto.connect(path, 60)
    size, flags = nbdproto.handshake(s, name.decode())  # EXPORT_NAME
    return s, size
cookie = 0
def req(s, typ, off, ln, payload=b''):
    """One request, its simple reply's error (the connection must answer)."""
    global cookie; cookie += 1
    s.sendall(request(typ, cookie, off, ln) + payload)
    m, err, ck = struct.unpack('>IIQ', recvn(s, 16))
    assert m == nbdproto.SIMPLE_REPLY_MAGIC and ck == cookie, (hex(m), ck, cookie)
    if typ == READ and err == 0:
        return err, recvn(s, ln)
    return err, None
def expect(s, what, typ, off, ln, want, payload=b''):
    err, _ = req(s, typ, off, ln, payload)
    if err != want:
        sys.exit(f'{what}: error {err}, expected {want}')
bad = [  # (what, offset, length): past the end, straddling it, wrapping 2^64, past 2^63
    ('at the end', MiB, 512), ('straddling the end', MiB - 4096, 8192), ('far past the end', 1 << 40, 512),
    ('wrapping 2^64', (1 << 64) - 512, 1024), ('past 2^63', 1 << 63, 512), ('ending past 2^63', (1 << 63) - 512, 1024),
]
for name in (b'raw', b'qcow2'):
    s, size = connect(name)
    assert size == MiB, size
    for what, off, ln in bad:
        expect(s, f'{name} read {what}', READ, off, ln, EINVAL)
        expect(s, f'{name} cache {what}', CACHE, off, ln, EINVAL)
        expect(s, f'{name} write {what}', WRITE, off, ln, ENOSPC, b'\x11' * ln)
        expect(s, f'{name} write-zeroes {what}', ZEROES, off, ln, ENOSPC)
        expect(s, f'{name} trim {what}', TRIM, off, ln, EINVAL)  # as qemu-nbd and nbdkit: no write
    # the valid edge: the last 512 bytes, written and read back
    expect(s, f'{name} write of the last 512 bytes', WRITE, MiB - 512, 512, 0, b'\xc3' * 512)
    err, data = req(s, READ, MiB - 512, 512)
    assert err == 0 and data == b'\xc3' * 512, (name, err)
    expect(s, f'{name} flush', FLUSH, 0, 0, 0)
    s.sendall(request(DISC, 0, 0, 0)); s.close()
s, size = connect(b'ro')
for what, off, ln in [('in range', 0, 4096), ('past the end', MiB, 512)]:
    expect(s, f'read-only write {what}', WRITE, off, ln, EPERM, b'\x11' * ln)
    expect(s, f'read-only write-zeroes {what}', ZEROES, off, ln, EPERM)
    expect(s, f'read-only trim {what}', TRIM, off, ln, EPERM)
err, data = req(s, READ, 0, 4096)
assert err == 0 and data == b'\x5a' * 4096, ('read-only export read', err)
s.close()
print(f'{2 * len(bad) * 5 + 6} refused NBD requests answered with the spec\'s errors')
PY
stop_daemon
must qemu-io -f raw -c "write -P 0xc3 1048064 512" "$T/a.raw.orig" >/dev/null
must qemu-io -f qcow2 -c "write -P 0xc3 1048064 512" "$T/a.qcow2.orig" >/dev/null
cmp "$T/a.raw" "$T/a.raw.orig" || fail "raw over NBD: a refused request changed the image"
qcheck "$T/a.qcow2"
must qemu-img compare -q -f qcow2 -F qcow2 "$T/a.qcow2" "$T/a.qcow2.orig"
echo "PASS"
