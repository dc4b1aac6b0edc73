#!/bin/bash
# query-chardev answers as qemu-storage-daemon 7.2 does: each daemon gets
# the same chardevs (unix and TCP, with and without a monitor), and the
# answers, before and while clients are connected to the other monitors,
# must be equal once the directory, the ports and the clients' own port
# numbers are masked ("disconnected:" prefixes, "<->" peers, frontend-open).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
# the TCP chardevs' ports: lib.sh's free_port, below the ephemeral range (a
# port the kernel handed out for a bind to port 0, released, could be any
# program's by the time the daemon binds it)
ports=$(free_port 4) || fail "no free ports"
python3 - "$VBD_ROOT/tests/qmp" "$T" "$VBD_DAEMON" "$ports" <<'PY' || fail "query-chardev differs (above)"
import os, re, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from qmp import QMP
T, vbd, port0 = sys.argv[2], sys.argv[3], int(sys.argv[4])

answers = {}
for i, (name, binary) in enumerate((("qsd", "qemu-storage-daemon"), ("vbd", vbd))):
    d = f"{T}/{name}"
    os.mkdir(d)
    pt, pm = port0 + 2 * i, port0 + 2 * i + 1
    args = [binary, "--chardev", f"socket,id=qmp0,path={d}/qmp.sock,server=on,wait=off", "--monitor", "chardev=qmp0",
            "--chardev", f"socket,id=m2,path={d}/m2.sock,server=on,wait=off", "--monitor", "chardev=m2",
            "--chardev", f"socket,id=c3,path={d}/c3.sock,server=on,wait=off",
            "--chardev", f"socket,id=t,host=127.0.0.1,port={pt},server=on,wait=off",
            "--chardev", f"socket,id=tm,host=127.0.0.1,port={pm},server=on,wait=off", "--monitor", "chardev=tm"]
    p = subprocess.Popen(args, stderr=open(f"{d}/log", "w"))
    try:
        m = QMP(f"{d}/qmp.sock", negotiate=True)
        mask = lambda r: sorted(
            (c["label"], c["frontend-open"],
             re.sub(r"127\.0\.0\.1:\d+$", "127.0.0.1:PEER",
                    c["filename"].replace(d, "{DIR}").replace(str(pt), "PT").replace(str(pm), "PM")))
            for c in r["return"]) if "return" in r else r["error"]
        got = [mask(m.cmd("query-chardev")), mask(m.cmd("query-chardev", {"x": 1}))]
        m2 = QMP(f"{d}/m2.sock")
        tm = QMP(("127.0.0.1", pm))
        got.append(mask(m.cmd("query-chardev")))
        m2.close()
        tm.close()
        for _ in range(1200):  # until the daemon has seen both clients go (60 s)
            r = mask(m.cmd("query-chardev"))
            if all(f.startswith("disconnected:") for (l, _, f) in r if l != "qmp0"):
                break
            time.sleep(0.05)
        got.append(r)
        answers[name] = got
    finally:
        p.terminate()
        p.wait()
if answers["qsd"] != answers["vbd"]:
    for a, b in zip(answers["qsd"], answers["vbd"]):
        print(f"qsd: {a}\nvbd: {b}", file=sys.stderr)
    sys.exit(1)
print(answers["vbd"][2])
PY
echo PASS
