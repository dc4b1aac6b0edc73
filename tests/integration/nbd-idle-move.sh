#!/bin/bash
# An NBD export's idle connections follow their node's move at once (as
# qsd's clients move in its drained section), so that object-del of the
# iothread the node left succeeds right after the move. A qcow2 node d0 is
# exported over NBD; three clients of ours (tests/integration/nbdproto.py)
# and a qemu-io (sleeping) stay connected and idle, vbd-stress QD 16 over 2
# connections keeps writing and reading the first 16 MiB against its
# model. d0 moves main -> io0 -> io1 -> main ... (x-blockdev-set-iothread
# force); after each move the iothread it left is deleted at once (must
# succeed: before, an idle connection held it until its client's next
# request, "in use by 1 export") and made again, and each idle client
# writes and reads its own MiB, checked against its model. At the end
# every model equals the image, qemu-img check clean. Then the same with
# a TLS-only server and three idle TLS clients (their wait is inside the
# TLS session). NBD_MOVE_ROUNDS moves, NBD_MOVE_SEED.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3 certtool
need_stress
cd "$T"
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
SEED=${NBD_MOVE_SEED:-$RANDOM}
phase() { # TLS (0 or 1)
rm -f d0.qcow2 busy.raw idle.raw
must qemu-img create -q -f qcow2 d0.qcow2 32M
local creds=() srv_tls=
if [ "$1" = 1 ]; then
    creds=(--object "tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server,verify-peer=on")
    srv_tls=,tls-creds=tls0
fi
start_daemon --object iothread,id=io0 --object iothread,id=io1 "${creds[@]}" \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev "$(qcow2_node d0 null)" --nbd-server "addr.type=unix,addr.path=$T/nbd.sock$srv_tls"
T=$T STRESS=$STRESS TLS=$1 ROUNDS=${NBD_MOVE_ROUNDS:-12} SEED=$SEED python3 - <<'PY' || { head -60 "$T/daemon.log"; fail "idle and busy NBD clients while their node moves (TLS=$1)"; }
import os, random, signal, ssl, struct, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
import nbdproto as P
T, seed, rounds, tls = os.environ["T"], int(os.environ["SEED"]), int(os.environ["ROUNDS"]), os.environ["TLS"] == "1"
print(f"seed {seed}", file=sys.stderr)
rnd = random.Random(seed)
s = Session(T + "/qmp.sock", "vbd")
s.run("block-export-add", type="nbd", id="e0", **{"node-name": "d0"}, writable=True)
uri = f"nbd+unix:///d0?socket={T}/nbd.sock"
MIB = 1 << 20


class Idle:
    """a client of ours: idle between moves, then a write and a read of its own MiB"""
    def __init__(self, i):
        self.s = P.connect(T + "/nbd.sock", timeout=60)
        if tls:  # STARTTLS, then GO inside the session
            magic, _, _ = struct.unpack(">QQH", P.recvn(self.s, 18))
            self.s.sendall(struct.pack(">I", P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES))
            P.option(self.s, P.OPT_STARTTLS)
            ctx = ssl.create_default_context(cafile=T + "/pki/ca-cert.pem")
            ctx.load_cert_chain(T + "/pki/client/client-cert.pem", T + "/pki/client/client-key.pem")
            self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
            P.option(self.s, P.OPT_GO, struct.pack(">I", 2) + b"d0" + struct.pack(">H", 0))
        else:
            P.handshake(self.s, "d0", go=True)
        self.base, self.model, self.cookie = (16 + i) * MIB, bytearray(MIB), 0

    def req(self, typ, off, n, data=b""):
        self.cookie += 1
        self.s.sendall(P.request(typ, self.cookie, self.base + off, n) + data)
        magic, err, cookie = struct.unpack(">IIQ", P.recvn(self.s, 16))
        if magic != P.SIMPLE_REPLY_MAGIC or cookie != self.cookie or err:
            fail(f"client at {self.base}: reply {magic:#x} err {err} cookie {cookie} (sent {self.cookie})")
        return P.recvn(self.s, n) if typ == P.CMD_READ else b""

    def check(self, off, n, when):
        if self.req(P.CMD_READ, off, n) != self.model[off:off + n]:
            fail(f"client at {self.base}: {n} bytes at +{off} differ from its model {when}")

    def step(self, when):
        n = rnd.choice([512, 4096, 65536])
        off = rnd.randrange(0, MIB - n + 1, 512)
        data = rnd.randbytes(n)
        self.req(P.CMD_WRITE, off, n, data)
        self.model[off:off + n] = data
        self.check(off, n, when)
        off = rnd.randrange(0, MIB - 65536 + 1, 512)
        self.check(off, 65536, when)


# a real peer, connected and idle the whole time
qio = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "sleep 3600000", uri],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) if not tls else None
idle = [Idle(i) for i in range(3)]
busy = None if tls else subprocess.Popen([os.environ["STRESS"], "--ops", str(1 << 40), "--qd", "16", "--align", "512",
                         "--seed", str(seed), "--range", str(16 * MIB), "--shadow-out", T + "/busy.raw",
                         "--nbd", uri, "--conns", "2"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
if busy:
    print(busy.stdout.readline().strip(), file=sys.stderr)  # its seed: running, SIGUSR1 handled
places = ["io0", "io1", None]  # from the main loop
for i in range(rounds):
    old, to = places[(i - 1) % 3] if i else None, places[i % 3]
    s.run("x-blockdev-set-iothread", **{"node-name": "d0"}, iothread=to, force=True)
    if old:
        # at once, as qsd: every connection (idle or busy) serves from `to` now
        r = s.m.cmd("object-del", {"id": old})
        if "error" in r:
            fail(f"move {i + 1} ({old} -> {to or 'main loop'}): object-del {old} right after: {r}")
        s.run("object-add", **{"qom-type": "iothread", "id": old})
    for c in idle:
        c.step(f"after move {i + 1} (to {to or 'the main loop'})")
    if qio and qio.poll() is not None:
        fail(f"qemu-io ended: {qio.stderr.read()}")
    if busy and busy.poll() is not None:
        fail(f"vbd-stress ended during the moves: {busy.communicate()[0][-3000:]}")
if busy:
    busy.send_signal(signal.SIGUSR1)
    out = busy.communicate()[0]
    if busy.returncode:
        fail(f"vbd-stress over NBD: {out[-3000:]}")
    print("busy:", out.strip().splitlines()[-1], file=sys.stderr)
for c in idle:
    for off in range(0, MIB, 256 * 1024):
        c.check(off, 256 * 1024, "at the end")
    c.s.sendall(P.request(P.CMD_DISC, 0, 0, 0))
    c.s.close()
if qio:
    qio.terminate()
    qio.wait()
with open(T + "/idle.raw", "wb") as f:
    for c in idle:
        f.write(c.model)
print(f"{rounds} moves{' (TLS)' if tls else ''}, the old iothread deleted right after each", file=sys.stderr)
s.run("block-export-del", id="e0", mode="hard")  # the clients sent NBD_CMD_DISC; their ends may still be on the way
s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
PY
stop_daemon
qcheck d0.qcow2
must qemu-img convert -q -f qcow2 -O raw d0.qcow2 final.raw
[ "$1" = 1 ] || must cmp -n $((16 << 20)) final.raw busy.raw
must cmp -n $((3 << 20)) final.raw idle.raw $((16 << 20)) 0
}
step "plain sockets: idle clients, a qemu-io and vbd-stress"
phase 0
step "TLS: idle clients, their wait inside the session"
gen_pki "$T/pki"
phase 1
echo ok
