#!/bin/bash
# vbd-daemon vs qemu-storage-daemon as vhost-user-blk back ends, driven by
# vbd-bench with the same parameters in one run; the server is pinned to
# CPU 0 and the client to CPU 1. Ratio > 1 means vbd is better (IOPS: vbd/qsd;
# p99: qsd/vbd). "ns/req": the server's CPU (user+system, all threads) per
# request, which compares across hosts. Not a test.   bench/vhost-user.sh [SECONDS]
# IOTHREAD=1: both servers run the export on an iothread (--object iothread,
# export iothread=io0) instead of the main loop (still on CPU 0).
# BASE_DAEMON=<an older vbd-daemon>: it runs each row too (between vbd and
# qsd), and two more columns give its IOPS and CPU per request.
# "64k 16seg read": the 64k row with each request's data in 16 4 KiB
# descriptors apart in guest memory (vbd-bench --segments 16), as a Linux
# guest sends pages that are not contiguous.
# ROWS=REGEX: only the rows whose "node q workload" matches (grep -E), e.g.
# ROWS='^file . 64k'.
# CLIENT_ARGS="...": more vbd-bench options for every run, e.g. --no-event-idx
# (the client before 2026-12-04: no EVENT_IDX, no interrupt suppression; the
# default client negotiates EVENT_IDX and suppresses interrupts as Linux does).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vhost-user-common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
SECS=${1:-5}
scratch bench file # the file rows' image; the null rows leave it
field() { python3 -c "import json,sys; r=json.loads(sys.argv[1]); f=sys.argv[2]; print(r['lat-us']['p99'] if f=='p99' else r[f])" "$1" "$2"; }
echo "machine: $(machine); host: $(host_kind)$(host_costs)"
echo "$SECS s per run, medians of $REPS; server on CPU 0, vbd-bench on CPU 1; iothread: ${IOTHREAD:-0}; client: vbd-bench ${CLIENT_ARGS:-(EVENT_IDX)}"
whos="vbd qsd"; [ -n "${BASE_DAEMON:-}" ] && whos="vbd base qsd"
printf '%-6s %-3s %-18s %10s %10s %6s %9s %9s %6s %8s %8s%s\n' node q workload "vbd IOPS" "qsd IOPS" ratio "vbd p99" "qsd p99" ratio \
    "vbd ns/r" "qsd ns/r" "${BASE_DAEMON:+   base IOPS base ns/r}"
for kind in null file; do
    for nq in 1 2; do
        while IFS='|' read -r label args; do
            [ -z "${ROWS:-}" ] || grep -qE -- "$ROWS" <<<"$kind $nq $label" || continue
            declare -A iops=() p99=() nsr=()
            for who in $whos; do
                bin=$VBD_DAEMON; [ $who = qsd ] && bin=qemu-storage-daemon; [ $who = base ] && bin=$BASE_DAEMON
                serve "$bin" $kind $nq
                i=() p=() c=()
                for _ in $(seq "$REPS"); do
                    c0=$(cpu_ns $spid)
                    # shellcheck disable=SC2086 # lists of options
                    out=$(taskset -c 1 "${TAX[@]}" "$VBD_BENCH" --vhost-user "$sock" -q $nq $args ${CLIENT_ARGS:-} -t "$SECS" --json)
                    c1=$(cpu_ns $spid)
                    i+=("$(field "$out" iops)"); p+=("$(field "$out" p99)")
                    c+=("$(( (c1 - c0) / ($(field "$out" requests) + 1) ))")
                done
                kill $spid; wait $spid 2>/dev/null || true
                iops[$who]=$(printf '%s\n' "${i[@]}" | median); p99[$who]=$(printf '%s\n' "${p[@]}" | median)
                nsr[$who]=$(printf '%s\n' "${c[@]}" | median)
            done
            base=; [ -n "${BASE_DAEMON:-}" ] && base=$(printf ' %12.0f %9.0f' "${iops[base]}" "${nsr[base]}")
            printf '%-6s %-3s %-18s %10.0f %10.0f %6.2f %9.1f %9.1f %6.2f %8.0f %8.0f%s\n' $kind $nq "$label" "${iops[vbd]}" "${iops[qsd]}" \
                "$(echo "${iops[vbd]} / ${iops[qsd]}" | bc -l)" "${p99[vbd]}" "${p99[qsd]}" "$(echo "${p99[qsd]} / ${p99[vbd]}" | bc -l)" \
                "${nsr[vbd]}" "${nsr[qsd]}" "$base"
        done <<ROWS
4k randread QD1|-w randread -b 4k -d 1
4k randread QD32|-w randread -b 4k -d 32
4k randwrite QD32|-w randwrite -b 4k -d 32
64k seqread QD8|-w read -b 64k -d 8
64k 16seg read QD8|-w read -b 64k -d 8 --segments 16
ROWS
    done
done
