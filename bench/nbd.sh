#!/bin/bash
# vbd-daemon's NBD export vs qemu-nbd vs nbdkit (file plugin) serving the
# same raw file on /dev/shm, over a unix socket and TCP loopback, driven by
# the same clients (fio's nbd engine, then vbd-bench --nbd) in one run.
# Ratio = vbd / best peer (> 1: vbd is faster); "ns/r": each server's CPU
# (user+system, all threads) per request, which compares across hosts. The
# server is pinned to CPU 0 and the client to CPU 1. Not a test.
#   bench/nbd.sh [SECONDS]      CLIENTS="fio vbd-bench copy" (default all)
# "copy": nbdcopy of the whole export to null: and qemu-img bench (4K reads,
# QD32), in seconds (lower is better; ratio = best peer time / vbd time).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
SECS=${1:-3}
dir=$(mktemp -d /dev/shm/vbd-nbd-bench.XXXXXX)
spid=
# (|| true: under set -e a failing kill, of a server that already died, would end the trap before the rm)
trap '[ -z "$spid" ] || kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
nbd_image
PORT=${PORT:-10899}
# Both print "IOPS REQUESTS"
fio_iops() { fio_run "$@" | { read -r iops _ n && echo "$iops $n"; }; }
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
bench_iops() { # URI RW BS DEPTH (vbd-bench's workload names are fio's)
    taskset -c 1 "${TAX[@]}" "$VBD_BENCH" --nbd "$1" -w "$2" -b "$3" -d "$4" -t "$SECS" --json |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r['iops']), r['requests'])"
}
echo "machine: $(machine); host: $(host_kind); $SECS s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
idle0=$(cpu_idle)
trap '[ -z "$spid" ] || kill $spid 2>/dev/null || true; echo "idle during the run: $(cpu_idle "$idle0")load $(cut -d" " -f1-3 /proc/loadavg)"; rm -rf "$dir"' EXIT
for client in ${CLIENTS:-fio vbd-bench}; do
[ $client = copy ] && continue
echo "client: $client"
printf '%-5s %-18s %10s %10s %10s %7s %8s %8s %8s\n' via workload vbd qemu-nbd nbdkit ratio "vbd ns/r" "qnbd ns/r" "kit ns/r"
for t in unix tcp; do
    while IFS='|' read -r label rw bs depth; do
        declare -A r=() nsr=()
        for s in vbd qemu-nbd nbdkit; do
            serve $s $t
            c0=$(cpu_ns $spid)
            if [ $client = fio ]; then out=$(fio_iops "$URI" $rw $bs $depth || echo 0 0)
            else out=$(bench_iops "$URI" $rw $bs $depth || echo 0 0); fi
            c1=$(cpu_ns $spid)
            r[$s]=${out% *}; nsr[$s]=$(( (c1 - c0) / (${out#* } + 1) ))
            stop
        done
        best=${r[qemu-nbd]}; [ "${r[nbdkit]}" -gt "$best" ] && best=${r[nbdkit]}
        printf '%-5s %-18s %10s %10s %10s %7.2f %8s %8s %8s\n' $t "$label" "${r[vbd]}" "${r[qemu-nbd]}" "${r[nbdkit]}" \
            "$(echo "${r[vbd]} / ($best + 0.0001)" | bc -l)" "${nsr[vbd]}" "${nsr[qemu-nbd]}" "${nsr[nbdkit]}"
    done <<ROWS
4k randread QD1|randread|4k|1
4k randread QD32|randread|4k|32
4k randwrite QD32|randwrite|4k|32
1M seqread QD8|read|1M|8
ROWS
done
done
secs_of() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }
if [[ " ${CLIENTS:-fio vbd-bench copy} " == *" copy "* ]]; then
    echo "clients: nbdcopy (1 GiB to null:) and qemu-img bench (-c 200000 -d 32, 4K reads), seconds"
    printf '%-5s %-24s %10s %10s %10s %7s\n' via client vbd qemu-nbd nbdkit ratio
    for t in unix tcp; do
        for c in nbdcopy qemu-img-bench; do
            declare -A r=()
            for s in vbd qemu-nbd nbdkit; do
                serve $s $t
                if [ $c = nbdcopy ]; then r[$s]=$(secs_of "${TAX[@]}" nbdcopy "$URI" null:)
                else r[$s]=$(bench_secs timeout 60 "${TAX[@]}" qemu-img bench -f raw -c 200000 -d 32 -s 4k "$URI" || true)
                     [ -n "${r[$s]}" ] || r[$s]=60; fi # qemu-nbd over TCP needs ~470 s here (~420 IOPS): cut at 60
                stop
            done
            best=${r[qemu-nbd]}; (( $(echo "${r[nbdkit]} < $best" | bc -l) )) && best=${r[nbdkit]}
            printf '%-5s %-24s %10s %10s %10s %7.2f\n' $t $c "${r[vbd]}" "${r[qemu-nbd]}" "${r[nbdkit]}" \
                "$(echo "$best / (${r[vbd]} + 0.0001)" | bc -l)"
        done
    done
fi
