#!/bin/bash
# Start-up cost of the tools: `vbd-img info` of a small raw image and
# `vbd-img --version` (head, BASE's build, qemu-img), and vbd-daemon from
# exec until its QMP socket exists (head, BASE, qemu-storage-daemon). Each
# round runs every command once, in a rotating order; medians of N rounds
# of the wall time (spawn to exit/socket) and the CPU (user+system, from
# wait4). The libraries a binary links (ldd's count) and the peak RSS of
# `info` (GNU time's; a child spawned by python would report python's).
#   BASE=DIR bench/startup.sh [N]   (default N=200; DIR: a vbd build dir)
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=${1:-200}
BASE=${BASE:?BASE=a vbd build dir to compare with}
D=$(mktemp -d /dev/shm/vbd-startup.XXXXXX)
trap 'rm -rf "$D"' EXIT
truncate -s 64M "$D/small.raw"
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); medians of $N rounds"
for b in "$VBD_BUILD/src/tools/vbd-img" "$BASE/src/tools/vbd-img" "$(command -v qemu-img)" \
    "$VBD_BUILD/src/tools/vbd-daemon" "$BASE/src/tools/vbd-daemon" "$(command -v qemu-storage-daemon)"; do
    echo "  $(ldd "$b" | grep -c '=>') libraries: $b"
done
for b in "$VBD_BUILD/src/tools/vbd-img" "$BASE/src/tools/vbd-img" "$(command -v qemu-img)"; do
    echo "  peak RSS of info: $(/usr/bin/time -f %M "$b" info "$D/small.raw" 2>&1 >/dev/null) KiB: $b"
done
python3 - "$N" "$D" "$VBD_BUILD" "$BASE" <<'PY'
import os, statistics, sys, time
n, d, head, base = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
img = d + "/small.raw"
sock = d + "/qmp.sock"
qsd_mon = ["--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "m0"]
cases = [
    ("info", "head", [head + "/src/tools/vbd-img", "info", img], None),
    ("info", "base", [base + "/src/tools/vbd-img", "info", img], None),
    ("info", "qemu-img", ["qemu-img", "info", img], None),
    ("--version", "head", [head + "/src/tools/vbd-img", "--version"], None),
    ("--version", "base", [base + "/src/tools/vbd-img", "--version"], None),
    ("--version", "qemu-img", ["qemu-img", "--version"], None),
    ("daemon to QMP socket", "head", [head + "/src/tools/vbd-daemon"] + qsd_mon, sock),
    ("daemon to QMP socket", "base", [base + "/src/tools/vbd-daemon"] + qsd_mon, sock),
    ("daemon to QMP socket", "qsd", ["qemu-storage-daemon"] + qsd_mon, sock),
]
res = {i: [] for i in range(len(cases))}
null = os.open("/dev/null", os.O_WRONLY)
for r in range(n):
    order = list(range(len(cases)))
    k = r % len(order)
    for i in order[k:] + order[:k]:
        _, _, argv, wait_for = cases[i]
        if wait_for and os.path.exists(wait_for):
            os.unlink(wait_for)
        t = time.monotonic()
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
        if wait_for:
            while not os.path.exists(wait_for):
                p, st = os.waitpid(pid, os.WNOHANG)
                if p:
                    sys.exit(f"{argv[0]} exited before its socket")
                time.sleep(0.0002)
            w = time.monotonic() - t
            os.kill(pid, 15)
            _, st, ru = os.wait4(pid, 0)
        else:
            _, st, ru = os.wait4(pid, 0)
            w = time.monotonic() - t
            if st != 0:
                sys.exit(f"{argv} failed: {st}")
        res[i].append((w * 1e3, (ru.ru_utime + ru.ru_stime) * 1e3))
print(f"{'what':<22} {'who':<9} {'wall ms':>8} {'cpu ms':>7}")
for i, (what, who, _, _) in enumerate(cases):
    med = lambda j: statistics.median(x[j] for x in res[i])
    print(f"{what:<22} {who:<9} {med(0):8.2f} {med(1):7.2f}")
PY
