#!/bin/bash
# vbd-img convert vs qemu-img convert of a 2 GiB streamOptimized vmdk (an
# OVA's disk) with data in every other MiB (half full, data that deflates
# to about half) to qcow2. qemu-img makes the source. Ratio = qemu time /
# vbd time (>1: vbd faster); the outputs are compared with qemu-img compare.
# "ns/MiB": each tool's CPU time (user+system, all threads) per MiB of
# data converted (1 GiB).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine); medians of $REPS runs"
printf '%-10s %-28s %9s %9s %7s %10s %11s\n' where case "vbd s" "qemu s" ratio "vbd ns/MiB" "qemu ns/MiB"
for d in $DIRS; do
    raw=$d/vbd-vmdk-src-$$.raw src=$d/vbd-vmdk-src-$$.vmdk
    trap 'rm -f "$raw" "$src" "$d"/vbd-vmdk-out-$$*' EXIT
    python3 - "$raw" <<'PY'
import os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * M)
table = bytes(b'0123456789abcdef'[i % 16] for i in range(256))  # 4 bits of entropy a byte
for i in range(1024):
    os.pwrite(fd, os.urandom(M).translate(table), i * 2 * M)
os.close(fd)
PY
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$raw" "$src"
    rm -f "$raw"
    for case in "vmdk(stream)->qcow2|-f vmdk -O qcow2" "vmdk(stream)->raw|-f vmdk -O raw"; do
        label=${case%%|*} args=${case#*|}
        v=() q=() vc=() qc=()
        for _ in $(seq "$REPS"); do
            out=$d/vbd-vmdk-out-$$
            rm -f "$out"; sync
            s=$(date +%s.%N); run_cpu "$out.cpu" "$VBD_IMG" convert $args "$src" "$out"; e=$(date +%s.%N)
            vc+=("$(( $(cat "$out.cpu") / 1024 ))")
            v+=("$(echo "$e - $s" | bc -l)")
            qemu-img compare -q -f vmdk "$src" "$out" || { echo "vbd output differs!" >&2; exit 1; }
            rm -f "$out"; sync
            s=$(date +%s.%N); run_cpu "$out.cpu" qemu-img convert $args "$src" "$out"; e=$(date +%s.%N)
            qc+=("$(( $(cat "$out.cpu") / 1024 ))")
            q+=("$(echo "$e - $s" | bc -l)")
        done
        vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
        printf '%-10s %-28s %9.3f %9.3f %7.2f %10.0f %11.0f\n' "$d" "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" \
            "$(printf '%s\n' "${vc[@]}" | median)" "$(printf '%s\n' "${qc[@]}" | median)"
    done
    rm -f "$src" "$d"/vbd-vmdk-out-$$*
done
