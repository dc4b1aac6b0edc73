#!/bin/bash
# The effect of request merging in vbd-daemon's vhost-user-blk export:
# vbd-bench sequential 4K QD32 writes and reads against vbd-daemon with
# merge=off and merge=on (and qemu-storage-daemon, which merges too, for
# reference). All servers run at once on CPU 0 (each on its own copy of the
# image), vbd-bench on CPU 1, and the runs are interleaved (server A, B, C,
# A, B, C, ...) so that a busy host hurts them alike. "ns/r": the server's
# CPU time (user+system, all threads) per request. Not a test.
#   bench/vhost-user-merge.sh [SECONDS]      (BASE_DAEMON=path: also a vbd-daemon built without merging)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
SECS=${1:-5}
dir=$(mktemp -d /dev/shm/vbd-vu-merge.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; rm -rf "$dir"' EXIT
names=() bins=() extras=()
[ -n "${BASE_DAEMON:-}" ] && { names+=("vbd (before merging)"); bins+=("$BASE_DAEMON"); extras+=(""); }
names+=("vbd merge=off" "vbd merge=on" "qemu-storage-daemon")
bins+=("$VBD_DAEMON" "$VBD_DAEMON" qemu-storage-daemon)
extras+=(",merge=off" "" "")
start_all() { # node kind
    local kind=$1
    pids=()
    for i in "${!names[@]}"; do
        local img=$dir/disk$i.raw sock=$dir/vu$i.sock
        local nodes=(--blockdev driver=null-co,node-name=disk0,size=1073741824)
        [ "$kind" = file ] && nodes=(--blockdev driver=file,node-name=file0,filename="$img",cache.direct=off
                                     --blockdev driver=raw,node-name=disk0,file=file0)
        rm -f "$sock"
        taskset -c 0 "${bins[$i]}" "${nodes[@]}" \
            --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on${extras[$i]}" \
            >/dev/null 2>&1 &
        pids+=($!)
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    done
}
stop_all() { for p in "${pids[@]}"; do kill $p; wait $p 2>/dev/null || true; done; pids=(); }
field() { python3 -c "import json,sys; r=json.loads(sys.argv[1]); f=sys.argv[2]; print(r['lat-us']['p99'] if f=='p99' else r[f])" "$1" "$2"; }
for i in "${!names[@]}"; do
    qemu-img create -q -f raw "$dir/disk$i.raw" 1G
    qemu-io -f raw -c 'write -P 0x5a 0 1G' "$dir/disk$i.raw" >/dev/null
done
echo "machine: $(machine); $SECS s per run, medians of $REPS interleaved runs; 4K QD32, 1 queue"
printf '%-6s %-9s %-22s %10s %9s %8s\n' node workload server IOPS "p99 us" "ns/r"
for kind in null file; do
    start_all $kind
    for w in write read; do
        declare -A iops=() p99=() nsr=()
        for _ in $(seq "$REPS"); do
            for i in "${!names[@]}"; do
                c0=$(cpu_ns ${pids[$i]})
                out=$(taskset -c 1 "$VBD_BENCH" --vhost-user "$dir/vu$i.sock" -w $w -b 4k -d 32 -t "$SECS" --json)
                c1=$(cpu_ns ${pids[$i]})
                iops[$i]="${iops[$i]:-} $(field "$out" iops)"; p99[$i]="${p99[$i]:-} $(field "$out" p99)"
                nsr[$i]="${nsr[$i]:-} $(( (c1 - c0) / ($(field "$out" requests) + 1) ))"
            done
        done
        for i in "${!names[@]}"; do
            printf '%-6s %-9s %-22s %10.0f %9.1f %8.0f\n' $kind $w "${names[$i]}" "$(printf '%s\n' ${iops[$i]} | median)" \
                "$(printf '%s\n' ${p99[$i]} | median)" "$(printf '%s\n' ${nsr[$i]} | median)"
        done
        unset iops p99 nsr
    done
    stop_all
done
