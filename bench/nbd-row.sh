#!/bin/bash
# One row of bench/nbd.sh for A/B work: one server, one fio run, the
# server's CPU per request, its and fio's CPU share, optionally the
# server's syscalls per request (PERF=stat) or a profile (PERF=record,
# perf.SERVER.data in the current directory). Not a test.
#   bench/nbd-row.sh vbd|nbdkit|qemu-nbd unix|tcp RW BS DEPTH [SECONDS]
# e.g. for b in build-a build-b; do VBD_BUILD=$b bash bench/nbd-row.sh vbd tcp randread 4k 32; done
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
s=$1 t=$2 rw=$3 bs=$4 depth=$5 SECS=${6:-3}
dir=$(mktemp -d /dev/shm/vbd-nbd-row.XXXXXX)
spid=
# (|| true: under set -e the killed server's exit status would end the trap before the rm)
trap '[ -z "$spid" ] || { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; }; rm -rf "$dir"' EXIT
nbd_image
PORT=${PORT:-10877}
serve $s $t
ppid=
case ${PERF:-} in
 stat) perf stat -e 'syscalls:sys_enter_*' -e context-switches -p $spid -o "$dir/perfstat" & ppid=$! ;;
 record) perf record -g -p $spid -o "perf.$s.data" 2>/dev/null & ppid=$! ;;
esac
# ns its threads spent runnable but waiting for the CPU (the scheduler's share on a shared host)
# Threads that exit before the end (nbdkit's per-connection threads leave with the client) take
# their counts with them: every thread's count is sampled during the run, each counted from the
# first to the last time it was seen (from 0 if it started during the run).
rq_sample() { while kill -0 $1 2>/dev/null; do awk '{print FILENAME, $2}' /proc/$1/task/*/schedstat 2>/dev/null; echo --; sleep 0.2; done; }
rq_total() { awk '$1 == "--" {started = 1; next} !($1 in first) {first[$1] = started ? 0 : $2} {last[$1] = $2}
                  END {for (t in last) s += last[t] - first[t]; printf "%.0f\n", s}'; }
# per CPU: user time at nice 0, user time of niced jobs (the other sessions' builds and tests), system
# time (of everyone), softirq, idle, stolen by the hypervisor
cpus() { awk '/^cpu[01] / {print $1, $2, $3, $4, $8, $5 + $6, $9}' /proc/stat; }
rq_sample $spid >"$dir/rq" & rqpid=$!
c0=$(cpu_ns $spid) st0=$(cpus)
out=$(fio_run "$URI" "$rw" "$bs" "$depth")
c1=$(cpu_ns $spid) st1=$(cpus)
kill $rqpid 2>/dev/null; wait $rqpid 2>/dev/null || true
rq=$(rq_total <"$dir/rq")
if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid || true; fi
read -r iops ccpu n <<<"$out"
echo "$s $t $rw $bs QD$depth: iops $iops ns/r $(( (c1 - c0) / (n + 1) )) server-cpu% $(( (c1 - c0) / SECS / 10000000 ))" \
     "run-queue-wait% $(( rq / SECS / 10000000 )) client-cpu% $ccpu load $(cut -d' ' -f1 /proc/loadavg)"
paste <(echo "$st0") <(echo "$st1") | awk '{t = 0; for (i = 2; i <= 7; i++) { d[i] = $(i + 7) - $i; t += d[i] }
    printf "  %s: user %d%%  niced user %d%%  system %d%%  softirq %d%%  idle %d%%  steal %d%%\n", $1,
           100 * d[2] / t, 100 * d[3] / t, 100 * d[4] / t, 100 * d[5] / t, 100 * d[6] / t, 100 * d[7] / t}'
if [ "${PERF:-}" = stat ]; then # the syscalls made more than once per 50 requests
    awk -v n="$n" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 + 0 > n / 50) printf "  %-40s %8.3f /req\n", $2, $1 / n }' "$dir/perfstat"
fi
