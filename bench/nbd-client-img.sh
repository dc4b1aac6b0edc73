#!/bin/bash
# vbd as an NBD client against QEMU's: vbd-img bench and qemu-img bench
# (same options) reading and writing through the same qemu-nbd or nbdkit
# server (nbd-common.sh's serve: a 1 GiB raw file on /dev/shm, server on
# CPU 0), over a unix socket and TCP (127.0.0.1); the tools on CPU 1 take
# turns REPS times per row. Ratio: qemu-img's time / vbd-img's (>1: vbd is
# faster); "ns/r": the tool's CPU (user+system, all threads) and the
# server's per request. Not a test.
#   [REPS=N] [ROWS=REGEX] [VBD_IMG=PATH] [BASE_IMG=PATH] bench/nbd-client-img.sh
#   ROWS matches "peer transport workload"; BASE_IMG: another vbd-img build,
#   run in turn with the others (two more columns: its IOPS and ns/r).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/nbd-common.sh"
REPS=${REPS:-3}
dir=$(mktemp -d /dev/shm/vbd-nbdc-img.XXXXXX)
spid= PORT=$((20000 + $$ % 20000))
trap 'kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
nbd_image
echo "machine: $(machine); host: $(host_kind)"
echo "medians of $REPS; server on CPU 0, client on CPU 1; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-4s %-17s %10s %10s %6s %9s %9s %9s %9s%s\n' peer tran workload "vbd IOPS" "qemu IOPS" ratio \
    "vbd ns/r" "qemu ns/r" "srv/vbd" "srv/qemu" "${BASE_IMG:+  base IOPS base ns/r}"
# one COUNT TOOL...: prints "SECONDS TOOL-NS/R SERVER-NS/R"; a run that
# takes over a minute is stopped and counts as inf seconds (qemu-img bench
# 4K QD32 through qemu-nbd over TCP crawled at ~1 % CPU for minutes here)
one() {
    local count=$1 s0 s1 secs
    shift
    s0=$(cpu_ns $spid)
    secs=$(bench_secs run_cpu "$dir/cpu" timeout 60 taskset -c 1 "$@" "$URI" || true)
    [ -n "$secs" ] || secs=inf
    s1=$(cpu_ns $spid)
    echo "$secs $(( $(cat "$dir/cpu") / count )) $(( (s1 - s0) / count ))"
}
col() { cut -d' ' -f"$1" | median; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {print a / b}'; }
for peer in qemu-nbd nbdkit; do
    for tr in unix tcp; do
        # label|count|args
        while IFS='|' read -r label count args; do
            [ -z "${ROWS:-}" ] || grep -qE -- "$ROWS" <<<"$peer $tr $label" || continue
            serve $peer $tr
            v='' q='' b=''
            for _ in $(seq "$REPS"); do
                v+="$(one "$count" "$VBD_IMG" bench -f raw -c "$count" $args)"$'\n'
                q+="$(one "$count" qemu-img bench -f raw -c "$count" $args)"$'\n'
                [ -z "${BASE_IMG:-}" ] || b+="$(one "$count" "$BASE_IMG" bench -f raw -c "$count" $args)"$'\n'
            done
            stop
            extra=
            [ -z "${BASE_IMG:-}" ] || extra=$(printf ' %10.0f %9.0f' "$(div $count "$(col 1 <<<"${b%$'\n'}")")" "$(col 2 <<<"${b%$'\n'}")")
            vs=$(col 1 <<<"${v%$'\n'}") qs=$(col 1 <<<"${q%$'\n'}")
            printf '%-8s %-4s %-17s %10.0f %10.0f %6.2f %9.0f %9.0f %9.0f %9.0f%s\n' $peer $tr "$label" \
                "$(div $count $vs)" "$(div $count $qs)" "$(div $qs $vs)" \
                "$(col 2 <<<"${v%$'\n'}")" "$(col 2 <<<"${q%$'\n'}")" "$(col 3 <<<"${v%$'\n'}")" "$(col 3 <<<"${q%$'\n'}")" "$extra"
        done <<ROWS
4k randread QD1|10000|-d 1 -s 4k -S 409612288
4k randread QD32|100000|-d 32 -s 4k -S 409612288
4k randwrite QD32|100000|-d 32 -s 4k -S 409612288 -w --pattern=0xa5
1M seqread QD8|2000|-d 8 -s 1M
ROWS
    done
done
