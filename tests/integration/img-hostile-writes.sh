#!/bin/bash
# Writes into hostile foreign images land only where the image lets them:
# a header that points vbd's own metadata updates at other data must not
# turn a guest write into a write over that data.
# - vhdx with a log of length 0 (no log) whose offset names a data block
#   or the metadata region: a write that allocates a block needs the log to
#   update the BAT; vbd wrote its 8 KiB log entry at that offset anyway,
#   over the block's data (or the metadata: the image no longer opened).
#   QEMU 7.2 refuses such a write ("write failed: Invalid argument"); so
#   does vbd now, and writes into allocated blocks still work.
# - monolithicSparse vmdk whose header gives the embedded descriptor more
#   room (desc_size) than lies before the grain directories: the first
#   write rewrote the descriptor (its new CID) zero-padded to that room,
#   wiping the redundant and primary grain directories, the grain tables
#   and the grains behind them. QEMU 7.2 rewrites only the descriptor's
#   own bytes; vbd's room now ends where the tables or the grains begin.
# Each case: QEMU's behaviour on the same image, vbd's, the old data read
# back by qemu-io, qemu-img check clean where it checks the format.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T" || exit 1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
CRAFT=$VBD_ROOT/tests/integration/vhdx-craft.py

step "vhdx: no log (length 0) at a data block's offset: an allocating write is refused as by qemu-io, the block intact"
must qemu-img create -q -f vhdx -o block_size=1M base.vhdx 8M
must qemu-io -f vhdx -c 'write -P 0x11 0 1M' base.vhdx >/dev/null
vhdx_nolog() { # IMG WHERE: both headers say log length 0 at WHERE (block0 = block 0's data, meta = the metadata region)
    VHDX_CRAFT=$CRAFT python3 - "$@" <<'EOF' || fail "patching $1"
import importlib.util, os, struct, sys
spec = importlib.util.spec_from_file_location('vc', os.environ['VHDX_CRAFT'])
vc = importlib.util.module_from_spec(spec); spec.loader.exec_module(vc)
p, where = sys.argv[1], sys.argv[2]
b = bytearray(open(p, 'rb').read())
bat, meta = struct.unpack_from('<Q', b, 196608 + 32)[0], struct.unpack_from('<Q', b, 196608 + 64)[0]
assert (bat, meta) == (2 << 20, 3 << 20), (bat, meta)
e0 = struct.unpack_from('<Q', b, bat)[0]
assert e0 & 7 == 6, hex(e0)  # block 0 fully present
off = (e0 >> 20) << 20 if where == 'block0' else meta
for h in (65536, 131072):
    struct.pack_into('<IQ', b, h + 68, 0, off)
    b[h:h + 4096] = vc.with_crc(bytes(b[h:h + 4096]), 4)
open(p, 'wb').write(b)
EOF
}
for where in block0 meta; do
    must cp base.vhdx q.vhdx
    vhdx_nolog q.vhdx $where
    must cp q.vhdx v.vhdx
    qout=$(qemu-io -f vhdx -c 'write -P 0x22 3M 4k' q.vhdx 2>&1)
    case $qout in *"write failed: Invalid argument"*) ;; *) fail "$where: qemu-io's write into a block that needs a BAT update: $qout" ;; esac
    vout=$("$VBD_IO" -f vhdx -c 'write -P 0x22 3M 4k' v.vhdx 2>&1)
    case $vout in *"write failed: Invalid argument"*) ;; *) fail "$where: vbd-io's write into a block that needs a BAT update: $vout" ;; esac
    out=$(qemu-io -r -f vhdx -c 'read -P 0x11 0 1M' -c 'read -P 0 3M 4k' v.vhdx 2>&1) || fail "$where: qemu-io cannot read the image after vbd's write: $out"
    case $out in *fail*|*Pattern*) fail "$where: block 0 changed by a refused write: $out" ;; esac
    # a write into an allocated block needs no log: it works
    must "$VBD_IO" -f vhdx -c 'write -P 0x33 4096 4096' v.vhdx >/dev/null
    out=$(qemu-io -r -f vhdx -c 'read -P 0x11 0 4096' -c 'read -P 0x33 4096 4096' -c 'read -P 0x11 8192 1040384' v.vhdx 2>&1)
    case $out in *fail*|*Pattern*) fail "$where: a write into an allocated block: $out" ;; esac
    out=$(qemu-img check -f vhdx v.vhdx 2>&1) || fail "$where: qemu-img check after vbd's writes: $out"
done

step "vmdk: a descriptor size reaching over the grain directories: the first write keeps them (and the grains)"
must qemu-img create -q -f vmdk s.vmdk 1M
must qemu-io -f vmdk -c 'write -P 0x11 0 64k' -c 'write -P 0x12 192k 64k' s.vmdk >/dev/null
python3 - s.vmdk <<'EOF' || fail "patching s.vmdk"
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
desc_off, desc_size = struct.unpack_from('<QQ', b, 28)
rgd, gd, grains = struct.unpack_from('<QQQ', b, 48)
assert (desc_off, desc_size) == (1, 20) and desc_off + desc_size <= rgd < gd < grains, (desc_off, desc_size, rgd, gd, grains)
struct.pack_into('<Q', b, 36, 2048)  # 1 MiB: over both directories, the tables and the grains
open(sys.argv[1], 'wb').write(b)
EOF
must cp s.vmdk q.vmdk
cid() { python3 -c 'import re,sys; print(re.search(rb"\nCID=(\w+)", open(sys.argv[1], "rb").read(20480)).group(1).decode())' "$1"; }
cid0=$(cid s.vmdk)
must qemu-io -f vmdk -c 'write -P 0x22 512k 4k' q.vmdk >/dev/null
out=$(qemu-io -r -f vmdk -c 'read -P 0x11 0 64k' -c 'read -P 0x12 192k 64k' -c 'read -P 0x22 512k 4k' q.vmdk 2>&1)
case $out in *fail*|*Pattern*) fail "qemu-io lost data itself: $out" ;; esac
must "$VBD_IO" -f vmdk -c 'write -P 0x22 512k 4k' s.vmdk >/dev/null
out=$(qemu-io -r -f vmdk -c 'read -P 0x11 0 64k' -c 'read -P 0x12 192k 64k' -c 'read -P 0x22 512k 4k' s.vmdk 2>&1) ||
    fail "qemu-io cannot read the image after vbd's write: $out"
case $out in *fail*|*Pattern*) fail "vbd's first write destroyed other data: $out" ;; esac
out=$("$VBD_IO" -r -f vmdk -c 'read -P 0x11 0 64k' -c 'read -P 0x12 192k 64k' s.vmdk 2>&1) || fail "vbd-io read back: $out"
qcheck -f vmdk s.vmdk
# the CID still changes on the first write (QEMU's rule): the descriptor's own sectors have room
[ "$(cid s.vmdk)" != "$cid0" ] || fail "the first write left the CID at $cid0"
echo OK
