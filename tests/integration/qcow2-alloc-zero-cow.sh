#!/bin/bash
# A small write into a new qcow2 cluster whose rest reads as zeroes (no
# backing file there, or a backing file that reads zeroes there): the rest
# of the host cluster gets write-zeroes (an unwritten extent on ext4), not
# 60 KiB of written zeroes - as qemu-io does it (QEMU's handle_alloc_space).
# filefrag shows which 4 KiB blocks of the cluster hold written data: the
# same as qemu-io's file. Where the backing file has data the rest is copied
# as before. Data read back by qemu-io and qemu-img compare, qemu-img check
# clean. (vbd wrote the whole cluster.) On a filesystem without unwritten
# extents (tmpfs) the test is skipped.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io filefrag python3
cd "$T"
# the written 4 KiB blocks of the host cluster at OFF (64 KiB) of FILE, as a list of block numbers
written_blocks() {
    filefrag -s -v "$1" 2>/dev/null | python3 -c '
import re, sys
off = int(sys.argv[1]) // 4096
out = []
for line in sys.stdin:
    m = re.match(r"\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*\d+\.\.\s*\d+:\s*\d+:\s*(.*)", line)
    if not m:
        continue
    a, b, flags = int(m.group(1)), int(m.group(2)), m.group(3)
    if "unwritten" in flags:
        continue
    out += [k - off for k in range(max(a, off), min(b, off + 15) + 1)]
print(" ".join(map(str, out)))' "$2"
}
host_of() { # the host offset of guest offset $2 in qcow2 $1
    qemu-img map --output=json -f qcow2 "$1" | python3 -c '
import json, sys
g = int(sys.argv[1])
for e in json.load(sys.stdin):
    if e["start"] <= g < e["start"] + e["length"] and e.get("offset") is not None:
        print(e["offset"] + g - e["start"]); break' "$2"
}
truncate -s 1M probe && filefrag -v probe >/dev/null 2>&1 || skip "filefrag does not work here"
must qemu-img create -q -f qcow2 base.qcow2 4M
must qemu-io -f qcow2 -c 'write -P 0x11 1M 64k' base.qcow2
for case in plain overlay-zero overlay-data; do
    step "$case: a 4 KiB write at 8 KiB into a new cluster"
    at=0; [ $case = overlay-data ] && at=$((1024 * 1024))
    for k in q v; do
        if [ $case = plain ]; then
            must qemu-img create -q -f qcow2 $k.qcow2 4M
        else
            must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 $k.qcow2
        fi
    done
    must qemu-io -f qcow2 -c "write -P 0x5a $((at + 8192)) 4k" q.qcow2
    must "$VBD_BUILD/src/tools/vbd-io" -f qcow2 -c "write -P 0x5a $((at + 8192)) 4k" v.qcow2
    for k in q v; do
        h=$(host_of $k.qcow2 $at)
        [ -n "$h" ] || fail "$case: no host cluster for $at in $k.qcow2"
        eval "w_$k=\"$(written_blocks $k.qcow2 "$h")\""
    done
    echo "written 4K blocks of the cluster: qemu-io [$w_q], vbd-io [$w_v]"
    [ "$w_q" = "$w_v" ] || fail "$case: vbd wrote other blocks of the cluster than qemu-io: [$w_v] vs [$w_q]"
    must qemu-img compare -q q.qcow2 v.qcow2
    qcheck v.qcow2
done
echo ok
