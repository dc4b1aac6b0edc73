#!/bin/bash
# Block jobs with cache.direct=on on every file node (O_DIRECT: each byte
# read from and written to the disk), vbd-daemon against
# qemu-storage-daemon 7.2 in one run, the same command line and QMP for
# both: blockdev-backup sync=full into a new qcow2, block-commit of an
# intermediate layer into its (empty) base, block-stream of a base into its
# (empty) overlay. Each copies 512 MiB of data (16 extents of 32 MiB, one
# every 128 MiB of a 2 GiB qcow2). Per rep every daemon runs each job once,
# the daemons' order rotated from rep to rep; the time is from the command
# to BLOCK_JOB_COMPLETED (the QMP client's clock), the CPU the daemon's
# (user+system over its life); every result is qemu-img compared with the
# data (alone: a stream's overlay without its backing file) and checked.
# Ratio: qsd's median time over each vbd's (> 1: vbd faster). Not a test.
#   bench/job-direct.sh [DIR]     DIR: where the images go (default /var/tmp)
#   REPS=N (default 5), JOBS="backup commit stream" (default all three),
#   VBD_DAEMONS="label=path ..." (default vbd=$VBD_BUILD/src/tools/vbd-daemon):
#   several vbd builds side by side in the same run (A/B).
set -euo pipefail
source "$(dirname "$0")/common.sh"
REPS=${REPS:-5}
JOBS=${JOBS:-backup commit stream}
VBD_DAEMONS=${VBD_DAEMONS:-vbd=$VBD_BUILD/src/tools/vbd-daemon}
BENCH_ROOT=$(cd "$(dirname "$0")/.." && pwd)
export BENCH_ROOT
bench_dir "${1:-/var/tmp}" vbd-job-direct
qemu-img create -q -f qcow2 data.qcow2 2G
args=()
for i in $(seq 0 15); do args+=(-c "write -P $((i + 1)) $((i * 128))M 32M"); done
qemu-io -f qcow2 "${args[@]}" data.qcow2 >/dev/null
# commit's intermediate layer: the data over base.qcow2 (made per run)
cp data.qcow2 mid.qcow2
qemu-img rebase -u -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
sync

fnode() { echo '{"driver":"file","filename":"'"$dir/$1"'","cache":{"direct":true}}'; }
# one JOB WHO BIN: prints "seconds cpu_seconds"
one() {
    local job=$1 who=$2 bin=$3 nodes=()
    trap '[ -z "$spid" ] || kill -9 $spid 2>/dev/null' EXIT # (a subshell: the daemon goes if it fails)
    rm -f tgt.qcow2 top.qcow2 base.qcow2 qmp.sock
    case $job in
    backup)
        qemu-img create -q -f qcow2 tgt.qcow2 2G
        nodes=('{"driver":"qcow2","node-name":"src","file":'"$(fnode data.qcow2)"'}'
            '{"driver":"qcow2","node-name":"tgt","file":'"$(fnode tgt.qcow2)"',"backing":null}') ;;
    commit)
        qemu-img create -q -f qcow2 base.qcow2 2G
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
        nodes=('{"driver":"qcow2","node-name":"base","file":'"$(fnode base.qcow2)"',"backing":null}'
            '{"driver":"qcow2","node-name":"mid","file":'"$(fnode mid.qcow2)"',"backing":"base"}'
            '{"driver":"qcow2","node-name":"top","file":'"$(fnode top.qcow2)"',"backing":"mid"}') ;;
    stream)
        qemu-img create -q -f qcow2 -b data.qcow2 -F qcow2 top.qcow2
        nodes=('{"driver":"qcow2","node-name":"base","file":'"$(fnode data.qcow2)"',"backing":null}'
            '{"driver":"qcow2","node-name":"top","file":'"$(fnode top.qcow2)"',"backing":"base"}') ;;
    esac
    sync
    local bd=() n
    for n in "${nodes[@]}"; do bd+=(--blockdev "$n"); done
    "$bin" --chardev socket,id=q,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=q "${bd[@]}" \
        2>daemon.log &
    spid=$!
    for _ in $(seq 1200); do [ -S qmp.sock ] && break; sleep 0.05; done
    [ -S qmp.sock ] || { echo "$who did not start: $(cat daemon.log)" >&2; exit 1; }
    python3 - "$job" <<'PY'
import os, sys, time
sys.path.insert(0, os.environ["BENCH_ROOT"] + "/bench")
from jobqmp import connect, ok
job = sys.argv[1]
m = connect()
cmd = {"backup": ("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"}),
       "commit": ("block-commit", {"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base"}),
       "stream": ("block-stream", {"job-id": "j", "device": "top"})}[job]
t0 = time.monotonic()
ok(m.cmd(*cmd))
ev = m.wait_event("BLOCK_JOB_COMPLETED", timeout=600)
t = time.monotonic() - t0
if "error" in ev["data"] or ev["data"]["offset"] != ev["data"]["len"]:
    sys.exit(f"{job} failed: {ev}")
print("%.3f" % t)
PY
    echo "$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$spid/stat)"
    kill -TERM $spid; wait $spid || true; spid=
    local out=tgt.qcow2
    case $job in
    commit) out=base.qcow2 ;;
    stream) out=top.qcow2; qemu-img rebase -q -u -f qcow2 -b '' top.qcow2 ;;
    esac
    qemu-img check -q "$out" || { echo "$who $job: qemu-img check of $out failed" >&2; exit 1; }
    qemu-img compare -q -f qcow2 -F qcow2 "$out" data.qcow2 ||
        { echo "$who $job: $out differs from the data" >&2; exit 1; }
}

read -ra daemons <<<"$VBD_DAEMONS qsd=qemu-storage-daemon"
echo "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg); images in $dir ($(df -T "$dir" | awk 'NR==2 {print $2}')); REPS=$REPS"
declare -A secs cpus
for r in $(seq "$REPS"); do
    for job in $JOBS; do
        line="rep $r $job:"
        nd=${#daemons[@]}
        for k in $(seq 0 $((nd - 1))); do
            d=${daemons[$(( (k + r) % nd ))]}
            who=${d%%=*} bin=${d#*=}
            res=($(one "$job" "$who" "$bin" | tr '\n' ' '))
            secs[$job.$who]+="${res[0]} " cpus[$job.$who]+="${res[1]} "
            line+=" $who ${res[0]} s (cpu ${res[1]})"
        done
        echo "$line"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-10s %8s %17s %8s %8s\n' job daemon "median s" "[range]" "cpu s" "qsd/this"
for job in $JOBS; do
    q=$(printf '%s\n' ${secs[$job.qsd]} | median)
    for d in "${daemons[@]}"; do
        who=${d%%=*}
        m=$(printf '%s\n' ${secs[$job.$who]} | median)
        lo=$(printf '%s\n' ${secs[$job.$who]} | sort -g | head -1) hi=$(printf '%s\n' ${secs[$job.$who]} | sort -g | tail -1)
        printf '%-8s %-10s %8.3f %17s %8.2f %8.2f\n' "$job" "$who" "$m" "[$lo-$hi]" \
            "$(printf '%s\n' ${cpus[$job.$who]} | median)" "$(echo "$q / $m" | bc -l)"
    done
done
