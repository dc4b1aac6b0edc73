#!/bin/bash
# test-slow: the rbd driver's completion path under ThreadSanitizer (make
# build-tsan; TSAN_OPTIONS halt_on_error=1, any report fails): librbd
# completes requests on its own threads, which store the result and wake
# the coroutine on its loop (rbd.c). An rbd node (a throwaway one-host
# cluster, lib-ceph.sh) is multi-loop: exported over vhost-user-blk with 2
# rings on io0 and io1 (requests from both iothreads at once; vbd-bench
# --verify over [0, 8M)) and over NBD (qemu-img convert -m 16 -W of random
# data into [8M, 16M) through a raw window), while QMP moves the node
# between io0, io1 and the main loop and reads its stats. The
# image then equals its shadow by qemu-img compare through QEMU's own rbd
# driver. Without the release/acquire pair on a chunk's request (rbd.c
# vrbd_aio / aio_done) TSan reported aio_done's read of the chunk against
# the submitter's write: librbd's hand-off, invisible to TSan, was the
# only order between them.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-ceph.sh"
need rbd qemu-img
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || skip "qemu-block-extra (QEMU's rbd driver) not installed"
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
TBENCH=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-bench
[ -x "$TSAN_DAEMON" ] || skip "no ThreadSanitizer build (make build-tsan)"
[ -x "$TBENCH" ] || TBENCH=$VBD_BENCH
# the interceptors Ceph's own libraries call are ignored (tsan-ceph.supp
# says why and what that leaves unchecked); vbd's code is checked
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$VBD_ROOT/tests/integration/tsan-ceph.supp"
cd "$T" || exit 1
CEPH_OBJECTSTORE=${CEPH_OBJECTSTORE:-memstore} ceph_start
C=$CEPH_CONF
dpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
tsan_report() { # WHAT
    if grep -q "ThreadSanitizer" daemon.log; then
        grep -A40 "WARNING: ThreadSanitizer" daemon.log | head -80
        fail "ThreadSanitizer report ($1)"
    fi
}
head -c 8M /dev/urandom >data.raw
must timeout 60 rbd -c "$C" create --size 16M rbd/tsan

rm -f qmp.sock nbd.sock vu.sock
"$TSAN_DAEMON" --object iothread,id=io0 --object iothread,id=io1 \
    --chardev socket,id=mon,path="$T/qmp.sock",server=on,wait=off --monitor chardev=mon \
    --blockdev "driver=rbd,node-name=r0,pool=rbd,image=tsan,conf=$C" \
    --export type=vhost-user-blk,id=eV,node-name=r0,addr.type=unix,addr.path="$T/vu.sock",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1 \
    --nbd-server addr.type=unix,addr.path="$T/nbd.sock" --export type=nbd,id=eN,node-name=r0,name=disk,writable=on \
    2>daemon.log &
dpid=$!
# the rbd node connects to the cluster first (librbd loaded on a thread of
# its own, slow under TSan on a loaded host): up to 180 s, the daemon alive
for _ in $(seq 3600); do
    [ -S "$T/nbd.sock" ] && [ -S "$T/vu.sock" ] && break
    kill -0 $dpid 2>/dev/null || { cat daemon.log; fail "the daemon did not start"; }
    sleep 0.05
done
[ -S "$T/nbd.sock" ] && [ -S "$T/vu.sock" ] || { cat daemon.log; fail "no export socket after 180 s"; }

"$TBENCH" --vhost-user "$T/vu.sock" -q 2 -d 16 --verify --size 8M >bench.log 2>&1 &
vpid=$!
qemu-img convert -n -m 16 -W -f raw data.raw \
    --target-image-opts "driver=raw,offset=8M,size=8M,file.driver=nbd,file.server.type=unix,file.server.path=$T/nbd.sock,file.export=disk" >conv.log 2>&1 &
cpid=$!

step "vbd-bench --verify over vhost-user (io0, io1) and qemu-img convert over NBD, QMP moving the rbd node"
T=$T PIDS="$vpid $cpid" python3 - "$T/qmp.sock" <<'PY' || { tsan_report "QMP under load"; tail -20 daemon.log; fail "QMP under load"; }
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP, alive
m = QMP(sys.argv[1], negotiate=True)
ok = m.ok
pids = [int(p) for p in os.environ["PIDS"].split()]
i = 0
while any(alive(p) for p in pids) and i < 300:
    ok("x-blockdev-set-iothread", **{"node-name": "r0", "iothread": ["io1", None, "io0"][i % 3], "force": True})
    ok("query-blockstats", **{"query-nodes": True})
    i += 1
print(f"{i} moves of the rbd node under load", file=sys.stderr)
PY
wait $vpid || { cat bench.log; tsan_report "vhost-user"; tail -20 daemon.log; fail "vbd-bench --verify over vhost-user on rbd"; }
wait $cpid || { cat conv.log; tsan_report "NBD"; tail -20 daemon.log; fail "qemu-img convert over NBD into rbd"; }
kill -TERM $dpid
wait $dpid
rc=$?
dpid=
tsan_report "the daemon's end"
[ $rc = 0 ] || { tail -30 daemon.log; fail "daemon exit status $rc"; }

step "data: [8M, 16M) of the image equals what qemu-img wrote (QEMU's rbd driver reads it)"
must qemu-img compare -q --image-opts "driver=raw,file.driver=file,file.filename=$T/data.raw" \
    "driver=raw,offset=8M,size=8M,file.driver=rbd,file.pool=rbd,file.image=tsan,file.conf=$C"
echo OK
