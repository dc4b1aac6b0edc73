#!/bin/bash
# What a job's named filter costs the guest: vbd-daemon alone (QEMU always
# has its filter in the path, named or not, so there is no qsd side). Not a
# test.
#   bench/job-filter.sh [DIR]      (DIR: where the image goes, default /var/tmp)
# A 1 GiB qcow2 full of data, exported over vhost-user-blk (1 ring);
# vbd-bench 4K randread QD32 for SECS s, REPS times each (common.sh: 3), interleaved:
#  none:   no job;
#  hook:   a blockdev-mirror to a null-co node held at 1 byte/s (the job's
#          write hook on the source, no filter node);
#  filter: the same with filter-node-name (mirror_top between the export
#          and the source: one more io.c entry per request).
# Printed: median IOPS and daemon CPU time per request of each, filter/hook
# (1.0: the filter costs nothing).
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${SECS:-5}
dir=$(mktemp -d "${1:-/var/tmp}/vbd-filter-bench.XXXXXX")
dpid=
trap 'kill $dpid 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
qemu-img create -q -f qcow2 src.qcow2 1G
qemu-io -f qcow2 -c 'write -P 0x5a 0 1G' src.qcow2 >/dev/null
"$VBD_DAEMON" --chardev socket,id=q,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=q \
    --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$dir"'/src.qcow2"}}' \
    --blockdev '{"driver":"null-co","node-name":"null","size":1073741824}' \
    --export type=vhost-user-blk,id=e0,node-name=src,addr.type=unix,addr.path="$dir/vu.sock",writable=on \
    2>daemon.log &
dpid=$!
for _ in $(seq 100); do [ -S "$dir/vu.sock" ] && break; sleep 0.1; done
python3 - "$dir" "$VBD_BENCH" "$SECS" "$REPS" "$ROOT" "$dpid" <<'PY'
import json, os, statistics, subprocess, sys
d, bench, secs, reps, root, dpid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
sys.path.insert(0, root + "/tests/qmp")
from qmp import QMP
m = QMP(d + "/qmp.sock", negotiate=True)


def cpu_ns():
    f = open(f"/proc/{dpid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e9 / os.sysconf("SC_CLK_TCK")


def iops():
    """IOPS, and the daemon's CPU time per request (less bent by the host's load than IOPS)."""
    c0 = cpu_ns()
    out = subprocess.run([bench, "--vhost-user", d + "/vu.sock", "-w", "randread", "-d", "32", "-t", secs, "--json"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return r["iops"], (cpu_ns() - c0) / r["requests"]


def job(name):
    args = {"job-id": "j", "device": "src", "target": "null", "sync": "full", "speed": 1}
    if name:
        args["filter-node-name"] = name
    r = m.cmd("blockdev-mirror", args)
    assert "return" in r, r
    want = name or "src"
    assert m.cmd("query-block-exports")["return"][0]["node-name"] == want


def cancel():
    m.cmd("job-cancel", {"id": "j"})
    while True:
        ev = m.wait_event("JOB_STATUS_CHANGE", timeout=60)["data"]
        if ev["status"] == "null":
            return


res = {"none": [], "hook": [], "filter": []}
for i in range(reps):
    res["none"].append(iops())
    # hook and filter alternate which comes first: a drift of the host's load favours neither
    for kind in (("hook", "filter") if i % 2 == 0 else ("filter", "hook")):
        job("mt" if kind == "filter" else None)
        res[kind].append(iops())
        cancel()
med = {k: statistics.median(x[0] for x in v) for k, v in res.items()}
cpu = {k: statistics.median(x[1] for x in v) for k, v in res.items()}
for k in ("none", "hook", "filter"):
    print(f"{k:7} {med[k]:10.0f} IOPS, {cpu[k]:6.0f} ns CPU/request  (runs: {', '.join(f'{x[0]:.0f}/{x[1]:.0f}' for x in res[k])})")
print(f"IOPS filter/hook {med['filter'] / med['hook']:.3f}, hook/none {med['hook'] / med['none']:.3f}; "
      f"CPU per request filter/hook {cpu['filter'] / cpu['hook']:.3f}")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(machine)"
