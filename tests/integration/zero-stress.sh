#!/bin/bash
# Write-zeroes (with and without unmap) and discards racing with writes and
# reads on the same few clusters, 64 requests in flight, over the qcow2
# kinds whose zero paths differ (v2 without a zero flag, v3, extended L2,
# with and without a backing file, 4k to 2M clusters), in process and over
# NBD with 4 connections: the model-based stress (tests/stress/vbd-stress.c)
# with half its requests zeroes or discards on 2 hot clusters. Fixed seeds;
# every run: no mismatch on any read, qemu-img check clean (leaks
# included), qemu-img compare identical to the shadow.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
export STRESS_EXTRA="--zero-heavy --hot 2" STRESS_QD=64
OPS=${STRESS_OPS:-1500}
stress_hot_cases 7000 c4k c64k c2m v2 v2-backing c64k-backing ext64k ext16k-backing
echo OK
