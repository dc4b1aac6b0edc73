#!/bin/bash
# The disk's limit for a copy: fio reads 1 GiB of a file while it writes
# 1 GiB to a new file, O_DIRECT, io_uring, one job each; prints the seconds
# until each side ends, per request size and queue depths, and fio's CPU
# time (user+system, as fio reports it) per MiB of each side. Not a test.
#   bench/disk-rw-limit.sh [DIR]   (default /var/tmp; ROUNDS, CONFIGS="bs:readQD:writeQD ...")
set -euo pipefail
ROUNDS=${ROUNDS:-2}
CONFIGS=${CONFIGS:-"1m:16:16 1m:4:4 1m:2:2 1m:16:4 512k:8:8 256k:8:8 256k:16:16 128k:16:16 4m:4:4"}
dir=$(mktemp -d "${1:-/var/tmp}/vbd-disk-limit.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"
dd if=/dev/urandom of=rd.dat bs=1M count=1024 oflag=direct status=none
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); $dir ($(df -T . | awk 'NR==2 {print $2}'))"
echo "round bs read_qd write_qd read_s write_s read_ns/MiB write_ns/MiB"
for r in $(seq "$ROUNDS"); do
    for c in $CONFIGS; do
        IFS=: read -r bs rq wq <<<"$c"
        rm -f wr.dat
        fio --ioengine=io_uring --direct=1 --output-format=json --size=1g \
            --name=rd --filename=rd.dat --rw=read --bs="$bs" --iodepth="$rq" \
            --name=wr --filename=wr.dat --rw=write --bs="$bs" --iodepth="$wq" --fallocate=none >o.json
        python3 -c '
import json, sys
jobs = json.load(open("o.json"))["jobs"]
t = [max(j["read"]["runtime"], j["write"]["runtime"]) / 1000 for j in jobs]
# usr_cpu, sys_cpu: % of the run time of the job; 1 GiB each
c = [(j["usr_cpu"] + j["sys_cpu"]) / 100 * s * 1e9 / 1024 for j, s in zip(jobs, t)]
print(*sys.argv[1:], "%.3f %.3f %.0f %.0f" % (*t, *c))' "$r" "$bs" "$rq" "$wq"
    done
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
