#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# Crash consistency: a vbd-io writer (allocating writes to distinct places,
# a flush every few writes) is killed with SIGKILL at random moments. After
# each kill qemu-img check must find no corruption (leaks are allowed, as in
# QEMU), and every write that completed before the last completed flush must
# read back. CRASH_CYCLES (default 50) cycles; bench/qcow2-crash.sh runs 1000.
# After a kill the image lock can outlive the writer for a few milliseconds
# (io_uring's file references are dropped after the process is reaped): the
# test waits for the lock to be free, as a user's restart script must.
# Opt-in knobs to chase one case (all unset in make check; bench/qcow2-crash.sh
# passes them on): CRASH_ONLY=N runs cycle N's image options and write list in
# every cycle (only the kill moment varies); with CRASH_NEW_SEEDS=1 it keeps
# cycle N's image options but each cycle draws its own write list.
# CRASH_KILL_MS=M kills at a random moment in the first M ms instead of the
# first 500 ms (a release build finishes its writes in ~150 ms); CRASH_KILL_AT_WRITE=K
# (or random: 1-190) kills once K writes have completed, however loaded the
# machine is (CRASH_KILL_MS drifts towards the first writes under load). CRASH_KEEP=DIR:
# on a failure the image as the kill left it, the commands and the output are
# copied there.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
cycles=${CRASH_CYCLES:-50}
total_writes=0 killed_mid_run=0
keep=${CRASH_KEEP:-}
[ -z "${CRASH_KILL_AT_WRITE:-}" ] || exec {tick}<> <(:) # never readable: read -t on it waits
crash_fail() { # keep the evidence when asked, then fail
    if [ -n "$keep" ]; then
        mkdir -p "$keep" && cp c.crashed cmds.txt out.txt "$keep"/ 2>/dev/null
        cp verify.txt qio.txt "$keep"/ 2>/dev/null
        echo "kept the crashed image, commands and output in $keep (seed $seed)" >&2
    fi
    fail "$@"
}
for cyc in $(seq "$cycles"); do
    rm -f c.qcow2
    cfg=${CRASH_ONLY:-$cyc} seed=${CRASH_ONLY:-$cyc}
    [ "${CRASH_NEW_SEEDS:-0}" = 1 ] && seed=$cyc
    opts=cluster_size=4k
    [ $((cfg % 3)) = 1 ] && opts=cluster_size=64k
    [ $((cfg % 3)) = 2 ] && opts=cluster_size=512,refcount_bits=1
    lazy=false
    if [ $((cfg % 4)) = 0 ]; then opts=$opts,lazy_refcounts=on; lazy=true; fi
    must "$VBD_IMG" create -q -f qcow2 -o $opts c.qcow2 256M
    # write k goes to its own 12 KiB slot, somewhere in the disk; a flush after every 4th
    python3 - $seed >cmds.txt <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
slots = r.sample(range((256 << 20) // 16384), 190)  # vbd-io takes up to 255 commands
for k, s in enumerate(slots):
    print('write -P 0x%02x %d %d' % (k % 250 + 1, s * 16384 + r.randrange(0, 4096), 12288))
    if k % 4 == 3:
        print('flush')
PY
    args=(); while read -r l; do args+=(-c "$l"); done <cmds.txt
    : >out.txt
    "$VBD_IO" -f qcow2 "${args[@]}" c.qcow2 >out.txt 2>&1 &
    pid=$!
    if [ -n "${CRASH_KILL_AT_WRITE:-}" ]; then
        # kill once the writer has printed its k-th "wrote" line (each write prints two
        # lines): the kill point does not depend on how loaded the machine is
        k=$CRASH_KILL_AT_WRITE; [ "$k" = random ] && k=$((RANDOM % 190 + 1))
        lines=()
        while kill -0 $pid 2>/dev/null; do
            mapfile -t lines <out.txt
            [ ${#lines[@]} -ge $((2 * k)) ] && break
            read -r -t 0.002 -u $tick || true # a sleep without a fork
        done
    elif [ -n "${CRASH_KILL_MS:-}" ]; then
        ms=$(( (RANDOM * 32768 + RANDOM) % CRASH_KILL_MS ))
        sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    else
        sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
    fi
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; wrc=$?
    # killed (137) or finished (0); anything else means the writer never ran properly
    [ $wrc = 137 ] || [ $wrc = 0 ] || fail "cycle $cyc: vbd-io exited with $wrc: $(head -3 out.txt)"
    # the killed writer's io_uring may hold the image lock a little longer than the process lives
    wait_lock_free -f qcow2 c.qcow2
    [ -z "$keep" ] || cp --sparse=always c.qcow2 c.crashed
    n=$(grep -c "^wrote" out.txt); total_writes=$((total_writes + n))
    [ "$n" -lt 190 ] && killed_mid_run=$((killed_mid_run + 1))
    if $lazy; then
        # lazy refcounts: the dirty bit stands for refcounts not yet on disk;
        # our read-write open repairs them, after which the image is clean
        "$VBD_IO" -f qcow2 -c flush c.qcow2 >/dev/null 2>vio.err || crash_fail "cycle $cyc ($opts): the repairing open failed: $(cat vio.err)"
        out=$(qemu-img check c.qcow2 2>&1); rc=$?
        [ $rc = 0 ] || crash_fail "cycle $cyc ($opts): after the repairing open qemu-img check exit $rc: $out"
        qemu-img info c.qcow2 | grep -q "lazy refcounts: true" || crash_fail "cycle $cyc: lazy refcounts lost"
    fi
    out=$(qemu-img check c.qcow2 2>&1); rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || crash_fail "cycle $cyc ($opts): qemu-img check exit $rc: $out"
    # writes completed before the last flush that completed = before the last flush followed by a completed write
    python3 - cmds.txt out.txt >verify.txt <<'PY'
import sys
cmds = [l.strip() for l in open(sys.argv[1])]
done = sum(1 for l in open(sys.argv[2]) if l.startswith('wrote '))
writes_seen, safe = 0, 0
for c in cmds:
    if c.startswith('write'):
        if writes_seen >= done:
            break
        writes_seen += 1
    elif c == 'flush' and writes_seen < done:
        safe = writes_seen   # a later write completed, so this flush did too
w = [c for c in cmds if c.startswith('write')][:safe]
for c in w:
    _, _, p, off, ln = c.split()
    print('read -P %s %s %s' % (p, off, ln))
PY
    echo "cycle $cyc ($opts${CRASH_ONLY:+, seed $seed}): $(grep -c "^wrote" out.txt) writes completed, $(wc -l <verify.txt) checked after the crash"
    if [ -s verify.txt ]; then
        vargs=(); while read -r l; do vargs+=(-c "$l"); done <verify.txt
        qemu-io -f qcow2 -r "${vargs[@]}" c.qcow2 >qio.txt 2>&1 || crash_fail "cycle $cyc: qemu-io failed: $(tail -3 qio.txt)"
        ! grep -q "Pattern verification failed" qio.txt || crash_fail "cycle $cyc ($opts): data flushed before the crash is lost"
    fi
done
# the test must have exercised something: writes completed, and kills that cut a run short
[ $total_writes -gt 0 ] || fail "no write completed in $cycles cycles"
[ $killed_mid_run -gt 0 ] || fail "no cycle was killed in the middle of its writes"
echo "OK: $cycles kill cycles, $total_writes writes completed, $killed_mid_run cycles killed mid-run, lock outlived the writer after $lock_waits kills"
