#!/bin/bash
# Run every test: unit test binaries (each also with the epoll/thread-pool
# fallback engine), fuzz targets' smoke runs and the interop scripts in
# tests/integration.
# An interop script exits 0 (pass), 77 (skip: a peer is missing) or other (fail).
# Prints one summary line "N passed, N failed[, N skipped]", after the
# slowest tests, the ones that took the most CPU (theirs and all their
# processes', as bash's times counts them: what make check's time on a
# loaded host goes to) and the totals; tests/out/timings.txt lists every
# test's wall and CPU seconds.
# A test that runs longer than its time limit is killed (with every process
# of its group) and fails as "timed out": a hang ends the run with the name
# of the test instead of stalling it. The limit: VBD_TEST_TIMEOUT seconds
# (default 1200), or a script's own "# test-timeout: N" line for the few
# whose work legitimately takes longer (guests without KVM).
# Tests run VBD_TEST_JOBS at a time (default: the number of CPUs, at most 4;
# 1 runs them one after the other). Much of a test's time is waiting (for
# a daemon, a peer, a rate limit, a job, a guest's I/O) or one process on
# one core: two at once use a two-core host where one left it half idle
# (make check's 30-minute budget). Every test is written to run
# beside others (its own temp dir $T, free ports, tagged processes: see
# tests/integration/lib.sh); each line is printed when its test ends. The
# long scripts start first, the longest first, so that the run does not end
# waiting for one long test started last: those marked "# test-slow" and
# those whose own time limit is above the default (the TCG guests, the long
# tables: their limit says they take long), ordered by that limit.
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
: >"$OUT/timings.txt"
passed=0 failed=0 skipped=0
failures=""
TEST_TIMEOUT=${VBD_TEST_TIMEOUT:-1200}
JOBS=${VBD_TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ -z "${VBD_TEST_JOBS:-}" ] && [ "$JOBS" -gt 4 ] && JOBS=4
case $JOBS in '' | *[!0-9]* | 0) echo "VBD_TEST_JOBS must be a number of tests at once (1 or more), not '$JOBS'" >&2; exit 2 ;; esac
times="" # "SECONDS NAME" lines, for the slowest at the end
cpu=""   # "CPU-SECONDS NAME" lines, for the costliest at the end

# The queue: name, time limit (seconds) and command line (words quoted
# with %q) of each test, in the order they start.
q_name=() q_limit=() q_cmd=()
# VBD_TESTS: only the tests whose names match one of its blank-separated
# patterns (e.g. 'integration/job-* unit/qmp'); all when unset
add() { # name, limit, command...
    local name=$1 limit=$2 pat; shift 2
    if [ -n "${VBD_TESTS:-}" ]; then
        local pats
        read -ra pats <<<"$VBD_TESTS"
        for pat in "${pats[@]}" ''; do
            [ -n "$pat" ] || return 0 # none matched
            # shellcheck disable=SC2053 # a pattern
            [[ $name == $pat ]] && break
        done
    fi
    q_name+=("$name") q_limit+=("$limit") q_cmd+=("$(printf '%q ' "$@")")
}

# The slow scripts first, then the unit and fuzz tests, then the other
# scripts in name order. Slow: marked "# test-slow", or a time limit of
# its own above the default 1200 s (a script's "# test-timeout: N" is its
# word that it takes long: the guests without KVM, the long tables and
# the hostile rounds). Ordered by that limit, the longest first (a marked
# script without one counts as 1200 s), then by name: the run's tail is
# then the short tests. Before, only the marked ones started first, and
# twelve long ones (eight TCG guests among them: vhost-user-reconnect and
# vhost-user-resize, two of the last in name order) started where their
# names fell.
script_limit() { sed -n '1,30s/^# test-timeout: \([0-9][0-9]*\).*/\1/p' "$1" | head -1; }
slow=() rest=()
for t in "$ROOT"/tests/integration/*.sh; do
    [ -f "$t" ] || continue
    case ${t##*/} in lib.sh | lib-*.sh) continue ;; esac # sourced helpers, not tests
    limit=$(script_limit "$t")
    if sed -n '1,30p' "$t" | grep -q '^# test-slow' || [ "${limit:-0}" -gt 1200 ]; then
        slow+=("${limit:-1200} $t")
    else
        rest+=("$t")
    fi
done
[ ${#slow[@]} = 0 ] || mapfile -t slow < <(printf '%s\n' "${slow[@]}" | sort -k1,1nr -k2,2 | cut -d' ' -f2-)
add_script() { # path of an integration script
    local n=${1##*/} limit
    limit=$(script_limit "$1")
    add "integration/${n%.sh}" "${limit:-$TEST_TIMEOUT}" bash "$1"
}
# the slow guest tests (CPU-bound under TCG: the scripts that boot one
# with tests/guest/run-guest.sh or through libvirt) alternate with the
# other slow ones (more of their time is waiting), so that two guests do
# not start side by side while the tail of the run waits on one core
sg=() so=()
for t in "${slow[@]}"; do
    if grep -q 'run-guest\.sh\|lib-libvirt\.sh' "$t"; then sg+=("$t"); else so+=("$t"); fi
done
for ((i = 0; i < ${#sg[@]} || i < ${#so[@]}; i++)); do
    [ $i -lt ${#sg[@]} ] && add_script "${sg[i]}"
    [ $i -lt ${#so[@]} ] && add_script "${so[i]}"
done

for t in "$BUILD"/tests/unit/test-*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=${t##*/}
    add "unit/${n#test-}" "$TEST_TIMEOUT" "$t"
    if [ "${n#test-}" = engine ] || [ "${n#test-}" = io ] || [ "${n#test-}" = tls ]; then
        add "unit/${n#test-}+no-io_uring" "$TEST_TIMEOUT" env VBD_NO_IO_URING=1 "$t"
    fi
done

for t in "$BUILD"/tests/fuzz/fuzz-*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    n=${t##*/}
    # deterministic smoke run (libFuzzer builds take a corpus instead):
    # 5000 inputs; qmp-jobs builds, runs and tears down a graph of qcow2
    # images, an NBD server and jobs for each input (1000 took 14 s of CPU
    # under ASan, 217 s at load 30 under nice 19): 500 of them
    runs=5000
    [ "${n#fuzz-}" = qmp-jobs ] && runs=500
    add "fuzz/${n#fuzz-}" "$TEST_TIMEOUT" "$t" -$runs
    # inputs that once failed (tests/fuzz/regress/TARGET/): each replayed as it was
    if [ -d "$ROOT/tests/fuzz/regress/${n#fuzz-}" ]; then
        add "fuzz/${n#fuzz-}-regress" "$TEST_TIMEOUT" "$t" "$ROOT/tests/fuzz/regress/${n#fuzz-}"/*
    fi
done

for t in "${rest[@]}"; do add_script "$t"; done

[ ${#q_name[@]} -gt 0 ] || { echo "no test matches VBD_TESTS='${VBD_TESTS:-}'" >&2; exit 2; }

declare -A running=() started=() # pid of a test's timeout -> its queue index, its start
# Interrupted (^C, or make killed): every running test's group gets
# SIGTERM, as at its time limit (its EXIT trap stops what it started).
stop_all() {
    local p names=
    for p in "${!running[@]}"; do
        kill -TERM -- "-$p" 2>/dev/null
        names+=" ${q_name[${running[$p]}]}"
    done
    wait
    echo "interrupted; stopped:$names"
    exit 130
}
trap stop_all INT TERM

start_one() { # queue index
    local i=$1 log="$OUT/${q_name[$1]//\//-}.log"
    # timeout runs the test in a process group of its own and at the limit
    # signals the whole group: SIGTERM (a script's EXIT trap then stops what
    # it started, and --fork'd servers it knows of), SIGKILL 30 s later. No
    # test reads the terminal: stdin is /dev/null, so a test in that group
    # cannot stop on SIGTTIN.
    local -a cmd
    eval "cmd=(${q_cmd[i]})"
    # a bash between timeout and the test writes the CPU time of the test
    # and all it waited for (bash's times: children's user and system) to
    # the .cpu file: the summary's "most CPU" says what to make cheaper
    rm -f "$log.cpu"
    timeout -k 30 "${q_limit[i]}" bash -c '"${@:2}"; rc=$?; times >"$1"; exit $rc' _ "$log.cpu" "${cmd[@]}" \
        >"$log" 2>&1 </dev/null &
    running[$!]=$i started[$!]=$SECONDS
}

report() { # pid of an ended test, its exit status
    local pid=$1 rc=$2 i=${running[$1]}
    local name=${q_name[i]} limit=${q_limit[i]} t=$((SECONDS - started[$1]))
    local log="$OUT/${name//\//-}.log"
    unset "running[$pid]" "started[$pid]"
    times+="$t $name"$'\n'
    # the second line of times: "0m1.250s 0m0.310s" (children's user, system)
    local c=
    if [ -s "$log.cpu" ]; then
        c=$(tr , . <"$log.cpu" | sed -n '2s/\([0-9]*\)m\([0-9.]*\)s \([0-9]*\)m\([0-9.]*\)s/\1 \2 \3 \4/p' |
            awk '{printf "%d", $1 * 60 + $2 + $3 * 60 + $4 + 0.5}')
        cpu+="$c $name"$'\n'
    fi
    rm -f "$log.cpu"
    echo "$t ${c:-?} $name" >>"$OUT/timings.txt" # wall s, CPU s, name: every test of the run
    # 124: timeout's SIGTERM ended it, 137: its SIGKILL did (a test's own
    # status 124 or 137 before the limit is a plain failure)
    if { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ $t -ge "$limit" ]; then
        echo "TIMEOUT: killed after $t s (limit $limit s)" >>"$log"
        failed=$((failed + 1)); failures="$failures $name(timeout)"
        printf 'FAIL  %-40s %3ss TIMED OUT (limit %ss; log: tests/out/%s.log)\n' "$name" "$t" "$limit" "${name//\//-}"
        tail -15 "$log" | sed 's/^/      /'
    elif [ "$rc" = 0 ]; then
        passed=$((passed + 1)); printf 'PASS  %-40s %3ss\n' "$name" "$t"
    elif [ "$rc" = 77 ]; then
        skipped=$((skipped + 1)); printf 'SKIP  %-40s %s\n' "$name" "$(tail -1 "$log")"
    else
        failed=$((failed + 1)); failures="$failures $name"
        printf 'FAIL  %-40s %3ss (log: tests/out/%s.log)\n' "$name" "$t" "${name//\//-}"
        tail -15 "$log" | sed 's/^/      /'
    fi
}

reap() { # wait for one running test to end and report it
    local ended='' rc
    wait -n -p ended; rc=$?
    if [ -n "$ended" ] && [ -n "${running[$ended]:-}" ]; then
        report "$ended" "$rc"
    elif [ $rc = 127 ]; then # no child left: cannot happen while one runs
        echo "run.sh: lost track of: ${!running[*]}" >&2
        failed=$((failed + 1)); failures="$failures (lost)"
        running=()
    fi
}
run_start=$SECONDS
for ((i = 0; i < ${#q_name[@]}; i++)); do
    while [ ${#running[@]} -ge "$JOBS" ]; do reap; done
    start_one "$i"
done
while [ ${#running[@]} -gt 0 ]; do reap; done

# where make check's time goes (the 30-minute budget)
echo "slowest: $(printf '%s' "$times" | sort -rn | head -15 | awk '{printf "%s%s %ss", (NR > 1 ? ", " : ""), $2, $1}')"
echo "most CPU: $(printf '%s' "$cpu" | sort -rn | head -15 | awk '{printf "%s%s %ss", (NR > 1 ? ", " : ""), $2, $1}')"
echo "tests: $((SECONDS - run_start)) s wall, $(printf '%s' "$times" | awk '{s += $1} END {print s + 0}') s summed over the tests ($(printf '%s' "$cpu" | awk '{s += $1} END {print s + 0}') s of CPU), $JOBS at once, load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
