#!/bin/bash
# The effect of request merging in vbd-daemon's vhost-user-blk export:
# vbd-bench sequential 4K QD32 writes and reads against the same daemon with
# merge=off and merge=on (and qemu-storage-daemon, which merges too, for
# reference); server pinned to CPU 0, vbd-bench to CPU 1. Not a test.
#   bench/vhost-user-merge.sh [SECONDS]      (BASE_DAEMON=path: also a vbd-daemon without merging)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
SECS=${1:-5}
dir=$(mktemp -d /dev/shm/vbd-vu-merge.XXXXXX)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$dir"' EXIT
sock=$dir/vu.sock img=$dir/disk.raw
qemu-img create -q -f raw "$img" 1G
qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
serve() { # binary node-kind extra-export-options
    local bin=$1 kind=$2 extra=$3
    rm -f "$sock"
    local nodes=(--blockdev driver=null-co,node-name=disk0,size=1073741824)
    [ "$kind" = file ] && nodes=(--blockdev driver=file,node-name=file0,filename="$img",cache.direct=off
                                 --blockdev driver=raw,node-name=disk0,file=file0)
    taskset -c 0 "$bin" "${nodes[@]}" \
        --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on$extra" \
        >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
    echo "server $bin did not start" >&2; exit 1
}
field() { python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['iops'] if sys.argv[2]=='iops' else r['lat-us']['p99'])" "$1" "$2"; }
run() { # label binary kind extra workload
    local i=() p=()
    serve "$2" "$3" "$4"
    for _ in $(seq "$REPS"); do
        out=$(taskset -c 1 "$VBD_BENCH" --vhost-user "$sock" -w "$5" -b 4k -d 32 -t "$SECS" --json)
        i+=("$(field "$out" iops)"); p+=("$(field "$out" p99)")
    done
    kill $spid; wait $spid 2>/dev/null || true; spid=
    printf '%-6s %-9s %-22s %10.0f %9.1f\n' "$3" "$5" "$1" "$(printf '%s\n' "${i[@]}" | median)" "$(printf '%s\n' "${p[@]}" | median)"
}
echo "machine: $(machine); $SECS s per run, medians of $REPS; 4K QD32, 1 queue"
printf '%-6s %-9s %-22s %10s %9s\n' node workload server IOPS "p99 us"
for kind in null file; do
    for w in write read; do
        [ -n "${BASE_DAEMON:-}" ] && run "vbd (before merging)" "$BASE_DAEMON" $kind "" $w
        run "vbd merge=off" "$VBD_DAEMON" $kind ",merge=off" $w
        run "vbd merge=on" "$VBD_DAEMON" $kind "" $w
        run "qemu-storage-daemon" qemu-storage-daemon $kind "" $w
    done
done
