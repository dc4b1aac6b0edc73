#!/bin/bash
# query-qmp-schema's events, vbd-daemon against qemu-storage-daemon 7.2:
# every event vbd-daemon sends (each vbd_qmp_event("NAME" in src/) is in
# its schema, the schema lists no event it does not send, and each one's
# data is typed as qsd's schema types it: the same members, the same
# optional ones, the same JSON types and enum values (type names are
# opaque numbers in both, so the types are compared resolved). qsd's
# VSERPORT_CHANGE (a virtio-serial port's) is the only event left out.
# Main's daemon listed no events at all: a client that asks the schema
# whether BLOCK_WRITE_THRESHOLD or JOB_STATUS_CHANGE exists got no.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
sent=$(grep -rhoE 'vbd_qmp_event\("[A-Z_]+"' "$VBD_ROOT/src" | sed -E 's/.*\("//; s/"$//' | sort -u)
[ -n "$sent" ] || fail "found no vbd_qmp_event call in src/"
python3 - "$VBD_ROOT/tests/qmp" "$T" "$VBD_DAEMON" "$sent" <<'PY' || fail "the schemas' events differ (above)"
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from qmp import QMP
T, vbd, sent = sys.argv[2], sys.argv[3], set(sys.argv[4].split())
schemas = {}
for name, binary in (("qsd", "qemu-storage-daemon"), ("vbd", vbd)):
    d = f"{T}/{name}"
    os.mkdir(d)
    p = subprocess.Popen([binary, "--chardev", f"socket,id=m,path={d}/qmp.sock,server=on,wait=off", "--monitor", "m"],
                         stderr=open(f"{d}/log", "w"))
    try:
        m = QMP(f"{d}/qmp.sock", negotiate=True)
        schemas[name] = {e["name"]: e for e in m.execute("query-qmp-schema")}
        m.execute("quit")
    finally:
        if p.wait(timeout=60) != 0:
            print(f"{name}: exit status {p.returncode}: {open(f'{d}/log').read()}")
            sys.exit(1)

def resolve(schema, t, depth=0):
    e = schema.get(t)
    if e is None:
        return "?" + t
    mt = e["meta-type"]
    if mt == "builtin":
        return e["json-type"]
    if mt == "enum":
        return ("enum", tuple(e["values"]), tuple(m["name"] for m in e.get("members", [])))
    if mt == "array":
        return ("array", resolve(schema, e["element-type"], depth + 1))
    if mt == "object" and depth < 4:
        return ("object", tuple((m["name"], "default" in m, resolve(schema, m["type"], depth + 1)) for m in e["members"]))
    return mt

def events(schema):
    return {n: resolve(schema, e["arg-type"]) for n, e in schema.items() if e["meta-type"] == "event"}

q, v = events(schemas["qsd"]), events(schemas["vbd"])
bad = 0
for n in sorted(sent - set(v)):
    print(f"DIFF {n}: sent by vbd-daemon, not in its schema"); bad += 1
for n in sorted(set(v) - sent):
    print(f"DIFF {n}: in vbd's schema, never sent"); bad += 1
for n in sorted(set(q) - set(v) - {"VSERPORT_CHANGE"}):
    print(f"DIFF {n}: in qsd's schema, not in vbd's"); bad += 1
for n in sorted(set(v) & set(q)):
    if v[n] != q[n]:
        print(f"DIFF {n}:\n  qsd {q[n]}\n  vbd {v[n]}"); bad += 1
for n in sorted(set(v) - set(q)):
    print(f"DIFF {n}: not an event of qsd 7.2"); bad += 1
print(f"{len(v)} events in vbd's schema, {len(set(v) & set(q))} typed as qsd's")
sys.exit(1 if bad else 0)
PY
echo PASS
