#!/bin/bash
# Where a vhost-user-blk row's time goes, per request, on both sides: one
# run per server (a fresh one each), perf stat on the server and on
# vbd-bench, then IOPS, p50/p99 (us), each queue's p99, and per request:
# context switches (sleeps), task-clock ns and the syscalls that signal,
# poll and sleep. Not a test; perf must be installed.
#   bench/vhost-user-probe.sh QUEUES "VBD-BENCH ARGS" SECONDS SERVER...
#   SERVER: a vbd-daemon binary, or qemu-storage-daemon
#   IOTHREAD=1, NODE=file: as in bench/vhost-user-ab.sh
# e.g. flock /work/wt/bench.lock bash bench/vhost-user-probe.sh 1 "-w randread -b 4k -d 1" 2 \
#          build/src/tools/vbd-daemon qemu-storage-daemon
# (a client that sleeps on every request shows ~1.00 "conte" per request:
# the QD1 slow mode, RESULTS.md 2026-12-05 vu12)
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vhost-user-common.sh"
NQ=$1 ARGS=$2 SECS=$3
shift 3
NODE=${NODE:-null}
scratch probe "$NODE"
ev=context-switches,task-clock,syscalls:sys_enter_write,syscalls:sys_enter_poll,syscalls:sys_enter_read,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll
echo "machine: $(machine); host: $(host_kind)$(host_costs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SECS s per run; server on CPU 0, vbd-bench on CPU 1; iothread: ${IOTHREAD:-0}; node: $NODE; -q $NQ $ARGS"
echo "per request: C = vbd-bench, S = server; conte = context switches, task = CPU ns"
for bin in "$@"; do
    serve "$bin" "$NODE" "$NQ"
    perf stat -x, -e "$ev" -o "$dir/s.txt" -p $spid -- sleep $((SECS + 1)) &
    ppid=$!
    # shellcheck disable=SC2086 # ARGS is a list of options
    perf stat -x, -e "$ev" -o "$dir/c.txt" taskset -c 1 "$VBD_BENCH" --vhost-user "$sock" -q "$NQ" $ARGS -t "$SECS" --json >"$dir/out.json"
    wait $ppid
    kill $spid
    wait $spid 2>/dev/null || true
    spid=
    python3 - "$(basename "$bin")" "$dir" <<'PY'
import json, sys
d = sys.argv[2]
r = json.load(open(d + "/out.json"))
n = r["requests"] or 1
def counts(f):
    c = {}
    for line in open(f):
        x = line.strip().split(",")
        if len(x) > 3 and x[0] and x[0][0].isdigit():
            c[x[2].replace("syscalls:sys_enter_", "")] = float(x[0])
    return c
def per_req(c):
    return " ".join("%s %.3f" % (k[:5], v * 1e6 / n if k == "task-clock" else v / n) for k, v in c.items() if v)
pq = " ".join("%.0f" % q["p99"] for q in r.get("per-queue", []))
print("%-20s %6.0fk p50 %6.1f p99 %7.1f [%s] | C %s | S %s" % (sys.argv[1][:20], r["iops"] / 1000, r["lat-us"]["p50"],
      r["lat-us"]["p99"], pq, per_req(counts(d + "/c.txt")), per_req(counts(d + "/s.txt"))))
PY
done
