#!/bin/bash
# vbd-img convert vs qemu-img convert of a 2 GiB raw image with data,
# written zeroes and holes (as ../shared/bench/img-convert.sh lays it
# out), raw -> raw. Ratio = qemu time / vbd time (>1: vbd faster).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine); medians of $REPS runs"
printf '%-10s %-26s %9s %9s %7s %10s %10s\n' where case "vbd s" "qemu s" ratio "vbd MiB" "qemu MiB"
for d in $DIRS; do
    src=$d/vbd-conv-src-$$.raw
    trap 'rm -f "$src" "$d"/vbd-conv-out-$$*' EXIT
    python3 - "$src" <<'PY'
import os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * M)
zero = bytes(M)
for i in range(512):
    os.pwrite(fd, os.urandom(M), i * 4 * M)
    os.pwrite(fd, zero, i * 4 * M + M)
os.close(fd)
PY
    for case in "raw->raw|-f raw -O raw" "raw->raw -m 16 -W|-f raw -O raw -m 16 -W" "raw->raw -t none|-f raw -O raw -t none -T none"; do
        label=${case%%|*} args=${case#*|}
        v=() q=()
        for _ in $(seq "$REPS"); do
            out=$d/vbd-conv-out-$$.raw
            rm -f "$out"; sync
            s=$(date +%s.%N); "$VBD_IMG" convert $args "$src" "$out"; e=$(date +%s.%N)
            v+=("$(echo "$e - $s" | bc -l)"); vm=$(du -m "$out" | cut -f1)
            qemu-img compare -q "$src" "$out" || { echo "vbd output differs!" >&2; exit 1; }
            rm -f "$out"; sync
            s=$(date +%s.%N); qemu-img convert $args "$src" "$out"; e=$(date +%s.%N)
            q+=("$(echo "$e - $s" | bc -l)"); qm=$(du -m "$out" | cut -f1)
        done
        vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
        printf '%-10s %-26s %9.3f %9.3f %7.2f %10s %10s\n' "$d" "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" "$vm" "$qm"
    done
    rm -f "$src" "$d"/vbd-conv-out-$$*
done
