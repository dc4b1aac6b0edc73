#!/bin/bash
# A/B of NBD servers on rows of bench/nbd.sh: one image, the variants run
# back to back in each round (so a shifting load hits them alike). Prints
# per run IOPS, the server's CPU ns per request, TCP segments per request
# (nstat, host-wide: other traffic on lo counts), with PERF=1 the server's
# syscalls per request, with CPERF=1 fio's and fio's CPU ns per request
# (task-clock: on the fio QD32 rows fio is the bound, so what a server
# costs fio decides IOPS), with LAT=1 fio's p50 and p99 completion latency
# (ns), with IPI=1 (and PERF=1 / CPERF=1) the interrupts the server took
# while running (rescheduling and function-call IPIs: a wake-up or a task
# work kick from another CPU), io_uring task work queued to it and run by
# it, and the IPIs fio sent. Not a test.
#   bench/nbd-ab.sh ROUNDS SECONDS "ROW..." VARIANT...
#   ROW: via:rw:bs:depth[:client]  (via unix|tcp, client fio (default) or vbd-bench)
#   VARIANT: NAME=BUILD_DIR[,ENV=VALUE...] (the server gets the variables; see
#   nbd-common.sh's serve for VBD_NBD_IOTHREAD and VBD_NBD_POLL_MAX_NS), nbdkit or qemu-nbd
# e.g. flock /work/wt/bench.lock bash bench/nbd-ab.sh 3 3 "tcp:randread:4k:32 unix:randread:4k:32:vbd-bench" \
#          old=/tmp/old-build new=$PWD/build nbdkit
# vbd-bench (the client) is $VBD_BUILD's (default build/), whichever server runs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
CLIENT_BENCH=$VBD_BENCH
ROUNDS=$1 SECS=$2 ROWS=$3; shift 3
dir=$(mktemp -d /dev/shm/vbd-nbd-ab.XXXXXX)
spid=
trap '[ -z "$spid" ] || { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; }; rm -rf "$dir"' EXIT
nbd_image
echo "host: $(host_kind); load $(cut -d' ' -f1-3 /proc/loadavg)"
PORT=${PORT:-10873}
# per_request PERF_STAT_OUTPUT N: each counter above 1 % of N requests, as " name count/N"
per_request() {
    awk -v n="$2" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 + 0 > n / 100) { x=$2; sub("syscalls:sys_enter_","",x); sub("irq_vectors:","",x); sub("io_uring:io_uring_","",x); sub("ipi:","",x); printf " %s %.2f", x, $1 / n } }' "$1"
}
SEV='syscalls:sys_enter_poll,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_io_uring_enter,context-switches'
CEV='task-clock,syscalls:sys_enter_poll,syscalls:sys_enter_ppoll,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_read,syscalls:sys_enter_write,context-switches'
if [ -n "${IPI:-}" ]; then
    SEV="$SEV,irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,irq_vectors:call_function_entry,io_uring:io_uring_task_work_run,io_uring:io_uring_local_work_run"
    CEV="$CEV,ipi:ipi_send_cpu,io_uring:io_uring_task_add"
fi
for round in $(seq $ROUNDS); do
 for row in $ROWS; do
  IFS=: read -r t rw bs depth client <<<"$row"
  for v in "$@"; do
    name=${v%%=*}; spec=${v#*=}
    IFS=, read -r -a parts <<<"$spec"
    s=vbd
    if [ "$name" = nbdkit ] || [ "$name" = qemu-nbd ]; then s=$name; else VBD_BUILD=${parts[0]}; VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon; fi
    envs=("${parts[@]:1}")
    PORT=$((PORT + 1))
    if [ ${#envs[@]} -gt 0 ]; then export "${envs[@]}"; fi
    serve $s $t
    if [ ${#envs[@]} -gt 0 ]; then for e in "${envs[@]}"; do unset "${e%%=*}"; done; fi
    ppid=
    if [ -n "${PERF:-}" ]; then perf stat -e "$SEV" -p $spid -o "$dir/perfstat" & ppid=$!; fi
    nstat -n >/dev/null
    c0=$(cpu_ns $spid)
    if [ "${client:-fio}" = fio ] && [ -n "${CPERF:-}" ]; then
        out=$(perf stat -e "$CEV" -o "$dir/cperf" -- taskset -c 1 fio --name=b --ioengine=nbd --uri="$URI" --rw="$rw" --bs="$bs" --iodepth="$depth" --time_based --runtime="$SECS" \
        --size=1G --output-format=json 2>/dev/null |
        python3 -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; d='write' if '$rw'.endswith('write') else 'read'; print(round(j[d]['iops']), round(j['usr_cpu']+j['sys_cpu']), j[d]['total_ios'])" || echo "0 0 1")
    elif [ "${client:-fio}" = fio ]; then out=$(FIO_LAT=${LAT-} fio_run "$URI" $rw $bs $depth || echo "0 0 1")
    else out=$(taskset -c 1 "$CLIENT_BENCH" --nbd "$URI" -w $rw -b $bs -d $depth -t $SECS --json |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r['iops']), 0, r['requests'])" || echo "0 0 1"); fi
    c1=$(cpu_ns $spid)
    segs=$(nstat -z TcpOutSegs 2>/dev/null | awk '$1=="TcpOutSegs" {print $2}')
    if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid || true; fi
    read -r iops ccpu n p50 p99 <<<"$out"
    extra=$(if [ -n "${p99:-}" ]; then printf ' p50 %s p99 %s' "$p50" "$p99"; fi)
    extra="$extra$(if [ -n "$ppid" ]; then per_request "$dir/perfstat" $n; fi)"
    p50= p99=
    if [ -n "${CPERF:-}" ] && [ -s "$dir/cperf" ]; then
        extra="$extra | fio:$(awk -v n="$n" '$2 == "msec" && $3 == "task-clock" { gsub(",", "", $1); printf " ns/r %.0f", $1 * 1e6 / n }' "$dir/cperf")$(per_request "$dir/cperf" $n)"
        rm -f "$dir/cperf"
    fi
    printf '%-8s %-4s %-9s %-3s QD%-2s %-9s iops %7s ns/r %6s ccpu %3s segs/r %.2f%s\n' "$name" $t $rw $bs $depth "${client:-fio}" "$iops" $(( (c1 - c0) / (n + 1) )) "$ccpu" "$(echo "${segs:-0} / ($n + 1)" | bc -l)" "$extra"
    stop
  done
 done
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
