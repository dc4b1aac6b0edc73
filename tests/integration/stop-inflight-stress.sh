#!/bin/bash
# Images closed with requests in flight: vbd-daemon's NBD export of each
# format vbd writes, vbd-stress with 4 connections and 48 requests in
# flight on hot blocks that move to fresh ground (new allocations racing
# each other and flushes), and once it has issued 400 requests the daemon
# gets SIGTERM (stress-lib.sh's stress_crash_case with
# STRESS_STOP_SIGNAL=TERM). The daemon must finish what is in flight,
# flush and close every image, and exit 0; then qemu-img check is clean
# (no leak, no log to replay, no "not closed correctly": a clean stop is
# not a crash), every write the client saw complete is in the image
# (qemu-img convert and vbd-img convert against the model, vbd-stress
# --clean-stop), and vbd writes on from there (check clean, compare
# identical). Fixed seeds (seed % 3 picks the I/O path under the image);
# make check runs the two with a flag a clean close must clear (qcow2 with
# lazy refcounts: dirty; parallels: in use) to stay under a minute;
# STOP_STRESS_KINDS=all adds qcow2, vdi, vpc, qed, vhdx,
# vmdk monolithicSparse and split (all of them held on first writing).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
export STRESS_QD=48 STRESS_STOP_SIGNAL=TERM
all="c64k lazy vdi-dynamic vpc-dynamic qed-c4k parallels-c64k vmdk-sparse vmdk-split vhdx-1m"
kinds=${STOP_STRESS_KINDS:-"lazy parallels-c64k"}
[ "$kinds" = all ] && kinds=$all
failures=0 n=0
for kind in $kinds; do
    n=$((n + 1))
    seed=$((5200 + 7 * n))
    if stress_crash_case "$kind" "$seed" "$T/case"; then
        echo "ok   $kind seed=$seed (SIGTERM after $STRESS_LAST_OPS requests, $STRESS_LAST_VARIANT)"
    else
        echo "FAIL $kind seed=$seed"
        failures=$((failures + 1))
    fi
done
[ $failures = 0 ] || fail "$failures of $n runs failed"
echo OK
