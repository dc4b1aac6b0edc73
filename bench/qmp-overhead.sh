#!/bin/bash
# Is the data plane slowed by the control plane? vbd-daemon serves a
# null-co disk over vhost-user-blk; vbd-bench runs 4K randread QD32 on it
# (a) with no monitor and (b) with a QMP monitor and a client sending
# query-blockstats 100 times a second (paced by the clock). The two
# variants alternate within each round (a b, then b a) so drift on a shared
# machine hits both alike; per round the ratio b/a, and the median over the
# rounds. Done first with the export on the main loop (where the monitor
# runs too), then on an iothread. Server on CPU 0, vbd-bench on CPU 1, the
# poller unpinned (its own CPU use is printed). Issue 12 wants >= 0.98.
# Not a test.   bench/qmp-overhead.sh [SECONDS]   ROUNDS=N (default 7)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
SECS=${1:-5}
ROUNDS=${ROUNDS:-7}
dir=$(mktemp -d /dev/shm/vbd-qmp-bench.XXXXXX)
spid= ppid_=
trap '[ -n "$ppid_" ] && kill $ppid_ 2>/dev/null || true; [ -n "$spid" ] && kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
sock=$dir/vu.sock mon=$dir/qmp.sock

# The poller: query-blockstats every 10 ms by the clock until SIGTERM, then
# one line: requests, seconds, rate, error replies, its CPU seconds.
cat >"$dir/poller.py" <<'PY'
import os, signal, socket, sys, time
path, ready = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
f.readline()                                      # greeting
s.sendall(b'{"execute": "qmp_capabilities"}\n')
f.readline()
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
req = b'{"execute": "query-blockstats"}\n'
n = errors = 0
t0 = nxt = time.monotonic()
while not stop:
    s.sendall(req)
    while True:
        line = f.readline()
        if not line:
            sys.exit("poller: the monitor closed the connection")
        if not line.startswith(b'{"event"'):
            break
    if not line.startswith(b'{"return"'):
        errors += 1
    n += 1
    if n == 1:
        open(ready, "w").close()
    nxt += 0.01
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
secs = time.monotonic() - t0
cpu = sum(os.times()[:2])
print("%d %.2f %.1f %d %.2f" % (n, secs, n / secs, errors, cpu))
PY

serve() { # iothread(0|1) monitor(0|1)
    rm -f "$sock" "$mon"
    local iot=() iot_opt= m=()
    [ "$1" = 1 ] && iot=(--object iothread,id=io0) iot_opt=,iothread=io0
    [ "$2" = 1 ] && m=(--chardev socket,id=m0,path="$mon",server=on,wait=off --monitor chardev=m0)
    taskset -c 0 "$VBD_DAEMON" "${m[@]}" "${iot[@]}" --blockdev driver=null-co,node-name=disk0,size=1073741824,read-zeroes=on \
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$sock",writable=on$iot_opt \
        >"$dir/daemon.log" 2>&1 &
    spid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && { [ "$2" = 0 ] || [ -S "$mon" ]; } && return; sleep 0.05; done
    cat "$dir/daemon.log" >&2; echo "vbd-daemon did not start" >&2; exit 1
}
# one run: IOPS (set) of vbd-bench 4K randread QD32 (polling: 1 with the poller)
IOPS=
run() { # iothread polling
    serve "$1" "$2"
    if [ "$2" = 1 ]; then
        rm -f "$dir/ready"
        python3 "$dir/poller.py" "$mon" "$dir/ready" >"$dir/poller.out" &
        ppid_=$!
        for _ in $(seq 200); do [ -e "$dir/ready" ] && break; sleep 0.05; done
        [ -e "$dir/ready" ] || { echo "the poller got no reply" >&2; exit 1; }
    fi
    out=$(taskset -c 1 "$VBD_BENCH" --vhost-user "$sock" -w randread -b 4k -d 32 -t "$SECS" --json)
    if [ "$2" = 1 ]; then
        kill -TERM $ppid_; wait $ppid_; ppid_=
        read -r n psecs rate errs pcpu <"$dir/poller.out"
        [ "$errs" = 0 ] || { echo "query-blockstats failed $errs times" >&2; exit 1; }
        echo "$rate $pcpu" >>"$dir/poll.$1"
    fi
    kill $spid; wait $spid 2>/dev/null || true; spid=
    IOPS=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['iops'])" "$out")
}
echo "machine: $(machine); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "vbd-bench -w randread -b 4k -d 32 -q 1 -t $SECS on a null-co disk; $ROUNDS rounds, variants interleaved"
printf '%-9s %-5s %12s %12s %7s\n' export round "IOPS no-mon" "IOPS polled" ratio
for iot in 0 1; do
    where=main-loop; [ $iot = 1 ] && where=iothread
    : >"$dir/ratios.$iot" >"$dir/off.$iot" >"$dir/on.$iot"
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then
            run $iot 0; off=$IOPS; run $iot 1; on=$IOPS
        else
            run $iot 1; on=$IOPS; run $iot 0; off=$IOPS
        fi
        ratio=$(echo "$on / $off" | bc -l)
        echo "$off" >>"$dir/off.$iot"; echo "$on" >>"$dir/on.$iot"; echo "$ratio" >>"$dir/ratios.$iot"
        printf '%-9s %-5s %12.0f %12.0f %7.3f\n' $where $r "$off" "$on" "$ratio"
    done
    printf '%-9s %-5s %12.0f %12.0f %7.3f   (poller: %.1f req/s, %.2f CPU s per run; medians)\n' $where median \
        "$(median <"$dir/off.$iot")" "$(median <"$dir/on.$iot")" "$(median <"$dir/ratios.$iot")" \
        "$(cut -d' ' -f1 "$dir/poll.$iot" | median)" "$(cut -d' ' -f2 "$dir/poll.$iot" | median)"
done
# The control plane's cost on the daemon's main loop, which the load on a
# shared host does not blur: the main thread's CPU time (schedstat, ns)
# over N back-to-back query-blockstats on the idle daemon, per request and
# as the share of one CPU that 100 requests a second take.
cat >"$dir/cost.py" <<'PY'
import socket, sys, time
path, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def cpu_ns():
    with open("/proc/%s/schedstat" % pid) as f:
        return int(f.read().split()[0])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
f.readline()
s.sendall(b'{"execute": "qmp_capabilities"}\n')
f.readline()
req = b'{"execute": "query-blockstats"}\n'
size = 0
c0, t0 = cpu_ns(), time.monotonic()
for _ in range(n):
    s.sendall(req)
    line = f.readline()
    if not line.startswith(b'{"return"'):
        sys.exit("query-blockstats: %r" % line[:200])
    size = len(line)
c1, t1 = cpu_ns(), time.monotonic()
us = (c1 - c0) / n / 1000
print("%.1f %.1f %.3f %d" % (us, (t1 - t0) / n * 1e6, us * 100 / 1e6 * 100, size))
PY
for iot in 0 1; do
    serve $iot 1
    read -r us rtt pct bytes < <(taskset -c 1 python3 "$dir/cost.py" "$mon" $spid 20000)
    where=main-loop; [ $iot = 1 ] && where=iothread
    printf 'query-blockstats (export on %s): %s us of main-loop CPU per request (round trip %s us, reply %s bytes): at 100/s %s %% of one CPU\n' \
        $where "$us" "$rtt" "$bytes" "$pct"
    kill $spid; wait $spid 2>/dev/null || true; spid=
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
