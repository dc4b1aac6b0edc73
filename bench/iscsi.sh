#!/bin/bash
# vbd-daemon vs qemu-storage-daemon on the same iSCSI LUN (tgtd, a 1 GiB
# file on /dev/shm), each exporting it over vhost-user-blk to vbd-bench (the
# client issue 15 names; CLIENT=nbd: over NBD on a unix socket to fio's nbd
# engine instead, the rounds before 2026-12-03 evening): 4K
# randread/randwrite QD32, 1M sequential read QD8.
# The limit: iscsi-perf (libiscsi straight to the LUN, reads only).
# Ratio = vbd / qsd (> 1: vbd is faster). Needs root (tgtd). Not a test.
#   [THIN=0] [CLIENT=nbd] [REPS=N] bench/iscsi.sh [SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS=${1:-5}
CLIENT=${CLIENT:-vu}
# the test harness's tgtd helpers (lib.sh provides T, fail, need, on_exit)
VBD_BUILD=$VBD_BUILD source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-tgt.sh"
set +u
iscsi_bench_setup vbd-iscsi-bench
spid=
on_exit '[ -n "$spid" ] && kill $spid 2>/dev/null'
serve() {
    local bin=$VBD_DAEMON
    [ "$1" = qsd ] && bin=qemu-storage-daemon
    net_serve "$bin" "$CLIENT" i0 "$node"
}
stop() { net_unserve || true; }
# IOPS and the server's CPU (user+sys, all threads) per request of one run
# of the client
fio_run() { # RW BS DEPTH
    local c0 c1 t0 t1 h0 h1 out
    c0=$(cpu_ns $spid) t0=$(cpu_ns $TGT_PID) h0=$(host_busy)
    if [ "$CLIENT" = vu ]; then
        out=$("$VBD_BENCH" --vhost-user "$sock" -q 1 -w "$1" -b "$2" -d "$3" -t "$SECS" --json)
    else
        out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///disk?socket=$sock" --rw="$1" --bs="$2" --iodepth="$3" --time_based \
            --runtime="$SECS" --size=1G --output-format=json 2>/dev/null)
    fi
    c1=$(cpu_ns $spid) t1=$(cpu_ns $TGT_PID) h1=$(host_busy)
    python3 -c "
import json,sys
t=sys.argv[1]; j=json.loads(t[t.index('{'):])
if 'jobs' in j:
    j=j['jobs'][0]; d='write' if '$1'.endswith('write') else 'read'; n=max(j[d]['total_ios'],1); i=j[d]['iops']
else:
    n=max(j['requests'],1); i=j['iops']
print('%d %d %d %d' % (round(i), ($c1-$c0)/n, ($t1-$t0)/n, $(busy_pct $h0 $h1 $SECS)))" "$out"
}
# iscsi-perf straight at the LUN (reads only: it cannot write), in the same
# round as the servers so the limit sees the same machine: IOPS, tgtd's CPU
# per request, host busy %
limit_run() { # RW BS DEPTH
    local blocks=$(( $(numfmt --from=iec "${2^^}") / 512 )) rnd= t0 t1 h0 h1 i
    case $1 in randwrite | write) echo "- - -"; return ;; randread) rnd=-r ;; esac
    t0=$(cpu_ns $TGT_PID) h0=$(host_busy)
    i=$(timeout -s INT "$SECS" iscsi-perf $rnd -m "$3" -b $blocks "$TGT_URL" 2>&1 | tr '\r' '\n' |
        grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}' || true)
    t1=$(cpu_ns $TGT_PID) h1=$(host_busy)
    [ -n "$i" ] && [ "$i" != 0 ] || { echo "- - -"; return; }
    echo "$i $(( (t1 - t0) / (i * SECS) )) $(busy_pct $h0 $h1 $SECS)"
}
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); $SECS s per run, median of $REPS rounds (vbd, qsd, iscsi-perf in turn)"
echo "client: $([ "$CLIENT" = vu ] && echo "vbd-bench over vhost-user-blk (one queue)" || echo "fio's nbd engine over NBD (unix socket)"); LUN thin provisioning ${THIN:-1}"
echo "ns/r: CPU (user+sys) per request of the server process; tgtd: the target's per request while serving it"
echo "host busy: user+system+irq of all CPUs during the run (the user time of nice-19 jobs left out, their system time not; near 100 %: bound by CPU)"
printf '%-18s %8s %8s %8s %6s %6s %8s %8s %8s %8s\n' workload vbd qsd limit vbd/qsd vbd/lim "vbd ns/r" "qsd ns/r" "tgt@vbd" "tgt@qsd"
while IFS='|' read -r label rw bs depth; do
    declare -A all=([vbd]= [qsd]= [lim]=) nsr=([vbd]= [qsd]=) tgt=([vbd]= [qsd]= [lim]=) busy=([vbd]= [qsd]= [lim]=)
    for _ in $(seq "$REPS"); do
        for s in vbd qsd; do
            serve $s
            read -r i c t b < <(fio_run "$rw" "$bs" "$depth" || echo "0 0 0 0")
            all[$s]="${all[$s]} $i" nsr[$s]="${nsr[$s]} $c" tgt[$s]="${tgt[$s]} $t" busy[$s]="${busy[$s]} $b"
            stop
        done
        read -r i t b < <(limit_run "$rw" "$bs" "$depth")
        all[lim]="${all[lim]} $i" tgt[lim]="${tgt[lim]} $t" busy[lim]="${busy[lim]} $b"
    done
    declare -A m=()
    for k in vbd qsd lim; do m[$k]=$(printf '%s\n' ${all[$k]} | { grep -v -- - || true; } | median); done
    for k in vbd qsd; do m[n$k]=$(printf '%s\n' ${nsr[$k]} | median) m[t$k]=$(printf '%s\n' ${tgt[$k]} | median); done
    lim=${m[lim]} vl=-
    [ -n "$lim" ] && [ "$lim" != 0 ] || lim=-
    [ "$lim" = - ] || vl=$(printf '%.2f' "$(echo "${m[vbd]} / $lim" | bc -l)")
    printf '%-18s %8s %8s %8s %6.2f %6s %8s %8s %8s %8s\n' "$label" "${m[vbd]}" "${m[qsd]}" "$lim" \
        "$(echo "${m[vbd]} / (${m[qsd]} + 0.0001)" | bc -l)" "$vl" "${m[nvbd]}" "${m[nqsd]}" "${m[tvbd]}" "${m[tqsd]}"
    echo "  rounds: vbd${all[vbd]} / qsd${all[qsd]} / limit${all[lim]}"
    echo "  ns/r:   vbd${nsr[vbd]} / qsd${nsr[qsd]}; tgtd vbd${tgt[vbd]} / qsd${tgt[qsd]} / limit${tgt[lim]}"
    echo "  host CPUs busy at normal priority, %: vbd${busy[vbd]} / qsd${busy[qsd]} / limit${busy[lim]}"
done <<ROWS
4k randread QD32|randread|4k|32
4k randwrite QD32|randwrite|4k|32
1M seqread QD8|read|1M|8
ROWS
