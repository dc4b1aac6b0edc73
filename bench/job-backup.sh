#!/bin/bash
# Full backup (blockdev-backup sync=full) of a 2 GiB qcow2 half full of
# data (16 extents of 64 MiB, one every 128 MiB) to a fresh local qcow2,
# vbd-daemon vs qemu-storage-daemon, alternating within each round (vbd
# first in odd rounds, qsd first in even ones). Time: from the command to
# BLOCK_JOB_COMPLETED, taken by the QMP client. Images on local disk
# (page cache: the source is read from memory after the first round, for
# both). Issue 13 wants vbd >= 1.2x faster. Not a test.
#   bench/job-backup.sh      ROUNDS=N (default 5)   DIR=path (default /var/tmp)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
export VBD_ROOT=${VBD_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
ROUNDS=${ROUNDS:-5}
dir=$(mktemp -d "${DIR:-/var/tmp}/vbd-backup-bench.XXXXXX")
dpid=
trap '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
qemu-img create -q -f qcow2 src.qcow2 2G
args=()
for i in $(seq 0 15); do args+=(-c "write -P $((i + 1)) $((i * 128))M 64M"); done
qemu-io -f qcow2 "${args[@]}" src.qcow2 >/dev/null

one() { # $1 = vbd|qsd: prints the seconds and the daemon's CPU seconds
    local bin=$VBD_DAEMON
    [ "$1" = qsd ] && bin=qemu-storage-daemon
    rm -f tgt.qcow2 qmp.sock
    qemu-img create -q -f qcow2 tgt.qcow2 2G
    sync
    "$bin" --chardev socket,id=q,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$dir"'/src.qcow2"}}' \
        --blockdev '{"driver":"qcow2","node-name":"tgt","file":{"driver":"file","filename":"'"$dir"'/tgt.qcow2"}}' \
        2>daemon.log &
    dpid=$!
    for _ in $(seq 200); do [ -S qmp.sock ] && break; sleep 0.05; done
    python3 - <<'PY'
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP("qmp.sock", negotiate=True)
t0 = time.monotonic()
r = m.cmd("blockdev-backup", {"job-id": "b", "device": "src", "target": "tgt", "sync": "full"})
if "error" in r:
    sys.exit(f"blockdev-backup: {r}")
ev = m.wait_event("BLOCK_JOB_COMPLETED", timeout=600)
t = time.monotonic() - t0
if "error" in ev["data"] or ev["data"]["offset"] != ev["data"]["len"]:
    sys.exit(f"backup failed: {ev}")
print("%.3f" % t)
PY
    # the daemon's CPU time (user + system) over its whole life
    echo "$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$dpid/stat)"
    kill -TERM $dpid; wait $dpid || true; dpid=
    qemu-img compare -q src.qcow2 tgt.qcow2 || { echo "$1: the backup differs from the source" >&2; exit 1; }
}
echo "machine: $(machine)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round vbd_s qsd_s qsd/vbd vbd_cpu_s qsd_cpu_s"
: >vbd.t; : >qsd.t; : >ratio.t; : >vc.t; : >qc.t
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then v=($(one vbd)); q=($(one qsd)); else q=($(one qsd)); v=($(one vbd)); fi
    echo "${v[0]}" >>vbd.t; echo "${q[0]}" >>qsd.t; echo "${v[1]}" >>vc.t; echo "${q[1]}" >>qc.t
    ratio=$(echo "${q[0]} ${v[0]}" | awk '{printf "%.2f", $1 / $2}')
    echo "$ratio" >>ratio.t
    echo "$r ${v[0]} ${q[0]} $ratio ${v[1]} ${q[1]}"
done
echo "median vbd $(median <vbd.t) s, qsd $(median <qsd.t) s, ratio qsd/vbd $(median <ratio.t); CPU vbd $(median <vc.t) s, qsd $(median <qc.t) s"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
