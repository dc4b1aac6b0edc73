#!/bin/bash
# Run every test: unit test binaries (each also with the epoll/thread-pool
# fallback engine), then the interop scripts in tests/integration.
# An interop script exits 0 (pass), 77 (skip: a peer is missing) or other (fail).
# Prints one summary line "N passed, N failed[, N skipped]".
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
times="" # "SECONDS NAME" lines, for the slowest at the end

run_one() { # name, command...
    local name=$1; shift
    local log="$OUT/${name//\//-}.log"
    local start=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local t=$((SECONDS - start))
    times+="$t $name"$'\n'
    if [ $rc = 0 ]; then
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
    run_one "unit/${n#test-}" "$t"
    if [ "${n#test-}" = engine ] || [ "${n#test-}" = io ] || [ "${n#test-}" = tls ]; then
        run_one "unit/${n#test-}+no-io_uring" env VBD_NO_IO_URING=1 "$t"
    fi
done

for t in "$BUILD"/tests/fuzz/fuzz-*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=${t##*/}
    run_one "fuzz/${n#fuzz-}" "$t" -5000 # deterministic smoke run; libFuzzer builds take a corpus instead
done

for t in "$ROOT"/tests/integration/*.sh; do
    [ -f "$t" ] || continue
    n=${t##*/}
    case $n in lib.sh | lib-*.sh) continue ;; esac # sourced helpers, not tests
    run_one "integration/${n%.sh}" bash "$t"
done

# where make check's time goes (the 30-minute budget)
echo "slowest: $(printf '%s' "$times" | sort -rn | head -10 | awk '{printf "%s%s %ss", (NR > 1 ? ", " : ""), $2, $1}')"
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
