#!/bin/bash
# The cost of the throttle filter when its limits are far above what the
# device does: one vbd-daemon, two vhost-user-blk exports of null-co nodes,
# e0 straight on its node, e1 through a throttle node (group limits
# iops-total=10^12, bps-total=10^15: never reached); vbd-bench 4K randread
# QD32 on each in turn (alternating, REPS rounds), server on CPU 0, client on
# CPU 1. Printed: median IOPS of each and the ratio throttled/plain, and the
# daemon's CPU time per request (from /proc, less sensitive to a shared
# host's noise than IOPS) and its ratio plain/throttled. Issue 14 asks for
# <= 3 % cost (IOPS ratio >= 0.97). Not a test.
#   bench/throttle.sh [SECONDS]     REPS=N (default 5)
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${REPS:-5}
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
SECS=${1:-5}
dir=$(mktemp -d /dev/shm/vbd-thr-bench.XXXXXX)
spid=
trap 'kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
taskset -c 0 "$VBD_DAEMON" \
    --object throttle-group,id=g0,limits.iops-total=1000000000000,limits.bps-total=1000000000000000 \
    --blockdev null-co,node-name=n0,size=1073741824,read-zeroes=on \
    --blockdev null-co,node-name=n1,size=1073741824,read-zeroes=on \
    --blockdev throttle,node-name=t1,throttle-group=g0,file=n1 \
    --export type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path="$dir/plain.sock",writable=on \
    --export type=vhost-user-blk,id=e1,node-name=${THR_NODE:-t1},addr.type=unix,addr.path="$dir/thr.sock",writable=on \
    >/dev/null 2>&1 &
spid=$!
for _ in $(seq 100); do [ -S "$dir/thr.sock" ] && break; sleep 0.05; done
[ -S "$dir/thr.sock" ] || { echo "vbd-daemon did not start" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$spid/stat"; }
hz=$(getconf CLK_TCK)
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); $SECS s per run, $REPS rounds, medians"
declare -A iops cpu
for _ in $(seq "$REPS"); do
    for kind in plain thr; do
        c0=$(cpu_ticks)
        out=$(taskset -c 1 "$VBD_BENCH" --vhost-user "$dir/$kind.sock" -w randread -b 4k -d 32 -t "$SECS" --json)
        c1=$(cpu_ticks)
        r=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['iops'], r['requests'])" "$out")
        iops[$kind]+="${r% *} "
        # daemon CPU microseconds per request
        cpu[$kind]+="$(echo "($c1 - $c0) * 1000000 / $hz / ${r#* }" | bc -l) "
    done
done
mi() { printf '%s\n' $1 | median; }
ip=$(mi "${iops[plain]}") it=$(mi "${iops[thr]}") cp=$(mi "${cpu[plain]}") ct=$(mi "${cpu[thr]}")
printf '%-34s %10s %10s %7s\n' "4k randread QD32, null-co" plain throttle ratio
printf '%-34s %10.0f %10.0f %7.3f\n' "IOPS (ratio throttle/plain)" "$ip" "$it" "$(echo "$it / $ip" | bc -l)"
printf '%-34s %10.2f %10.2f %7.3f\n' "daemon CPU us/request (plain/thr)" "$cp" "$ct" "$(echo "$cp / $ct" | bc -l)"
echo "all IOPS: plain ${iops[plain]}; throttle ${iops[thr]}"
