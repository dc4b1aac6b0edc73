#!/bin/bash
# Random writes QD32 into a fresh qcow2 overlay over a full 1 GiB backing
# file (every write allocates: copy-on-write from the backing file), with and
# without extended L2: vbd-img bench of one or more vbd builds beside
# qemu-img bench, medians of REPS; IOPS, CPU per request (user+system) and
# the overlay's size on the disk afterwards. Not a test.
#   bench/qcow2-overlay-ab.sh [DIR]        (default /var/tmp; cache=none)
# ROWS: "OPTS:SIZE ..." (default "extended_l2=on:4k extended_l2=on:1k
# extended_l2=off:4k"); TOOLS: "NAME=BUILD_DIR ... qemu" (default
# "vbd=$VBD_BUILD qemu").
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROWS=${ROWS:-"extended_l2=on:4k extended_l2=on:1k extended_l2=off:4k"}
TOOLS=${TOOLS:-"vbd=$VBD_BUILD qemu"}
D=$(mktemp -d "${1:-/var/tmp}/vbd-overlay-ab.XXXXXX")
trap 'rm -rf "$D"' EXIT
cd "$D"
N=20000
echo "machine: $(machine); $(host_kind); medians of $REPS, 1G images in ${1:-/var/tmp}, cache=none"
qemu-img create -q -f qcow2 full.qcow2 1G
qemu-io -c "write -P 0x5a 0 1G" full.qcow2 >/dev/null
printf '%-26s %-8s %9s %9s %10s\n' case tool IOPS "ns CPU/r" "file KiB"
for row in $ROWS; do
    o=${row%%:*} sz=${row#*:}
    for tool in $TOOLS; do
        name=${tool%%=*} bin=qemu-img
        [ "$tool" = qemu ] || bin=${tool#*=}/src/tools/vbd-img
        t=() c=() k=()
        for _ in $(seq "$REPS"); do
            rm -f o.qcow2
            qemu-img create -q -f qcow2 -o "$o" -b full.qcow2 -F qcow2 o.qcow2
            t+=("$(bench_secs run_cpu cpu.ns "$bin" bench -w -f qcow2 -t none -c $N -d 32 -s "$sz" -S 409612288 o.qcow2)")
            c+=("$(( $(cat cpu.ns) / N ))")
            k+=("$(( $(stat -c %b o.qcow2) / 2 ))")
        done
        printf '%-26s %-8s %9.0f %9s %10s\n' "$o ${sz}" "$name" "$(echo "$N / $(printf '%s\n' "${t[@]}" | median)" | bc -l)" \
            "$(printf '%s\n' "${c[@]}" | median)" "$(printf '%s\n' "${k[@]}" | median)"
    done
done
