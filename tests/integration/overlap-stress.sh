#!/bin/bash
# Data integrity when requests in flight share BYTES, not only clusters:
# vbd-stress --overlap lets writes, write-zeroes (with and without unmap)
# and discards on the same bytes run at once (unaligned, inside a
# subcluster, whole clusters, across cluster boundaries), 48 in flight on a
# few hot clusters (moving to fresh ground for the formats that allocate a
# block once). Each byte must end as one of the mutations that may have
# landed last on it left it (the one issued last, or one still in flight
# when that one was issued; a discard: zero, the backing byte or what was
# there), and every read after them must agree; nothing else: not the data
# of a write that another superseded, not stale data from a freed cluster.
# The other stress tests keep mutations off each other's bytes, so these
# orders were never tried. Then qemu-img check clean and qemu-img compare
# identical to what the reads pinned. Each run must have issued mutations
# over others in flight on the same bytes (the log's count).
# Cases: OVERLAP_CASES (KIND/TRANSPORT words: stress-lib.sh's kinds, lib,
# nbd (4 connections), vhost (4 queues on 2 iothreads) or both (the two
# exports of the node at once)); make check runs
# four (qcow2 with extended L2 over vhost-user, compressed clusters with
# extended L2 over NBD, qed with 4k clusters in process, vhdx over NBD) to
# stay near a minute and a half under load; OVERLAP_ALL=1 twenty-two (also an
# external data file, refcount_bits=64 with 512-byte clusters, an
# internal snapshot, vdi, parallels, vmdk, vpc; and every other kind of
# the foreign formats of stress-lib.sh but streamOptimized, whose grains
# are written once: vdi static, vpc fixed, qed 64k and over a raw backing
# file, parallels 1M, vmdk zeroed grains, twoGbMaxExtentSparse, over a
# vmdk backing file and split across extent files, vhdx 8M and fixed,
# some over both exports of the node at once). Fixed seeds from
# OVERLAP_SEED, OVERLAP_OPS requests each; `make soak` runs any kind so
# with STRESS_EXTRA=--overlap.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need_stress
on_exit stress_kill_daemon
export STRESS_QD=${STRESS_QD:-48}
export STRESS_EXTRA="--overlap ${STRESS_EXTRA:-}"
OPS=${OVERLAP_OPS:-150}
SEED=${OVERLAP_SEED:-2300}
CASES="ext64k/vhost zlib-ext/nbd qed-c4k/lib vhdx-1m/nbd"
[ "${OVERLAP_ALL:-0}" = 1 ] && CASES="ext64k/vhost zlib-ext/lib data-file/nbd c512-rc64/lib snapshot-ext/nbd
vdi-dynamic/nbd qed-c4k/vhost parallels-c64k/lib vmdk-sparse/nbd vhdx-1m/vhost vpc-dynamic/lib
vdi-static/vhost vpc-fixed/nbd qed-c64k/both qed-backing/vhost parallels/nbd vmdk-zeroed-grain/vhost vmdk-2g/nbd
vmdk-backing/both vmdk-split/vhost vhdx-8m/both vhdx-fixed/nbd"
CASES=${OVERLAP_CASES:-$CASES}
failures=0 total=0 n=0
for c in $CASES; do
    n=$((n + 1))
    seed=$((SEED + 7 * n))
    kind=${c%/*} tr=${c#*/}
    if stress_case "$kind" "$tr" "$seed" "$OPS" "$T/case"; then
        over=$(sed -n 's/^vbd-stress: overlap: \([0-9]*\) of .*/\1/p' "$T/case/stress.log")
        if [ "${over:-0}" -gt 0 ]; then
            echo "ok   $c seed=$seed ($STRESS_LAST_OPS ops, $over over another in flight on the same bytes, $STRESS_LAST_VARIANT)"
        else
            echo "FAIL $c seed=$seed: no mutation met another on the same bytes (the test tested nothing)"
            failures=$((failures + 1))
        fi
    else
        echo "FAIL $c seed=$seed"
        failures=$((failures + 1))
    fi
    total=$((total + ${STRESS_LAST_OPS:-0}))
done
echo "$n runs, $total requests, $failures failed"
[ $failures = 0 ] || fail "$failures of $n runs failed (replay one: STRESS_EXTRA=--overlap STRESS_QD=$STRESS_QD tests/stress/soak.sh --kind KIND --transport T --seed S --ops $OPS build-asan)"
echo OK
