#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# test-timeout: 2700 (run.sh: 66 fixed CPU-bound runs under ASan; at load 40-48 the 1200 s default ended it at run 50 while every run passed; run outside run.sh at load 31: 1114 s)
# The model-based stress test (tests/stress/vbd-stress.c) over every qcow2
# image kind (cluster sizes 512/4k/64k/2M, extended L2 with and without a
# backing file, refcount_bits 1/64, lazy refcounts, zlib and zstd compressed
# clusters, internal snapshots, a backing chain, external data files raw and
# not, persistent bitmaps) and the three ways in: in process, NBD with 4
# connections, vhost-user-blk with 4 queues on 2 iothreads. Short runs with
# fixed seeds; `make soak` runs the same for as long as asked with random
# seeds. Every run: no mismatch on any read, qemu-img check clean,
# qemu-img compare identical to the shadow, snapshots intact.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
OPS=${STRESS_OPS:-1500}
failures=0 total=0 n=0 ki=0
for kind in $STRESS_KINDS; do
    ki=$((ki + 1)) ti=0
    for tr in $STRESS_TRANSPORTS; do
        n=$((n + 1)) ti=$((ti + 1))
        # fixed seeds; seed % 3 picks the I/O path under the image, and it
        # rotates over the transports from one kind to the next
        seed=$((999 + 3 * n + (ki + ti) % 3))
        stress_run "$kind" "$tr" "$seed" "$OPS"
    done
done
echo "$n runs, $total operations, $failures failed"
[ $failures = 0 ] || fail "$failures of $n stress runs failed (replay one: tests/stress/soak.sh --kind KIND --transport T --seed S --ops $OPS build-asan)"
echo OK
