#!/bin/bash
# vbd-img convert vs qemu-img convert of a 2 GiB dynamic vhdx, half full
# (1 MiB of random data in every other 1 MiB, so every 8 MiB block is
# allocated), to qcow2 and to raw.
# The source is made once by qemu-img. Ratio = qemu time / vbd time (>1:
# vbd faster). Both outputs are compared with the source.
# "ns/MiB": each tool's CPU time (user+system, all threads) per MiB of
# data converted (1 GiB).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine); medians of $REPS runs"
printf '%-10s %-22s %9s %9s %7s %10s %10s %10s %11s\n' where case "vbd s" "qemu s" ratio "vbd MiB" "qemu MiB" "vbd ns/MiB" "qemu ns/MiB"
for d in $DIRS; do
    raw=$d/vbd-conv-vhdx-$$.raw src=$d/vbd-conv-vhdx-$$.vhdx
    trap 'rm -f "$raw" "$src" "$d"/vbd-conv-vhdx-out-$$*' EXIT
    python3 - "$raw" <<'PY'
import os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * M)
for i in range(1024):
    os.pwrite(fd, os.urandom(M), i * 2 * M)
os.close(fd)
PY
    qemu-img convert -f raw -O vhdx "$raw" "$src"
    rm -f "$raw"
    for case in "vhdx->qcow2|-f vhdx -O qcow2|qcow2" "vhdx->raw|-f vhdx -O raw|raw"; do
        IFS='|' read -r label args ofmt <<<"$case"
        v=() q=() vc=() qc=()
        for _ in $(seq "$REPS"); do
            out=$d/vbd-conv-vhdx-out-$$.$ofmt
            rm -f "$out"; sync
            s=$(date +%s.%N); run_cpu "$out.cpu" "$VBD_IMG" convert $args "$src" "$out"; e=$(date +%s.%N)
            vc+=("$(( $(cat "$out.cpu") / 1024 ))")
            v+=("$(echo "$e - $s" | bc -l)"); vm=$(du -m "$out" | cut -f1)
            qemu-img compare -q -f vhdx -F "$ofmt" "$src" "$out" || { echo "vbd output differs!" >&2; exit 1; }
            rm -f "$out"; sync
            s=$(date +%s.%N); run_cpu "$out.cpu" qemu-img convert $args "$src" "$out"; e=$(date +%s.%N)
            qc+=("$(( $(cat "$out.cpu") / 1024 ))")
            q+=("$(echo "$e - $s" | bc -l)"); qm=$(du -m "$out" | cut -f1)
        done
        vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
        printf '%-10s %-22s %9.3f %9.3f %7.2f %10s %10s %10.0f %11.0f\n' "$d" "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" "$vm" "$qm" \
            "$(printf '%s\n' "${vc[@]}" | median)" "$(printf '%s\n' "${qc[@]}" | median)"
    done
    rm -f "$src" "$d"/vbd-conv-vhdx-out-$$*
done
