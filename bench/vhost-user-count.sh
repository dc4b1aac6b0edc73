#!/bin/bash
# What a vhost-user-blk server executes per request on one row of
# bench/vhost-user.sh, counted, not timed: the server runs under callgrind
# twice, for N1 and then N2 requests of vbd-bench (-n), and the difference
# of the two counts over N2-N1 requests is the instructions per request,
# start-up and exit cancelled out. Load-independent (this host has no
# hardware counters: perf stat's instructions and cycles are "not
# supported" in this VM), so a change of tens of instructions per request
# shows where IOPS under load cannot. Printed per server: the whole
# process's instructions per request, the fill's (the data the null node
# writes into the guest's buffers: memset and vbd's zero loop, self cost,
# identical work in every server), and the rest (everything but the fill:
# what the server's own design costs); vbd-daemon also gets the inclusive
# count of the parts of its request path.
# The server under callgrind is ~50x slower than the client, so its rings
# are always full: the counts are those of a saturated server (the regime
# of the rows it bounds). vbd-daemon runs its epoll engine (VBD_NO_IO_URING=1:
# valgrind does not end an io_uring wait for a signal), which changes the
# loop's wait, not a null request's path. Not a test; valgrind must be
# installed.
#   bench/vhost-user-count.sh QUEUES "VBD-BENCH ARGS" N1 N2 SERVER...
#   SERVER: a vbd-daemon binary, or qemu-storage-daemon
#   IOTHREAD=1, NODE=file: as in bench/vhost-user-ab.sh
# e.g. bash bench/vhost-user-count.sh 2 "-w read -b 64k -d 8" 2000 6000 \
#          /tmp/old/vbd-daemon build/src/tools/vbd-daemon qemu-storage-daemon
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vhost-user-common.sh"
NQ=$1 ARGS=$2 N1=$3 N2=$4
shift 4
NODE=${NODE:-null}
scratch count "$NODE"
echo "machine: $(machine); host: $(host_kind); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "callgrind, requests $N1 and $N2; iothread: ${IOTHREAD:-0}; node: $NODE; -q $NQ $ARGS"
# the parts of vbd's request path, inclusive (a part that is not called, or
# inlined, prints as 0)
PARTS="vbd_loop_run_once run_pollers blk_queue_kick vu_vq_pop vu_vq_map_chain blk_req_decode blk_dispatch blk_submit
       vbd_co_create vbd_co_enter blk_req_co blk_req_run vbd_backend_co_preadv vbd_backend_co_pwritev
       vbd_iov_memset blk_req_finish vu_queue_complete vu_vq_push signal_front_end vu_vq_should_notify
       run_bhs notify_bh vu_queue_rearm vbd_clock_ns vbd_clock_stat_ns"
run_one() { # server requests -> callgrind output file
    local bin=$1 n=$2 out=$dir/cg.$RANDOM
    # serve() with the server under callgrind, whose start takes seconds
    rm -f "$sock"
    local server_args
    server_cmdline "$NODE" "$NQ"
    # the epoll engine: under valgrind a SIGTERM never ends an io_uring wait
    VBD_NO_IO_URING=1 taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "${server_args[@]}" \
        >"$out.log" 2>&1 &
    spid=$!
    local i
    for i in $(seq 1200); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "server $bin did not start under callgrind" >&2; cat "$out.log" >&2; exit 1; }
    # shellcheck disable=SC2086 # ARGS is a list of options
    taskset -c 1 "$VBD_BENCH" --vhost-user "$sock" -q "$NQ" $ARGS -n "$n" --json >"$out.json"
    kill -TERM $spid
    for i in $(seq 1200); do kill -0 $spid 2>/dev/null || break; sleep 0.1; done
    kill -0 $spid 2>/dev/null && { kill -KILL $spid; echo "server $bin did not stop under callgrind" >&2; exit 1; }
    wait $spid 2>/dev/null || true
    spid=
    echo "$out"
}
for bin in "$@"; do
    a=$(run_one "$bin" "$N1")
    b=$(run_one "$bin" "$N2")
    for f in "$a" "$b"; do
        callgrind_annotate --threshold=100 "$f" >"$f.self" 2>/dev/null
        callgrind_annotate --threshold=100 --inclusive=yes "$f" >"$f.incl" 2>/dev/null
    done
    # CG_KEEP=DIR: keep the second run's profile (callgrind_annotate it further)
    [ -n "${CG_KEEP:-}" ] && cp "$b" "$CG_KEEP/$(basename "$bin").$(basename "$b")"
    python3 - "$(basename "$bin")" "$a" "$b" "$PARTS" <<'PY'
import json, re, sys
name, a, b, parts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
def load(f):
    total, funcs = 0, {}
    for line in open(f):
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)", line)
        if not m:
            continue
        v = int(m.group(1).replace(",", ""))
        rest = m.group(2)
        if "PROGRAM TOTALS" in rest:
            total = v
            continue
        fn = re.sub(r"\s*\[.*\]$", "", rest).split(":")[-1].strip()
        funcs[fn] = funcs.get(fn, 0) + v
    return total, funcs
def reqs(f):
    return json.load(open(f + ".json"))["requests"]
ta, sa = load(a + ".self"); tb, sb = load(b + ".self")
_, ia = load(a + ".incl"); _, ib = load(b + ".incl")
n = reqs(b) - reqs(a)
fill = lambda s: sum(v for k, v in s.items() if re.search(r"memset|zero_fill|zero_avx2", k))
tot = (tb - ta) / n
fl = (fill(sb) - fill(sa)) / n
print("%-24s requests %d-%d: %7.0f instructions per request, fill %7.0f, rest %5.0f" % (name[:24], reqs(a), reqs(b), tot, fl, tot - fl))
if name.startswith("vbd"):
    print("    " + " ".join("%s %.0f" % (p, (ib.get(p, 0) - ia.get(p, 0)) / n) for p in parts))
PY
done
