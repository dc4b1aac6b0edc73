#!/bin/bash
# A qcow2 disk behind a vhost-user-blk export with 2 rings, 4k randread
# QD32 from vbd-bench: the rings on the main loop, on 1 iothread and on 2
# iothreads. A qcow2 graph is single-loop, so with rings on iothreads every
# request hops to the graph's home loop and back; this measures that hop.
# Runs are interleaved (configuration inside repetition) and medians of
# REPS reported, as the machine is shared; "ns/r": the daemon's CPU time
# (user+system, all threads) per request. Not a test.
#   bench/vhost-user-iothread.sh [SECONDS]
# FORMAT=raw: the same over raw (multi-loop: no hop), for comparison.
# DAEMONS="before=/path/vbd-daemon after=/path/vbd-daemon" compares binaries
# (default: this tree's build). TASKSET="taskset -c 0" pins the daemon.
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
DAEMONS=${DAEMONS:-vbd=$VBD_BUILD/src/tools/vbd-daemon}
TASKSET=${TASKSET:-}
SECS=${1:-5}
dir=$(mktemp -d /dev/shm/vbd-vu-iot.XXXXXX)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
FORMAT=${FORMAT:-qcow2}
sock=$dir/vu.sock img=$dir/disk.$FORMAT
qemu-img create -q -f $FORMAT "$img" 1G
qemu-io -f $FORMAT -c 'write -P 0x5a 0 1G' "$img" >/dev/null # every cluster allocated: reads go through the L2 tables

serve() { # daemon-binary config
    local bin=$1 cfg=$2 iot=()
    case $cfg in
    main) ;;
    iot1) iot=(--object iothread,id=io0) ;;
    iot2) iot=(--object iothread,id=io0 --object iothread,id=io1) ;;
    esac
    local exp="type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=2"
    [ $cfg = iot1 ] && exp+=",iothread=io0"
    [ $cfg = iot2 ] && exp+=",iothread.0=io0,iothread.1=io1"
    rm -f "$sock"
    $TASKSET "$bin" "${iot[@]}" --blockdev driver=file,node-name=file0,filename="$img" \
        --blockdev driver=$FORMAT,node-name=disk0,file=file0 --export "$exp" >"$dir/daemon.log" 2>&1 &
    spid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && return; kill -0 $spid 2>/dev/null || break; sleep 0.05; done
    echo "daemon $bin ($cfg) did not start:" >&2; cat "$dir/daemon.log" >&2; exit 1
}

declare -A runs=() nsr=()
configs="main iot1 iot2"
echo "$FORMAT; machine: $(machine); load: $(cut -d' ' -f1-3 /proc/loadavg); $SECS s per run, medians of $REPS, interleaved"
for rep in $(seq "$REPS"); do
    for d in $DAEMONS; do
        for cfg in $configs; do
            serve "${d#*=}" $cfg
            c0=$(cpu_ns $spid)
            out=$("$VBD_BENCH" --vhost-user "$sock" -q 2 -w randread -b 4k -d 32 -t "$SECS" --json)
            c1=$(cpu_ns $spid)
            kill $spid; wait $spid 2>/dev/null || true; spid=
            runs[${d%%=*}/$cfg]+="$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['iops']))" "$out") "
            nsr[${d%%=*}/$cfg]+="$(python3 -c "import json,sys; print((int(sys.argv[2]) - int(sys.argv[3])) // (json.loads(sys.argv[1])['requests'] + 1))" "$out" $c1 $c0) "
        done
    done
done
printf '%-10s %-26s %10s %8s   %s\n' daemon "rings (2)" "IOPS" "ns/r" "runs"
for d in $DAEMONS; do
    for cfg in $configs; do
        case $cfg in main) where="on the main loop" ;; iot1) where="on 1 iothread" ;; iot2) where="on 2 iothreads" ;; esac
        r=${runs[${d%%=*}/$cfg]}
        printf '%-10s %-26s %10.0f %8.0f   %s\n' "${d%%=*}" "$where" "$(printf '%s\n' $r | median)" \
            "$(printf '%s\n' ${nsr[${d%%=*}/$cfg]} | median)" "$r"
    done
done
