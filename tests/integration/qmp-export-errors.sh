#!/bin/bash
# I/O errors of exports over QMP (issue 12): BLOCK_IO_ERROR reaches the
# monitor when the NBD server answers a request with an error (action
# report) and when a vhost-user-blk export's werror=stop parks a write
# (action stop, nospace on ENOSPC); the stopped export is resumed with
# vbd's downstream command __io.github.vbd_block-export-cont and vbd-bench
# finishes without an error. The node sits on nbdkit's error filter, which
# fails reads with EIO and writes with ENOSPC while a file exists.
. "$(dirname "$0")/lib.sh"
need python3 nbdkit qemu-io
S=$T/qmp.sock
kpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && kill $kpid 2>/dev/null'
rm -f "$T/k.sock"
nbdkit -f -U "$T/k.sock" --filter=error memory 64M error-pread=EIO error-pread-rate=100% \
    error-pread-file="$T/eio" error-pwrite=ENOSPC error-pwrite-rate=100% error-pwrite-file="$T/enospc" \
    2>"$T/nbdkit.log" &
kpid=$!
wait_sock "$T/k.sock" "$kpid" "$T/nbdkit.log"
# data where the failing read goes (a hole is answered without reading), then the errors start
must qemu-io -f raw -c "write -P 0x33 0 64k" "nbd+unix:///?socket=$T/k.sock" >/dev/null
touch "$T/eio" "$T/enospc"
start_daemon --chardev socket,id=mon0,path="$S",server=on,wait=off --monitor chardev=mon0 \
    --blockdev driver=nbd,node-name=k0,server.type=unix,server.path="$T/k.sock" \
    --blockdev driver=raw,node-name=disk0,file=k0

VBD_QMP_PY=$VBD_ROOT/tests/qmp python3 - "$T" "$VBD_BENCH" <<'PY' || { cat "$T/daemon.log"; fail "see above"; }
import os, subprocess, sys
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from qmp import QMP

T, BENCH = sys.argv[1], sys.argv[2]
CONT = "__io.github.vbd_block-export-cont"

def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

def step(msg):
    print("--- " + msg, flush=True)

m = QMP(T + "/qmp.sock", negotiate=True)

step("NBD: a read that fails on the node raises BLOCK_IO_ERROR (report) and the client gets the error")
m.execute("nbd-server-start", addr={"type": "unix", "data": {"path": T + "/nbd.sock"}})
m.execute("block-export-add", type="nbd", id="e0", node_name="disk0", writable=True)
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 64k", "nbd+unix:///disk0?socket=%s/nbd.sock" % T],
                   capture_output=True, text=True)
if "read failed" not in r.stdout + r.stderr:
    fail("the read did not fail: %s %s" % (r.stdout, r.stderr))
ev = m.wait_event("BLOCK_IO_ERROR")
want = {"device": "e0", "node-name": "disk0", "operation": "read", "action": "report", "nospace": False,
        "reason": "Input/output error"}
if ev["data"] != want:
    fail("BLOCK_IO_ERROR: %s, expected %s" % (ev["data"], want))
if set(ev["timestamp"]) != {"seconds", "microseconds"}:
    fail("event timestamp: %s" % ev)
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 64k", "nbd+unix:///disk0?socket=%s/nbd.sock" % T],
                   capture_output=True, text=True)
ev = m.wait_event("BLOCK_IO_ERROR")
if (ev["data"]["operation"], ev["data"]["nospace"]) != ("write", True):
    fail("BLOCK_IO_ERROR for a write on a full node: %s" % ev["data"])
os.unlink(T + "/eio")
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 64k", "nbd+unix:///disk0?socket=%s/nbd.sock" % T],
                   capture_output=True, text=True)
if r.returncode != 0 or "read failed" in r.stdout:
    fail("the read still fails without the error: %s %s" % (r.stdout, r.stderr))
m.execute("nbd-server-stop")
m.wait_event("BLOCK_EXPORT_DELETED")
m.events.clear()

step("vhost-user-blk werror=stop: BLOCK_IO_ERROR (stop, nospace); " + CONT + " resumes once space is back")
VU = T + "/vu.sock"
m.execute("object-add", qom_type="iothread", id="io0")
m.execute("block-export-add", type="vhost-user-blk", id="v0", node_name="disk0", writable=True,
          addr={"type": "unix", "path": VU}, iothread="io0", werror="stop", retry_interval=0)
# one request in flight: each BLOCK_IO_ERROR is that request's (re)failure, and it is parked when the event comes
bench = subprocess.Popen([BENCH, "--vhost-user", VU, "--verify", "--size", "4M", "-d", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
ev = m.wait_event("BLOCK_IO_ERROR")
want = {"device": "v0", "node-name": "disk0", "operation": "write", "action": "stop", "nospace": True,
        "reason": "No space left on device"}
if ev["data"] != want:
    fail("BLOCK_IO_ERROR: %s, expected %s" % (ev["data"], want))
if bench.poll() is not None:
    fail("vbd-bench ended while the export was stopped: %s" % bench.stdout.read())
# a resume while the node still fails stops the export again: a new event, vbd-bench still waits
m.execute(CONT, id="v0")
if m.wait_event("BLOCK_IO_ERROR")["data"]["action"] != "stop":
    fail("the retry did not stop again")
if bench.poll() is not None:
    fail("vbd-bench ended after a failed retry: %s" % bench.stdout.read())
bad = m.cmd(CONT, {"id": "nope"})
if bad.get("error", {}).get("class") != "GenericError":
    fail("resume of an unknown export: %s" % bad)
os.unlink(T + "/enospc")
m.execute(CONT)  # without id: every export
try:
    out, _ = bench.communicate(timeout=120)
except subprocess.TimeoutExpired:
    bench.kill()
    fail("vbd-bench did not finish after the resume")
if bench.returncode != 0 or "read back identical" not in out:
    fail("vbd-bench after the resume: %s" % out)
m.execute("block-export-del", id="v0")
m.wait_event("BLOCK_EXPORT_DELETED")
m.execute("object-del", id="io0")
m.close()
PY
stop_daemon
echo OK
