#!/bin/bash
# qemu-nbd vs vbd-nbd given the same argv (-f raw -x disk -t -e 8, a unix
# socket or 127.0.0.1:PORT) serving the same raw file on /dev/shm, back to
# back per row: fio's nbd engine (IOPS, the server's CPU ns per request),
# then nbdcopy of the 1 GiB export to null: (seconds, lower is better).
# Ratio = vbd-nbd / qemu-nbd for IOPS, qemu-nbd / vbd-nbd for seconds
# (> 1: vbd-nbd is faster). Server on CPU 0, client on CPU 1. Not a test.
#   bench/vbd-nbd.sh [SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
SECS=${1:-3}
VBD_NBD=$VBD_BUILD/src/tools/vbd-nbd
dir=$(mktemp -d /dev/shm/vbd-nbd-ab.XXXXXX)
spid=
trap '[ -z "$spid" ] || kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
nbd_image
PORT=${PORT:-10877}
# serve_as BIN TRANSPORT: BIN with qemu-nbd's argv; sets URI and spid
serve_as() {
    local bin=$1 t=$2 sock=$dir/s.sock uri
    rm -f "$sock"
    local addr=(-k "$sock")
    uri="nbd+unix:///disk?socket=$sock"
    if [ "$t" = tcp ]; then
        PORT=$((PORT + 1))
        addr=(-b 127.0.0.1 -p $PORT)
        uri="nbd://127.0.0.1:$PORT/disk"
    fi
    taskset -c 0 "${TAX[@]}" "$bin" -f raw -x disk -t -e 8 "${addr[@]}" "$img" >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.05; done
    URI=$uri
}
echo "machine: $(machine); host: $(host_kind); $SECS s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-18s %10s %10s %7s %9s %9s\n' via workload qemu-nbd vbd-nbd ratio "qnbd ns/r" "vbd ns/r"
for t in unix tcp; do
    while IFS='|' read -r label rw bs depth; do
        declare -A r=() nsr=()
        for s in qemu-nbd vbd-nbd; do
            bin=qemu-nbd
            [ $s = vbd-nbd ] && bin=$VBD_NBD
            serve_as "$bin" $t
            c0=$(cpu_ns $spid)
            out=$(fio_run "$URI" $rw $bs $depth || echo "0 0 0")
            c1=$(cpu_ns $spid)
            read -r iops _ n <<<"$out"
            r[$s]=$iops
            nsr[$s]=$(((c1 - c0) / (n + 1)))
            stop
        done
        printf '%-5s %-18s %10s %10s %7.2f %9s %9s\n' $t "$label" "${r[qemu-nbd]}" "${r[vbd-nbd]}" \
            "$(echo "${r[vbd-nbd]} / (${r[qemu-nbd]} + 0.0001)" | bc -l)" "${nsr[qemu-nbd]}" "${nsr[vbd-nbd]}"
    done <<ROWS
4k randread QD32|randread|4k|32
4k randwrite QD32|randwrite|4k|32
1M seqread QD8|read|1M|8
ROWS
    declare -A r=()
    for s in qemu-nbd vbd-nbd; do
        bin=qemu-nbd
        [ $s = vbd-nbd ] && bin=$VBD_NBD
        serve_as "$bin" $t
        r[$s]=$(/usr/bin/time -f %e "${TAX[@]}" taskset -c 1 nbdcopy "$URI" null: 2>&1 >/dev/null | tail -1)
        stop
    done
    printf '%-5s %-18s %10s %10s %7.2f\n' $t "nbdcopy 1G (s)" "${r[qemu-nbd]}" "${r[vbd-nbd]}" \
        "$(echo "${r[qemu-nbd]} / (${r[vbd-nbd]} + 0.0001)" | bc -l)"
done
