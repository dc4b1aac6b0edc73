#!/bin/bash
# Writes on different subclusters of the same clusters in flight at once,
# 64 requests, 2 hot clusters (with their neighbours), over qcow2 images
# with extended L2 entries (16k/64k/2M clusters over a backing file, none,
# an external data file over a backing file, an internal snapshot): two
# writes into one new cluster, a write beside an in-flight allocation,
# writes meeting zeroes and discards, in process and over NBD with 4
# connections. The model-based stress (tests/stress/vbd-stress.c), fixed
# seeds; every run: no mismatch on any read, qemu-img check clean (leaks
# included), qemu-img compare identical to the shadow (and the snapshot
# intact).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
export STRESS_EXTRA="--hot 2" STRESS_QD=64
OPS=${STRESS_OPS:-1500}
# how many requests met another on a busy cluster (the log's count)
stress_note_fn() { echo ", $(sed -n 's/.* \([0-9]*\) met another.*/\1/p' "$1/stress.log") on a busy cluster"; }
stress_hot_cases 8100 ext16k-backing ext64k-backing ext2m-backing ext64k ext-data-file-backing snapshot-ext
echo OK
