#!/bin/bash
# vbd-img bench vs qemu-img bench: same file, same options, one run, ratio
# of throughput (>1 means vbd is faster); "ns/r": each tool's CPU time
# (user+system, all threads) per request. Not a test.
#   bench/img-bench.sh [DIR...]   (default: /dev/shm and /var/tmp)
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine); medians of $REPS runs; cache=none (O_DIRECT) for both tools"
printf '%-10s %-9s %-22s %12s %12s %7s %9s %9s\n' where aio workload "vbd IOPS" "qemu IOPS" ratio "vbd ns/r" "qemu ns/r"
for d in $DIRS; do
    img=$d/vbd-bench-$$.raw
    trap 'rm -f "$img" "$img".cpu*' EXIT
    qemu-img create -q -f raw "$img" 1G
    qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
    for aio in io_uring threads; do
        # label|count|args   (random = strided pseudo-random step, as in ../shared/bench)
        while IFS='|' read -r label count args; do
            v=() q=() vc=() qc=()
            for _ in $(seq "$REPS"); do
                v+=("$(bench_secs run_cpu "$img.cpu" "$VBD_IMG" bench -f raw -t none -i $aio -c "$count" $args "$img")")
                vc+=("$(( $(cat "$img.cpu") / count ))")
                q+=("$(bench_secs run_cpu "$img.cpu" qemu-img bench -f raw -t none -i $aio -c "$count" $args "$img")")
                qc+=("$(( $(cat "$img.cpu") / count ))")
            done
            vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
            printf '%-10s %-9s %-22s %12.0f %12.0f %7.2f %9.0f %9.0f\n' "$d" $aio "$label" \
                "$(echo "$count / $vs" | bc -l)" "$(echo "$count / $qs" | bc -l)" "$(echo "$qs / $vs" | bc -l)" \
                "$(printf '%s\n' "${vc[@]}" | median)" "$(printf '%s\n' "${qc[@]}" | median)"
        done <<ROWS
4k randread QD1|30000|-d 1 -s 4k -S 409612288
4k randread QD32|200000|-d 32 -s 4k -S 409612288
4k randwrite QD32|200000|-d 32 -s 4k -S 409612288 -w --pattern=0xa5
1M seqread QD4|3000|-d 4 -s 1M
1M seqwrite QD4|3000|-d 4 -s 1M -w --pattern=0xa5
ROWS
    done
    rm -f "$img" "$img".cpu*
done
