#!/bin/bash
# Named job filters on a graph that runs on iothreads: a qcow2 overlay
# exported over vhost-user-blk with its two rings on io0 and io1 (the graph
# follows the export to io0) while vbd-bench writes patterns and reads them
# back (--verify, one run after the other, the whole time):
#  an active block-commit with filter-node-name=act (inserted, the export
#  moved onto it, under load), READY, job-complete (the filter dropped, the
#  export pivoted to the base; the old top deleted), then a blockdev-mirror of the base to a new
#  qcow2 with filter-node-name=mt, cancelled in READY (the export back on
#  the base), then again and completed (on the target).
# Every verify run reads back what it wrote, the filters are gone after
# their jobs and the images are qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
[ -x "$VBD_BENCH" ] || fail "no vbd-bench (build the tree first)"
cd "$T"
must qemu-img create -q -f qcow2 base.qcow2 64M
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
must qemu-img create -q -f qcow2 tgt.qcow2 64M
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
start_daemon --object iothread,id=io0 --object iothread,id=io1 \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev '{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"'"$T"'/base.qcow2"},"backing":null}' \
    --blockdev '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"'"$T"'/top.qcow2"},"backing":"base"}' \
    --blockdev '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"'"$T"'/tgt.qcow2"}}' \
    --export type=vhost-user-blk,id=e0,node-name=top,addr.type=unix,addr.path="$T/vu.sock",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1
wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
T=$T BENCH=$VBD_BENCH python3 - <<'PY' || fail_with_daemon_log "jobs under vbd-bench"
import os, subprocess, sys, threading, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
T, BENCH = os.environ["T"], os.environ["BENCH"]
s = Session(T + "/qmp.sock", "vbd")
stop = threading.Event()
runs, bad = [], []


def load():
    while not stop.is_set():
        p = subprocess.run([BENCH, "--vhost-user", T + "/vu.sock", "-q", "2", "-d", "16", "--verify", "--size", "16M"],
                           capture_output=True, text=True)
        runs.append(p.returncode)
        if p.returncode or "read back identical" not in p.stdout:
            bad.append(p.stdout + p.stderr)


def on_filter(name):
    nodes = {n["node-name"]: n["drv"] for n in s.run("query-named-block-nodes", flat=True)}
    return name in nodes


def export_node():
    return s.run("query-block-exports")[0]["node-name"]


def one_more_run():
    """Wait until a verify run ends that started after now (it ran through the graph as it is)."""
    n = len(runs) + 1
    while len(runs) <= n and th.is_alive():
        time.sleep(0.05)  # polling the load thread's count


th = threading.Thread(target=load)
th.start()
try:
    s.run("block-commit", **{"job-id": "c", "device": "top", "speed": 1, "filter-node-name": "act"})
    s.status("c", "created")
    s.status("c", "running")
    if not on_filter("act") or export_node() != "act":
        fail(f"active commit: filter act {on_filter('act')}, export on {export_node()}")
    one_more_run()
    s.run("block-job-set-speed", device="c", speed=0)
    s.status("c", "ready")
    one_more_run()
    s.run("job-complete", id="c")
    s.completed("c")
    if on_filter("act") or export_node() != "base":
        fail(f"after the commit: filter act {on_filter('act')}, export on {export_node()}")
    s.run("blockdev-del", **{"node-name": "top"})  # the committed layer goes: base is a root now
    for jid, end in (("m0", "cancel"), ("m1", "complete")):
        s.run("blockdev-mirror", **{"job-id": jid, "device": "base", "target": "tgt", "sync": "full",
                                    "filter-node-name": "mt"})
        s.status(jid, "created")
        s.status(jid, "running")
        s.status(jid, "ready")
        if not on_filter("mt") or export_node() != "mt":
            fail(f"mirror {jid}: filter mt {on_filter('mt')}, export on {export_node()}")
        one_more_run()
        if end == "cancel":
            s.run("block-job-cancel", device=jid)  # in READY: no pivot
            ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
            if ev["device"] != jid or "error" in ev:
                fail(f"BLOCK_JOB_COMPLETED {ev}")
            while s.m.wait_event("JOB_STATUS_CHANGE", timeout=300)["data"]["status"] != "null":
                pass
        else:
            s.run("job-complete", id=jid)
            s.completed(jid)
        want = "base" if end == "cancel" else "tgt"
        if on_filter("mt") or export_node() != want:
            fail(f"after mirror {jid}: filter mt {on_filter('mt')}, export on {export_node()}, expected {want}")
finally:
    stop.set()
    th.join()
if bad:
    fail(f"{len(bad)} of {len(runs)} vbd-bench runs failed:\n{bad[0][-3000:]}")
print(f"{len(runs)} vbd-bench verify runs", file=sys.stderr)
PY
stop_daemon
for img in base top tgt; do qcheck $img.qcow2; done
echo ok
