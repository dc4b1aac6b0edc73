#!/bin/bash
# How long does query-named-block-nodes take while an iothread serves a
# guest's rings? A 64 MiB qcow2 with 12 persistent bitmaps, each of 1024
# extents (every other 64 KiB chunk written), exported over vhost-user-blk
# on iothread io0 (4 queues); vbd-bench reads at random through it while a
# QMP client asks query-named-block-nodes QUERIES times (replies in
# order; each one's wall time). Servers, one after the other in each
# round and alternating the order: vbd-daemon of BASE_BUILD (the code
# before a change, optional), of VBD_BUILD, and qemu-storage-daemon with
# the same options. Per server the median reply over all rounds, and the
# ratios (> 1: VBD_BUILD's replies come sooner). Not a test.
#   bench/qmp-bitmap-query.sh [ROUNDS] [QUERIES]   BASE_BUILD=DIR
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${1:-5}
QUERIES=${2:-5}
command -v qemu-storage-daemon >/dev/null || { echo "no qemu-storage-daemon" >&2; exit 1; }
dir=$(mktemp -d /dev/shm/vbd-qmp-bitmap.XXXXXX)
spid= lpid=
trap '[ -n "$lpid" ] && kill $lpid 2>/dev/null; [ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$dir"' EXIT
qemu-img create -q -f qcow2 "$dir/base.qcow2" 64M
for i in $(seq 0 11); do qemu-img bitmap --add "$dir/base.qcow2" "b$i"; done
writes=()
for off in $(seq 0 131072 $((64 * 1048576 - 1))); do writes+=(-c "write $off 4k"); done
qemu-io -f qcow2 "${writes[@]}" "$dir/base.qcow2" >/dev/null

servers=()
[ -n "${BASE_BUILD:-}" ] && servers+=("base:$BASE_BUILD/src/tools/vbd-daemon")
servers+=("vbd:$VBD_BUILD/src/tools/vbd-daemon" "qsd:qemu-storage-daemon")
one() { # NAME BINARY: prints the reply times of one run, one a line
    local name=$1 bin=$2
    cp "$dir/base.qcow2" "$dir/d.qcow2"
    rm -f "$dir/vu.sock" "$dir/qmp.sock"
    "$bin" --object iothread,id=io0 --chardev socket,id=mon,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=mon \
        --blockdev driver=file,node-name=f0,filename="$dir/d.qcow2" --blockdev driver=qcow2,node-name=d0,file=f0 \
        --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$dir/vu.sock",writable=on,num-queues=4,iothread=io0 \
        2>"$dir/$name.log" &
    spid=$!
    for _ in $(seq 1200); do [ -S "$dir/vu.sock" ] && break; sleep 0.05; done
    "$VBD_BUILD/src/tools/vbd-bench" --vhost-user "$dir/vu.sock" -q 4 -w randread -t 600 --size 64M >/dev/null 2>&1 &
    lpid=$!
    python3 - "$dir/qmp.sock" "$QUERIES" "$lpid" <<'PY'
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
def cmd(c):
    s.sendall(json.dumps({"execute": c}).encode() + b"\n")
    while True:
        r = json.loads(f.readline())
        if "event" not in r:
            return r
f.readline()
cmd("qmp_capabilities")
time.sleep(1)  # the load under way (a benchmark: a settle time, not a test's wait)
for _ in range(int(sys.argv[2])):
    t0 = time.monotonic()
    r = cmd("query-named-block-nodes")
    t = time.monotonic() - t0
    bm = [n for n in r["return"] if n["node-name"] == "d0"][0]["dirty-bitmaps"]
    assert len(bm) == 12 and all(b["count"] == 512 * 65536 for b in bm), bm
    print("%.4f" % t)
PY
    kill $lpid; wait $lpid 2>/dev/null || true; lpid=
    # qsd 7.2 has been seen to hang on SIGTERM here: 30 s, then SIGKILL
    kill $spid
    for _ in $(seq 600); do kill -0 $spid 2>/dev/null || break; sleep 0.05; done
    kill -9 $spid 2>/dev/null || true
    wait $spid 2>/dev/null || true
    spid=
}
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    order=("${servers[@]}")
    if [ $((r % 2)) = 0 ]; then # reversed every other round
        order=()
        for ((k = ${#servers[@]} - 1; k >= 0; k--)); do order+=("${servers[k]}"); done
    fi
    for s in "${order[@]}"; do
        one "${s%%:*}" "${s#*:}" >>"$dir/${s%%:*}.times"
    done
    echo "round $r: $(for s in "${servers[@]}"; do n=${s%%:*}; printf '%s %s s  ' "$n" "$(tail -n "$QUERIES" "$dir/$n.times" | median)"; done)load $(cut -d' ' -f1 /proc/loadavg)"
done
vbd=$(median <"$dir/vbd.times") qsd=$(median <"$dir/qsd.times")
line="query-named-block-nodes, median of $((ROUNDS * QUERIES)) replies: vbd $vbd s, qsd $qsd s, qsd/vbd $(awk -v a="$qsd" -v b="$vbd" 'BEGIN {printf "%.2f", a / b}')"
if [ -n "${BASE_BUILD:-}" ]; then
    base=$(median <"$dir/base.times")
    line+=", base $base s, base/vbd $(awk -v a="$base" -v b="$vbd" 'BEGIN {printf "%.2f", a / b}')"
fi
echo "$line"
