#!/bin/bash
# vbd-daemon --state FILE keeps what blockdev-reopen changed of the nodes
# the command line made (FILE never describes those nodes themselves):
# top's detect-zeroes, cache and its backing moved to a node QMP added,
# its file's O_DIRECT, a throttle node's group, another qcow2 node made
# read-only. After kill -9 and a restart with the same command line and
# FILE, query-named-block-nodes shows the same options and backing, the
# data written through the export after the reopen reads back, and a later
# reopen that undoes them is kept too. (vbd kept reopens of QMP's nodes only.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
S=$T/qmp.sock
ST=$T/state.json
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
must qemu-img create -q -f qcow2 base.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 0x11 0 4M' base.qcow2 >/dev/null
cp base.qcow2 base2.qcow2
must qemu-io -f qcow2 -c 'write -P 0x12 3M 1M' base2.qcow2 >/dev/null # which backing top reads
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
must qemu-img create -q -f qcow2 x.qcow2 16M
truncate -s 4M r.raw
cmdline=(--chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q
         --object throttle-group,id=g0 --object throttle-group,id=g1,x-iops-total=100000
         --blockdev "driver=file,node-name=fbase,filename=$T/base.qcow2"
         --blockdev '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}'
         --blockdev "driver=file,node-name=ftop,filename=$T/top.qcow2"
         --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"base"}'
         --blockdev "driver=file,node-name=fx,filename=$T/x.qcow2"
         --blockdev '{"driver":"qcow2","node-name":"x","file":"fx"}'
         --blockdev "driver=file,node-name=fr,filename=$T/r.raw"
         --blockdev '{"driver":"raw","node-name":"r0","file":"fr"}'
         --blockdev '{"driver":"throttle","node-name":"t0","file":"r0","throttle-group":"g0"}'
         --nbd-server "addr.type=unix,addr.path=$T/nbd.sock"
         --export type=nbd,id=e0,node-name=top,name=top,writable=on
         --state "$ST")
qmp() { # qmp_py on $S, with view(): each named node's options blockdev-reopen changed
    qmp_py "$S" <<PY
def view():
    return {n["node-name"]: (n["ro"], n["detect_zeroes"], n["cache"], n.get("backing_file"))
            for n in ok("query-named-block-nodes", flat=True) if not n["node-name"].startswith("#")}
$(cat)
PY
}
crash() { kill -9 $dpid; wait $dpid 2>/dev/null; dpid=; }
same_view() { # same_view FILE: the view equals the one saved in FILE
    qmp <<PY || fail "after the restart: $1"
v = json.loads(json.dumps(view(), sort_keys=True))
before = json.load(open("$1"))
if v != before:
    print(f"FAIL: after the restart {v}\nbefore it {before}", file=sys.stderr); sys.exit(1)
PY
}

step "reopens of the command line's nodes, kill -9, restart: the same options and backing"
start_daemon "${cmdline[@]}"
qmp <<'PY' || fail "QMP changes"
ok("blockdev-add", driver="qcow2", **{"node-name": "base2"}, backing=None,
   file={"driver": "file", "filename": os.getcwd() + "/base2.qcow2"})
ok("blockdev-reopen", options=[
    {"driver": "qcow2", "node-name": "top", "file": "ftop", "backing": "base2", "detect-zeroes": "on",
     "cache": {"no-flush": True}},
    {"driver": "file", "node-name": "ftop", "filename": os.getcwd() + "/top.qcow2", "cache": {"direct": True}},
    {"driver": "throttle", "node-name": "t0", "file": "r0", "throttle-group": "g1"}])
ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "x", "file": "fx", "read-only": True}])
v = view()
assert v["top"][1:3] == ("on", {"writeback": True, "direct": False, "no-flush": True}), v
assert v["ftop"][2]["direct"] and v["x"][0], v
json.dump(v, open("view1", "w"), sort_keys=True)
PY
must qemu-io -f raw -c 'write -P 0x5a 1M 64k' -c 'write -P 0x5b 100001 3' "nbd+unix:///top?socket=$T/nbd.sock" >/dev/null
crash
grep -q '"blockdev-reopen"' "$ST" || fail "no blockdev-reopen in the state file: $(cat "$ST")"
start_daemon "${cmdline[@]}"
same_view view1
qmp <<'PY' || fail "the throttle node's group after the restart"
# g1's limit is the throttle node's now: a group in use cannot be deleted
r = m.cmd("object-del", {"id": "g1"})
assert "error" in r, r
r = m.cmd("object-del", {"id": "g0"})
assert "error" not in r, r
PY
must qemu-io -f raw -c 'read -P 0x5a 1M 64k' -c 'read -P 0x5b 100001 3' -c 'read -P 0x11 2M 1M' \
    -c 'read -P 0x12 3M 1M' "nbd+unix:///top?socket=$T/nbd.sock" >/dev/null

step "reopens that undo them are kept too"
qmp <<'PY' || fail "QMP changes back"
ok("blockdev-reopen", options=[
    {"driver": "qcow2", "node-name": "top", "file": "ftop", "backing": "base"},
    {"driver": "file", "node-name": "ftop", "filename": os.getcwd() + "/top.qcow2"}])
ok("blockdev-reopen", options=[{"driver": "qcow2", "node-name": "x", "file": "fx", "read-only": False}])
v = view()
assert v["top"][1] == "off" and not v["ftop"][2]["direct"] and not v["x"][0], v
json.dump(v, open("view2", "w"), sort_keys=True)
PY
crash
start_daemon "${cmdline[@]}"
same_view view2
must qemu-io -f raw -c 'read -P 0x5a 1M 64k' -c 'read -P 0x5b 100001 3' -c 'read -P 0x11 2M 2M' \
    "nbd+unix:///top?socket=$T/nbd.sock" >/dev/null
stop_daemon
for i in base base2 top x; do qcheck "$T/$i.qcow2"; done
echo ok
