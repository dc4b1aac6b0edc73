#!/bin/bash
# One row of bench/iscsi.sh for A/B work on one tgtd LUN: the servers named
# take turns ROUNDS times, each exporting the LUN over vhost-user-blk to
# vbd-bench (CLIENT=nbd: over NBD on a unix socket to fio's nbd engine)
# for SECONDS. Per run: IOPS, the server's and tgtd's CPU
# per request, the server's context switches per request (all threads),
# host busy (user+system+irq, nice-19 user time left out), the % of a CPU
# tgtd's busiest thread (its event loop) used and, with
# PERF=stat, the server's syscalls per request. Needs root (tgtd). Not a test.
#   [THIN=0] [CLIENT=nbd] [ROUNDS=N] [PERF=stat] bench/iscsi-row.sh RW BS DEPTH SERVER... [-- SECONDS]
#   SERVER: qsd, or vbd=BUILD-DIR;  e.g. bench/iscsi-row.sh randread 4k 32 vbd=build vbd=/tmp/base qsd
set -euo pipefail
source "$(dirname "$0")/common.sh"
rw=$1 bs=$2 depth=$3; shift 3
servers=() SECS=5
while [ $# -gt 0 ]; do
    case $1 in --) SECS=$2; shift 2 ;; *) servers+=("$1"); shift ;; esac
done
ROUNDS=${ROUNDS:-3}
CLIENT=${CLIENT:-vu}
VBD_BUILD=$VBD_BUILD source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-tgt.sh"
set +u
iscsi_bench_setup vbd-iscsi-row
spid= ppid=
on_exit '[ -n "$ppid" ] && kill -INT $ppid 2>/dev/null; [ -n "$spid" ] && kill $spid 2>/dev/null'
echo "$rw $bs QD$depth, THIN=${THIN:-1}, client $CLIENT; $SECS s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
        bin=qemu-storage-daemon
        [ "$s" = qsd ] || bin=${s#vbd=}/src/tools/vbd-daemon
        net_serve "$bin" "$CLIENT" i0 "$node"
        [ "${PERF:-}" = stat ] && { perf stat -e 'syscalls:sys_enter_*' -e context-switches -p $spid -o "$T/perfstat" & ppid=$!; }
        c0=$(cpu_ns $spid) t0=$(cpu_ns $TGT_PID) h0=$(host_busy) g0=$(thread_ticks $TGT_PID) x0=$(sum_tasks $spid voluntary_ctxt_switches nonvoluntary_ctxt_switches)
        if [ "$CLIENT" = vu ]; then
            out=$("$VBD_BENCH" --vhost-user "$sock" -q 1 -w "$rw" -b "$bs" -d "$depth" -t "$SECS" --json)
        else
            out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///disk?socket=$sock" --rw="$rw" --bs="$bs" --iodepth="$depth" \
                --time_based --runtime="$SECS" --size=1G --output-format=json 2>/dev/null)
        fi
        c1=$(cpu_ns $spid) t1=$(cpu_ns $TGT_PID) h1=$(host_busy) g1=$(thread_ticks $TGT_PID) x1=$(sum_tasks $spid voluntary_ctxt_switches nonvoluntary_ctxt_switches)
        if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid 2>/dev/null || true; ppid=; fi
        n=$(python3 -c "
import json,sys
t=sys.argv[1]; j=json.loads(t[t.index('{'):])
if 'jobs' in j:
    j=j['jobs'][0]; d='write' if '$rw'.endswith('write') else 'read'; print(max(j[d]['total_ios'],1), round(j[d]['iops']))
else:
    print(max(j['requests'],1), round(j['iops']))" "$out")
        read -r ios iops <<<"$n"
        printf 'round %s %-26s iops %6s  ns/r %7d  tgtd ns/r %7d  cs/r %5.2f  host busy %3d%%  tgtd busiest thread %3d%%\n' "$r" "$s" "$iops" \
            $(( (c1 - c0) / ios )) $(( (t1 - t0) / ios )) "$(echo "($x1 - $x0) / $ios" | bc -l)" "$(busy_pct $h0 $h1 $SECS)" "$(busiest_thread "$g0" "$g1" "$SECS")"
        [ "${PERF:-}" = stat ] && perf_stat_print "$ios" "$T/perfstat"
        net_unserve
    done
done
