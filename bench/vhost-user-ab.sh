#!/bin/bash
# A/B of vhost-user-blk back ends on one row of bench/vhost-user.sh (null-co
# node, read-zeroes=on): the servers run back to back in each round, so a
# shifting load hits them alike. Prints every run (not medians): IOPS,
# latency p50/p99/p99.9 in us and the server's CPU ns per request. The
# medians of bench/vhost-user.sh hide the base binary's p99 and how far a
# row moves between runs on a shared host; this shows both. Not a test.
#   bench/vhost-user-ab.sh ROUNDS SECONDS QUEUES "VBD-BENCH ARGS" SERVER...
#   SERVER: a vbd-daemon binary, or qemu-storage-daemon
#   IOTHREAD=1: the export runs on an iothread (as in bench/vhost-user.sh)
#   NODE=file: the file node of bench/vhost-user.sh (a 1 GiB raw image in
#   /dev/shm, page cache) instead of null-co
#   PERQ=1: each run also prints every queue's p99/max (us) after "|" (and
#   /bN: the mean us its p99-p99.9 requests spent before vbd-bench's last wait
#   for an interrupt, i.e. not yet completed by the server, and /sN: the
#   % of the run's requests that queue carried: a ring served less often has
#   fewer requests in the overall percentiles), then
#   "w" and the ms the server's threads waited for a CPU while runnable
#   (schedstat: time other tasks held CPU 0)
#   MECH=1: each run also prints, per request, after "|": "sw" the server's
#   write syscalls (call-eventfd signals, and any other write it makes),
#   "cs" vbd-bench's sleeps (voluntary context switches: each one a wake-up
#   the server paid for) and "ss" the server threads' sleeps; /proc counters,
#   no perf. With the header's wake-cost figures: what the signals cost.
#   CPU=1: each run also prints after "|": "c" vbd-bench's CPU ns per request
#   (user + system, /usr/bin/time, 10 ms steps), then the busy share of the
#   run's wall time of the server ("sb", its CPU ns per request x IOPS: the
#   busy-poll counts as busy) and of the client ("cb"): which side bounds
#   the row. A client near 100 % bounds it whatever the server costs.
#   IPI=1: each run also prints, per request, after "|": "rs" the
#   rescheduling and "cf" the function-call IPIs the server's threads took
#   while running, "tw" the io_uring task work runs in them (task_work_run
#   and local_work_run: completions the kernel finished in their context)
#   (perf stat tracepoints).
# e.g. flock /work/wt/bench.lock bash bench/vhost-user-ab.sh 4 2 2 "-w read -b 64k -d 8" \
#          /tmp/old/vbd-daemon build/src/tools/vbd-daemon qemu-storage-daemon
# vbd-bench (the client) is $VBD_BUILD's (default build/), whichever server runs;
# ARGS may hold --no-event-idx (the client before 2026-12-04, see vbd-bench --help).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vhost-user-common.sh"
ROUNDS=$1 SECS=$2 NQ=$3 ARGS=$4
shift 4
NODE=${NODE:-null}
scratch ab "$NODE"
echo "machine: $(machine); host: $(host_kind)$(host_costs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SECS s per run; server on CPU 0, vbd-bench on CPU 1; iothread: ${IOTHREAD:-0}; node: $NODE; -q $NQ $ARGS"
echo "per run: IOPS p50/p99/p99.9 (us) server-ns/request"
# ns the process's threads spent runnable but not running
runq_wait_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{w += $2} END {printf "%d\n", w}'; }
# write syscalls of a process (all its threads) and its threads' sleeps so far
writes() { awk '/^syscw:/ {print $2}' /proc/"$1"/io; }
sleeps() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches:/ {n += $2} END {print n + 0}'; }
declare -A runs=()
for _ in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        serve "$bin" "$NODE" "$NQ"
        c0=$(cpu_ns $spid) w0=$(runq_wait_ns $spid) sw0=$(writes $spid) ss0=$(sleeps $spid)
        # shellcheck disable=SC2086 # ARGS is a list of options
        ppid=
        if [ -n "${IPI:-}" ]; then perf stat -e irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,irq_vectors:call_function_entry,io_uring:io_uring_task_work_run,io_uring:io_uring_local_work_run -p $spid -o "$dir/ipistat" & ppid=$!; fi
        out=$(/usr/bin/time -f "%w %U %S %e" -o "$dir/client-sleeps" taskset -c 1 "$VBD_BENCH" --vhost-user "$sock" -q "$NQ" $ARGS -t "$SECS" --json)
        c1=$(cpu_ns $spid) w1=$(runq_wait_ns $spid) sw1=$(writes $spid) ss1=$(sleeps $spid)
        if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid || true; fi
        kill $spid
        wait $spid 2>/dev/null || true
        spid=
        runs[$bin]+=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); l = r["lat-us"]
line = "  %6.0fk %5.1f/%6.1f/%7.1f %5.0f" % (r["iops"] / 1000, l["p50"], l["p99"], l["p99.9"],
                                         int(sys.argv[2]) / (r["requests"] + 1))
if sys.argv[3] == "1" and "per-queue" in r:
    total = sum(q["requests"] for q in r["per-queue"]) or 1
    line += " |" + " ".join("%.0f/%.0f" % (q["p99"], q["max"]) +
                            ("/b%.0f" % q["split-p99-p99.9"][0] if "split-p99-p99.9" in q else "") +
                            "/s%.0f" % (100 * q["requests"] / total)
                            for q in r["per-queue"]) + " w%.0f" % (int(sys.argv[4]) / 1e6)
if sys.argv[5] == "1":
    n = r["requests"] + 1
    line += " | sw%.3f cs%.3f ss%.3f" % (int(sys.argv[6]) / n, int(sys.argv[7].split()[0]) / n, int(sys.argv[8]) / n)
if sys.argv[10] == "1":
    n = r["requests"] + 1
    _, cu, cs, ce = sys.argv[7].split()
    cns = (float(cu) + float(cs)) * 1e9 / n
    sns = int(sys.argv[2]) / n
    line += " | c%.0f sb%.0f%% cb%.0f%%" % (cns, sns * r["iops"] / 1e7, 100 * (float(cu) + float(cs)) / max(float(ce), 0.01))
if sys.argv[9]:
    ev = {}
    for l in open(sys.argv[9]):
        f = l.split()
        if len(f) > 1 and f[0].replace(",", "").isdigit():
            ev[f[1]] = int(f[0].replace(",", ""))
    n = r["requests"] + 1
    g = lambda *k: sum(ev.get(x, 0) for x in k) / n
    line += " | rs%.3f cf%.3f tw%.3f" % (g("irq_vectors:reschedule_entry"),
        g("irq_vectors:call_function_single_entry", "irq_vectors:call_function_entry"),
        g("io_uring:io_uring_task_work_run", "io_uring:io_uring_local_work_run"))
print(line, end="")' "$out" $((c1 - c0)) "${PERQ:-0}" $((w1 - w0)) "${MECH:-0}" $((sw1 - sw0)) \
        "$(tail -1 "$dir/client-sleeps")" $((ss1 - ss0)) "${ppid:+$dir/ipistat}" "${CPU:-0}")
    done
done
for bin in "$@"; do
    printf '%-24s%s\n' "$(basename "$bin")" "${runs[$bin]}"
done
