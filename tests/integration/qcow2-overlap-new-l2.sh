#!/bin/bash
# The metadata overlap check knows the L2 tables allocated since the open.
# A corrupt image claims a data cluster as free (its refcount is 0 while
# guest cluster 0 maps to it); the next new L2 table is placed there, and a
# write to guest cluster 0 would then land on that table. vbd must refuse
# the write and mark the image corrupt, as qemu-io does ("overlaps with
# active L2 table"); before, only tables present at open were known and the
# guest's data replaced the new table on disk.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
corrupt_image() { # IMG: guest cluster 0 written, the refcount of its host cluster set to 0
    must qemu-img create -q -f qcow2 -o cluster_size=4k "$1" 16M
    must qemu-io -c 'write -P 1 0 4k' "$1" >/dev/null
    python3 - "$1" <<'PY' || fail "could not clear the data cluster's refcount"
import json, struct, subprocess, sys
img = sys.argv[1]
host = json.loads(subprocess.check_output(['qemu-img', 'map', '--output=json', img]))[0]['offset']
f = open(img, 'r+b')
h = f.read(104)
f.seek(struct.unpack('>Q', h[48:56])[0])       # refcount table
block = struct.unpack('>Q', f.read(8))[0]       # its first block (16-bit refcounts)
f.seek(block + 2 * (host // 4096))
assert struct.unpack('>H', f.read(2))[0] == 1
f.seek(block + 2 * (host // 4096))
f.write(b'\0\0')
print(host, file=open('host.txt', 'w'))
PY
}
for tool in qemu-io "$VBD_IO"; do
    name=${tool##*/}
    step "$name: a new L2 table placed on a data cluster the refcounts call free; then a write to that data cluster"
    corrupt_image c.qcow2
    host=$(cat host.txt)
    out=$("$tool" -f qcow2 -c 'write -P 2 4M 4k' -c 'write -P 3 0 4k' c.qcow2 2>&1)
    # the new table for guest 4M took the freed cluster: the table is what a check must protect
    python3 - c.qcow2 "$host" <<'PY' || fail "$name: the L2 table for 4M is not at the freed cluster ($host): the test no longer sets up the case"
import struct, sys
f = open(sys.argv[1], 'rb'); h = f.read(104)
f.seek(struct.unpack('>Q', h[40:48])[0] + 8 * 2)   # L1 entry 2 (guest 4M-6M with 4k clusters)
sys.exit(0 if struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00 == int(sys.argv[2]) else 1)
PY
    echo "$out" | grep -qi "corrupt" || fail "$name: the write over the new L2 table was not refused: $out"
    qemu-img info c.qcow2 | grep -q "corrupt: true" || fail "$name: the image is not marked corrupt"
    # the table still maps guest 4M to the data written there
    must qemu-io -f qcow2 -r -c 'read -P 2 4M 4k' c.qcow2 >/dev/null
done
echo OK
