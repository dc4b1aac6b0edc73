#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# test-timeout: 2700 (run.sh: TSan daemon under vhost-user and NBD load, 9 steps: 684-1272 s a run at load 35-45 in round 27, and a run at load 39 had 2 steps left at the 1200 s default)
# vbd-daemon built with ThreadSanitizer (make build-tsan), rings on two
# iothreads. Every node type an export on iothreads can reach (raw over a
# file with cache.direct=on and off, a file alone, null-co, raw at an
# unaligned offset so that every write is a read-modify-write, qcow2 over a
# cache.direct=on file, raw over an nbd client node) is served over
# vhost-user-blk (4 rings) and NBD (2 connections, on the node's loop) at once, with
# load on both sides and the data verified both ways; a SIGHUP resize under
# load; SIGHUPs while a qcow2 on an iothread grows its file; werror=enospc
# stopping and resuming the rings. The daemon must end
# without a single ThreadSanitizer report. A qcow2 disk exported over
# vhost-user-blk only follows the rings to an iothread and is moved between
# the iothreads and the main loop over QMP under load, with internal
# snapshots, bitmaps, resizes and queries in between. A qcow2 disk exported
# over NBD only moves main -> io0 -> io1 -> main under NBD load with idle
# connections, the iothread it left deleted right after each move. A
# mirror and a backup of a qcow2 on io0 (the backup into a target read
# over NBD; nobody reads a mirror's target, as in qsd), each target joining
# io0 when its job is made, while reopens and bitmap changes drain the job
# under load.
. "$(dirname "$0")/lib.sh"
need nbdkit qemu-img qemu-nbd
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
[ -x "$TSAN_DAEMON" ] || skip "no ThreadSanitizer build (make build-tsan)"
export TSAN_OPTIONS="halt_on_error=0 exitcode=66"
S=$T/vu.sock N=$T/nbd.sock
dpid= kpid= qpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && kill $kpid 2>/dev/null; [ -n "$qpid" ] && kill $qpid 2>/dev/null'
iot=(--object iothread,id=io0 --object iothread,id=io1)
start() { # daemon options...
    rm -f "$S"
    "$TSAN_DAEMON" "${iot[@]}" "$@" 2>"$T/daemon.log" &
    dpid=$!
    for _ in $(seq 600); do [ -S "$S" ] && return; kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
    cat "$T/daemon.log"; fail "the ThreadSanitizer daemon did not start"
}
tsan_report() { # what: fail with the first report if the log has one
    if grep -q "ThreadSanitizer" "$T/daemon.log"; then
        grep -A30 "WARNING: ThreadSanitizer" "$T/daemon.log" | head -60
        grep "^SUMMARY: ThreadSanitizer" "$T/daemon.log" | sort | uniq -c
        fail "ThreadSanitizer report ($1)"
    fi
}
stop() {
    kill -TERM $dpid; wait $dpid; local rc=$?; dpid=
    tsan_report "$1"
    [ $rc = 0 ] || { tail -30 "$T/daemon.log"; fail "daemon exit status $rc ($1)"; }
}
# A dead daemon leaves vbd-bench waiting for completions: wait for each
# client or for the daemon to die, whichever comes first.
bench_bg() { # NAME ARGS...: vbd-bench in the background, output in $T/NAME.out
    local name=$1; shift
    # one vhost-user front end at a time: the last one's hang-up must have
    # been seen by the daemon, or the next one is refused
    if [ "$name" = vu ] || [ "$name" = b ]; then
        for _ in $(seq 1200); do
            [ "$(grep -c 'front end connected' "$T/daemon.log")" = "$(grep -c 'front end disconnected' "$T/daemon.log")" ] && break
            sleep 0.05
        done
    fi
    "$VBD_BENCH" "$@" >"$T/$name.out" 2>&1 &
    eval "bpid_$name=$!"
}
bench_wait() { # NAME WHAT
    local pid
    eval "pid=\$bpid_$1"
    for _ in $(seq 6000); do
        kill -0 "$pid" 2>/dev/null || break
        if ! kill -0 "$dpid" 2>/dev/null; then
            kill "$pid"; wait "$pid"
            tail -30 "$T/daemon.log"; tsan_report "$2"; fail "the daemon died during $1 ($2)"
        fi
        sleep 0.05
    done
    wait "$pid" || { cat "$T/$1.out"; tail -30 "$T/daemon.log"; tsan_report "$2"; fail "vbd-bench $1 failed ($2)"; }
}
VU=(--vhost-user "$S" -q 4)
NB=(--nbd "nbd+unix:///disk?socket=$N" -q 2)
# load WHAT VERIFY(yes/no): load on 4 rings over 2 iothreads and on 2 NBD
# connections at once; with VERIFY each side in turn checks every byte of
# a pattern it wrote while the other side reads.
load() {
    local what=$1 verify=$2
    if [ "$verify" = yes ]; then
        bench_bg vu "${VU[@]}" -d 16 --verify --size 16M
        bench_bg nbd "${NB[@]}" -w randread -n 3000
        bench_wait vu "$what: vhost-user verify"; bench_wait nbd "$what: NBD reads"
    fi
    bench_bg vu "${VU[@]}" -w randrw:70 -n 12000 --flush-every 50
    bench_bg nbd "${NB[@]}" -w randrw:70 -n 4000 --flush-every 50
    bench_wait vu "$what: vhost-user randrw"; bench_wait nbd "$what: NBD randrw"
    if [ "$verify" = yes ]; then
        bench_bg nbd "${NB[@]}" -d 16 --verify --size 16M
        bench_bg vu "${VU[@]}" -w randread -n 6000
        bench_wait nbd "$what: NBD verify"; bench_wait vu "$what: vhost-user reads"
    fi
}
serve() { # NODE-NAME blockdev options...: start the daemon exporting NODE-NAME both ways
    local node=$1; shift
    start "$@" \
        --export type=vhost-user-blk,id=e0,node-name="$node",addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1 \
        --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name="$node",name=disk,writable=on
    # the daemon makes its sockets in command-line order: the NBD server's
    # comes after the vhost-user export's that start() waited for
    wait_sock "$N" "$dpid" "$T/daemon.log"
}

step "raw over a cache.direct=on file; SIGHUP resize under load"
truncate -s 64M "$T/disk.img"
serve d0 --blockdev driver=file,node-name=f0,filename="$T/disk.img",cache.direct=on --blockdev driver=raw,node-name=d0,file=f0
load "raw/file direct" yes
bench_bg vu "${VU[@]}" -w randrw:70 -n 12000 --flush-every 50
truncate -s 96M "$T/disk.img"
kill -HUP $dpid
for _ in $(seq 1200); do grep -q "node 'd0' is now" "$T/daemon.log" && break; sleep 0.05; done
grep -q "node 'd0' is now 100663296 bytes" "$T/daemon.log" || { cat "$T/daemon.log"; fail "SIGHUP: no resize of d0"; }
bench_wait vu "raw/file direct: randrw across a resize"
stop "raw over file, cache.direct=on"

step "raw over a buffered file"
truncate -s 0 "$T/disk.img"; truncate -s 64M "$T/disk.img"
serve d0 --blockdev driver=file,node-name=f0,filename="$T/disk.img" --blockdev driver=raw,node-name=d0,file=f0
load "raw/file" yes
stop "raw over file"

step "a cache.direct=on file node alone"
truncate -s 0 "$T/disk.img"; truncate -s 64M "$T/disk.img"
serve f0 --blockdev driver=file,node-name=f0,filename="$T/disk.img",cache.direct=on
load "file direct" yes
stop "file direct"

step "raw at an unaligned offset over a cache.direct=on file: every write a read-modify-write"
truncate -s 0 "$T/disk.img"; truncate -s $((64 * 1048576 + 512)) "$T/disk.img"
serve d0 --blockdev driver=file,node-name=f0,filename="$T/disk.img",cache.direct=on \
    --blockdev driver=raw,node-name=d0,file=f0,offset=256,size=64M
load "raw offset/file direct" yes
stop "raw at an offset over file, cache.direct=on"

step "null-co"
serve n0 --blockdev driver=null-co,node-name=n0,size=64M,read-zeroes=on
load "null-co" no
stop "null-co"

step "qcow2 over a cache.direct=on file, exported over NBD too (the graph follows the rings to io0, the NBD connections are served there); qemu-img check clean"
must qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
serve d0 --blockdev driver=file,node-name=f0,filename="$T/disk.qcow2",cache.direct=on --blockdev driver=qcow2,node-name=d0,file=f0
load "qcow2/file direct" yes
stop "qcow2"
qcheck "$T/disk.qcow2"

step "qcow2 on an iothread allocating clusters under SIGHUPs: the main loop re-reads every node's size while the file grows under the qcow2 on io0"
must qemu-img create -q -f qcow2 "$T/grow.qcow2" 64M
start --blockdev driver=file,node-name=f0,filename="$T/grow.qcow2",cache.direct=on --blockdev driver=qcow2,node-name=d0,file=f0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1
bench_bg vu "${VU[@]}" -w randwrite -n 16000 --size 64M
hups=0
while kill -0 "$bpid_vu" 2>/dev/null && kill -0 "$dpid" 2>/dev/null; do
    kill -HUP "$dpid" 2>/dev/null && hups=$((hups + 1))
    sleep 0.02 # a pace, not a wait: each signal is one more pass over the nodes
done
bench_wait vu "qcow2 allocating under SIGHUPs"
echo "$hups SIGHUPs while the qcow2 grew its file"
stop "qcow2 allocating under SIGHUPs"
qcheck "$T/grow.qcow2"

step "qcow2 on an iothread (vhost-user only: the graph follows the rings): moves and QMP control commands under load"
must qemu-img create -q -f qcow2 "$T/moved.qcow2" 64M
start --chardev socket,id=mon,path="$T/qmp.sock",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=f0,filename="$T/moved.qcow2",cache.direct=on \
    --blockdev driver=qcow2,node-name=d0,file=f0,cache-clean-interval=1 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1
for verify in yes no; do
    if [ $verify = yes ]; then
        bench_bg vu "${VU[@]}" -d 16 --verify --size 64M
    else
        bench_bg vu "${VU[@]}" -w randrw:70 -n 30000 --flush-every 50 --size 64M
    fi
    PYTHONPATH=$VBD_ROOT/tests/qmp T=$T PHASE=$verify BPID=$(eval echo \$bpid_vu) python3 - "$T/qmp.sock" <<'PY' || { tail -30 "$T/daemon.log"; tsan_report "qcow2 moved: QMP"; fail "QMP under load"; }
import os, sys
from qmp import QMP, alive
# a reply may take long under TSan on a loaded host: query-named-block-nodes
# waited 7-22 s for its answer while the node's iothread served 4 rings of
# random writes (load 45), and one of 4 runs lost its session to the 60 s
# default at load 37; each reply still must come
m = QMP(sys.argv[1], negotiate=True, timeout=300)
bench = int(os.environ["BPID"])
i = 0
while alive(bench) and i < 200:
    cmds = [("x-blockdev-set-iothread", {"node-name": "d0", "iothread": ["io1", None, "io0"][i % 3], "force": True}),
            ("query-named-block-nodes", {}),
            ("blockdev-snapshot-internal-sync", {"device": "d0", "name": f"s{os.environ['PHASE']}{i}"}),
            ("block-dirty-bitmap-add", {"node": "d0", "name": f"b{os.environ['PHASE']}{i}", "persistent": True}),
            ("block_resize", {"node-name": "d0", "size": (64 << 20) + (i + 1) * 65536})]
    name, args = cmds[i % len(cmds)]
    m.ok(name, **args)
    i += 1
print(f"{i} QMP commands under load", file=sys.stderr)
PY
    bench_wait vu "qcow2 moved between iothreads, verify=$verify"
done
stop "qcow2 moved between iothreads"
qcheck "$T/moved.qcow2"

step "qcow2 exported over NBD only, moved main -> io0 -> io1 -> main under NBD load, idle connections kicked to follow at once: object-del of the iothread left right after each move"
must qemu-img create -q -f qcow2 "$T/idle.qcow2" 64M
S=$T/qmp.sock start --chardev socket,id=mon,path="$T/qmp.sock",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=f0,filename="$T/idle.qcow2" --blockdev driver=qcow2,node-name=d0,file=f0 \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name=d0,name=disk,writable=on
# start() waited for the monitor's socket, made first: the NBD server's
# comes after the nodes are open (a vbd-bench that connected before it
# was there failed this step at load 35)
wait_sock "$N" "$dpid" "$T/daemon.log"
bench_bg nbd "${NB[@]}" -w randrw:70 -n 6000 --flush-every 50 --size 16M
PYTHONPATH=$VBD_ROOT/tests/qmp:$PYTHONPATH N=$N python3 - "$T/qmp.sock" <<'PY' || { tail -30 "$T/daemon.log"; tsan_report "NBD idle moves: QMP"; fail "idle NBD connections under moves"; }
import os, struct, sys
import nbdproto as P
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True, timeout=300)  # as the moves' session above
idle = []
for i in range(2):
    s = P.connect(os.environ["N"], timeout=60)
    P.handshake(s, "disk", go=True)
    idle.append(s)
places = ["io0", "io1", None]
for i in range(9):
    m.ok("x-blockdev-set-iothread", **{"node-name": "d0", "iothread": places[i % 3], "force": True})
    old = places[(i - 1) % 3] if i else None
    if old:  # the iothread the node left
        m.ok("object-del", id=old)
        m.ok("object-add", **{"qom-type": "iothread", "id": old})
    for k, s in enumerate(idle):  # a write, then its read-back, on each idle connection
        data = bytes([i * 2 + k + 1]) * 4096
        off = (32 << 20) + k * 4096
        for cookie, req in ((1, P.request(P.CMD_WRITE, 1, off, 4096) + data), (2, P.request(P.CMD_READ, 2, off, 4096))):
            s.sendall(req)
            magic, err, got = struct.unpack(">IIQ", P.recvn(s, 16))
            assert magic == P.SIMPLE_REPLY_MAGIC and err == 0 and got == cookie, (magic, err, got)
        assert P.recvn(s, 4096) == data, f"connection {k}: read-back after move {i + 1}"
for s in idle:
    s.sendall(P.request(P.CMD_DISC, 0, 0, 0))
    s.close()
print("9 moves with 2 idle NBD connections, the iothread left deleted after each", file=sys.stderr)
PY
bench_wait nbd "NBD load while the node moves"
stop "NBD idle connections following moves"
qcheck "$T/idle.qcow2"

step "block jobs from a qcow2 on an iothread under load: the target (the backup's read over NBD) joins io0 when the job is made; reopens and bitmap changes drain the job; the job's nodes move to io1 and back"
must qemu-img create -q -f qcow2 "$T/jsrc.qcow2" 64M
must qemu-img create -q -f qcow2 "$T/jtgt.qcow2" 64M
must qemu-img create -q -f qcow2 "$T/jmtgt.qcow2" 64M
S=$T/vu.sock start --chardev socket,id=mon,path="$T/qmp.sock",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=f0,filename="$T/jsrc.qcow2" --blockdev driver=qcow2,node-name=d0,file=f0 \
    --blockdev driver=file,node-name=f1,filename="$T/jtgt.qcow2" --blockdev driver=qcow2,node-name=t0,file=f1 \
    --blockdev driver=file,node-name=f2,filename="$T/jmtgt.qcow2" --blockdev driver=qcow2,node-name=t1,file=f2 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=4,iothread.0=io0,iothread.1=io1 \
    --nbd-server addr.type=unix,addr.path="$N" --export type=nbd,id=n0,node-name=t0,name=disk
wait_sock "$N" # made after the vhost-user export's that start() waited for
bench_bg vu "${VU[@]}" -w randrw:70 -n 30000 --flush-every 50 --size 64M
bench_bg nbd "${NB[@]}" -w randread -n 20000 --size 64M
PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$T/qmp.sock" <<'PY' || { tail -30 "$T/daemon.log"; tsan_report "jobs: QMP"; fail "block jobs under load"; }
import sys
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True, timeout=300)  # as the moves' session above
ok, status = m.ok, m.job_status
rounds = 0
# the mirror's target is one nobody reads (qsd refuses a mirror into a
# node an export reads: the job shares only unchanged writes)
for jid, cmd, want, tgt, tf in (("m", "blockdev-mirror", "ready", "t1", "f2"), ("b", "blockdev-backup", "concluded", "t0", "f1")):
    ok(cmd, **{"job-id": jid, "device": "d0", "target": tgt, "sync": "full", "speed": 8 << 20, "auto-dismiss": False})
    n = 0
    while status(jid) != want:
        for node, f in (("d0", "f0"), (tgt, tf)):
            ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": node, "file": f, "discard": "unmap"}])
            ok("block-dirty-bitmap-add", node=node, name="x", persistent=True)
            ok("block-dirty-bitmap-remove", node=node, name="x")
            ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": node, "file": f}])
        # the job's nodes (the source under the vhost-user export with them) to io1 and back
        for where in ("io1", "io0"):
            ok("x-blockdev-set-iothread", **{"node-name": tgt, "iothread": where, "force": True})
        n += 1
        if n == 3:
            # the backup may have finished its copy during this round (a
            # round of reopens and moves outlasted it at load 25): a job past
            # running takes no set-speed, in QEMU too
            r = m.cmd("block-job-set-speed", {"device": jid, "speed": 0})
            assert "return" in r or status(jid) in ("waiting", "pending", "concluded"), (jid, r)
    rounds += n
    if jid == "m":
        ok("block-job-cancel", device=jid)
    m.wait_job(jid, ("concluded",))  # the cancel's end
    ok("job-dismiss", id=jid)
print(f"{rounds} drain rounds under a mirror and a backup", file=sys.stderr)
PY
bench_wait vu "vhost-user load under block jobs"
bench_wait nbd "NBD reads of the target under block jobs"
stop "block jobs from an iothread"
qcheck "$T/jsrc.qcow2"
qcheck "$T/jtgt.qcow2"
qcheck "$T/jmtgt.qcow2"

step "raw over an nbd client node (qemu-nbd serving a file)"
truncate -s 0 "$T/disk.img"; truncate -s 64M "$T/disk.img"
rm -f "$T/q.sock"
qemu-nbd -f raw -x q -k "$T/q.sock" --persistent --shared=2 "$T/disk.img" 2>"$T/qemu-nbd.log" &
qpid=$!
wait_sock "$T/q.sock" "$qpid" "$T/qemu-nbd.log"
serve d0 --blockdev driver=nbd,node-name=c0,server.type=unix,server.path="$T/q.sock",export=q \
    --blockdev driver=raw,node-name=d0,file=c0
load "raw/nbd client" yes
stop "raw over nbd"
kill $qpid; wait $qpid 2>/dev/null; qpid=

step "werror=enospc on 2 rings over 2 iothreads: stop, retries, resume"
touch "$T/enospc"
rm -f "$T/k.sock"
nbdkit -f -U "$T/k.sock" --filter=error memory 64M error-pwrite=ENOSPC error-pwrite-rate=100% \
    error-pwrite-file="$T/enospc" 2>/dev/null &
kpid=$!
wait_sock "$T/k.sock" "$kpid"
start --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/k.sock" --blockdev driver=raw,node-name=d0,file=n0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$S",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1,werror=enospc,retry-interval=200
bench_bg b --vhost-user "$S" -q 2 -d 16 --verify --size 8M
for _ in $(seq 1200); do grep -q "the device stops" "$T/daemon.log" && break; sleep 0.1; done
grep -q "the device stops" "$T/daemon.log" || fail "the device never stopped on ENOSPC"
rm "$T/enospc"
bench_wait b "verify after ENOSPC went away"
grep -q "went through after" "$T/daemon.log" || fail "no line for the end of the stop"
stop "werror"
kill $kpid; wait $kpid 2>/dev/null; kpid=
echo OK
