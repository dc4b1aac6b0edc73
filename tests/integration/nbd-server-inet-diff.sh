#!/bin/bash
# --nbd-server addr.type=inet with QEMU's InetSocketAddress options
# against qemu-storage-daemon 7.2, case by case: ipv4=/ipv6= (the address
# families asked for, a wildcard's dual-stack socket or one per family,
# "Cannot disable IPv4 and IPv6 at same time"), numeric= (no name lookup),
# to= (the first free port of a range), mptcp=, keep-alive= (taken; as in
# qsd 7.2 not applied to the server's sockets), and a host that resolves
# to several addresses (a socket on each). Compared: the exit status and
# error line of a refused start, the sockets listening (ss, port
# normalized, TCP and MPTCP), keep-alive on an accepted connection.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3 ss
[ -e /proc/net/if_inet6 ] || skip "no IPv6 on this host"
export VBD_DAEMON
python3 - "$T" <<'PY' || fail "vbd-daemon and qemu-storage-daemon differ (above)"
import os, random, socket, subprocess, sys, time
T = sys.argv[1]
BINS = {"qsd": "qemu-storage-daemon", "vbd": os.environ["VBD_DAEMON"]}

def free_ports(n):
    """n consecutive ports free on both wildcards (below the ephemeral range)."""
    hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - n
    for _ in range(500):
        p = random.randint(20000, hi)
        socks = []
        try:
            for q in range(p, p + n):
                for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    s = socket.socket(fam)
                    socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((host, q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    sys.exit("no free ports")

def listening(pid, port, last):
    """The daemon's listening sockets (TCP and MPTCP) on port..last."""
    out = subprocess.run(["ss", "-ltnMpH", f"sport >= :{port} and sport <= :{last}"], capture_output=True,
                         text=True).stdout
    socks = []
    for line in out.splitlines():
        f = line.split()
        if f"pid={pid}," not in line:
            continue  # the ports the test holds itself
        addr, _, p = f[4].rpartition(":")
        socks.append(f"{f[0]} {addr}:P+{int(p) - port}")
    return sorted(socks)

def run(name, spec, port, busy, connect):
    d = os.path.join(T, name)
    os.makedirs(d, exist_ok=True)
    pidfile = os.path.join(d, "pid")
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    arg = spec.replace("{P}", str(port)).replace("{P2}", str(port + 2))
    holders = []
    for q in busy:  # ports another program holds
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port + q))
        s.listen()
        holders.append(s)
    err = open(os.path.join(d, "err"), "w+")
    p = subprocess.Popen([BINS[name], "--nbd-server", arg, "--pidfile", pidfile], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while p.poll() is None and not (os.path.exists(pidfile) and os.path.getsize(pidfile)):
        if time.monotonic() > deadline:
            p.kill()
            return {"error": "did not start within 60 s"}
        time.sleep(0.02)
    res = {}
    if p.poll() is None:
        res["listen"] = listening(p.pid, port, port + 2)
        if connect:
            c = socket.create_connection(("127.0.0.1", port), timeout=60)
            # the server has accepted once it greets (the NBD magic)
            c.recv(8, socket.MSG_WAITALL)
            est = subprocess.run(["ss", "-tnoH", "state", "established", f"sport = :{port}"],
                                 capture_output=True, text=True).stdout
            res["keepalive"] = "keepalive" in est
            c.close()
        p.terminate()
        p.wait(60)
    else:
        res["status"] = p.returncode
    err.seek(0)
    text = err.read().replace(str(port + 2), "{P2}").replace(str(port), "{P}")
    # the first line (the error of a refused start), the program name cut
    lines = [l.split(": ", 1)[-1] for l in text.splitlines() if l and "Sanitizer" not in l]
    if "Sanitizer" in text or "runtime error" in text:
        res["sanitizer"] = text
    if "status" in res:
        res["error"] = lines[:1]
    for s in holders:
        s.close()
    return res

CASES = [  # (--nbd-server value, ports held by another program, connect a client)
    ("addr.type=inet,addr.host=,addr.port={P}", [], False),  # both wildcards, IPv6 one v6only
    ("addr.type=inet,addr.host=::,addr.port={P}", [], False),  # dual stack
    ("addr.type=inet,addr.host=,addr.port={P},addr.ipv4=on", [], False),
    ("addr.type=inet,addr.host=,addr.port={P},addr.ipv6=on", [], False),
    ("addr.type=inet,addr.host=,addr.port={P},addr.ipv4=on,addr.ipv6=on", [], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.ipv6=on", [], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.ipv4=off,addr.ipv6=off", [], False),
    ("addr.type=inet,addr.host=localhost,addr.port={P},addr.numeric=on", [], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.to={P2}", [0, 1], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.to={P2}", [0, 1, 2], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.mptcp=on", [], False),
    ("addr.type=inet,addr.host=127.0.0.1,addr.port={P},addr.keep-alive=on", [], True),
]
ndiff = 0
for spec, busy, connect in CASES:
    port = free_ports(3)
    got = {name: run(name, spec, port, busy, connect) for name in ("qsd", "vbd")}
    if "sanitizer" in got["vbd"]:
        print(f"FAIL {spec}: {got['vbd']['sanitizer']}")
        ndiff += 1
    elif got["qsd"] != got["vbd"]:
        print(f"DIFF {spec} (held: {busy}):\n    qsd {got['qsd']}\n    vbd {got['vbd']}")
        ndiff += 1
    else:
        print(f"same {spec} (held: {busy}): {got['vbd']}")
print(f"{len(CASES) - ndiff} same, {ndiff} differences")
sys.exit(1 if ndiff else 0)
PY
echo ok
