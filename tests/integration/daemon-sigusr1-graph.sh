#!/bin/bash
# SIGUSR1 (retry the requests an error policy stopped) while QMP adds and
# deletes vhost-user-blk exports whose rings run on iothreads and whose
# requests are stopped (rerror=stop over nbdkit failing every read), and
# nodes are added, moved between io0, io1 and the main loop, reopened and
# deleted, with a SIGUSR1 every millisecond. The retry walks the exports
# and visits each stopped export's rings on their loops: it runs under the
# lock QMP's graph changes take (as SIGHUP's refresh), so no export is
# deleted under the walk (a use after free under ASan, a race under
# ThreadSanitizer). Then the retry still does its job: once the reads
# succeed again, SIGUSR1 lets a stopped vbd-bench finish with no error.
# Run under the ASan build and, where make build-tsan made one, the
# ThreadSanitizer build (no report allowed). Last, with a QMP command hung
# on storage that does not answer (nbdkit stopped) and SIGUSR1s waiting
# behind it, SIGTERM still stops the daemon: it says what it waits for
# after 5 s and a second SIGTERM exits.
. "$(dirname "$0")/lib.sh"
need nbdkit python3 qemu-img ss
cd "$T"
S=$T/qmp.sock
export PYTHONPATH=$VBD_ROOT/tests/qmp${PYTHONPATH:+:$PYTHONPATH}
dpid= kpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && { kill -CONT $kpid; kill $kpid; } 2>/dev/null'
# nbdkit fails every read while $T/eio exists
rm -f "$T/nbd.sock"
nbdkit -f -U "$T/nbd.sock" --filter=error memory 64M error-pread=EIO error-pread-rate=100% \
    error-pread-file="$T/eio" 2>"$T/nbdkit.log" &
kpid=$!
wait_sock "$T/nbd.sock" "$kpid" "$T/nbdkit.log"
must qemu-img create -q -f qcow2 c.qcow2 4M

retry_storm() { # BINARY WHAT ROUNDS
    touch "$T/eio"
    start_monitored "$1" --object iothread,id=io0 --object iothread,id=io1 \
        --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/nbd.sock" \
        --blockdev driver=raw,node-name=disk0,file=n0
    python3 - "$S" "$dpid" "$3" "$VBD_BENCH" "$T" <<'PY' || { tail -40 "$T/daemon.log"; fail "QMP changes under SIGUSR1s ($2)"; }
import os, signal, subprocess, sys, threading
from qmp import QMP
sock, pid, rounds, bench, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
m = QMP(sock, negotiate=True)
ok = m.ok
calm = threading.Event()
def storm():
    # a SIGUSR1 a millisecond: a retry walk (or a request for one more) all along
    while not calm.wait(0.001):
        os.kill(pid, signal.SIGUSR1)
threading.Thread(target=storm, daemon=True).start()
def export(eid, path, iothread):
    args = {"type": "vhost-user-blk", "id": eid, "node-name": "disk0", "writable": False,
            "addr": {"type": "unix", "path": path}, "num-queues": 2, "rerror": "stop", "retry-interval": 0}
    if iothread is not None:
        args["iothread"] = iothread
    ok("block-export-add", **args)
def reader(path, n):
    return subprocess.Popen([bench, "--vhost-user", path, "-w", "read", "-n", str(n), "-q", "2", "-d", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def churn(i):
    # a qcow2 with a copy-on-read filter moved to an iothread, reopened, moved back, deleted
    ok("blockdev-add", driver="file", **{"node-name": "fc"}, filename="c.qcow2")
    ok("blockdev-add", driver="qcow2", **{"node-name": "dc"}, file="fc")
    ok("blockdev-add", driver="copy-on-read", **{"node-name": "cr"}, file="dc")
    ok("x-blockdev-set-iothread", **{"node-name": "cr", "iothread": ["io0", "io1"][i % 2], "force": True})
    ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "dc", "file": "fc", "discard": "unmap"}])
    if i % 2:
        ok("x-blockdev-set-iothread", **{"node-name": "cr", "iothread": None, "force": True})
    ok("blockdev-del", **{"node-name": "cr"})
    ok("blockdev-del", **{"node-name": "dc"})
    ok("blockdev-del", **{"node-name": "fc"})
placements = [["io0", "io1"], "io1", None]  # rings on two iothreads, one, the main loop
for i in range(rounds):
    path = f"{T}/vu{i % 2}.sock"
    export(f"e{i}", path, placements[i % 3])
    m.events.clear()
    b = reader(path, 64)
    m.wait_event("BLOCK_IO_ERROR", timeout=120)  # a read failed: the export is stopped, its requests parked
    churn(i)
    ok("block-export-del", id=f"e{i}")
    m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)
    b.kill()  # cut off, its requests failed: a guest that notices or not, it is not the subject here
    b.wait()
calm.set()
# the retry still works: a stopped reader goes on after one SIGUSR1 once the reads succeed
path = f"{T}/vu0.sock"
export("last", path, ["io0", "io1"])
m.events.clear()
b = reader(path, 256)
m.wait_event("BLOCK_IO_ERROR", timeout=120)
os.remove(f"{T}/eio")
# a SIGUSR1 a second until the reader is done: a read that was in flight on
# the other ring when the first came may fail after it and stop the export
# again (retry-interval=0: nothing but SIGUSR1 retries it)
for _ in range(300):
    os.kill(pid, signal.SIGUSR1)
    try:
        b.wait(timeout=1)
        break
    except subprocess.TimeoutExpired:
        pass
out, _ = b.communicate(timeout=60)
assert b.returncode == 0 and "errors 0" in out, ("vbd-bench after SIGUSR1", b.returncode, out)
ok("block-export-del", id="last")
m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)
PY
    kill -0 $dpid 2>/dev/null || { tail -40 "$T/daemon.log"; fail "the daemon died ($2)"; }
    echo "$(grep -c "the device stops" "$T/daemon.log") stops, $(grep -c "went through after" "$T/daemon.log") ended by a retry ($2)"
    kill -TERM $dpid
    wait $dpid
    local rc=$?
    dpid=
    if grep -q -e Sanitizer -e "runtime error" "$T/daemon.log"; then
        grep -A30 -e "ERROR: AddressSanitizer" -e "WARNING: ThreadSanitizer" -e "runtime error" "$T/daemon.log" | head -60
        fail "sanitizer report ($2)"
    fi
    [ $rc = 0 ] || { tail -30 "$T/daemon.log"; fail "daemon exit status $rc ($2)"; }
}

step "ASan build: SIGUSR1s while QMP adds and deletes stopped exports on iothreads and changes nodes"
retry_storm "$VBD_DAEMON" asan 16
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
if [ -x "$TSAN_DAEMON" ]; then
    step "ThreadSanitizer build: the same"
    # fewer rounds: each command costs several times more under TSan
    TSAN_OPTIONS="halt_on_error=0 exitcode=66" retry_storm "$TSAN_DAEMON" tsan 6
else
    echo "(no ThreadSanitizer build: make build-tsan)"
fi

step "a QMP command hung on storage that does not answer, SIGUSR1s behind it: SIGTERM still stops the daemon"
stop_behind_hung_command USR1 "$T/nbd.sock" $kpid
echo OK
