#!/bin/bash
# The QMP wire protocol of vbd-daemon's monitor, as a QMP client sees it:
# the greeting, capabilities negotiation (everything but qmp_capabilities is
# CommandNotFound before it), ids echoed whatever their JSON type, request
# shape errors and argument errors with QEMU's classes, pipelined and
# byte-split requests, several monitors at once (unix and loopback TCP),
# one client per chardev (the next one is served when it leaves), the
# socket's mode (0600 whatever the umask), bad --chardev/--monitor options,
# and quit (reply, clean exit, sockets removed).
. "$(dirname "$0")/lib.sh"
need python3
cd "$T"
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'

step "bad --chardev / --monitor options are refused with a clear message"
bad_opt() { # substring, args...
    local want=$1
    shift
    "$VBD_DAEMON" "$@" >out.log 2>&1 && fail "vbd-daemon accepted: $*"
    grep -q -- "$want" out.log || { cat out.log; fail "no '$want' in the error for: $*"; }
    [ "$(wc -l <out.log)" = 1 ] || { cat out.log; fail "more than one line of error for: $*"; }
    ! grep -q Sanitizer out.log || { cat out.log; fail "sanitizer report"; }
}
bad_opt "'id' is required" --chardev socket,path=$T/a.sock,server=on,wait=off
bad_opt "wait=on is not supported" --chardev socket,id=m,path=$T/a.sock,server=on,wait=on
bad_opt "only server=on" --chardev socket,id=m,path=$T/a.sock,wait=off
bad_opt "does not support the option 'bogus'" --chardev socket,id=m,path=$T/a.sock,server=on,wait=off,bogus=1
bad_opt "backend 'file' is not supported" --chardev file,id=m,path=$T/a.txt
bad_opt "either path=PATH or host=HOST,port=PORT" --chardev socket,id=m,server=on,wait=off
bad_opt "duplicate ID 'm'" --chardev socket,id=m,path=$T/a.sock,server=on,wait=off \
    --chardev socket,id=m,path=$T/b.sock,server=on,wait=off
bad_opt 'chardev "nope" not found' --monitor chardev=nope
bad_opt "already has a monitor" --chardev socket,id=m,path=$T/a.sock,server=on,wait=off --monitor m --monitor m
bad_opt "Only QMP is supported" --chardev socket,id=m,path=$T/a.sock,server=on,wait=off \
    --monitor chardev=m,mode=readline
bad_opt "not a loopback address" --chardev socket,id=m,host=0.0.0.0,port=4444,server=on,wait=off
bad_opt "Failed to bind socket to $T/nodir/a.sock" --chardev socket,id=m,path=$T/nodir/a.sock,server=on,wait=off
[ -z "$(ls "$T" | grep -v '^out.log$')" ] || fail "left behind by refused options: $(ls "$T")"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
S=$T/m0.sock
step "three monitors (two unix, one TCP on 127.0.0.1:$port), started with umask 000"
(umask 000 && exec "$VBD_DAEMON" --chardev socket,id=m0,path=$T/m0.sock,server=on,wait=off --monitor chardev=m0 \
    --chardev socket,id=m1,path=$T/m1.sock,server=on,wait=off --monitor m1 \
    --chardev socket,id=m2,host=127.0.0.1,port=$port,server=on,wait=off --monitor chardev=m2 2>>"$T/daemon.log") &
dpid=$!
wait_sock "$T/m0.sock" "$dpid" "$T/daemon.log"
wait_sock "$T/m1.sock" "$dpid" "$T/daemon.log"
for s in m0 m1; do
    [ "$(stat -c %a "$T/$s.sock")" = 600 ] || fail "$s.sock has mode $(stat -c %a "$T/$s.sock"), not 600"
done

PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$T" "$port" <<'PY' || fail "see above"
import json, socket, sys, time
from qmp import QMP
T, port = sys.argv[1], int(sys.argv[2])
def check(cond, what):
    if not cond:
        print("FAIL: " + what)
        sys.exit(1)

m = QMP(T + "/m0.sock")
g = m.greeting
check(set(g) == {"QMP"} and set(g["QMP"]) == {"version", "capabilities"}, f"greeting keys: {g}")
v = g["QMP"]["version"]
check(set(v) == {"qemu", "package"} and set(v["qemu"]) == {"major", "minor", "micro"}, f"version: {v}")
check(all(type(v["qemu"][k]) is int for k in v["qemu"]), f"version numbers: {v}")
check(v["package"].startswith("vbd-daemon "), f"package: {v}")
check(g["QMP"]["capabilities"] == [], f"capabilities offered: {g}")

# before negotiation: only qmp_capabilities
r = m.cmd("query-version", id="early")
check(r.get("error", {}).get("class") == "CommandNotFound" and r.get("id") == "early", f"before caps: {r}")
r = m.cmd("no-such-command")
check(r.get("error", {}).get("class") == "CommandNotFound", f"unknown before caps: {r}")
r = m.cmd("qmp_capabilities", {"enable": "oob"})
check(r.get("error", {}).get("class") == "GenericError" and "expected: array" in r["error"]["desc"], f"enable str: {r}")
r = m.cmd("qmp_capabilities", {"enable": ["oob"]})
check(r.get("error", {}).get("class") == "GenericError" and "oob" in r["error"]["desc"], f"oob: {r}")
r = m.cmd("qmp_capabilities", {"enable": ["nonsense"]})
check(r.get("error", {}).get("class") == "GenericError", f"unknown capability: {r}")
r = m.cmd("qmp_capabilities", {"bogus": 1})
check(r.get("error", {}).get("desc") == "Parameter 'bogus' is unexpected", f"unexpected argument: {r}")
r = m.cmd("qmp_capabilities", id={"a": [1, 2]})
check(r == {"return": {}, "id": {"a": [1, 2]}}, f"negotiation: {r}")
r = m.cmd("qmp_capabilities")
check(r.get("error", {}).get("class") == "CommandNotFound", f"second negotiation: {r}")

# ids of every JSON type come back as they were sent
for id in [None, "x", 0, -7, 2**40, 1.5, True, [1, "a"], {"k": {"n": None}}, ""]:
    m.send_raw(json.dumps({"execute": "query-version", "id": id}) + "\n")
    r = m.recv()
    check("return" in r and "id" in r and r["id"] == id and type(r["id"]) is type(id), f"id {id!r}: {r}")
check(m.execute("query-version") == v, "query-version differs from the greeting")
names = [c["name"] for c in m.execute("query-commands")]
for n in ["qmp_capabilities", "query-version", "query-commands", "query-qmp-schema", "quit"]:
    check(n in names, f"query-commands lacks {n}: {names}")
schema = m.execute("query-qmp-schema")
byname = {e["name"]: e for e in schema}
caps = byname.get("qmp_capabilities")
check(caps and caps["meta-type"] == "command", f"schema: qmp_capabilities {caps}")
members = byname[caps["arg-type"]]["members"]
check([(x["name"], "default" in x) for x in members] == [("enable", True)], f"schema members: {members}")
check(byname[byname["query-version"]["arg-type"]]["members"] == [], "schema: query-version takes arguments")

# request shape and argument errors: GenericError, id echoed
for req, want in [({"arguments": {}, "id": 1}, "lacks member 'execute'"),
                  ({"execute": 1, "id": 1}, "'execute' must be a string"),
                  ({"execute": "query-version", "arguments": [], "id": 1}, "'arguments' must be an object"),
                  ({"execute": "query-version", "bogus": 1, "id": 1}, "'bogus' is unexpected"),
                  # out-of-band, not negotiated: qsd 7.2's words (vbd took "control" before)
                  ({"exec-oob": "query-version", "id": 1}, "QMP input member 'exec-oob' is unexpected"),
                  ({"execute": "query-version", "control": {"run-oob": True}, "id": 1},
                   "QMP input member 'control' is unexpected"),
                  ({"execute": "query-version", "arguments": {"x": 1}, "id": 1}, "Parameter 'x' is unexpected"),
                  ({"execute": "no-such", "id": 1}, "The command no-such has not been found")]:
    m.send_raw(json.dumps(req) + "\n")
    r = m.recv()
    cls = "CommandNotFound" if req.get("execute") == "no-such" else "GenericError"
    check(r.get("error", {}).get("class") == cls and want in r["error"]["desc"] and r.get("id") == 1,
          f"{req}: {r}")
for raw in ["[1, 2]", "42", "\"execute\"", "null"]:
    m.send_raw(raw + "\n")
    r = m.recv()
    check(r.get("error", {}).get("desc") == "QMP input must be a JSON object", f"{raw}: {r}")

# pipelined requests in one write, and one request split into single bytes
m.send_raw("".join(json.dumps({"execute": "query-version", "id": i}) for i in range(50)))
check([m.recv().get("id") for _ in range(50)] == list(range(50)), "pipelined replies out of order")
for b in json.dumps({"execute": "query-commands", "id": "split"}).encode():
    m.send_raw(bytes([b]))
r = m.recv()
check(r.get("id") == "split" and "return" in r, f"byte-split request: {r}")

# the other monitors serve at the same time; the TCP one on loopback
m1 = QMP(T + "/m1.sock", negotiate=True)
m2 = QMP(("127.0.0.1", port), negotiate=True)
for x in (m, m1, m2):
    check(x.execute("query-version") == v, "a monitor answers differently")
# one client per chardev, as QEMU's socket chardev: the next one is greeted once the first leaves
m1b = socket.socket(socket.AF_UNIX)
m1b.connect(T + "/m1.sock")
m1.close()
m1b.settimeout(60)
f = m1b.makefile("rb")
check("QMP" in json.loads(f.readline()), "second client of m1 not greeted after the first left")
m1b.close()

# quit: the reply, then the daemon exits (checked by the shell)
r = m2.cmd("quit", id="bye")
check(r == {"return": {}, "id": "bye"}, f"quit: {r}")
PY
wait $dpid
rc=$?
[ $rc = 0 ] || { cat "$T/daemon.log"; fail "vbd-daemon exited with $rc after quit"; }
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
[ ! -e "$T/m0.sock" ] && [ ! -e "$T/m1.sock" ] || fail "monitor sockets left behind after quit"
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && fail "TCP monitor still listening after quit"

step "quit stops like SIGTERM: an NBD export and its node go away cleanly, a qcow2 image is left clean"
need qemu-img
must qemu-img create -q -f qcow2 d.qcow2 4M
S=$T/q.sock
start_daemon --blockdev driver=file,node-name=f0,filename=d.qcow2 --blockdev driver=qcow2,node-name=d0,file=f0 \
    --nbd-server addr.type=unix,addr.path=$T/nbd.sock --export type=nbd,id=e0,node-name=d0,name=d0,writable=on \
    --chardev socket,id=m,path=$S,server=on,wait=off --monitor m
wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
need qemu-io
must qemu-io -f raw -c "write -P 0x5a 0 1M" "nbd+unix:///d0?socket=$T/nbd.sock" >/dev/null
PYTHONPATH=$VBD_ROOT/tests/qmp python3 -c "
from qmp import QMP
m = QMP('$S', negotiate=True)
assert m.cmd('quit') == {'return': {}}
" || fail "quit over QMP"
wait $dpid
rc=$?
[ $rc = 0 ] || { cat "$T/daemon.log"; fail "vbd-daemon exited with $rc after quit"; }
[ ! -e "$S" ] && [ ! -e "$T/nbd.sock" ] || fail "sockets left behind after quit"
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
qcheck d.qcow2
must qemu-io -f qcow2 -c "read -P 0x5a 0 1M" d.qcow2 >/dev/null
dpid=
echo PASS
