#!/bin/bash
# vbd-daemon --state FILE when an export ends up on a node with no user
# name: a drive-mirror without node-name pivots the export to its target
# ('#blockNNN'). After kill -9 and a restart from FILE the export must serve
# that node (the data written after the pivot), not the node it was first
# added on: that one lacks every write since the pivot. Both for an export
# added over QMP and for one the command line made, and over two restarts
# (the second from the FILE the first restart wrote, where the node has a
# new implicit name). The images stay clean for qemu-img check.
# A drive-mirror target is its users' (the exports it took over), not the
# monitor's, as in qsd: after a restart too, blockdev-del is refused in
# qsd's words while an export holds it (one named with node-name), and each
# closes with its export, for good (not back after the next restart).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
ST=$T/state.json
S=$T/qmp.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
qemu-img create -q -f qcow2 src.qcow2 16M || fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x11 0 4M' src.qcow2 >/dev/null
qemu-img create -q -f qcow2 cl.qcow2 16M || fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x22 0 4M' cl.qcow2 >/dev/null

qmp() { # qmp PYTHON-STATEMENTS: qmp_py on $S, with export_files(): (export id, its node's file)
    qmp_py "$S" <<PY
def export_files():
    nodes = {n["node-name"]: n["file"] for n in ok("query-named-block-nodes")}
    return sorted((e["id"], os.path.basename(nodes[e["node-name"]])) for e in ok("query-block-exports"))
$(cat)
PY
}
crash() { kill -9 $dpid; wait $dpid 2>/dev/null; dpid=; }
# The command line holds an implicit node of its own (the inline file of
# cl), so the restart cannot simply reuse the old '#' names.
cmdline=(--chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q
         --blockdev '{"driver":"qcow2","node-name":"cl","file":{"driver":"file","filename":"cl.qcow2"}}'
         --nbd-server "addr.type=unix,addr.path=$T/nbd.sock"
         --export type=nbd,id=ce,node-name=cl,name=cdisk,writable=on
         --state "$ST")

step "drive-mirrors without a target node-name move both exports; kill -9"
start_daemon "${cmdline[@]}"
qmp <<'PY' || fail "QMP changes"
ok("blockdev-add", driver="qcow2", **{"node-name": "src"}, file={"driver": "file", "filename": "src.qcow2"})
ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True, name="disk")
for dev, tgt in (("src", "tgt.qcow2"), ("cl", "cl-tgt.qcow2")):
    ok("drive-mirror", device=dev, target=os.getcwd() + "/" + tgt, format="qcow2", sync="full", **{"job-id": "m0"})
    m.wait_event("BLOCK_JOB_READY", timeout=120)
    ok("job-complete", id="m0")
    m.wait_event("BLOCK_JOB_COMPLETED", timeout=120)
v = export_files()
assert v == [("ce", "cl-tgt.qcow2"), ("e0", "tgt.qcow2")], v
PY
must qemu-io -f raw -c 'write -P 0x77 0 1M' "nbd+unix:///disk?socket=$T/nbd.sock" >/dev/null
must qemu-io -f raw -c 'write -P 0x88 1M 1M' "nbd+unix:///cdisk?socket=$T/nbd.sock" >/dev/null
crash

for round in 1 2; do
    step "restart $round from FILE: the exports serve the pivoted nodes, with the writes made after the pivot"
    start_daemon "${cmdline[@]}"
    qmp <<'PY' || fail "exports after restart $round: $(cat "$ST")"
v = export_files()
assert v == [("ce", "cl-tgt.qcow2"), ("e0", "tgt.qcow2")], v
PY
    must qemu-io -f raw -c 'read -P 0x77 0 1M' -c 'read -P 0x11 1M 3M' "nbd+unix:///disk?socket=$T/nbd.sock" >/dev/null
    must qemu-io -f raw -c 'read -P 0x22 0 1M' -c 'read -P 0x88 1M 1M' -c 'read -P 0x22 2M 2M' \
        "nbd+unix:///cdisk?socket=$T/nbd.sock" >/dev/null
    # a change makes the daemon write FILE again, with the nodes' new names
    qmp <<'PY' || fail "a change after restart $round"
ok("blockdev-add", driver="null-co", **{"node-name": f"n{os.getpid()}"})
PY
    crash
done
step "a named drive-mirror target under an export; kill -9; restart: still the export's, closed with it"
qemu-img create -q -f qcow2 n2.qcow2 16M || fail "qemu-img create"
start_daemon "${cmdline[@]}"
qmp <<'PY' || fail "a named target: $(cat "$ST")"
ok("blockdev-add", driver="qcow2", **{"node-name": "n2"}, file={"driver": "file", "filename": "n2.qcow2"})
ok("block-export-add", type="nbd", id="e2", **{"node-name": "n2"}, writable=True, name="d2")
ok("drive-mirror", device="n2", target=os.getcwd() + "/n2t.qcow2", format="qcow2", sync="full",
   **{"job-id": "m2", "node-name": "n2t"})
m.wait_event("BLOCK_JOB_READY", timeout=120)
ok("job-complete", id="m2")
m.wait_job("m2", (None,))
r = m.cmd("blockdev-del", {"node-name": "n2t"})
assert r.get("error", {}).get("desc") == "Node n2t is in use", r
PY
must qemu-io -f raw -c 'write -P 0x99 0 1M' "nbd+unix:///d2?socket=$T/nbd.sock" >/dev/null
crash
start_daemon "${cmdline[@]}"
qmp <<'PY' || fail "the named target after the restart: $(cat "$ST")"
v = export_files()
assert v == [("ce", "cl-tgt.qcow2"), ("e0", "tgt.qcow2"), ("e2", "n2t.qcow2")], v
assert sorted(e["node-name"] for e in ok("query-block-exports") if e["id"] == "e2") == ["n2t"]
r = m.cmd("blockdev-del", {"node-name": "n2t"})  # qsd's words and order
assert r.get("error", {}).get("desc") == "Node n2t is in use", r
PY
must qemu-io -f raw -c 'read -P 0x99 0 1M' "nbd+unix:///d2?socket=$T/nbd.sock" >/dev/null
qmp <<'PY' || fail "the exports' deletes"
for e in ("e2", "e0"):
    ok("block-export-del", id=e)
    m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
files = sorted(os.path.basename(n["file"]) for n in ok("query-named-block-nodes", flat=True))
assert "n2t.qcow2" not in files and "tgt.qcow2" not in files, files  # closed with their exports
r = m.cmd("blockdev-del", {"node-name": "n2t"})
assert r.get("error", {}).get("desc") == "Failed to find node with node-name='n2t'", r
PY
crash
start_daemon "${cmdline[@]}"
qmp <<'PY' || fail "after the next restart: $(cat "$ST")"
files = sorted(os.path.basename(n["file"]) for n in ok("query-named-block-nodes", flat=True))
assert "n2t.qcow2" not in files and "tgt.qcow2" not in files, files
assert export_files() == [("ce", "cl-tgt.qcow2")], export_files()
PY
stop_daemon # a clean shutdown with the replayed nodes: no sanitizer report
for i in src tgt cl cl-tgt n2 n2t; do qcheck "$T/$i.qcow2"; done
must qemu-io -f qcow2 -c 'read -P 0x99 0 1M' n2t.qcow2 >/dev/null
must qemu-io -f qcow2 -c 'read -P 0x11 0 4M' src.qcow2 >/dev/null # the source is left as it was at the pivot
echo PASS
