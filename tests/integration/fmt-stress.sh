#!/bin/bash
# Data integrity under concurrency in the other formats vbd writes: the
# model-based stress (tests/stress/vbd-stress.c) with 48 requests in
# flight, unaligned writes, write-zeroes, discards and flushes on hot
# blocks that move to fresh (unallocated) ground every 64 requests, so that
# several requests allocate the same new block at once. Each kind in
# process or over NBD with 4 connections (alternating; STRESS_BOTH=1 for
# both), then qemu-img check clean and qemu-img compare identical to the
# shadow. Then the crash-ish variant: SIGKILL to vbd-daemon with requests in
# flight; every byte written before an acknowledged flush must be there
# (qemu-img convert and vbd-img convert), qemu-img check clean (leaks
# allowed), and vbd writes on. Fixed seeds. make check runs the kinds below
# (vdi dynamic, vpc dynamic, qed 4k clusters and over a backing file,
# parallels 64k, vmdk monolithicSparse and zeroed grains,
# vhdx 1M and 8M blocks) to stay near a minute; FMT_STRESS_ALL=1 runs every
# kind of stress-lib.sh's STRESS_FMT_KINDS (also vdi static, vpc fixed, qed
# 64k, parallels 1M, vmdk twoGbMaxExtentSparse, streamOptimized (it found
# a lookup race: 1 run in ~50 failed a request with EIO before 62bb717)
# and over a backing file,
# vhdx fixed), each also crashed; `make soak` cycles them all with random
# seeds.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
export STRESS_QD=${STRESS_QD:-48}
OPS=${STRESS_OPS:-600}
failures=0 n=0 total=0
kinds="vdi-dynamic vpc-dynamic qed-c4k qed-backing parallels-c64k vmdk-sparse vmdk-zeroed-grain vhdx-1m vhdx-8m"
crash_kinds="vdi-dynamic qed-c4k parallels-c64k vhdx-1m"
if [ "${FMT_STRESS_ALL:-0}" = 1 ]; then
    kinds=$STRESS_FMT_KINDS crash_kinds=$STRESS_FMT_KINDS
fi
for kind in $kinds; do
    trs="lib nbd"
    [ "${STRESS_BOTH:-0}" = 1 ] || { [ $((n % 2)) = 0 ] && trs=lib || trs=nbd; }
    for tr in $trs; do
        n=$((n + 1))
        seed=$((1500 + 7 * n))
        stress_run "$kind" "$tr" "$seed" "$OPS"
    done
done
for kind in $crash_kinds; do
    n=$((n + 1))
    seed=$((1500 + 7 * n))
    if stress_crash_case "$kind" "$seed" "$T/case"; then
        echo "ok   $kind/crash seed=$seed (SIGKILL after $STRESS_LAST_OPS requests, $STRESS_LAST_VARIANT)"
    else
        echo "FAIL $kind/crash seed=$seed"
        failures=$((failures + 1))
    fi
done
echo "$n runs, $total operations before the crash runs, $failures failed"
[ $failures = 0 ] || fail "$failures of $n runs failed (replay one: STRESS_QD=$STRESS_QD tests/stress/soak.sh --kind KIND --transport T --seed S --ops $OPS build-asan)"
echo OK
