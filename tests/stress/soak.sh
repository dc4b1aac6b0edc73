#!/bin/bash
# make soak: the stress test (vbd-stress over every qcow2 image kind, the
# other formats' kinds (vdi, vpc, qed, parallels, vmdk, vhdx) and every way
# in: in process, NBD, vhost-user; transport "crash" kills the NBD server
# mid-run, see stress-lib.sh) with random seeds for as long as asked,
# cycling over the kinds and transports. Prints the seed of every
# failure (replay: soak.sh --kind K --transport T --seed S [--ops N]) and
# the total number of operations; keeps each failed case's directory.
#   soak.sh [--seconds N] [--case-seconds N] [--kind K]... [--transport T]... [--seed S] [--ops N] [BUILD_DIR]
# Environment: SOAK_SECONDS (default 600), SOAK_OUT (default tests/out/soak),
# STRESS_CRASH_AFTER (transport crash: requests before the kill; default
# from the seed, 40-1539).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${SOAK_SECONDS:-600} case_seconds=20 kinds="" transports="" seed="" ops="" build=""
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift ;;
    --case-seconds) case_seconds=$2; shift ;;
    --kind) kinds="$kinds $2"; shift ;;
    --transport) transports="$transports $2"; shift ;;
    --seed) seed=$2; shift ;;
    --ops) ops=$2; shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "soak.sh: unknown option '$1'" >&2; exit 2 ;;
    *) build=$1 ;;
    esac
    shift
done
export VBD_BUILD=$(cd "$ROOT" && cd "${build:-build}" && pwd) || { echo "soak.sh: no build directory '${build:-build}' (make build)" >&2; exit 2; }
export VBD_ROOT=$ROOT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for c in qemu-img qemu-io python3; do command -v $c >/dev/null || { echo "soak.sh: $c is needed" >&2; exit 2; }; done
. "$ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || { echo "soak.sh: no $STRESS_BIN (make build)" >&2; exit 2; }
kinds=${kinds:-$STRESS_KINDS $STRESS_FMT_KINDS} transports=${transports:-$STRESS_TRANSPORTS}
OUT=${SOAK_OUT:-$ROOT/tests/out/soak}
mkdir -p "$OUT"
trap 'stress_kill_daemon' EXIT
trap 'stress_kill_daemon; echo "soak.sh: interrupted"; exit 130' INT TERM

runs=0 failed=0 total_ops=0 failures=""
one() { # kind transport seed ops
    local d="$OUT/current"
    # transport crash: the kill after 40 to 1539 requests, from the seed
    # (a replay kills at the same point), unless STRESS_CRASH_AFTER says:
    # in the first allocations (new tables, a format's first-write header
    # update) as well as late; stress-lib.sh's default is 400
    local after=${STRESS_CRASH_AFTER:-$((40 + $3 % 1500))}
    runs=$((runs + 1))
    if STRESS_CRASH_AFTER=$after stress_case "$1" "$2" "$3" "$4" "$d" 2>"$OUT/err.log"; then
        echo "ok   $1/$2 seed=$3 ${STRESS_LAST_OPS:-0} ops ($STRESS_LAST_VARIANT)"
        rm -rf "$d"
    else
        failed=$((failed + 1))
        failures="$failures $1/$2/seed=$3"
        echo "FAIL $1/$2 seed=$3 ${STRESS_LAST_OPS:-0} ops (kept in $OUT/fail-$1-$2-$3)"
        sed 's/^/    /' "$OUT/err.log" | head -40
        rm -rf "$OUT/fail-$1-$2-$3" && mv "$d" "$OUT/fail-$1-$2-$3"
    fi
    total_ops=$((total_ops + ${STRESS_LAST_OPS:-0}))
}

if [ -n "$seed" ]; then # replay
    for k in $kinds; do for t in $transports; do one "$k" "$t" "$seed" "${ops:-${case_seconds}s}"; done; done
else
    end=$((SECONDS + seconds))
    set -- $kinds; nk=$#
    set -- $transports; nt=$#
    i=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
    while [ $SECONDS -lt $end ]; do
        k=$(echo $kinds | cut -d' ' -f$((i % nk + 1)))
        t=$(echo $transports | cut -d' ' -f$((i / nk % nt + 1)))
        i=$((i + 1))
        s=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
        left=$((end - SECONDS))
        per=$case_seconds
        [ $left -lt $per ] && per=$left
        [ $per -lt 1 ] && per=1
        one "$k" "$t" "$s" "${ops:-${per}s}"
    done
fi
echo "soak: $runs runs, $total_ops operations, $failed failed${failures:+:$failures}"
[ $failed = 0 ]
