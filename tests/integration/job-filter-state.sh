#!/bin/bash
# vbd-daemon --state while a job's named filter is in the graph: the state
# file is rewritten (a blockdev-add) while an active commit runs with
# filter-node-name=act, the export sitting on act; after kill -9 the daemon
# comes back from the file with the export on top (a restart has no job,
# so no filter), serving the data written through it, the chain intact.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 base.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 0x11 0 16M' base.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
S=$T/qmp.sock
export T
on_exit 'kill -9 $dpid 2>/dev/null'

start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q --state "$T/st.json"
python3 - <<'PY' || fail "commit with a named filter, then a state change"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
T = os.environ["T"]
s = Session(T + "/qmp.sock", "vbd")
s.run("blockdev-add", driver="qcow2", **{"node-name": "base"}, file={"driver": "file", "filename": T + "/base.qcow2"}, backing=None)
s.run("blockdev-add", driver="qcow2", **{"node-name": "top"}, file={"driver": "file", "filename": T + "/top.qcow2"}, backing="base")
s.run("nbd-server-start", addr={"type": "unix", "data": {"path": T + "/nbd.sock"}})
s.run("block-export-add", type="nbd", id="e0", **{"node-name": "top"}, name="disk", writable=True)
s.run("block-commit", **{"job-id": "c", "device": "top", "speed": 1, "filter-node-name": "act"})
s.status("c", "created")
s.status("c", "running")
sh(f"qemu-io -f raw -c 'write -P 0x22 1M 1M' -c flush 'nbd+unix:///disk?socket={T}/nbd.sock'", "a write through the filter")
s.run("blockdev-add", driver="null-co", **{"node-name": "other"})  # the state file is rewritten now
e = s.run("query-block-exports")
if e[0]["node-name"] != "act":
    fail(f"the export is not on the filter: {e}")
PY
grep -q '"act"' "$T/st.json" && fail "the job's filter is in the state file: $(cat "$T/st.json")"
kill -9 $dpid; wait $dpid 2>/dev/null
start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q --state "$T/st.json"
python3 - <<'PY' || fail "after the restart"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
T = os.environ["T"]
s = Session(T + "/qmp.sock", "vbd")
e = s.run("query-block-exports")
if [x["node-name"] for x in e] != ["top"]:
    fail(f"exports after the restart: {e}")
n = {x["node-name"]: x for x in s.run("query-named-block-nodes", flat=True)}
if "act" in n or n["top"].get("backing_file") != T + "/base.qcow2":
    fail(f"nodes after the restart: {sorted(n)}, top's backing {n['top'].get('backing_file')}")
sh(f"qemu-io -f raw -c 'read -P 0x22 1M 1M' -c 'read -P 0x11 0 1M' -c 'read -P 0x11 2M 14M' 'nbd+unix:///disk?socket={T}/nbd.sock'",
   "the data through the export")
PY
stop_daemon
qcheck top.qcow2
qcheck base.qcow2
echo ok
