#!/bin/bash
# SIGHUP (every node's size re-read, each on the node's own loop) while QMP
# changes the graph on iothreads: nodes added, moved between io0, io1 and
# the main loop, reopened and deleted, mirror and backup jobs started and
# ended (their filters put in and taken out), as fast as the commands go,
# with a SIGHUP every few milliseconds and a file growing under a node on
# an iothread. The refresh must never walk a graph that a command changes
# under it (a node deleted while the walk stood on an iothread with it:
# a use after free under ASan); then a last SIGHUP still reports the grown
# file. Run under the ASan build and, where make build-tsan made one, the
# ThreadSanitizer build (no report allowed). Last, with a QMP command hung
# on storage that does not answer (nbdkit stopped) and a SIGHUP waiting
# behind it, SIGTERM still stops the daemon: it says what it waits for
# after 5 s and a second SIGTERM exits.
. "$(dirname "$0")/lib.sh"
need nbdkit python3 qemu-img ss
cd "$T"
S=$T/qmp.sock
export PYTHONPATH=$VBD_ROOT/tests/qmp${PYTHONPATH:+:$PYTHONPATH}
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
dpid=
for j in 0 1 2 3 4 5; do truncate -s 1M "p$j.raw"; done
truncate -s 1M t.raw
must qemu-img create -q -f qcow2 c.qcow2 4M

graph_storm() { # BINARY WHAT ROUNDS
    rm -f calm
    truncate -s 1M p0.raw
    local nodes=() j
    for j in 0 1 2 3 4 5; do
        nodes+=(--blockdev "driver=file,node-name=fp$j,filename=$T/p$j.raw" --blockdev "driver=raw,node-name=rp$j,file=fp$j")
    done
    start_monitored "$1" --object iothread,id=io0 --object iothread,id=io1 "${nodes[@]}"
    python3 - "$S" "$dpid" "$3" <<'PY' || { tail -40 "$T/daemon.log"; fail "QMP graph changes under SIGHUPs ($2)"; }
import os, signal, sys, threading
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
ok = m.ok
calm = threading.Event()
def storm():
    # a SIGHUP a millisecond: a walk (or a request for one more) all along
    while not calm.wait(0.001):
        os.kill(int(sys.argv[2]), signal.SIGHUP)
threading.Thread(target=storm, daemon=True).start()
for j in range(6):  # copy-on-read filters over them: the walk hops to io0 and io1 for most
    ok("blockdev-add", driver="copy-on-read", **{"node-name": f"cp{j}"}, file=f"rp{j}")
    ok("x-blockdev-set-iothread", **{"node-name": f"cp{j}", "iothread": ["io0", "io1", None][j % 3], "force": True})
def job(cmd, jid, source, want):
    ok("blockdev-add", driver="file", **{"node-name": "ft"}, filename="t.raw")
    ok("blockdev-add", driver="raw", **{"node-name": "tt"}, file="ft")
    ok(cmd, **{"job-id": jid, "device": source, "target": "tt", "sync": "full", "auto-dismiss": False})
    m.wait_job(jid, (want,))
    if want == "ready":
        ok("block-job-cancel", device=jid)
        m.wait_job(jid, ("concluded",))
    ok("job-dismiss", id=jid)
    ok("blockdev-del", **{"node-name": "tt"})
    ok("blockdev-del", **{"node-name": "ft"})
for i in range(int(sys.argv[3])):
    os.truncate("p0.raw", (1 << 20) + (i + 1) * 65536)  # a size for the walks to find
    named = i % 2  # the qcow2's file a node of its own, or implicit (deleted with it)
    if named:
        ok("blockdev-add", driver="file", **{"node-name": "fc"}, filename="c.qcow2")
    ok("blockdev-add", driver="qcow2", **{"node-name": "dc"},
       file="fc" if named else {"driver": "file", "filename": "c.qcow2"})
    # a copy-on-read filter on top: a node whose refresh runs on its home
    # loop, so the walk stands on an iothread with it (a qcow2, raw and
    # file refresh wherever the walk is)
    ok("blockdev-add", driver="copy-on-read", **{"node-name": "cr"}, file="dc")
    ok("x-blockdev-set-iothread", **{"node-name": "cr", "iothread": ["io0", "io1", "io1"][i % 3], "force": True})
    if named:
        ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "dc", "file": "fc", "discard": "unmap"}])
    if i % 3 == 2:
        ok("x-blockdev-set-iothread", **{"node-name": "cr", "iothread": None, "force": True})
    ok("blockdev-del", **{"node-name": "cr"})
    ok("blockdev-del", **{"node-name": "dc"})
    if named:
        ok("blockdev-del", **{"node-name": "fc"})
    if i % 25 == 12:
        job("blockdev-mirror", "m", "cp1", "ready")  # cp1 on io1, cp3 on io0: 1 MiB as the target (cp0 grows)
    elif i % 25 == 24:
        job("blockdev-backup", "b", "cp3", "concluded")
calm.set()
PY
    kill -0 $dpid 2>/dev/null || { tail -40 "$T/daemon.log"; fail "the daemon died ($2)"; }
    truncate -s 8M p0.raw
    kill -HUP $dpid
    wait_log "$T/daemon.log" "node 'fp0' is now 8388608 bytes" 1 "$dpid" ||
        { tail -20 "$T/daemon.log"; fail "no refresh after the storm ($2)"; }
    echo "$(grep -c "node 'fp0' is now" "$T/daemon.log") size changes reported for fp0 ($2)"
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

step "ASan build: SIGHUPs while QMP adds, moves, reopens and deletes nodes on iothreads and jobs come and go"
graph_storm "$VBD_DAEMON" asan 150
TSAN_DAEMON=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}/src/tools/vbd-daemon
if [ -x "$TSAN_DAEMON" ]; then
    step "ThreadSanitizer build: the same"
    # fewer rounds: each command costs several times more under TSan
    TSAN_OPTIONS="halt_on_error=0 exitcode=66" graph_storm "$TSAN_DAEMON" tsan 50
else
    echo "(no ThreadSanitizer build: make build-tsan)"
fi

step "a QMP command hung on storage that does not answer, a SIGHUP behind it: SIGTERM still stops the daemon"
nbdkit -f -U "$T/kit.sock" memory 64M 2>"$T/nbdkit.log" &
kpid=$!
on_exit "kill -CONT $kpid 2>/dev/null; kill $kpid 2>/dev/null"
wait_sock "$T/kit.sock" "$kpid" "$T/nbdkit.log"
stop_behind_hung_command HUP "$T/kit.sock" $kpid
echo OK
