#!/bin/bash
# blockdev-mirror: vbd-daemon vs qemu-storage-daemon 7.2 in one run. Not a test.
#   bench/job-mirror.sh [DIR]      (DIR: where the images go, default /var/tmp)
# Source: a 2 GiB qcow2 with data in every other MiB (1 GiB of data), target:
# a new empty qcow2 on the same file system, both opened with
# cache.direct=on (no page cache: every run reads the disk); the source is
# also exported over vhost-user-blk (the guest's view).
#  1. time to READY of blockdev-mirror sync=full, no guest load (median of
#     REPS runs, a fresh target each);
#  2. guest-side IOPS: vbd-bench 4K randread QD32 for SECS s before any job,
#     then for SECS s while a mirror runs, rate-limited to the same SPEED
#     for both daemons (so that both jobs copy at the same rate and last
#     longer than the measurement: checked), ratio during/before.
# Ratios > 1: vbd better (READY: qsd time / vbd time; IOPS drop: vbd's
# during/before over qsd's). CPU columns: the daemon's CPU time (user+system,
# all threads) per MiB of data mirrored to READY (1 GiB; the QMP and job
# set-up included) and per request of the IOPS runs before any job (the runs
# during the mirror mix both kinds of work: none given).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS=${SECS:-3}
SPEED=${SPEED:-$((128 << 20))}
bench_dir "${1:-/var/tmp}" vbd-mirror-bench
python3 - <<'PY'
import os
mib = 1 << 20
with open("src.raw", "wb") as f:
    f.truncate(2048 * mib)
    block = bytearray(os.urandom(mib))
    for i in range(0, 2048, 2):
        block[0:8] = i.to_bytes(8, "little")  # every MiB differs
        f.seek(i * mib)
        f.write(block)
PY
qemu-img convert -q -f raw -O qcow2 src.raw src.qcow2
rm -f src.raw
# qmp.py: run one mirror to a fresh target; prints the seconds to READY
mirror() { # mode(ready|load) speed
    rm -f tgt.qcow2
    qemu-img create -q -f qcow2 tgt.qcow2 2G
    python3 - "$1" "$2" "$VBD_BENCH" "$SECS" "$BENCH_ROOT" <<'PY'
import json, subprocess, sys, time
mode, speed, bench, secs, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, root + "/bench")
from jobqmp import connect, ok, wait_ready, cancel_in_ready
m = connect()
ok(m.cmd("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                          "file": {"driver": "file", "filename": "tgt.qcow2", "cache": {"direct": True}}}))
t0 = time.monotonic()
ok(m.cmd("blockdev-mirror", {"job-id": "m", "device": "src", "target": "tgt", "sync": "full", "speed": speed}))
if mode == "load":
    out = subprocess.run(["taskset", "-c", "1", bench, "--vhost-user", "vu.sock", "-w", "randread", "-b", "4k",
                          "-d", "32", "-t", secs, "--json"], capture_output=True, text=True, check=True).stdout
    jobs = ok(m.cmd("query-jobs", {}))
    if not jobs or jobs[0]["status"] != "running":
        sys.exit(f"the mirror was not running any more at the end of the measurement: {jobs}")
    print(json.loads(out)["iops"])
    ok(m.cmd("block-job-set-speed", {"device": "m", "speed": 0}))
wait_ready(m, "m")
if mode == "ready":
    print(f"{time.monotonic() - t0:.3f}")
cancel_in_ready(m, "m", "tgt")
PY
}
echo "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg); images in $dir ($(df -T "$dir" | awk 'NR==2 {print $2}')); REPS=$REPS, $SECS s per IOPS run, mirror speed under load $SPEED B/s; server on CPU 0, vbd-bench on CPU 1"
declare -A ready before during ready_cpu before_cpu
for who in vbd qsd; do
    vu_serve $who '{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"'"$dir"'/src.qcow2","cache":{"direct":true}}}'
    r=() rc=()
    for _ in $(seq "$REPS"); do
        c0=$(cpu_ns $spid); r+=("$(mirror ready 0)"); c1=$(cpu_ns $spid)
        rc+=("$(( (c1 - c0) / 1024 ))")
    done
    ready[$who]=$(printf '%s\n' "${r[@]}" | median) ready_cpu[$who]=$(printf '%s\n' "${rc[@]}" | median)
    b=() bc=() l=()
    for _ in $(seq "$REPS"); do
        c0=$(cpu_ns $spid)
        out=$(taskset -c 1 "$VBD_BENCH" --vhost-user vu.sock -w randread -b 4k -d 32 -t "$SECS" --json)
        c1=$(cpu_ns $spid)
        b+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["iops"])' "$out")")
        bc+=("$(python3 -c 'import json,sys; print((int(sys.argv[2]) - int(sys.argv[3])) // (json.loads(sys.argv[1])["requests"] + 1))' "$out" $c1 $c0)")
        l+=("$(mirror load "$SPEED")")
    done
    before[$who]=$(printf '%s\n' "${b[@]}" | median) before_cpu[$who]=$(printf '%s\n' "${bc[@]}" | median)
    during[$who]=$(printf '%s\n' "${l[@]}" | median)
    vu_unserve
    echo "$who: READY runs ${r[*]} s (${rc[*]} ns CPU/MiB); IOPS before ${b[*]} (${bc[*]} ns CPU/r); during ${l[*]}"
done
printf '%-34s %12s %12s %8s\n' "" vbd qsd ratio
printf '%-34s %12.2f %12.2f %8.2f\n' "time to READY (s, 1 GiB of data)" "${ready[vbd]}" "${ready[qsd]}" \
    "$(echo "${ready[qsd]} / ${ready[vbd]}" | bc -l)"
printf '%-34s %12.0f %12.0f %8.2f\n' "4K randread QD32 IOPS before" "${before[vbd]}" "${before[qsd]}" \
    "$(echo "${before[vbd]} / ${before[qsd]}" | bc -l)"
printf '%-34s %12.0f %12.0f %8.2f\n' "... during the mirror" "${during[vbd]}" "${during[qsd]}" \
    "$(echo "${during[vbd]} / ${during[qsd]}" | bc -l)"
printf '%-34s %12.0f %12.0f %8.2f\n' "daemon CPU to READY (ns/MiB)" "${ready_cpu[vbd]}" "${ready_cpu[qsd]}" \
    "$(echo "${ready_cpu[qsd]} / ${ready_cpu[vbd]}" | bc -l)"
printf '%-34s %12.0f %12.0f %8.2f\n' "daemon CPU before (ns/r)" "${before_cpu[vbd]}" "${before_cpu[qsd]}" \
    "$(echo "${before_cpu[qsd]} / ${before_cpu[vbd]}" | bc -l)"
vr=$(echo "${during[vbd]} / ${before[vbd]}" | bc -l) qr=$(echo "${during[qsd]} / ${before[qsd]}" | bc -l)
printf '%-34s %12.2f %12.2f %8.2f\n' "during / before" "$vr" "$qr" "$(echo "$vr / $qr" | bc -l)"
