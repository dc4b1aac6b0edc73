#!/bin/bash
# qcow2 metadata that changes under requests in flight: block_resize and
# dirty bitmaps. vbd-stress (32 requests in flight to vbd-daemon) works
# in the first R bytes of a qcow2 image while QMP resizes
# the node back and forth between R and R + 1 MiB (shrinks drop L2 tables
# and refcount blocks and cut the file; grows add L1 entries with 1 KiB
# clusters). Two dirty bitmaps are enabled all along: b0 (in memory) was
# added while the image was R/2 long, before a grow; p0 (persistent) is in
# the image. The requests come through a vhost-user-blk export with 2
# queues (an NBD export holds the size, as QEMU's). Then:
#  - every read matched the model, the image equals it (qemu-img compare),
#    qemu-img check is clean;
#  - every sector a write, write-zeroes or discard touched is dirty in b0 and
#    p0 (nbdinfo --map=qemu:dirty-bitmap:NAME); p0 too after a clean stop,
#    read by qemu-nbd -B p0 (an incremental backup that misses one is
#    silent data loss);
#  - block_resize shrinks under 32 writes in flight across the new end
#    (a vhost-user-blk export of a raw node over d0): past the new end only
#    zeroes after a grow, a write in flight must not land there (it did
#    before the drain);
#  - crash: the same load in crash mode over that export, the daemon gets
#    SIGKILL mid-run with block_resize going on: p0 is left in-use
#    (inconsistent: QEMU will not use it), qemu-img check finds no error
#    (leaks allowed), every write before an acknowledged flush is in the
#    image (qemu-img convert).
# The last two resize d0 under the export of a raw node over it, as qsd
# 7.2 takes it: vhost-user-blk shares resize (and tells the front end),
# raw passes it down; an NBD export would unshare it (refused, in
# perm-shared-node-diff.sh).
# Seeded (STRESS_SEED); STRESS_RESIZE_OPS (default 1500) requests per run;
# STRESS_RESIZE_EXTRA: more options for the first run's vbd-stress (e.g.
# --overlap: the writes under the resizes share bytes too).
. "$(dirname "$0")/lib.sh"
. "$VBD_ROOT/tests/stress/stress-lib.sh"
need qemu-img qemu-nbd nbdinfo python3
STRESS=$VBD_BUILD/tests/stress/vbd-stress
[ -x "$STRESS" ] || skip "vbd-stress not built"
OPS=${STRESS_RESIZE_OPS:-1500}
S=$T/qmp.sock
R=$((2 << 20))
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'

# covered SECTORS-FILE MAP-FILE WHAT: every touched sector lies in a dirty extent of the nbdinfo map
covered() {
    python3 - "$@" <<'PY'
import sys
touched, mapf, what = open(sys.argv[1], "rb").read(), sys.argv[2], sys.argv[3]
dirty = []
for line in open(mapf):
    f = line.split()
    if len(f) >= 3 and f[2] == "1":
        dirty.append((int(f[0]), int(f[0]) + int(f[1])))
missed = [i for i, t in enumerate(touched) if t and not any(a <= i * 512 < b for a, b in dirty)]
if missed:
    sys.exit(f"{what}: {len(missed)} written sectors not dirty, the first at byte {missed[0] * 512} (dirty extents: {dirty[:8]}...)")
print(f"{what}: all {sum(touched)} written sectors dirty")
PY
}

# resize_while PID NODE [crash|OPS]: block_resize NODE between R and R + 1
# MiB (512-byte steps, seeded) until process PID (vbd-stress) ends; prints
# how many, and writes the count so far to $T/resizes after each. With
# OPS: once 8 resizes are done and NODE has completed OPS requests,
# SIGUSR1 ends vbd-stress (run with no --ops limit): on a loaded host its
# 1500 requests took less time than this script's start, and the run had
# seen no resize at all (3 runs in 4 at load 25).
resize_while() {
    qmp_py "$S" <<PY
import os, random, signal
rng = random.Random($seed)
n, refused, stopped, ops = 0, 0, False, "${3:-}"
while True:
    try:  # ended (a zombie until the shell reaps it)
        if open("/proc/$1/stat").read().split()[2] == "Z":
            break
    except (FileNotFoundError, ProcessLookupError):  # gone between open and read: ESRCH
        break
    r = m.cmd("block_resize", {"node-name": "$2", "size": $R + 512 * rng.randrange(2049)})
    if "error" in r and ops != "crash":
        print("FAIL: block_resize:", r["error"], file=sys.stderr); sys.exit(1)
    if "error" in r:  # crash: the daemon is going
        refused += 1
        continue
    n += 1
    open("$T/resizes.tmp", "w").write(f"{n}\n")
    os.replace("$T/resizes.tmp", "$T/resizes")
    if ops.isdigit() and not stopped and n >= 8:
        done = sum(b["stats"][k + "_operations"] for b in ok("query-blockstats") if b.get("node-name") == "$2"
                   for k in ("rd", "wr", "unmap", "flush"))
        if done >= int(ops):
            os.kill($1, signal.SIGUSR1)  # its requests in flight complete, then its checks
            stopped = True
print(f"{n} resizes" + (f", {refused} refused" if refused else ""))
PY
}

p0_flags() { # IMAGE: bitmap p0's flags as qemu-img info says, comma-separated
    qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
for b in json.load(sys.stdin)["format-specific"]["data"].get("bitmaps", []):
    if b["name"] == "p0":
        print(",".join(b["flags"]))'
}

# shrink_under_writes QMP VHOST-USER-SOCKET ROUNDS: each round keeps 32
# writes of 64 KiB in flight across R (one ring of the vhost-user-blk export
# of a raw node over d0), shrinks d0 to R under them, stops writing, grows
# it back and reads: past R only zeroes (a write in flight at the shrink
# must not land past the new end; the ones after it fail). With
# block_resize's drain taken out, a write in flight at the first shrink
# landed past the new end (9 runs in 9, both cluster sizes); with the
# export's and io.c's range checks loosened, the writes after it did.
shrink_under_writes() {
    python3 - "$1" "$2" $R "$3" $seed <<'PY'
import os, random, struct, sys, threading
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
from vhost_user import Driver, T_IN, T_OUT
qmp_path, vu_path, R, rounds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
EXTRA, QD, LEN = 1 << 20, 32, 65536
m = QMP(qmp_path, negotiate=True)
rng = random.Random(seed)
def resize(size):
    r = m.cmd("block_resize", {"node-name": "d0", "size": size})
    assert r == {"return": {}}, r

d = Driver(vu_path, qsize=128)  # 32 chains of 3 descriptors
# guest memory past what request() uses (its reads of 64 KiB): the writes'
# data (one buffer: the device only reads it), then each slot's header and
# status byte; slot k's chain is descriptors 3k..3k+2
DATA = d.buf + (128 << 10)
SLOTS = DATA + LEN
d.mem[DATA:DATA + LEN] = b"\x5a" * LEN

def writer(stop, started, counts, failure):
    free, inflight = list(range(QD)), 0
    try:
        while True:
            while not stop.is_set() and free:
                k = free.pop()
                off = R - (256 << 10) + rng.randrange((256 << 10) + EXTRA - LEN) // 512 * 512
                hdr = SLOTS + 32 * k
                d.mem[hdr:hdr + 16] = struct.pack("<IIQ", T_OUT, 0, off // 512)
                d.mem[hdr + 16] = 0xff
                d.submit([(hdr, 16, 0), (DATA, LEN, 0), (hdr + 16, 1, 2)], head=3 * k)
                inflight += 1
            if inflight == 0:
                return
            for head, _ in d.completions():
                k = head // 3
                counts[0 if d.mem[SLOTS + 32 * k + 16] == 0 else 1] += 1
                free.append(k)
                inflight -= 1
            if counts[0] + counts[1] >= 8:
                started.set()
    except Exception as e:  # the main thread waits for started: it must hear of it
        failure.append(e)
        started.set()

resize(R + EXTRA)  # each round shrinks (d0 ends the last step anywhere from R to R + EXTRA)
bad = 0
for k in range(rounds):
    stop, started, counts, failure = threading.Event(), threading.Event(), [0, 0], []
    t = threading.Thread(target=writer, args=(stop, started, counts, failure))
    t.start()
    started.wait()
    try:
        if not failure:
            resize(R)              # the writes past R are in flight
    finally:
        stop.set()                 # a refused resize ends the writer too (it hung the script)
    t.join()
    if failure:
        sys.exit(f"round {k}: the writer failed: {failure[0]!r}")
    resize(R + EXTRA)
    for off in range(R, R + EXTRA, LEN):
        st, _, data = d.request(T_IN, off // 512, LEN)
        assert st == 0, f"read at {off} after the grow: status {st}"
        if any(data):
            i = next(j for j, b in enumerate(data) if b)
            print(f"round {k}: byte {off + i} reads 0x{data[i]:02x} after shrink to {R} and grow: a write in flight at the shrink came back", file=sys.stderr)
            bad += 1
            break
    if bad:
        break
d.close()
print(f"{k + 1} rounds, last: {counts[0]} writes ok, {counts[1]} failed")
sys.exit(1 if bad else 0)
PY
}

# p0_served_covers IMAGE WHAT: qemu-nbd -B p0 serves a map that covers $T/touched
p0_served_covers() {
    rm -f "$T/q.sock"
    qemu-nbd -t -r -f qcow2 -B p0 --socket="$T/q.sock" "$1" &
    local qpid=$!
    wait_sock "$T/q.sock" "$qpid"
    nbdinfo --map=qemu:dirty-bitmap:p0 "nbd+unix:///?socket=$T/q.sock" >"$T/p0q.map" || fail "nbdinfo on qemu-nbd -B p0"
    kill $qpid
    wait $qpid 2>/dev/null
    covered "$T/touched" "$T/p0q.map" "$2"
}

start() { # IMAGE [ARGS...]
    local img=$1
    shift
    start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
        --blockdev "driver=file,node-name=f0,filename=$img,discard=unmap" \
        --blockdev driver=qcow2,node-name=d0,file=f0,discard=unmap \
        --nbd-server addr.type=unix,addr.path="$T/nbd.sock" "$@"
}

start_top() { # IMAGE: a vhost-user-blk export (2 queues) of a raw node over d0 (d0 stays resizable)
    rm -f "$T/vu.sock"
    start "$1" --blockdev driver=raw,node-name=top,file=d0 \
        --export type=vhost-user-blk,id=v1,node-name=top,num-queues=2,addr.type=unix,addr.path="$T/vu.sock",writable=on
    wait_sock "$T/vu.sock" "$dpid"
}

for cs in 1024 65536; do
    seed=$((${STRESS_SEED:-1600} + cs % 1000))
    img=$T/r$cs.qcow2
    step "cluster_size=$cs: $OPS requests, QD 32, block_resize under them, bitmaps b0 (in memory) and p0 (persistent)"
    must qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $((R / 2))
    must qemu-img bitmap --add -g 4096 "$img" p0
    start "$img"
    qmp_py "$S" <<PY || fail "setup over QMP"
ok("block-dirty-bitmap-add", node="d0", name="b0", granularity=4096)
ok("block_resize", **{"node-name": "d0", "size": $R + (1 << 20)})
ok("block-export-add", type="vhost-user-blk", id="v0", **{"node-name": "d0", "num-queues": 2},
   addr={"type": "unix", "path": "$T/vu.sock"}, writable=True)
PY
    "$STRESS" --seed $seed --ops $((1 << 40)) --qd 32 --cluster-size $cs --hot 6 --range $R ${STRESS_RESIZE_EXTRA:-} --shadow-out "$T/shadow.raw" \
        --touched-out "$T/touched" --vhost-user "$T/vu.sock" --queues 2 >"$T/stress.log" 2>&1 &
    spid=$!
    resize_while $spid d0 "$OPS" || fail "resizing under the stress"
    wait $spid || { tail -20 "$T/stress.log"; fail "vbd-stress cluster_size=$cs"; }
    tail -1 "$T/stress.log"
    # an NBD export holds the size (as QEMU's): added once the resizing is over
    qmp_py "$S" <<PY || fail "NBD export of the bitmaps"
ok("block-export-add", type="nbd", id="e0", **{"node-name": "d0"}, name="disk", writable=False,
   bitmaps=[{"node": "d0", "name": "b0"}, {"node": "d0", "name": "p0"}])  # by name: refused while enabled, as qsd
PY
    for b in b0 p0; do
        nbdinfo --map=qemu:dirty-bitmap:$b "nbd+unix:///disk?socket=$T/nbd.sock" >"$T/$b.map" || fail "nbdinfo --map $b"
        covered "$T/touched" "$T/$b.map" "$b (cluster_size=$cs)" || fail "bitmap $b misses writes"
    done
    stop_daemon
    qcheck "$img"
    out=$(qemu-img compare -f qcow2 -F raw "$img" "$T/shadow.raw" 2>&1) || fail "image differs from the model: $out"
    [ "$(p0_flags "$img")" = auto ] || fail "p0 after a clean stop: flags $(p0_flags "$img")"
    p0_served_covers "$img" "p0 after a clean stop, read by qemu-nbd (cluster_size=$cs)" || fail "stored p0 misses writes"

    # These two resize d0 under the writes of a vhost-user-blk export of a
    # raw node over it (start_top), which qsd takes: an NBD export there
    # would unshare resize (raw passes it down), and qsd and vbd refuse
    # the block_resize then.
    step "cluster_size=$cs: block_resize shrinks under 32 writes in flight across the new end"
    start_top "$img"
    shrink_under_writes "$S" "$T/vu.sock" 3 || fail "a write in flight at a shrink landed past the new end"
    stop_daemon
    qcheck "$img"

    step "cluster_size=$cs: SIGKILL mid-run with block_resize under the requests"
    must qemu-img convert -f qcow2 -O raw "$img" "$T/init.raw"
    truncate -s $R "$T/init.raw"
    start_top "$img"
    rm -f "$T/ready" "$T/resizes"
    "$STRESS" --seed $((seed + 1)) --qd 32 --cluster-size $cs --hot 6 --range $R --init "$T/init.raw" \
        --shadow-out "$T/shadow.raw" --mask-out "$T/mask.raw" --crash-ready "$T/ready" --crash-after 300 --touched-out "$T/touched" \
        --vhost-user "$T/vu.sock" --queues 2 >"$T/stress.log" 2>&1 &
    spid=$!
    resize_while $spid d0 crash >"$T/resize.log" 2>&1 &
    rpid=$!
    # the kill once vbd-stress is past its first 300 requests and 5 resizes went under them
    while { [ ! -e "$T/ready" ] || [ "$(cat "$T/resizes" 2>/dev/null || echo 0)" -lt 5 ]; } && kill -0 $spid 2>/dev/null; do
        sleep 0.02
    done
    kill -9 $dpid; wait $dpid 2>/dev/null; dpid=
    wait $spid || { tail -20 "$T/stress.log"; fail "vbd-stress in crash mode, cluster_size=$cs"; }
    # the resizer's QMP connection died with the daemon: it would wait for
    # its reply until qmp.py's 60 s timeout
    pkill -P $rpid 2>/dev/null; kill $rpid 2>/dev/null; wait $rpid 2>/dev/null
    echo "$(cat "$T/resizes") resizes under the requests before the kill"
    grep -q "server is gone" "$T/stress.log" || fail "the daemon was not killed mid-run: $(tail -3 "$T/stress.log")"
    rc=0
    out=$(qemu-img check -f qcow2 "$img" 2>&1) || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check after SIGKILL (exit $rc): $out"
    # in-use, unless the kill fell inside a resize: the drained section
    # stores the bits and clears in-use until the bitmaps are loaded again,
    # with no request in flight. Then p0 must hold every write of the run.
    flags=$(p0_flags "$img")
    case $flags in
    in-use,auto) ;;
    auto) p0_served_covers "$img" "p0 after SIGKILL inside a resize (not in-use) (cluster_size=$cs)" ||
        fail "p0 left consistent after SIGKILL misses writes" ;;
    *) fail "p0 after SIGKILL: flags $flags" ;;
    esac
    must qemu-img convert -f qcow2 -O raw "$img" "$T/q.raw"
    truncate -s $R "$T/q.raw"
    stress_masked_cmp "$T/q.raw" "$T/shadow.raw" "$T/mask.raw" "qemu-img convert after SIGKILL" || fail "durable writes lost"
done
echo "ok"
