#!/bin/bash
# One row of bench/rbd.sh for A/B work, on one Ceph cluster: the servers
# named take turns, ROUNDS times, each driven by vbd-bench for SECONDS.
# Per run: IOPS, the server's CPU per request, its context switches per
# request (voluntary + involuntary, all threads), the time its threads
# waited in the run queue (% of the run, summed over threads), the OSD's
# and vbd-bench's CPU per request, how busy the host's CPUs were at normal
# priority (user+system+irq: the other sessions' nice-19 jobs left out; near
# 100 % means the row is bound by CPU), and librbd's own view from the
# server's admin socket (OSD operations per request, librbd's mean read or
# write latency). Not a test.
#   [CACHE=none] [ROUNDS=N] [PERF=stat] bench/rbd-ab.sh "VBD-ARGS" SERVER... [-- SECONDS]
#   SERVER: qsd, or vbd=BUILD-DIR (e.g. vbd=build vbd=/tmp/base-build), then
#   optionally ,key=value... (Ceph client options for that server only)
#   e.g. CACHE=none ROUNDS=5 bench/rbd-ab.sh "-w read -b 1M -d 4" vbd=build qsd
set -uo pipefail
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build}
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-ceph.sh"
need qemu-storage-daemon python3 fio
wl=$1; shift
servers=() SECS=5
while [ $# -gt 0 ]; do
    case $1 in --) SECS=$2; shift 2 ;; *) servers+=("$1"); shift ;; esac
done
ROUNDS=${ROUNDS:-3}
rbd_bench_setup
spid= ppid=
on_exit '[ -n "$ppid" ] && kill -INT $ppid 2>/dev/null; [ -n "$spid" ] && { kill $spid; wait $spid; } 2>/dev/null'
serve() { # binary [conf]
    net_serve "$1" vu disk0 "driver=rbd,node-name=r0,pool=rbd,image=bench,conf=${2:-$CEPH_CONF}$cacheopt" driver=raw,node-name=disk0,file=r0
}
rq_ns() { cat /proc/$1/task/*/schedstat 2>/dev/null | awk '{s += $2} END {printf "%.0f\n", s}'; }
# librbd's and the objecter's counters from the server's admin socket
perf_dump() {
    local asok
    asok=$(ls "$CEPH_DIR"/run/client.admin.$1.asok "$CEPH_DIR"/run/client.admin.$1.*.asok 2>/dev/null | head -1)
    [ -n "$asok" ] && timeout 10 ceph --admin-daemon "$asok" perf dump 2>/dev/null || echo '{}'
}
echo "cache $CACHE; $wl; $SECS s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
        # SERVER,key=value...: those Ceph options in the [client] section of its conf
        name=${s%%,*} conf=$CEPH_CONF
        if [ "$name" != "$s" ]; then
            conf=$T/conf.$r.$RANDOM
            { cat "$CEPH_CONF"; echo "[client]"; tr ',' '\n' <<<"${s#*,}" | sed 's/=/ = /'; } >"$conf"
        fi
        bin=qemu-storage-daemon
        [ "$name" = qsd ] || bin=${name#vbd=}/src/tools/vbd-daemon
        serve "$bin" "$conf"
        # let librbd connect before the counters are read
        for _ in $(seq 100); do [ -n "$(ls "$CEPH_DIR"/run/client.admin.$spid.asok "$CEPH_DIR"/run/client.admin.$spid.*.asok 2>/dev/null)" ] && break; sleep 0.05; done
        case ${PERF:-} in
        stat) perf stat -e 'syscalls:sys_enter_*' -e context-switches -p $spid -o "$T/perfstat" & ppid=$! ;;
        esac
        d0=$(perf_dump $spid)
        c0=$(cpu_ns $spid) o0=$(cpu_ns $osd_pid) q0=$(rq_ns $spid)
        x0=$(sum_tasks $spid voluntary_ctxt_switches nonvoluntary_ctxt_switches)
        h0=$(host_busy)
        out=$(/usr/bin/time -f '%U %S' -o "$T/bench.time" "$VBD_BUILD/src/tools/vbd-bench" --vhost-user "$sock" -q 1 $wl \
            -t "$SECS" --json) || fail "vbd-bench against $s"
        h1=$(host_busy)
        c1=$(cpu_ns $spid) o1=$(cpu_ns $osd_pid) q1=$(rq_ns $spid)
        b=$(awk '{printf "%.0f", ($1 + $2) * 1e9}' "$T/bench.time")
        x1=$(sum_tasks $spid voluntary_ctxt_switches nonvoluntary_ctxt_switches)
        d1=$(perf_dump $spid)
        if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid 2>/dev/null; ppid=; fi
        python3 - "$s" "$r" "$out" "$d0" "$d1" $c0 $c1 $o0 $o1 $q0 $q1 $x0 $x1 "$SECS" $b $h0 $h1 "$(nproc)" "$(getconf CLK_TCK)" <<'PY'
import json, sys
s, r, out, d0, d1 = sys.argv[1:6]
c0, c1, o0, o1, q0, q1, x0, x1 = map(int, sys.argv[6:14]); secs = float(sys.argv[14])
bench_ns, h0, h1, ncpu, hz = map(int, sys.argv[15:20])
j = json.loads(out); n = max(j["requests"], 1)
def flat(d, p=""):
    o = {}
    for k, v in d.items():
        if isinstance(v, dict) and not {"avgcount", "sum"} <= set(v):
            o.update(flat(v, p + k + "."))
        else:
            o[p + k] = v
    return o
a, b = flat(json.loads(d0)), flat(json.loads(d1))
def delta(k):
    return (b.get(k, 0) - a.get(k, 0)) if not isinstance(b.get(k), dict) else \
        (b[k]["avgcount"] - a.get(k, {"avgcount": 0})["avgcount"], b[k]["sum"] - a.get(k, {"sum": 0})["sum"])
lat = ""
for k in b:
    if k.startswith("librbd-") and (k.endswith(".rd_latency") or k.endswith(".wr_latency")):
        cnt, tot = delta(k)
        if cnt:
            lat += " librbd-%s %d us (%d calls)" % (k.rsplit(".", 1)[1][:2], tot / cnt * 1e6, cnt)
ops = delta("objecter.op_r") + delta("objecter.op_w")
print("round %s %-18s iops %6.0f  ns/r %7d  cs/r %5.2f  runq %3d%%  osd ns/r %7d  bench ns/r %6d  host busy %3d%%  osd-ops/r %.2f  p50 %.0f us%s" % (
    r, s, j["iops"], (c1 - c0) / n, (x1 - x0) / n, (q1 - q0) / secs / 1e7, (o1 - o0) / n, bench_ns / n,
    (h1 - h0) * 100 / (hz * secs * ncpu), ops / n,
    j["lat-us"]["p50"], lat))
PY
        [ "${PERF:-}" = stat ] && perf_stat_print "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['requests'])" "$out")" "$T/perfstat"
        net_unserve
    done
done
