#!/bin/bash
# Run every test: unit test binaries (each also with the epoll/thread-pool
# fallback engine), then the interop scripts in tests/integration.
# An interop script exits 0 (pass), 77 (skip: a peer is missing) or other (fail).
# Prints one summary line "N passed, N failed[, N skipped]".
# A test that runs longer than its time limit is killed (with every process
# of its group) and fails as "timed out": a hang ends the run with the name
# of the test instead of stalling it. The limit: VBD_TEST_TIMEOUT seconds
# (default 1200), or a script's own "# test-timeout: N" line for the few
# whose work legitimately takes longer (guests without KVM).
set -u
BUILD=${1:-build-asan}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "$ROOT" && cd "$BUILD" && pwd)
export VBD_BUILD="$BUILD" VBD_ROOT="$ROOT"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PATH="$BUILD/src/tools:$PATH"
OUT="$ROOT/tests/out"
mkdir -p "$OUT"
passed=0 failed=0 skipped=0
failures=""
TEST_TIMEOUT=${VBD_TEST_TIMEOUT:-1200}
times="" # "SECONDS NAME" lines, for the slowest at the end

run_one() { # name, time limit (seconds), command...
    local name=$1 limit=$2; shift 2
    local log="$OUT/${name//\//-}.log"
    local start=$SECONDS
    # timeout runs the test in a process group of its own and at the limit
    # signals the whole group: SIGTERM (a script's EXIT trap then stops what
    # it started, and --fork'd servers it knows of), SIGKILL 30 s later. No
    # test reads the terminal: stdin is /dev/null, so a test in that group
    # cannot stop on SIGTTIN.
    timeout -k 30 "$limit" "$@" >"$log" 2>&1 </dev/null
    local rc=$?
    local t=$((SECONDS - start))
    times+="$t $name"$'\n'
    # 124: timeout's SIGTERM ended it, 137: its SIGKILL did (a test's own
    # status 124 or 137 before the limit is a plain failure)
    if { [ $rc = 124 ] || [ $rc = 137 ]; } && [ $t -ge "$limit" ]; then
        echo "TIMEOUT: killed after $t s (limit $limit s)" >>"$log"
        failed=$((failed + 1)); failures="$failures $name(timeout)"
        printf 'FAIL  %-40s %3ss TIMED OUT (limit %ss; log: tests/out/%s.log)\n' "$name" "$t" "$limit" "${name//\//-}"
        tail -15 "$log" | sed 's/^/      /'
    elif [ $rc = 0 ]; then
        passed=$((passed + 1)); printf 'PASS  %-40s %3ss\n' "$name" "$t"
    elif [ $rc = 77 ]; then
        skipped=$((skipped + 1)); printf 'SKIP  %-40s %s\n' "$name" "$(tail -1 "$log")"
    else
        failed=$((failed + 1)); failures="$failures $name"
        printf 'FAIL  %-40s %3ss (log: tests/out/%s.log)\n' "$name" "$t" "${name//\//-}"
        tail -15 "$log" | sed 's/^/      /'
    fi
}

for t in "$BUILD"/tests/unit/test-*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=${t##*/}
    run_one "unit/${n#test-}" "$TEST_TIMEOUT" "$t"
    if [ "${n#test-}" = engine ] || [ "${n#test-}" = io ] || [ "${n#test-}" = tls ]; then
        run_one "unit/${n#test-}+no-io_uring" "$TEST_TIMEOUT" env VBD_NO_IO_URING=1 "$t"
    fi
done

for t in "$BUILD"/tests/fuzz/fuzz-*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=${t##*/}
    run_one "fuzz/${n#fuzz-}" "$TEST_TIMEOUT" "$t" -5000 # deterministic smoke run; libFuzzer builds take a corpus instead
    # inputs that once failed (tests/fuzz/regress/TARGET/): each replayed as it was
    if [ -d "$ROOT/tests/fuzz/regress/${n#fuzz-}" ]; then
        run_one "fuzz/${n#fuzz-}-regress" "$TEST_TIMEOUT" "$t" "$ROOT/tests/fuzz/regress/${n#fuzz-}"/*
    fi
done

for t in "$ROOT"/tests/integration/*.sh; do
    [ -f "$t" ] || continue
    n=${t##*/}
    case $n in lib.sh | lib-*.sh) continue ;; esac # sourced helpers, not tests
    limit=$(sed -n '1,30s/^# test-timeout: \([0-9][0-9]*\).*/\1/p' "$t" | head -1)
    run_one "integration/${n%.sh}" "${limit:-$TEST_TIMEOUT}" bash "$t"
done

# where make check's time goes (the 30-minute budget)
echo "slowest: $(printf '%s' "$times" | sort -rn | head -10 | awk '{printf "%s%s %ss", (NR > 1 ? ", " : ""), $2, $1}')"
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
