#!/bin/bash
# One row of bench/iscsi.sh for A/B work on one tgtd LUN: the servers named
# take turns ROUNDS times, each exporting the LUN over NBD (unix socket) to
# fio's nbd engine for SECONDS. Per run: IOPS, the server's and tgtd's CPU
# per request, the server's context switches per request (all threads),
# host busy (user+system+irq, nice-19 user time left out) and, with
# PERF=stat, the server's syscalls per request. Needs root (tgtd). Not a test.
#   [THIN=0] [ROUNDS=N] [PERF=stat] bench/iscsi-row.sh RW BS DEPTH SERVER... [-- SECONDS]
#   SERVER: qsd, or vbd=BUILD-DIR;  e.g. bench/iscsi-row.sh randread 4k 32 vbd=build vbd=/tmp/base qsd
set -euo pipefail
source "$(dirname "$0")/common.sh"
rw=$1 bs=$2 depth=$3; shift 3
servers=() SECS=5
while [ $# -gt 0 ]; do
    case $1 in --) SECS=$2; shift 2 ;; *) servers+=("$1"); shift ;; esac
done
ROUNDS=${ROUNDS:-3}
VBD_BUILD=$VBD_BUILD source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-tgt.sh"
set +u
img=$(mktemp /dev/shm/vbd-iscsi-row.XXXXXX)
on_exit "rm -f $img"
qemu-img create -q -f raw "$img" 1G
qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
tgt_start "$img"
[ "${THIN:-1}" = 1 ] || tgt_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=0
sock=$T/nbd.sock spid= ppid=
on_exit '[ -n "$ppid" ] && kill -INT $ppid 2>/dev/null; [ -n "$spid" ] && kill $spid 2>/dev/null'
node="driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1"
ctx() { cat /proc/$1/task/*/status 2>/dev/null | awk '$1 ~ /ctxt_switches:$/ {s += $2} END {print s + 0}'; }
echo "$rw $bs QD$depth, THIN=${THIN:-1}; $SECS s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
        bin=qemu-storage-daemon
        [ "$s" = qsd ] || bin=${s#vbd=}/src/tools/vbd-daemon
        rm -f "$sock"
        "$bin" --blockdev "$node" --nbd-server addr.type=unix,addr.path="$sock" \
            --export type=nbd,id=e0,node-name=i0,name=disk,writable=on >/dev/null 2>&1 &
        spid=$!
        for _ in $(seq 100); do nbdinfo --size "nbd+unix:///disk?socket=$sock" >/dev/null 2>&1 && break; sleep 0.05; done
        [ "${PERF:-}" = stat ] && { perf stat -e 'syscalls:sys_enter_*' -e context-switches -p $spid -o "$T/perfstat" & ppid=$!; }
        c0=$(cpu_ns $spid) t0=$(cpu_ns $TGT_PID) h0=$(host_busy) x0=$(ctx $spid)
        out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///disk?socket=$sock" --rw="$rw" --bs="$bs" --iodepth="$depth" \
            --time_based --runtime="$SECS" --size=1G --output-format=json 2>/dev/null)
        c1=$(cpu_ns $spid) t1=$(cpu_ns $TGT_PID) h1=$(host_busy) x1=$(ctx $spid)
        if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid 2>/dev/null || true; ppid=; fi
        n=$(python3 -c "
import json,sys
t=sys.argv[1]; j=json.loads(t[t.index('{'):])['jobs'][0]; d='write' if '$rw'.endswith('write') else 'read'
print(max(j[d]['total_ios'],1), round(j[d]['iops']))" "$out")
        read -r ios iops <<<"$n"
        printf 'round %s %-26s iops %6s  ns/r %7d  tgtd ns/r %7d  cs/r %5.2f  host busy %3d%%\n' "$r" "$s" "$iops" \
            $(( (c1 - c0) / ios )) $(( (t1 - t0) / ios )) "$(echo "($x1 - $x0) / $ios" | bc -l)" "$(busy_pct $h0 $h1 $SECS)"
        [ "${PERF:-}" = stat ] && awk -v n="$ios" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 + 0 > n / 50) printf "    %-40s %8.3f /req\n", $2, $1 / n }' "$T/perfstat"
        kill $spid; wait $spid 2>/dev/null || true
        spid=
    done
done
