#!/bin/bash
# bench/wake-cost (the figures in bench/vhost-user*.sh's header): it prints
# its one line of figures, each a number, and a bad argument or a CPU set
# without CPUs 0 and 1 gets one line naming it and a non-zero exit. Nothing
# here judges the figures (no timing bounds).
. "$(dirname "$0")/lib.sh"
W=$VBD_BUILD/bench/wake-cost
[ -x "$W" ] || fail "$W not built"
[ "$(nproc)" -ge 2 ] || skip "needs 2 CPUs"

step "one line of figures"
out=$("$W" 20) || fail "wake-cost 20: exit $?: $out"
[[ $out =~ ^wake\ [0-9]+\ ns\ \(runs\ after\ [0-9]+\ ns\),\ write\ [0-9]+\ ns,\ 64K\ fill\ [0-9]+/[0-9]+\ ns$ ]] ||
    fail "unexpected output: $out"
# what the benchmarks' header shows (bench/vhost-user-common.sh)
out=$(VBD_BUILD=$VBD_BUILD bash -c '. "$1"/bench/vhost-user-common.sh; host_costs' _ "$VBD_ROOT") ||
    fail "host_costs: $out"
[[ $out == "; wake "*" ns, 64K fill "*" ns" ]] || fail "host_costs: $out"

step "bad arguments: one line each"
must_fail_with "ROUNDS 'abc': expected a count from 3 to 100000" "$W" abc
must_fail_with "ROUNDS '2': expected a count from 3 to 100000" "$W" 2
must_fail_with "ROUNDS '5x'" "$W" 5x
must_fail_with "one argument at most" "$W" 5 6
must_fail_with "needs CPUs 0 and 1" taskset -c 0 "$W" 5
echo "PASS"
