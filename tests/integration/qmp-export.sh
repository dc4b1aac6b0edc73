#!/bin/bash
# Exports and objects added and removed over QMP while a client keeps
# working on another export (issue 12, "hot add/remove under load"):
# vbd-daemon's NBD server is started over QMP and node A exported; a
# qemu-io client writes and reads back patterns on A the whole time; node B
# is exported over NBD with block-export-add, read and written by qemu-io
# and nbdinfo from a second client; block-export-del mode=safe is refused
# while that client is connected (GenericError, as qsd), mode=hard cuts it
# off and BLOCK_EXPORT_DELETED arrives; A's client never sees an error and
# its data verifies afterwards. Then B goes out over vhost-user-blk on an
# iothread added with object-add and vbd-bench verifies it (object-del of
# the iothread refused while the export runs on it; safe delete refused
# while vbd-bench is connected, hard delete ends it); tls-creds and authz
# objects are refused by object-del while the NBD server uses them, and
# qom-get/qom-set/qom-list/query-iothreads show what was set.
. "$(dirname "$0")/lib.sh"
need python3 qemu-io qemu-img nbdinfo certtool
S=$T/qmp.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
truncate -s 64M "$T/a.img"
qemu-img create -q -f qcow2 "$T/b.qcow2" 32M
gen_pki "$T/pki"
mon=(--chardev socket,id=mon0,path="$S",server=on,wait=off --monitor chardev=mon0)
start_daemon "${mon[@]}" --blockdev driver=file,node-name=A,filename="$T/a.img"
# node B comes with blockdev-add (and goes with blockdev-del) where the daemon has it; else from the command line
B_ADD=qmp
VBD_QMP_PY=$VBD_ROOT/tests/qmp python3 - "$S" <<'PY' || B_ADD=cmdline
import os, sys
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
sys.exit(0 if "blockdev-add" in [c["name"] for c in m.execute("query-commands")] else 1)
PY
if [ $B_ADD = cmdline ]; then
    echo "(no blockdev-add in this daemon: node B comes from the command line)"
    stop_daemon
    start_daemon "${mon[@]}" --blockdev driver=file,node-name=A,filename="$T/a.img" \
        --blockdev driver=file,node-name=Bf,filename="$T/b.qcow2" --blockdev driver=qcow2,node-name=B,file=Bf
fi

VBD_QMP_PY=$VBD_ROOT/tests/qmp python3 - "$T" "$VBD_BENCH" "$dpid" "$B_ADD" <<'PY' || { cat "$T/daemon.log"; fail "see above"; }
import array, fcntl, json, os, socket, struct, subprocess, sys, termios, threading
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from exports import (QMP, QemuIo, delete_nbd_export_in_use, delete_vhost_user_export_in_use, expect_error, fail,
                     nbd_uri, step, wait_for)

T, BENCH, DAEMON_PID, B_ADD = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
NBD = T + "/nbd.sock"

def uri(name):
    return nbd_uri(NBD, name)

class AClient(threading.Thread):
    """Writes a pattern to a 1 MiB region of A and reads it back, over and over."""
    def __init__(self):
        super().__init__(daemon=True)
        self.io = QemuIo(NBD, "A")
        self.ops = 0
        self.errors = []
        self.patterns = {}
        self.stop = False
    def run(self):
        i = 0
        while not self.stop:
            off, pat = (i % 48) << 20, 1 + i % 250
            for cmd in ("write -P %d %d 1M" % (pat, off), "read -P %d %d 1M" % (pat, off)):
                out = self.io.run(cmd)
                if any("fail" in l or "error" in l.lower() or "exited" in l for l in out):
                    self.errors.append((cmd, out))
                    return
            self.patterns[off] = pat
            self.ops += 2
            i += 1
    def advanced(self, what):
        """A keeps being served: wait until it completed more requests."""
        start = self.ops
        wait_for("client A to make progress after " + what, lambda: self.ops > start + 2 or self.errors)
        if self.errors:
            fail("client A failed after %s: %s" % (what, self.errors))

m = QMP(T + "/qmp.sock", negotiate=True)

step("nbd-server-start with QMP's addr form; export A; a client works on A from now on")
expect_error(m.cmd("nbd-server-stop"), "GenericError", "not running")
m.execute("nbd-server-start", addr={"type": "unix", "data": {"path": NBD}}, max_connections=8)
expect_error(m.cmd("nbd-server-start", {"addr": {"type": "unix", "data": {"path": NBD}}}), "GenericError",
             "already running")
m.execute("block-export-add", type="nbd", id="expA", node_name="A", writable=True)
a = AClient()
a.start()
a.advanced("export A was added")

step("node B (%s) exported over NBD; a second client reads and writes it with qemu-io and nbdinfo" % (
    "blockdev-add" if B_ADD == "qmp" else "from the command line"))
if B_ADD == "qmp":
    m.execute("blockdev-add", driver="qcow2", node_name="B", file={"driver": "file", "filename": T + "/b.qcow2"})
r = m.cmd("block-export-add", {"type": "nbd", "id": "expB", "node-name": "B", "name": "diskB", "writable": True,
                               "description": "node B"})
if r != {"return": {}}:
    fail("block-export-add expB: %s" % r)
expect_error(m.cmd("block-export-add", {"type": "nbd", "id": "expB", "node-name": "B"}), "GenericError",
             "already in use")
if B_ADD == "qmp":
    expect_error(m.cmd("blockdev-del", {"node-name": "B"}), "GenericError", "")  # exported: in use
exports = sorted(m.execute("query-block-exports"), key=lambda e: e["id"])
want = [{"type": "nbd", "id": "expA", "node-name": "A", "shutting-down": False},
        {"type": "nbd", "id": "expB", "node-name": "B", "shutting-down": False}]
if exports != want:
    fail("query-block-exports: %s" % exports)
info = json.loads(subprocess.run(["nbdinfo", "--json", uri("diskB")], check=True, capture_output=True,
                                 text=True).stdout)
if info["exports"][0]["export-size"] != 32 << 20 or info["exports"][0]["description"] != "node B":
    fail("nbdinfo on B: %s" % info)
subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", uri("diskB")], check=True,
               capture_output=True)
b = QemuIo(NBD, "diskB")
out = b.run("read -P 0x5a 1M 2M")
if not any("bytes at offset" in l for l in out):
    fail("reading B back: %s" % out)
a.advanced("B was exported and used")

step("block-export-del: the default mode and mode=safe are refused while B's client is connected (it still "
     "reads, B stays listed); mode=hard disconnects it, BLOCK_EXPORT_DELETED arrives; A goes on")
def b_still_listed():
    if len(m.execute("query-block-exports")) != 2:
        fail("the refused delete removed the export")
delete_nbd_export_in_use(m, "expB", b, "read -P 0x5a 1M 4k", refused=b_still_listed)
if [e["id"] for e in m.execute("query-block-exports")] != ["expA"]:
    fail("expB still listed")
r = subprocess.run(["nbdinfo", uri("diskB")], capture_output=True, text=True)
if r.returncode == 0:
    fail("nbdinfo still finds diskB")
expect_error(m.cmd("block-export-del", {"id": "expB"}), "GenericError", "not found")
a.advanced("B was deleted")

step("an export added and deleted 30 times while other clients connect to it: no crash, A goes on")
churning = True
def churn_clients():
    while churning:  # handshakes that find the export, or not, while it comes and goes
        subprocess.run(["nbdinfo", "--size", uri("churn")], capture_output=True)
clients = [threading.Thread(target=churn_clients, daemon=True) for _ in range(2)]
for t in clients:
    t.start()
for i in range(30):
    r = m.cmd("block-export-add", {"type": "nbd", "id": "churn", "node-name": "A", "name": "churn"})
    if r != {"return": {}}:
        fail("block-export-add churn: %s" % r)
    m.execute("block-export-del", id="churn", mode="hard")
    if m.wait_event("BLOCK_EXPORT_DELETED")["data"] != {"id": "churn"}:
        fail("BLOCK_EXPORT_DELETED for the churned export")
churning = False
for t in clients:
    t.join()
a.advanced("the export churn")

# A handshake whose reply send blocks holds the export across the wait: deleting the export then must
# neither free it under the handshake nor wait for a client that never reads.
step("a client floods NBD_OPT_INFO about an export without reading the replies; the export is deleted under it")
r = m.cmd("block-export-add", {"type": "nbd", "id": "flood", "node-name": "A", "name": "flood" * 800,
                               "description": "the flooded export"})
if r != {"return": {}}:
    fail("block-export-add flood: %s" % r)
fl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
fl.connect(NBD)
greeting = b""
while len(greeting) < 18:
    greeting += fl.recv(18 - len(greeting))
fl.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
name = b"flood" * 800  # the name reply is the long one: a send blocked in it goes on to the description
info = struct.pack(">QII", 0x49484156454F5054, 6, 4 + len(name) + 2 + 4) + struct.pack(">I", len(name)) + name + \
    struct.pack(">HHH", 2, 1, 2)  # NBD_OPT_INFO asking for the name and the description too
def flood():
    try:
        fl.sendall(info * 2000)
    except OSError:
        pass  # the server closed the connection
flooder = threading.Thread(target=flood, daemon=True)
flooder.start()
def queued():
    b = array.array("i", [0])
    fcntl.ioctl(fl.fileno(), termios.FIONREAD, b)
    return b[0]
# the server blocks in the middle of a reply about the export once our receive queue stops growing
seen = []
def server_blocked():
    seen.append(queued())
    return len(seen) >= 3 and seen[-1] > 0 and seen[-1] == seen[-2] == seen[-3]
wait_for("the flooded replies to fill the socket", server_blocked)
m.execute("block-export-del", id="flood", mode="hard")
if m.wait_event("BLOCK_EXPORT_DELETED")["data"] != {"id": "flood"}:
    fail("BLOCK_EXPORT_DELETED for flood")
fl.settimeout(60)
while True:  # let the server go on with what it was sending, then see the connection end
    try:
        if not fl.recv(1 << 20):
            break
    except ConnectionResetError:
        break
fl.close()
flooder.join()
a.advanced("the flooded export was deleted")

step("B over vhost-user-blk on an iothread added with object-add; vbd-bench verifies it")
m.execute("object-add", qom_type="iothread", id="io0", poll_max_ns=1000)
expect_error(m.cmd("object-add", {"qom-type": "iothread", "id": "io0"}), "GenericError", "duplicate")
iot = m.execute("query-iothreads")
if len(iot) != 1 or iot[0]["id"] != "io0" or iot[0]["poll-max-ns"] != 1000 or iot[0]["thread-id"] <= 0:
    fail("query-iothreads: %s" % iot)
if not os.path.exists("/proc/%d/task/%d" % (DAEMON_PID, iot[0]["thread-id"])):
    fail("thread-id %d is not a thread of the daemon" % iot[0]["thread-id"])
m.execute("qom-set", path="/objects/io0", property="poll-max-ns", value=4000)
if m.execute("qom-get", path="/objects/io0", property="poll-max-ns") != 4000:
    fail("qom-get after qom-set")
VU = T + "/vu.sock"
m.execute("block-export-add", type="vhost-user-blk", id="vuB", node_name="B", writable=True,
          addr={"type": "unix", "path": VU}, iothread="io0", num_queues=2)
expect_error(m.cmd("object-del", {"id": "io0"}), "GenericError", "in use")
r = subprocess.run([BENCH, "--vhost-user", VU, "--verify", "--size", "8M", "-q", "2", "-d", "8"],
                   capture_output=True, text=True)
if r.returncode != 0 or "read back identical" not in r.stdout:
    fail("vbd-bench --verify on vuB: %s %s" % (r.stdout, r.stderr))
a.advanced("the vhost-user-blk export was used")

step("vhost-user-blk: block-export-del (the default mode) while vbd-bench is connected cuts it off, as qsd 7.2")
# the vbd-bench --verify above was the first front end: this one is the second
delete_vhost_user_export_in_use(m, "vuB", VU, BENCH, T + "/daemon.log", before=(1, 1))
m.execute("object-del", id="io0")
if B_ADD == "qmp":
    m.execute("blockdev-del", node_name="B")
if m.execute("query-iothreads") != []:
    fail("io0 still listed")
expect_error(m.cmd("object-del", {"id": "io0"}), "GenericError", "not found")
a.advanced("the vhost-user-blk export was deleted")

step("A's client finishes without an error")
a.stop = True
a.join()
a.io.close()
if a.errors:
    fail("client A: %s" % a.errors)
with open(T + "/a.patterns", "w") as f:
    for off, pat in sorted(a.patterns.items()):
        f.write("%d %d\n" % (off, pat))
print("client A: %d requests, no error" % a.ops)

step("tls-creds and authz objects: refused by object-del while the NBD server uses them")
m.execute("nbd-server-stop")
if m.wait_event("BLOCK_EXPORT_DELETED")["data"] != {"id": "expA"}:
    fail("nbd-server-stop did not delete expA")
if m.execute("query-block-exports") != []:
    fail("exports left after nbd-server-stop")
m.execute("object-add", qom_type="tls-creds-x509", id="tls0", dir=T + "/pki/server", endpoint="server",
          verify_peer=True)
m.execute("object-add", qom_type="authz-simple", id="authz0", identity="O=vbd,CN=nobody")
expect_error(m.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tls1", "dir": T + "/nope",
                                  "endpoint": "server"}), "GenericError", "/nope")
objs = sorted((o["name"], o["type"]) for o in m.execute("qom-list", path="/objects"))
if objs != [("authz0", "child<authz-simple>"), ("tls0", "child<tls-creds-x509>"), ("type", "string")]:
    fail("qom-list /objects: %s" % objs)
m.execute("nbd-server-start", addr={"type": "unix", "data": {"path": NBD}}, tls_creds="tls0", tls_authz="authz0")
m.execute("block-export-add", type="nbd", id="expA", node_name="A")
expect_error(m.cmd("object-del", {"id": "tls0"}), "GenericError", "in use")
expect_error(m.cmd("object-del", {"id": "authz0"}), "GenericError", "in use")
def tls_read():
    return subprocess.run(["qemu-io", "--object", "tls-creds-x509,id=c0,dir=%s/pki/client,endpoint=client" % T,
                           "-r", "--image-opts", "-c", "read 0 4k",
                           "driver=nbd,server.type=unix,server.path=%s,export=A,tls-creds=c0,tls-hostname=localhost" % NBD],
                          capture_output=True, text=True)
r = tls_read()
if r.returncode == 0 and "read 4096/4096" in r.stdout:
    fail("a client the authz does not allow could read")
wait_for("the daemon to log the refusal by authz0",
         lambda: "is denied by 'authz0'" in open(T + "/daemon.log").read())
m.execute("qom-set", path="/objects/authz0", property="identity", value="O=vbd,CN=vbd-test-client")
if m.execute("qom-get", path="authz0", property="identity") != "O=vbd,CN=vbd-test-client":
    fail("qom-get identity")
r = tls_read()
if r.returncode != 0 or "read 4096/4096" not in r.stdout:
    fail("the allowed client cannot read: %s %s" % (r.stdout, r.stderr))
expect_error(m.cmd("qom-set", {"path": "/objects/tls0", "property": "verify-peer", "value": False}),
             "GenericError", "cannot be changed")
expect_error(m.cmd("qom-get", {"path": "/objects/nope", "property": "type"}), "DeviceNotFound", "not found")
m.execute("nbd-server-stop")
m.wait_event("BLOCK_EXPORT_DELETED")
m.execute("object-del", id="tls0")
m.execute("object-del", id="authz0")
if [o["name"] for o in m.execute("qom-list", path="/objects")] != ["type"]:
    fail("objects left")
m.close()
PY
step "A's data verifies (qemu-io reads every region's last pattern from the image)"
stop_daemon
args=()
while read -r off pat; do args+=(-c "read -P $pat $off 1M"); done <"$T/a.patterns"
[ ${#args[@]} -gt 0 ] || fail "client A wrote nothing"
out=$(qemu-io -r -f raw "${args[@]}" "$T/a.img" 2>&1) || fail "qemu-io: $out"
! grep -qi "fail\|error" <<<"$out" || fail "A's data: $out"
qcheck "$T/b.qcow2"
echo OK
