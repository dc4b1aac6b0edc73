#!/bin/bash
# vbd-daemon --state FILE: what QMP changed comes back after a restart.
# 1. Nodes, the NBD server, an export, an iothread object, a live snapshot
#    (blockdev-snapshot: the export pivots to the overlay) and a
#    blockdev-snapshot-sync made over QMP; a node added and deleted again;
#    a block-stream that drops a node's backing; an active block-commit that
#    moves the export down to the overlay.
#    After kill -9 and a restart with the same --state, the named nodes
#    (driver, read-only, backing), the exports and objects are the same,
#    and qemu-io reads through the re-created NBD export what it wrote
#    through the old one.
# 2. A snapshot of an export the command line made (it moves to the
#    overlay) and the delete of another are kept across kill -9 and a
#    restart with the same command line. The command line and FILE naming
#    the same node: an error, FILE kept.
# 3. Damaged files (truncated, a byte changed, not JSON, empty, from a
#    newer version) are refused with one line naming FILE; FILE unchanged.
#    A FILE that cannot be written makes the command's reply an error.
# 4. A loop of QMP changes (nodes, exports, objects added and deleted, live
#    snapshots that move exports to an overlay) and kill -9 at random
#    moments: after each restart the configuration is exactly the one
#    before the command in flight or the one after it, never a mix.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
ST=$T/state.json
S=$T/qmp.sock
qemu-img create -q -f qcow2 base.qcow2 16M || fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x11 0 4M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 ov.qcow2 16M || fail "qemu-img create"
qemu-img create -q -f qcow2 mid.qcow2 16M && qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 ||
    fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x22 0 1M' mid.qcow2 >/dev/null
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'

qmp() { # qmp PYTHON-STATEMENTS: qmp_py on $S, with view(): the nodes, exports and objects
    qmp_py "$S" <<PY
def view():
    nodes = {n["node-name"]: (n["drv"], n["ro"], n.get("backing_file"))
             for n in ok("query-named-block-nodes") if not n["node-name"].startswith("#")}
    exports = sorted((e["id"], e["node-name"]) for e in ok("query-block-exports"))
    # qsd's /objects is there once an object was made (DeviceNotFound before)
    r = m.cmd("qom-list", {"path": "/objects"})
    objs = sorted(o["name"] for o in r.get("return", []) if o["type"].startswith("child<"))
    return {"nodes": nodes, "exports": exports, "objects": objs}
$(cat)
PY
}
crash() { kill -9 $dpid; wait $dpid 2>/dev/null; dpid=; }
qmpd() { start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q "$@"; }

step "changes over QMP, kill -9, restart: the same nodes, exports, objects and data"
qmpd --state "$ST"
qmp <<'PY' || fail "QMP changes"
ok("blockdev-add", driver="qcow2", **{"node-name": "base"}, file={"driver": "file", "filename": "base.qcow2"})
ok("nbd-server-start", addr={"type": "unix", "data": {"path": "nbd.sock"}})
ok("block-export-add", type="nbd", id="e0", **{"node-name": "base"}, writable=True, name="disk")
ok("object-add", **{"qom-type": "iothread", "id": "io0"})
ok("blockdev-add", driver="qcow2", **{"node-name": "ov"}, backing=None, file={"driver": "file", "filename": "ov.qcow2"})
ok("blockdev-snapshot", node="base", overlay="ov")
ok("blockdev-add", driver="null-co", **{"node-name": "gone"})
ok("blockdev-del", **{"node-name": "gone"})
ok("blockdev-snapshot-sync", **{"node-name": "ov", "snapshot-file": os.getcwd() + "/s2.qcow2",
                                "snapshot-node-name": "s2", "format": "qcow2"})
ok("blockdev-add", driver="qcow2", **{"node-name": "mid"}, file={"driver": "file", "filename": "mid.qcow2"})
ok("blockdev-add", driver="qcow2", **{"node-name": "top"}, file={"driver": "file", "filename": "top.qcow2"}, backing="mid")
ok("block-stream", **{"job-id": "j0", "device": "top"})
m.wait_event("BLOCK_JOB_COMPLETED", timeout=120)
v = view()
assert v["exports"] == [("e0", "s2")], v
assert v["nodes"]["top"][2] is None, v  # the job dropped its backing
ok("block-commit", **{"job-id": "j1", "device": "s2", "base-node": "ov"})
m.wait_event("BLOCK_JOB_READY", timeout=120)
ok("job-complete", id="j1")
m.wait_event("BLOCK_JOB_COMPLETED", timeout=120)
v = view()
assert v["exports"] == [("e0", "ov")], v  # the active commit moved the export
json.dump(v, open("view.before", "w"), sort_keys=True)
PY
must qemu-io -f raw -c 'write -P 0x5a 1M 64k' "nbd+unix:///disk?socket=$T/nbd.sock" >/dev/null
crash
[ -s "$ST" ] || fail "no state file after the changes"
! grep -q '"gone"' "$ST" || fail "a deleted node is still in the state file: $(cat "$ST")"
qmpd --state "$ST"
qmp <<'PY' || fail "state after the restart"
import json
v = json.loads(json.dumps(view(), sort_keys=True))
before = json.load(open("view.before"))
if v != before:
    print(f"FAIL: after the restart {v}\nbefore it {before}", file=sys.stderr); sys.exit(1)
PY
must qemu-io -f raw -c 'read -P 0x5a 1M 64k' -c 'read -P 0x11 0 1M' -c 'read -P 0x11 2M 2M' \
    "nbd+unix:///disk?socket=$T/nbd.sock" >/dev/null
stop_daemon
for i in base ov s2 mid top; do qcheck "$T/$i.qcow2"; done
grep -q '"backing": null' "$ST" || fail "the state file does not say top has no backing after the stream: $(cat "$ST")"
must qemu-io -f qcow2 -c 'read -P 0x22 0 1M' top.qcow2 >/dev/null
[ "$(qemu-img info --output=json top.qcow2 | grep -c backing-filename)" = 0 ] || fail "top.qcow2 still has a backing file"
bf=$(qemu-img info --output=json s2.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')
[ "$(basename "$bf")" = ov.qcow2 ] || fail "s2.qcow2 names $bf as its backing file, not ov.qcow2"

step "a snapshot of an export the command line made, and the delete of another, survive a restart"
qemu-img create -q -f qcow2 cb.qcow2 16M && qemu-img create -q -f qcow2 cov.qcow2 16M || fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x33 0 1M' cb.qcow2 >/dev/null
cmdline=(--blockdev '{"driver":"qcow2","node-name":"cb","file":{"driver":"file","filename":"cb.qcow2"}}'
         --nbd-server "addr.type=unix,addr.path=$T/nbd2.sock"
         --export type=nbd,id=ce,node-name=cb,name=cdisk,writable=on --export type=nbd,id=cx,node-name=cb,name=cx
         --state "$T/st2.json")
qmpd "${cmdline[@]}"
qmp <<'PY' || fail "QMP changes to the command line's export"
ok("blockdev-add", driver="qcow2", **{"node-name": "cov"}, backing=None, file={"driver": "file", "filename": "cov.qcow2"})
ok("blockdev-snapshot", node="cb", overlay="cov")
ok("block-export-del", id="cx")
m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
v = view()
assert v["exports"] == [("ce", "cov")], v
json.dump(v, open("view2.before", "w"), sort_keys=True)
PY
must qemu-io -f raw -c 'write -P 0x77 2M 64k' "nbd+unix:///cdisk?socket=$T/nbd2.sock" >/dev/null
crash
qmpd "${cmdline[@]}"
qmp <<'PY' || fail "the command line's export after the restart"
v = json.loads(json.dumps(view(), sort_keys=True))
before = json.load(open("view2.before"))
# cb is the command line's: writable again (nothing writes to it now that
# the export is on the overlay), as the command line says
assert before["nodes"]["cb"][1] and not v["nodes"]["cb"][1], (before, v)
before["nodes"]["cb"][1] = v["nodes"]["cb"][1] = None
if v != before:
    print(f"FAIL: after the restart {v}\nbefore it {before}", file=sys.stderr); sys.exit(1)
PY
must qemu-io -f raw -c 'read -P 0x77 2M 64k' -c 'read -P 0x33 0 1M' "nbd+unix:///cdisk?socket=$T/nbd2.sock" >/dev/null
stop_daemon
qcheck "$T/cb.qcow2"
qcheck "$T/cov.qcow2"

step "blockdev-snapshot-sync's overlays under an export: back after kill -9, still their users' (as qsd's), closed with the export"
qemu-img create -q -f qcow2 ob.qcow2 16M && qemu-img create -q -f qcow2 oc.qcow2 16M || fail "qemu-img create"
must qemu-io -f qcow2 -c 'write -P 0x44 0 1M' ob.qcow2 >/dev/null
qmpd --state "$T/st3.json"
qmp <<'PY' || fail "snapshots under an export"
ok("blockdev-add", driver="qcow2", **{"node-name": "ob"}, file={"driver": "file", "filename": "ob.qcow2"})
ok("blockdev-add", driver="qcow2", **{"node-name": "oc"}, file={"driver": "file", "filename": "oc.qcow2"})
ok("nbd-server-start", addr={"type": "unix", "data": {"path": "nbd3.sock"}})
ok("block-export-add", type="nbd", id="e3", **{"node-name": "ob"}, writable=True, name="d3")
ok("blockdev-snapshot-sync", **{"node-name": "ob", "snapshot-file": os.getcwd() + "/os1.qcow2",
                                "snapshot-node-name": "os1", "format": "qcow2"})
ok("blockdev-snapshot-sync", **{"node-name": "os1", "snapshot-file": os.getcwd() + "/os2.qcow2",
                                "snapshot-node-name": "os2", "format": "qcow2"})
# nothing uses oc: its overlay closes at once
ok("blockdev-snapshot-sync", **{"node-name": "oc", "snapshot-file": os.getcwd() + "/oc1.qcow2",
                                "snapshot-node-name": "oc1", "format": "qcow2"})
v = view()
assert "oc1" not in v["nodes"] and v["nodes"]["oc"][1], v
PY
must qemu-io -f raw -c 'write -P 0x55 2M 64k' "nbd+unix:///d3?socket=$T/nbd3.sock" >/dev/null
crash
qmpd --state "$T/st3.json"
qmp <<'PY' || fail "the overlays after the restart"
v = view()
assert v["nodes"]["ob"][1] and v["nodes"]["os1"][1] and not v["nodes"]["os2"][1], v  # read-only below the top
assert v["exports"] == [("e3", "os2")], v
r = m.cmd("blockdev-del", {"node-name": "os1"})  # qsd's words and order
assert r.get("error", {}).get("desc") == "Node 'os1' is busy: node is used as backing hd of 'os2'", r
r = m.cmd("blockdev-del", {"node-name": "os2"})
assert r.get("error", {}).get("desc") == "Node os2 is in use", r
PY
must qemu-io -f raw -c 'read -P 0x55 2M 64k' -c 'read -P 0x44 0 1M' "nbd+unix:///d3?socket=$T/nbd3.sock" >/dev/null
qmp <<'PY' || fail "the export's delete"
ok("block-export-del", id="e3")
m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
v = view()
assert "os1" not in v["nodes"] and "os2" not in v["nodes"] and "ob" in v["nodes"], v  # closed with their last user
r = m.cmd("blockdev-del", {"node-name": "os2"})
assert r.get("error", {}).get("desc") == "Failed to find node with node-name='os2'", r
PY
crash
qmpd --state "$T/st3.json"
qmp <<'PY' || fail "after the second restart"
v = view()
assert "os1" not in v["nodes"] and "os2" not in v["nodes"] and "ob" in v["nodes"] and v["exports"] == [], v
PY
stop_daemon
for i in ob os1 os2 oc; do qcheck "$T/$i.qcow2"; done
must qemu-io -f qcow2 -c 'read -P 0x55 2M 64k' -c 'read -P 0x44 0 1M' os2.qcow2 >/dev/null

step "the command line and FILE name the same node: refused, FILE kept"
cp "$ST" st.copy
must_fail_with "$ST" "$VBD_DAEMON" --blockdev driver=null-co,node-name=base --state "$ST"
must cmp "$ST" st.copy

step "damaged state files are refused with one line naming the file, and kept"
damaged() { # what: the content is in $ST already
    cp "$ST" st.bad
    must_fail_with "$ST" "$VBD_DAEMON" --state "$ST"
    cmp -s "$ST" st.bad || fail "$1: the state file was changed"
    ! ls "$ST".tmp 2>/dev/null || fail "$1: a temporary file was left"
}
head -c $(($(stat -c %s st.copy) / 2)) st.copy >"$ST" && damaged truncated
# (the iothread's id: s2.qcow2 was changed once, and went from the file
# when blockdev-snapshot-sync's overlay s2 closed after its commit: the
# sed changed nothing and the daemon started on a valid file)
sed 's/"io0"/"io9"/' st.copy >"$ST" && ! cmp -s "$ST" st.copy || fail "the damage changed nothing: $(cat st.copy)"
damaged "a byte changed"
printf 'not json\n' >"$ST" && damaged "not JSON"
: >"$ST" && damaged empty
sed 's/"vbd-state": 1/"vbd-state": 2/' st.copy >"$ST" && damaged "newer version"
out=$("$VBD_DAEMON" --state "$ST" 2>&1); case "$out" in *newer*) ;; *) fail "newer version: $out" ;; esac
cp st.copy "$ST"

step "a state file that cannot be written: the reply says so"
qmpd --state "$T/nodir/state.json"
qmp <<'PY' || fail "unwritable state file"
r = m.cmd("blockdev-add", {"driver": "null-co", "node-name": "z"})
if "error" not in r or "nodir/state.json" not in r["error"]["desc"]:
    print(f"FAIL: {r}", file=sys.stderr); sys.exit(1)
PY
stop_daemon

step "a loop of QMP changes with kill -9 at random moments"
rm -f "$ST"
python3 - "$VBD_DAEMON" "$ST" "${STATE_LOOPS:-25}" <<'PY' || fail "kill loop"
import json, os, random, signal, subprocess, sys, threading, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
daemon, st, loops = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = os.path.abspath("loop.sock")
rnd = random.Random(int(os.environ.get("STATE_SEED", str(os.getpid()))))
def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr); sys.exit(1)
def start():
    if os.path.exists(sock):
        os.unlink(sock)
    log = open("loop.log", "w")
    p = subprocess.Popen([daemon, "--chardev", f"socket,id=q,path={sock},server=on,wait=off",
                          "--monitor", "chardev=q", "--state", st], stderr=log)
    return p
def view(m):
    def ok(c, **a):
        r = m.cmd(c, a)
        if "error" in r:
            fail(f"{c}: {r}")
        return r["return"]
    nodes = {n["node-name"]: [n["drv"], n["ro"], n.get("backing_file")]
             for n in ok("query-named-block-nodes") if not n["node-name"].startswith("#")}
    exports = sorted([e["id"], e["node-name"]] for e in ok("query-block-exports"))
    r = m.cmd("qom-list", {"path": "/objects"})  # DeviceNotFound until an object was made, as qsd
    objs = sorted(o["name"] for o in r.get("return", []) if o["type"].startswith("child<"))
    return json.loads(json.dumps({"nodes": nodes, "exports": exports, "objects": objs}, sort_keys=True))
def visible(st):
    return {k: v for k, v in st.items() if not k.startswith("_")}
def predict(cur, c):
    """The configuration after command c succeeds, or cur if it must fail.
    _backing (overlay -> its backing) and _fname (node -> filename) are the
    model's own: QMP shows a backing by file name only."""
    nxt = json.loads(json.dumps(cur))
    name, a = c
    if name == "blockdev-add" and a["driver"] == "null-co":
        nxt["nodes"][a["node-name"]] = ["null-co", False, None]
        # QEMU's name of a null-co node given its size: json: with it
        nxt["_fname"][a["node-name"]] = (f'json:{{"driver": "null-co", "size": {a["size"]}}}' if "size" in a
                                         else "null-co://")
    elif name == "blockdev-add":
        nxt["nodes"][a["node-name"]] = ["qcow2", False, None]
        nxt["_fname"][a["node-name"]] = a["file"]["filename"]
    elif name == "blockdev-del":
        n = a["node-name"]
        if any(e[1] == n for e in cur["exports"]) or n in cur["_backing"].values():
            return cur  # busy: an export or an overlay uses it
        del nxt["nodes"][n]
        nxt["_backing"].pop(n, None)
    elif name == "blockdev-snapshot":
        base, ov = a["node"], a["overlay"]
        nxt["nodes"][ov][2] = cur["_fname"][base]
        nxt["nodes"][base][1] = True  # below an overlay nothing writes to it
        nxt["exports"] = sorted([e[0], ov if e[1] == base else e[1]] for e in cur["exports"])
        nxt["_backing"][ov] = base
    elif name == "block-export-add":
        nxt["exports"] = sorted(cur["exports"] + [[a["id"], a["node-name"]]])
    elif name == "block-export-del":
        nxt["exports"] = [e for e in cur["exports"] if e[0] != a["id"]]
    elif name == "object-add":
        nxt["objects"] = sorted(cur["objects"] + [a["id"]])
    elif name == "object-del":
        nxt["objects"] = [o for o in cur["objects"] if o != a["id"]]
    return nxt
serial = 0
kills_in_flight = 0
allowed = [{"nodes": {}, "exports": [], "objects": [], "_backing": {}, "_fname": {}}]
counts = {}
for it in range(loops + 1):
    p = start()
    m = QMP(sock, negotiate=True)
    v = view(m)
    match = [a for a in allowed if visible(a) == v]
    if not match:
        fail(f"iteration {it}: after the restart {v}\nexpected one of {[visible(a) for a in allowed]}")
    cur = match[0]
    if it == loops:
        break
    killer = threading.Timer(rnd.uniform(0.0, 0.3), lambda: p.send_signal(signal.SIGKILL))
    killer.start()
    pending = None
    try:
        while True:
            serial += 1
            nodes = sorted(cur["nodes"])
            # an overlay: a qcow2 node without backing that nothing uses yet
            fresh = [n for n in nodes if cur["nodes"][n][0] == "qcow2" and cur["nodes"][n][2] is None
                     and n not in cur["_backing"] and n not in cur["_backing"].values()
                     and not any(e[1] == n for e in cur["exports"])]
            tops = [n for n in nodes if not cur["nodes"][n][1]]
            k = rnd.randrange(8)
            if k == 0 or not nodes:
                c = ("blockdev-add", {"driver": "null-co", "node-name": f"n{serial}", "size": 1 << 20})
            elif k == 1:
                c = ("blockdev-del", {"node-name": rnd.choice(nodes)})
            elif k == 2:
                c = ("block-export-add", {"type": "vhost-user-blk", "id": f"e{serial}", "node-name": rnd.choice(nodes),
                                          "addr": {"type": "unix", "path": os.path.abspath(f"vu{serial}.sock")}})
            elif k == 3 and cur["exports"]:
                c = ("block-export-del", {"id": rnd.choice(cur["exports"])[0]})
            elif k == 4:
                c = ("object-add", {"qom-type": "throttle-group", "id": f"t{serial}", "limits": {"iops-total": 1000}})
            elif k == 5 and cur["objects"]:
                c = ("object-del", {"id": rnd.choice(cur["objects"])})
            elif k == 6 or not fresh or not [t for t in tops if t not in fresh[:1]]:
                img = os.path.abspath(f"ov{serial}.qcow2")
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"], check=True)
                c = ("blockdev-add", {"driver": "qcow2", "node-name": f"o{serial}", "backing": None,
                                      "file": {"driver": "file", "filename": img}})
            else:
                ov = fresh[0]
                c = ("blockdev-snapshot", {"node": rnd.choice([t for t in tops if t != ov]), "overlay": ov})
            pending = predict(cur, c)
            r = m.cmd(c[0], c[1])
            if ("error" in r) != (pending == cur):
                fail(f"{c}: {r}, expected {'an error' if pending == cur else 'success'}")
            counts[c[0]] = counts.get(c[0], 0) + 1
            cur, pending = pending, None
            if view(m) != visible(cur):
                fail(f"after {c}: {view(m)}, expected {visible(cur)}")
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass  # killed
    killer.cancel()
    p.wait()
    if p.returncode != -signal.SIGKILL:
        fail(f"iteration {it}: the daemon exited with {p.returncode}: {open('loop.log').read()}")
    # a command was in flight: the state before it or after it, nothing else
    allowed = [cur] if pending is None else [cur, pending]
    kills_in_flight += pending is not None
m.cmd("quit")
p.wait()
print(f"commands acknowledged: {json.dumps(counts, sort_keys=True)}")
print(f"{loops} kills, {kills_in_flight} with a command in flight")
PY
echo "daemon-state: ok"
