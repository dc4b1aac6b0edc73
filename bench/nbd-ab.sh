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
# it, and the IPIs fio sent, with SCHED=1 (fio rows, SECONDS >= 3) how fio's
# job spent the run's middle (from 1 s in to 1 s before its end, in its
# /proc/PID/schedstat): on its CPU, runnable but waiting for it (other tasks
# on CPU 1), or off it, asleep (waiting for replies: at QD32 nothing but the
# server keeps it waiting), its sleeps per request, and CPU 1's steal (the
# host's), and the time the server's threads (summed) waited runnable for a
# CPU. fio's IOPS is run share / CPU per request, so this tells a server that
# keeps fio waiting from a CPU taken by others. With SEGS=1 (tcp rows,
# SECONDS >= 3) the server's socket's own segments over the run's middle (ss
# -ti: data segments and the rest, pure ACKs and window updates, each way),
# per request: what the client receives from the server (and pays for:
# on loopback a segment is processed by the CPU that sends it unless the
# receiver holds its socket) and what it sends. Not a test.
#   bench/nbd-ab.sh ROUNDS SECONDS "ROW..." VARIANT...
#   ROW: via:rw:bs:depth[:client]  (via unix|tcp, client fio (default) or vbd-bench)
#   VARIANT: NAME=BUILD_DIR[,ENV=VALUE...] (the server gets the variables; see
#   nbd-common.sh's serve for VBD_NBD_IOTHREAD, VBD_NBD_POLL_MAX_NS and
#   NBD_NULL), nbdkit or qemu-nbd, or NAME=nbdkit[,ENV=VALUE...] (e.g.
#   kitnull=nbdkit,NBD_NULL=1)
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
# fio_job: the pid of this script's fio job (a fio whose parent is a fio,
# with this shell among its ancestors), empty while there is none
fio_job() {
    local p pp a
    for p in $(pgrep -x fio); do
        pp=$(awk '/^PPid/ {print $2}' /proc/$p/status 2>/dev/null) || continue
        [ "$(cat /proc/$pp/comm 2>/dev/null)" = fio ] || continue
        a=$pp
        while [ -n "$a" ] && [ "$a" -gt 1 ]; do
            [ "$a" = $$ ] && { echo $p; return; }
            a=$(awk '/^PPid/ {print $2}' /proc/$a/status 2>/dev/null)
        done
    done
}
# sched_watch OUT: fio's job's run, run-queue wait and voluntary switches
# from 1 s into the run to 1 s before its end, with the window's length and
# CPU 1's steal ticks and the server's threads' run-queue wait (see SCHED
# above), as one line into OUT
srv_wait() { cat /proc/$spid/task/*/schedstat 2>/dev/null | awk '{w += $2} END {printf "%.0f\n", w}'; }
sched_watch() {
    local j= _i r0 w0 r1 w1 t0 t1 v0 v1 s0 s1 q0 q1
    for _i in $(seq 200); do j=$(fio_job); [ -n "$j" ] && break; sleep 0.01; done
    [ -n "$j" ] || return 0
    sleep 1
    read -r r0 w0 _ </proc/$j/schedstat || return 0
    t0=$(date +%s%N); v0=$(awk '/^voluntary_ctxt/ {print $2}' /proc/$j/status); s0=$(awk '$1 == "cpu1" {print $9}' /proc/stat); q0=$(srv_wait)
    sleep $((SECS - 2))
    read -r r1 w1 _ </proc/$j/schedstat || return 0
    t1=$(date +%s%N); v1=$(awk '/^voluntary_ctxt/ {print $2}' /proc/$j/status); s1=$(awk '$1 == "cpu1" {print $9}' /proc/stat); q1=$(srv_wait)
    echo "$((t1 - t0)) $((r1 - r0)) $((w1 - w0)) $((v1 - v0)) $((s1 - s0)) $((q1 - q0))" >"$1"
}
# segs_watch OUT: the server socket's (local port $PORT) segments out, data
# segments out, segments in, data segments in, from 1 s into the run to 1 s
# before its end, with the window's length in ns, as one line into OUT
srv_segs() {
    ss -tinH state established "( sport = :$PORT )" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
        if (v["segs_out"] + 0 > best) { best = v["segs_out"] + 0; o = v["segs_out"] + 0 " " v["data_segs_out"] + 0 " " v["segs_in"] + 0 " " v["data_segs_in"] + 0 }
        delete v } END { print (o == "" ? "" : o) }'
}
segs_watch() {
    local a b t0 t1
    sleep 1
    a=$(srv_segs); t0=$(date +%s%N)
    sleep $((SECS - 2))
    b=$(srv_segs); t1=$(date +%s%N)
    [ -n "$a" ] && [ -n "$b" ] || return 0
    echo "$((t1 - t0)) $a $b" >"$1"
}
for round in $(seq $ROUNDS); do
 for row in $ROWS; do
  IFS=: read -r t rw bs depth client <<<"$row"
  for v in "$@"; do
    name=${v%%=*}; spec=${v#*=}
    IFS=, read -r -a parts <<<"$spec"
    s=vbd
    if [ "$name" = nbdkit ] || [ "$name" = qemu-nbd ]; then s=$name
    elif [ "${parts[0]}" = nbdkit ] || [ "${parts[0]}" = qemu-nbd ]; then s=${parts[0]}; else VBD_BUILD=${parts[0]}; VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon; fi
    envs=("${parts[@]:1}")
    PORT=$((PORT + 1))
    if [ ${#envs[@]} -gt 0 ]; then export "${envs[@]}"; fi
    serve $s $t
    if [ ${#envs[@]} -gt 0 ]; then for e in "${envs[@]}"; do unset "${e%%=*}"; done; fi
    ppid=
    if [ -n "${PERF:-}" ]; then perf stat -e "$SEV" -p $spid -o "$dir/perfstat" & ppid=$!; fi
    nstat -n >/dev/null
    wpid=
    if [ -n "${SCHED:-}" ] && [ "${client:-fio}" = fio ] && [ "$SECS" -ge 3 ]; then rm -f "$dir/sched"; sched_watch "$dir/sched" & wpid=$!; fi
    gpid=
    if [ -n "${SEGS:-}" ] && [ "$t" = tcp ] && [ "$SECS" -ge 3 ]; then rm -f "$dir/segs"; segs_watch "$dir/segs" & gpid=$!; fi
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
    if [ -n "$wpid" ]; then wait $wpid || true; fi
    if [ -n "$gpid" ]; then wait $gpid || true; fi
    read -r iops ccpu n p50 p99 <<<"$out"
    extra=$(if [ -n "${p99:-}" ]; then printf ' p50 %s p99 %s' "$p50" "$p99"; fi)
    extra="$extra$(if [ -n "$ppid" ]; then per_request "$dir/perfstat" $n; fi)"
    p50= p99=
    if [ -n "${CPERF:-}" ] && [ -s "$dir/cperf" ]; then
        extra="$extra | fio:$(awk -v n="$n" '$2 == "msec" && $3 == "task-clock" { gsub(",", "", $1); printf " ns/r %.0f", $1 * 1e6 / n }' "$dir/cperf")$(per_request "$dir/cperf" $n)"
        rm -f "$dir/cperf"
    fi
    if [ -n "$wpid" ] && [ -s "$dir/sched" ]; then
        extra="$extra | fio sched:$(awk -v iops="$iops" -v hz="$(getconf CLK_TCK)" '{ printf " run %.0f%% runq %.0f%% off %.0f%% sleeps/r %.3f steal %.1f%% | server runq %.0f%%", 100 * $2 / $1, 100 * $3 / $1, 100 * ($1 - $2 - $3) / $1, $4 / (iops * $1 / 1e9 + 1), 100 * $5 / hz / ($1 / 1e9), 100 * $6 / $1 }' "$dir/sched")"
    fi
    if [ -n "$gpid" ] && [ -s "$dir/segs" ]; then
        extra="$extra | srv segs/r:$(awk -v iops="$iops" '{ n = iops * $1 / 1e9 + 1; printf " out %.3f (data %.3f, other %.3f) in %.3f (data %.3f, other %.3f)", ($6 - $2) / n, ($7 - $3) / n, ($6 - $2 - $7 + $3) / n, ($8 - $4) / n, ($9 - $5) / n, ($8 - $4 - $9 + $5) / n }' "$dir/segs")"
    fi
    printf '%-8s %-4s %-9s %-3s QD%-2s %-9s iops %7s ns/r %6s ccpu %3s segs/r %.2f%s\n' "$name" $t $rw $bs $depth "${client:-fio}" "$iops" $(( (c1 - c0) / (n + 1) )) "$ccpu" "$(echo "${segs:-0} / ($n + 1)" | bc -l)" "$extra"
    stop
  done
 done
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
