#!/bin/bash
# vbd-daemon builds side by side with vbd's NBD client driver in the data
# path: vbd-bench over vhost-user-blk -> vbd-daemon (node driver=nbd) ->
# qemu-nbd or nbdkit (file plugin) serving a 1 GiB raw file on /dev/shm,
# over a unix socket and over TCP (127.0.0.1), started by nbd-common.sh's
# serve (not pinned here). The daemons named take turns
# ROUNDS times per row, each driven for SECONDS. Per run: IOPS, p99, the
# daemon's CPU per request (user+system, all threads) and the NBD server's.
# IPI=1: also the rescheduling ("rs") and function-call ("cf") IPIs the
# daemon's threads took while running and its io_uring task work runs
# ("tw": completions the kernel finished in its threads' context), per
# request (perf stat tracepoints). Not a test.
#   [ROUNDS=N] [ROWS=REGEX] bench/nbd-client-ab.sh DAEMON... [-- SECONDS]
#   DAEMON: a vbd-daemon binary; ROWS matches "peer transport workload".
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
daemons=() SECS=3
while [ $# -gt 0 ]; do
    case $1 in --) SECS=$2; shift 2 ;; *) daemons+=("$1"); shift ;; esac
done
ROUNDS=${ROUNDS:-2}
# the peers as nbd-common.sh starts them, but not pinned: vbd-bench, the
# daemon and the peer share the host's CPUs as the scheduler places them
SERVE_CPU=
dir=$(mktemp -d /dev/shm/vbd-nbdc-bench.XXXXXX)
spid= dpid= PORT=$((20000 + $$ % 20000))
trap 'kill $dpid $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
vsock=$dir/vu.sock
nbd_image
# daemon_start DAEMON TRANSPORT: DAEMON's node is driver=nbd to the peer serve started; sets dpid
daemon_start() {
    local srv="server.type=unix,server.path=$dir/s.sock"
    [ "$2" = tcp ] && srv="server.type=inet,server.host=127.0.0.1,server.port=$PORT"
    rm -f "$vsock"
    "$1" --blockdev driver=nbd,node-name=disk0,$srv,export=disk \
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$vsock",writable=on,num-queues=1 \
        >"$dir/daemon.log" 2>&1 &
    dpid=$!
    for _ in $(seq 100); do [ -S "$vsock" ] && return; sleep 0.05; done
    cat "$dir/daemon.log" >&2; echo "daemon $1 did not start" >&2; exit 1
}
field() { python3 -c "import json,sys; r=json.loads(sys.argv[1]); f=sys.argv[2]; print(r['lat-us']['p99'] if f=='p99' else r[f])" "$1" "$2"; }
echo "machine: $(machine); host: $(host_kind)"
echo "$SECS s per run, $ROUNDS rounds; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-4s %-17s %-5s %-6s %8s %8s %9s %9s\n' peer tran workload round daemon IOPS "p99 us" "vbd ns/r" "peer ns/r"
for peer in qemu-nbd nbdkit; do
    for tr in unix tcp; do
        while IFS='|' read -r label args; do
            [ -z "${ROWS:-}" ] || grep -qE -- "$ROWS" <<<"$peer $tr $label" || continue
            serve $peer $tr
            for r in $(seq "$ROUNDS"); do
                for d in "${daemons[@]}"; do
                    daemon_start "$d" $tr
                    c0=$(cpu_ns $dpid) p0=$(cpu_ns $spid)
                    ppid=
                    if [ -n "${IPI:-}" ]; then perf stat -e irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,irq_vectors:call_function_entry,io_uring:io_uring_task_work_run,io_uring:io_uring_local_work_run -p $dpid -o "$dir/ipistat" & ppid=$!; fi
                    out=$("$VBD_BENCH" --vhost-user "$vsock" -q 1 $args -t "$SECS" --json)
                    c1=$(cpu_ns $dpid) p1=$(cpu_ns $spid)
                    if [ -n "$ppid" ]; then kill -INT $ppid; wait $ppid || true; fi
                    n=$(( $(field "$out" requests) + 1 ))
                    ipi=$(if [ -n "$ppid" ]; then awk -v n=$n '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); c[$2] = $1 }
                        END { printf " rs %.3f cf %.3f tw %.3f", c["irq_vectors:reschedule_entry"] / n,
                              (c["irq_vectors:call_function_single_entry"] + c["irq_vectors:call_function_entry"]) / n,
                              (c["io_uring:io_uring_task_work_run"] + c["io_uring:io_uring_local_work_run"]) / n }' "$dir/ipistat"; fi)
                    printf '%-8s %-4s %-17s %-5s %-6s %8.0f %8.0f %9d %9d%s\n' $peer $tr "$label" $r "$(basename "$(dirname "$d")")" "$(field "$out" iops)" \
                        "$(field "$out" p99)" $(( (c1 - c0) / n )) $(( (p1 - p0) / n )) "$ipi"
                    kill $dpid; wait $dpid 2>/dev/null || true; dpid=
                done
            done
            stop
        done <<ROWS
4k randread QD1|-w randread -b 4k -d 1
4k randread QD32|-w randread -b 4k -d 32
ROWS
    done
done
