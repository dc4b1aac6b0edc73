#!/bin/bash
# vbd-bench, our vhost-user-blk front end, against qemu-storage-daemon and
# against vbd-daemon: --verify clean with 1 and 2 queues, the data really in
# the image file, mixed workloads error-free, bad input refused clearly.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3
img=$T/disk.img
truncate -s 128M "$img"
S=$T/vu.sock
run_backend() { # NAME CMD...: start, wait for the socket
    rm -f "$S"
    "$@" 2>"$T/${1##*/}.log" &
    bpid=$!
    for _ in $(seq 600); do [ -S "$S" ] && return; sleep 0.1; done
    cat "$T/${1##*/}.log"; fail "$1 did not start"
}
on_exit '[ -n "${bpid:-}" ] && kill -9 $bpid 2>/dev/null'
start_backend() {
    run_backend "$bin" --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
        --export type=vhost-user-blk,id=exp0,addr.type=unix,addr.path="$S",node-name=disk0,writable=on,num-queues=2
}
stop_backend() { kill -TERM $bpid; wait $bpid || fail "$bin exit status $? after SIGTERM"; bpid=; }
for bin in qemu-storage-daemon "$VBD_DAEMON"; do
    step "${bin##*/}: verify with 1 queue; the pattern is in the image file"
    truncate -s 0 "$img"; truncate -s 128M "$img"
    start_backend
    must "$VBD_BENCH" --vhost-user "$S" --verify >/dev/null
    stop_backend
    python3 - "$img" <<'PY' || fail "${bin##*/}: the verify pattern is not in the image file"
import array, sys
K, C, M = 0x9E3779B97F4A7C15, 0x7662642d62656e63, (1 << 64) - 1
f = open(sys.argv[1], 'rb')
for off in (0, 4096, 33 << 20, (64 << 20) - 4096):   # vbd-bench's pattern: each 8-byte word from its offset
    f.seek(off)
    words = array.array('Q', f.read(4096))
    want = [((off + 8 * i) * K & M) ^ C for i in range(512)]
    if list(words) != want:
        sys.exit('mismatch at %d' % off)
f.seek(64 << 20)
if f.read(1 << 20).count(0) != 1 << 20:
    sys.exit('bytes beyond the verified region changed')
PY
    step "${bin##*/}: verify with 2 queues and 64K blocks; mixed random I/O with flushes"
    start_backend
    must "$VBD_BENCH" --vhost-user "$S" --verify -q 2 -d 8 -b 64k --size 32M >/dev/null
    out=$("$VBD_BENCH" --vhost-user "$S" -q 2 -w randrw:70 -n 20000 --flush-every 50 --json) || fail "randrw: $out"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["requests"] >= 20000 and r["iops"] > 0 and r["errors"] == 0 else 1)' "$out" ||
        fail "randrw result: $out"
    # per-queue latency: one entry per queue, each queue served, and every
    # request (the flushes too) counted in one of them
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); p=r["per-queue"]
sys.exit(0 if len(p) == 2 and all(q["requests"] > 0 and q["p99"] > 0 and q["max"] > 0 for q in p) and
         sum(q["requests"] for q in p) >= r["requests"] else 1)' "$out" || fail "randrw per-queue: $out"
    # each queue's latency split at the client's last wait (before it, the
    # wait, after it): none negative, and the parts add up to the mean of
    # their band (up to p50: at most its bucket; p99 to p99.9: at least the
    # p99 bucket's lower end; buckets are ~12 % wide)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); p=r["per-queue"]; w=r["waits"]
ok = w["count"] >= 0 and all(min(q["split-p0-p50"] + q["split-p99-p99.9"]) >= 0 and
         0 < sum(q["split-p0-p50"]) <= q["p50"] * 1.07 + 0.1 and sum(q["split-p99-p99.9"]) >= q["p99"] * 0.94 - 0.1 for q in p)
sys.exit(0 if ok else 1)' "$out" || fail "randrw latency split: $out"
    # Both notification modes, each at depth 1 (the client sleeps for every
    # request: a lost wake-up shows as a 30 s wait, counted by vbd-bench and
    # failing it) and at depths where completions arrive while it drains
    # (the EVENT_IDX re-check race). --no-event-idx is the older client.
    for mode in event-idx no-event-idx; do
        flag=; want=True; [ $mode = no-event-idx ] && flag=--no-event-idx want=False
        step "${bin##*/}: $mode: verify, depth 1 and 32, 1 and 2 queues, no lost wake-up"
        must "$VBD_BENCH" --vhost-user "$S" $flag --verify -q 2 -d 16 --size 16M >/dev/null
        for args in "-q 1 -d 1 -n 3000" "-q 2 -d 1 -n 3000" "-q 2 -d 32 -n 40000 -w randrw:50" "-q 1 -d 8 -b 64k -n 5000 -w read"; do
            # shellcheck disable=SC2086 # lists of options
            out=$("$VBD_BENCH" --vhost-user "$S" $flag $args --json) || fail "$mode $args: $out"
            python3 -c 'import json,sys; r=json.loads(sys.argv[1])
sys.exit(0 if r["errors"] == 0 and r["lost-wakeups"] == 0 and str(r["event-idx"]) == sys.argv[2] else 1)' "$out" "$want" ||
                fail "$mode $args: $out"
        done
    done
    stop_backend
    # 64K reads of a null node come back ~1 us apart: on both rings of one
    # loop vbd-daemon holds an EVENT_IDX signal back while a ring still
    # holds requests, on a loop's only ring until the completion after the
    # one the driver asked for (vu_queue_complete; depth 2: the last one of
    # a batch, signalled by the bottom half). A signal held back for good
    # would leave the client asleep: a 30 s wait, a lost wake-up, a failure.
    # (An ASan daemon is too slow for the rules: the release build's is not.)
    step "${bin##*/}: null node, 1 and 2 queues, 64K reads at depth 2 and 8: no lost wake-up with either client"
    run_backend "$bin" --blockdev driver=null-co,node-name=disk0,size=1073741824,read-zeroes=on \
        --export type=vhost-user-blk,id=exp0,addr.type=unix,addr.path="$S",node-name=disk0,writable=on,num-queues=2
    for flag in "" --no-event-idx; do
        for args in "-q 2 -d 8" "-q 1 -d 8" "-q 1 -d 2"; do
            # shellcheck disable=SC2086 # lists of options
            out=$("$VBD_BENCH" --vhost-user "$S" $flag $args -b 64k -w read -n 40000 --json) || fail "null 64k $flag $args: $out"
            python3 -c 'import json,sys; r=json.loads(sys.argv[1])
sys.exit(0 if r["requests"] >= 40000 and r["errors"] == 0 and r["lost-wakeups"] == 0 else 1)' "$out" ||
                fail "null 64k $flag $args: $out"
        done
    done
    stop_backend
done
check_verify_pattern() { # FILE MIB: vbd-bench's verify pattern at the start, middle and end of the first MIB MiB
    python3 - "$1" "$2" <<'PY' || fail "the verify pattern is not in $1"
import array, sys
K, C, M = 0x9E3779B97F4A7C15, 0x7662642d62656e63, (1 << 64) - 1
f, end = open(sys.argv[1], 'rb'), int(sys.argv[2].rstrip('M')) << 20
for off in (0, end // 2, end - 4096):
    f.seek(off)
    if list(array.array('Q', f.read(4096))) != [((off + 8 * i) * K & M) ^ C for i in range(512)]:
        sys.exit('mismatch at %d' % off)
PY
}
# --segments: a request's data in several descriptors apart in guest memory,
# as a Linux guest sends pages that are not contiguous; both back ends must
# put each segment's bytes at its own offset (the pattern is per offset).
for bin in qemu-storage-daemon "$VBD_DAEMON"; do
    step "${bin##*/}: verify with 64K blocks in 16 segments, 2 queues, and 1M in 128; the data in the file"
    truncate -s 0 "$img"; truncate -s 128M "$img"
    start_backend
    must "$VBD_BENCH" --vhost-user "$S" --verify -q 2 -d 8 -b 64k --segments 16 --size 32M >/dev/null
    stop_backend
    check_verify_pattern "$img" 32M
    truncate -s 0 "$img"; truncate -s 128M "$img"
    start_backend
    out=$("$VBD_BENCH" --vhost-user "$S" -q 2 -d 8 -b 64k --segments 16 -w randrw -n 4000 --json) || fail "segments randrw: $out"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["requests"] >= 4000 and r["errors"] == 0 and r["lost-wakeups"] == 0 else 1)' "$out" ||
        fail "segments randrw: $out"
    must "$VBD_BENCH" --vhost-user "$S" --verify -d 2 -b 1M --segments 128 --size 16M >/dev/null
    stop_backend
    check_verify_pattern "$img" 16M
done
step "vbd-daemon with 4 queues over 2 iothreads: verify, mixed I/O with flushes, the data in the file"
truncate -s 0 "$img"; truncate -s 128M "$img"
bin=$VBD_DAEMON
run_backend "$bin" --object iothread,id=io0 --object iothread,id=io1 \
    --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
    --export type=vhost-user-blk,id=exp0,addr.type=unix,addr.path="$S",node-name=disk0,writable=on,num-queues=4,iothread.0=io0,iothread.1=io1
out=$("$VBD_BENCH" --vhost-user "$S" -q 4 -w randrw:70 -n 40000 --flush-every 50 --json) || fail "randrw on iothreads: $out"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["requests"] >= 40000 and r["errors"] == 0 else 1)' "$out" ||
    fail "randrw on iothreads: $out"
must "$VBD_BENCH" --vhost-user "$S" --verify -q 4 -d 16 --size 32M >/dev/null
stop_backend
check_verify_pattern "$img" 32M
step "iothread errors: an unknown iothread, a bad list"
must_fail_with "no iothread 'nope'" "$VBD_DAEMON" --blockdev driver=null-co,node-name=n0 \
    --export type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path="$S",iothread=nope
must_fail_with "attempt to add duplicate property 'a'" "$VBD_DAEMON" --object iothread,id=a --object iothread,id=a
must_fail_with "expected an iothread id" "$VBD_DAEMON" --object iothread,id=a --blockdev driver=null-co,node-name=n0 \
    --export type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path="$S",iothread.0=a,iothread.2=a

step "vbd-bench --nbd: verify against vbd-daemon's NBD export, qemu-nbd and nbdkit; the data in the file"
need qemu-nbd nbdkit
N=$T/nbd.sock
wait_nbd() { for _ in $(seq 600); do [ -S "$N" ] && return; sleep 0.1; done; fail "$1 did not start"; }
truncate -s 0 "$img"; truncate -s 128M "$img"
nbd_raw_daemon -l "$T/nbd-daemon.log" "$img" "$N"
bpid=$dpid
must "$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" --verify -q 2 -d 16 >/dev/null
out=$("$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" -q 2 -w randrw:70 -n 20000 --flush-every 50 --json) ||
    fail "randrw over NBD: $out"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["requests"] >= 20000 and r["errors"] == 0 else 1)' "$out" ||
    fail "randrw over NBD: $out"
must "$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" --verify -b 64k >/dev/null
kill -TERM $bpid; wait $bpid || fail "vbd-daemon exit status $? after SIGTERM"; bpid=
check_verify_pattern "$img" 64M
truncate -s 0 "$img"; truncate -s 128M "$img"
rm -f "$N"
qemu-nbd -f raw -x disk -k "$N" --persistent --shared=4 "$img" 2>"$T/qemu-nbd.log" &
bpid=$!
wait_nbd qemu-nbd
must "$VBD_BENCH" --nbd "nbd+unix:///disk?socket=$N" --verify -q 2 -d 16 >/dev/null
kill $bpid; wait $bpid 2>/dev/null; bpid=
check_verify_pattern "$img" 64M
rm -f "$N"
nbdkit -f -U "$N" memory 64M 2>"$T/nbdkit.log" &
bpid=$!
wait_nbd nbdkit
must "$VBD_BENCH" --nbd "nbd+unix:///?socket=$N" --verify -q 2 -d 8 >/dev/null
kill $bpid; wait $bpid 2>/dev/null; bpid=
rm -f "$N"
nbdkit -f -U "$N" -r memory 64M 2>"$T/nbdkit.log" &
bpid=$!
wait_nbd nbdkit
must "$VBD_BENCH" --nbd "nbd+unix:///?socket=$N" -w randread -n 1000 >/dev/null
must_fail_with "read-only" "$VBD_BENCH" --nbd "nbd+unix:///?socket=$N" -w randwrite -n 10
kill $bpid; wait $bpid 2>/dev/null; bpid=
must_fail_with "Failed to connect" "$VBD_BENCH" --nbd "nbd+unix:///?socket=$T/none.sock"
must_fail_with "one of --vhost-user SOCKET or --nbd URI" "$VBD_BENCH" --nbd "nbd+unix:///?socket=$N" --vhost-user "$S"

step "bad input: no socket, a plain file, bad options"
must_fail_with "cannot connect" "$VBD_BENCH" --vhost-user "$T/nothing.sock"
must_fail_with "invalid value '0' for option '--depth'" "$VBD_BENCH" --vhost-user "$S" -d 0
must_fail_with "invalid value 'sideways' for option '--workload'" "$VBD_BENCH" --vhost-user "$S" -w sideways
must_fail_with "is required" "$VBD_BENCH"
must_fail_with "does not split 4096 bytes into multiples of 512" "$VBD_BENCH" --vhost-user "$S" --segments 3
must_fail_with "invalid value '0' for option '--segments'" "$VBD_BENCH" --vhost-user "$S" --segments 0
must_fail_with "--segments is for --vhost-user only" "$VBD_BENCH" --nbd "nbd+unix:///?socket=$N" --segments 2
echo OK
