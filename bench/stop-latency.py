#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Time from SIGTERM to exit of vbd-nbd (a 64 MiB raw file, -t) and
vbd-daemon (a null-co node exported over NBD), two builds alternating, each
signalled 50-300 ms after its socket appeared (any phase of a periodic
check). Prints median, p90, max and min in ms. Not a test.

    bench/stop-latency.py RUNS OLD-TOOLS-DIR NEW-TOOLS-DIR
e.g. flock /work/wt/bench.lock python3 bench/stop-latency.py 100 /tmp/old build/src/tools
"""
import os, random, signal, statistics, subprocess, sys, tempfile, time

n, dirs = int(sys.argv[1]), {"old": sys.argv[2], "new": sys.argv[3]}
with tempfile.TemporaryDirectory(prefix="vbd-stop-") as d:
    img, sock = d + "/img.raw", d + "/s.sock"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", img, "64M"], check=True)
    argv = {"vbd-nbd": lambda b: [b + "/vbd-nbd", "-t", "-k", sock, "-f", "raw", img],
            "vbd-daemon": lambda b: [b + "/vbd-daemon", "--blockdev", "driver=null-co,node-name=d0,size=64M",
                                     "--nbd-server", "addr.type=unix,addr.path=" + sock,
                                     "--export", "type=nbd,id=e0,node-name=d0"]}
    res = {}
    random.seed(1)
    for _ in range(n):
        for prog, mk in argv.items():
            for tag, b in dirs.items():
                if os.path.exists(sock):
                    os.unlink(sock)
                p = subprocess.Popen(mk(b), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                while not os.path.exists(sock):
                    if p.poll() is not None:
                        sys.exit(f"{prog} ({tag}) exited {p.returncode} at startup")
                    time.sleep(0.005)
                time.sleep(0.05 + random.random() * 0.25)
                t0 = time.monotonic()
                p.send_signal(signal.SIGTERM)
                rc = p.wait()
                ms = (time.monotonic() - t0) * 1000
                if rc != 0:
                    sys.exit(f"{prog} ({tag}) exited {rc} after SIGTERM")
                res.setdefault((prog, tag), []).append(ms)
for (prog, tag), v in sorted(res.items()):
    v.sort()
    print(f"{prog:10s} {tag}: n={len(v)} median {statistics.median(v):6.1f} ms  p90 {v[int(len(v) * 0.9)]:6.1f}"
          f"  max {max(v):6.1f}  min {min(v):5.1f}")
