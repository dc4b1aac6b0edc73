#!/bin/bash
# qcow2: vbd vs qemu with the same parameters in one run; ratio = qemu time /
# vbd time (> 1: vbd is faster); "cpu": each tool's CPU time (user+system,
# all threads) per request of a bench row, per MiB of image of a convert row.
# Not a test.   bench/qcow2.sh [DIR]  (default /dev/shm)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_IO=$VBD_BUILD/src/tools/vbd-io
D=$(mktemp -d "${1:-/dev/shm}/vbd-qcow2-bench.XXXXXX")
trap 'rm -rf "$D"' EXIT
cd "$D"
SIZE=${SIZE:-1G}
echo "machine: $(machine); medians of $REPS; $SIZE images in ${1:-/dev/shm}, cache=none"
printf '%-40s %9s %9s %7s %9s %9s %s\n' case "vbd s" "qemu s" ratio "vbd cpu" "qemu cpu" "(ns per)"
# LABEL UNITS UNIT SETUP-CMD VBD-CMD QEMU-CMD (setup runs before each timed
# command; the CPU time is per UNITS requests or MiB, as UNIT says)
row() {
    local label=$1 units=$2 unit=$3 setup=$4 v=() q=() vc=() qc=()
    for _ in $(seq "$REPS"); do
        eval "$setup"; v+=("$(bench_secs_any "$5")"); vc+=("$(( $(cat cpu.ns) / units ))")
        eval "$setup"; q+=("$(bench_secs_any "$6")"); qc+=("$(( $(cat cpu.ns) / units ))")
    done
    local vs qs
    vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
    printf '%-40s %9.3f %9.3f %7.2f %9.0f %9.0f %s\n' "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" \
        "$(printf '%s\n' "${vc[@]}" | median)" "$(printf '%s\n' "${qc[@]}" | median)" "$unit"
}
# the seconds CMD (plain words) takes; its CPU time in ns to cpu.ns
bench_secs_any() {
    local s e
    s=$(date +%s.%N); run_cpu cpu.ns $1 >/dev/null 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc -l
}

qemu-img create -q -f qcow2 full.qcow2 "$SIZE"
qemu-io -c "write -P 0x5a 0 $SIZE" full.qcow2 >/dev/null
row "4k randread QD32 (allocated)" 200000 req ":" \
    "$VBD_IMG bench -f qcow2 -t none -c 200000 -d 32 -s 4k -S 409612288 full.qcow2" \
    "qemu-img bench -f qcow2 -t none -c 200000 -d 32 -s 4k -S 409612288 full.qcow2"
row "4k randwrite QD32 allocating" 50000 req "rm -f e.qcow2; qemu-img create -q -f qcow2 e.qcow2 $SIZE" \
    "$VBD_IMG bench -w -f qcow2 -t none -c 50000 -d 32 -s 4k -S 409612288 e.qcow2" \
    "qemu-img bench -w -f qcow2 -t none -c 50000 -d 32 -s 4k -S 409612288 e.qcow2"
row "4k randwrite QD32 over a backing file" 50000 req "rm -f o.qcow2; qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 o.qcow2" \
    "$VBD_IMG bench -w -f qcow2 -t none -c 50000 -d 32 -s 4k -S 409612288 o.qcow2" \
    "qemu-img bench -w -f qcow2 -t none -c 50000 -d 32 -s 4k -S 409612288 o.qcow2"
row "64k seqwrite QD8 allocating" 8192 req "rm -f e.qcow2; qemu-img create -q -f qcow2 e.qcow2 $SIZE" \
    "$VBD_IMG bench -w -f qcow2 -t none -c 8192 -d 8 -s 64k e.qcow2" \
    "qemu-img bench -w -f qcow2 -t none -c 8192 -d 8 -s 64k e.qcow2"
python3 - <<'PY'
import os
M = 1 << 20
fd = os.open('src.raw', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 1024 * M)
for i in range(256):
    os.pwrite(fd, os.urandom(M), i * 4 * M)
os.close(fd)
PY
row "convert raw -> qcow2 (1 GiB, holes)" 1024 MiB "rm -f c.qcow2" "$VBD_IMG convert -O qcow2 src.raw c.qcow2" \
    "qemu-img convert -O qcow2 src.raw c.qcow2"
row "convert qcow2 -> raw" 1024 MiB "rm -f c.raw" "$VBD_IMG convert -O raw c.qcow2 c.raw" "qemu-img convert -O raw c.qcow2 c.raw"
qemu-io -f raw -c "write -P 0x41 0 64M" src.raw >/dev/null
row "convert -c zstd (64 MiB compressible + 1 GiB sparse)" 1024 MiB "rm -f z.qcow2" \
    "$VBD_IMG convert -c -O qcow2 -o compression_type=zstd src.raw z.qcow2" \
    "qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw z.qcow2"
# open a 1 TiB sparse image and read 1000 random clusters: time and peak RSS
qemu-img create -q -f qcow2 big.qcow2 1T
python3 -c "
import random; r = random.Random(1)
print('\n'.join('read %d 65536' % (r.randrange(0, (1 << 40) // 65536) * 65536) for _ in range(1000)))" >reads.txt
args=(); while read -r l; do args+=(-c "$l"); done < <(head -250 reads.txt)   # 255 commands at most per run
for tool in "$VBD_IO" qemu-io; do
    /usr/bin/time -f "%e %M" -o t.txt "$tool" -f qcow2 -r "${args[@]}" big.qcow2 >/dev/null
    read -r secs rss <t.txt
    printf '%-40s %9s s %9s KiB peak RSS (250 random 64K reads of a 1 TiB image)\n' "${tool##*/}" "$secs" "$rss"
done
