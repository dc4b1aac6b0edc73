#!/bin/bash
# The cost of a guest write during a blockdev-mirror copy-mode=write-blocking
# (QEMU's active mirror: each guest write reaches the target before it
# completes), vbd-daemon vs qemu-storage-daemon 7.2. Not a test.
#   bench/job-mirror-active.sh [DIR]      (DIR: where the images go, default /dev/shm)
# Source: a raw file of SIZE (default 256 MiB) full of data, exported over
# vhost-user-blk; target: a new sparse raw file of the same size. For each
# daemon, REPS times: vbd-bench 4K randwrite QD32 for SECS s with no job
# ("before"), then a mirror sync=full copy-mode=write-blocking is started,
# and once READY the same load runs again ("during"; the job is checked to
# be still READY afterwards); the job is cancelled in READY (the target is
# then a copy of the source: compared) and the target deleted. Reported:
# IOPS and the daemon's CPU ns per request (utime+stime from /proc over the
# load run). Server on CPU 0, vbd-bench on CPU 1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS=${SECS:-3}
SIZE=${SIZE:-256M}
bench_dir "${1:-/dev/shm}" vbd-active-bench
qemu-img create -q -f raw src.raw "$SIZE"
qemu-io -f raw -c "write -P 0x5a 0 $SIZE" src.raw >/dev/null

# one round: prints "iops_before ns_before iops_during ns_during"
round() {
    rm -f tgt.raw
    qemu-img create -q -f raw tgt.raw "$SIZE"
    python3 - "$VBD_BENCH" "$SECS" "$BENCH_ROOT" "$spid" "$dir" <<'PY'
import json, os, subprocess, sys
bench, secs, root, pid, d = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, root + "/bench")
from jobqmp import connect, ok, wait_ready, cancel_in_ready
m = connect()
hz = os.sysconf("SC_CLK_TCK")
def cpu_ns():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e9 / hz
def load():
    c0 = cpu_ns()
    out = json.loads(subprocess.run(["taskset", "-c", "1", bench, "--vhost-user", "vu.sock", "-w", "randwrite", "-b", "4k",
                                     "-d", "32", "-t", secs, "--json"], capture_output=True, text=True, check=True).stdout)
    if out["errors"]:
        sys.exit(f"vbd-bench: {out['errors']} I/O errors")
    return out["iops"], (cpu_ns() - c0) / out["requests"]
before = load()
ok(m.cmd("blockdev-add", {"driver": "raw", "node-name": "tgt",
                          "file": {"driver": "file", "filename": d + "/tgt.raw"}}))
ok(m.cmd("blockdev-mirror", {"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
                             "copy-mode": "write-blocking"}))
wait_ready(m, "m")
during = load()
jobs = ok(m.cmd("query-jobs", {}))
if not jobs or jobs[0]["status"] != "ready":
    sys.exit(f"the mirror was not READY any more at the end of the measurement: {jobs}")
cancel_in_ready(m, "m", "tgt")  # in READY: the target is a copy of this moment
print(f"{before[0]} {before[1]:.0f} {during[0]} {during[1]:.0f}")
PY
    qemu-img compare -q -U -f raw -F raw src.raw tgt.raw || { echo "the target differs from the source" >&2; exit 1; }
}
echo "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg); images in $dir ($(df -T "$dir" | awk 'NR==2 {print $2}')), $SIZE; REPS=$REPS, $SECS s per run"
declare -A res
for who in vbd qsd; do
    vu_serve $who '{"driver":"raw","node-name":"src","file":{"driver":"file","filename":"'"$dir"'/src.raw"}}'
    : >ib.t; : >nb.t; : >id.t; : >nd.t
    for _ in $(seq "$REPS"); do
        round >round.t
        read -r ib nb id nd <round.t
        echo "$ib" >>ib.t; echo "$nb" >>nb.t; echo "$id" >>id.t; echo "$nd" >>nd.t
        echo "$who: before $ib IOPS $nb ns/req, during $id IOPS $nd ns/req"
    done
    res[$who]="$(median <ib.t) $(median <nb.t) $(median <id.t) $(median <nd.t)"
    vu_unserve
done
read -r vib vnb vid vnd <<<"${res[vbd]}"
read -r qib qnb qid qnd <<<"${res[qsd]}"
printf '%-40s %12s %12s %8s\n' "4K randwrite QD32, medians" vbd qsd vbd/qsd
printf '%-40s %12.0f %12.0f %8.2f\n' "IOPS, no job" "$vib" "$qib" "$(echo "$vib / $qib" | bc -l)"
printf '%-40s %12.0f %12.0f %8.2f\n' "IOPS, write-blocking mirror READY" "$vid" "$qid" "$(echo "$vid / $qid" | bc -l)"
printf '%-40s %12.0f %12.0f %8.2f\n' "daemon CPU ns/req, no job" "$vnb" "$qnb" "$(echo "$vnb / $qnb" | bc -l)"
printf '%-40s %12.0f %12.0f %8.2f\n' "daemon CPU ns/req, write-blocking" "$vnd" "$qnd" "$(echo "$vnd / $qnd" | bc -l)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
