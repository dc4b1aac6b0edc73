#!/bin/bash
# vbd-daemon vs qemu-storage-daemon serving the same rbd image (a throwaway
# one-OSD Ceph cluster from tests/integration/lib-ceph.sh) over
# vhost-user-blk, driven by vbd-bench with the same parameters; and the
# limit: fio's rbd engine talking to librbd directly. Both servers run the
# same cache mode, CACHE=writeback (default: cache.direct=off, librbd's cache
# on, as QEMU sets rbd_cache) or CACHE=none (cache.direct=on: rbd_cache off
# in both servers, and in fio through a config file saying so). Ratio > 1
# means vbd is better (vbd/qsd, and vbd/fio: how close to librbd itself).
# Not a test.   [CACHE=none] [REPS=N] bench/rbd.sh [SECONDS]
set -uo pipefail
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build}
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-ceph.sh"
need fio qemu-storage-daemon bc python3
SECS=${1:-5}
rbd_bench_setup
export CEPH_CONF # fio's rbd engine reads the configuration librados finds
fioconf=$CEPH_CONF
if [ "$CACHE" = none ]; then
    fioconf=$T/fio.conf
    cp "$CEPH_CONF" "$fioconf"
    printf '[client]\nrbd_cache = false\n' >>"$T/fio.conf"
fi
spid=
on_exit 'kill $spid 2>/dev/null'
serve() { # server-binary
    net_serve "$1" vu disk0 "driver=rbd,node-name=r0,pool=rbd,image=bench,conf=$CEPH_CONF$cacheopt" driver=raw,node-name=disk0,file=r0
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
# fio's IOPS and its CPU per request: user+sys of the whole process (librbd's
# threads included; fio's own usr_cpu/sys_cpu leave them out), from wait4
fio_run() { # rw bs depth
    CEPH_CONF=$fioconf python3 - "$@" "$SECS" <<'PY'
import json, resource, subprocess, sys
rw, bs, depth, secs = sys.argv[1:]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
out = subprocess.run(["fio", "--name=lim", "--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname=bench",
                      "--rw=" + rw, "--bs=" + bs, "--iodepth=" + depth, "--runtime=" + secs, "--time_based",
                      "--output-format=json"], capture_output=True, text=True).stdout
after = resource.getrusage(resource.RUSAGE_CHILDREN)
j = json.loads(out)["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print("%.0f %.0f" % (j["read"]["iops"] + j["write"]["iops"], cpu * 1e9 / max(ios, 1)))
PY
}
echo "cache mode: $CACHE (rbd_cache $([ $CACHE = none ] && echo off || echo on) in vbd, qsd and fio)"
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); $SECS s per run, medians of $REPS; Ceph $(ceph --version | awk '{print $3}'), 1 OSD (BlueStore on a sparse file), 1 replica"
echo "ns/r: CPU (user+sys) per request of the server process (fio: of fio itself, librbd inside); osd: the OSD's per request"
echo "host busy: user+system+irq of all CPUs during the run (the user time of nice-19 jobs left out, their system time not; near 100 %: bound by CPU)"
printf '%-18s %9s %9s %9s %7s %7s %8s %8s %8s %8s %8s %8s\n' workload "vbd IOPS" "qsd IOPS" "fio-rbd" vbd/qsd vbd/fio \
    "vbd ns/r" "qsd ns/r" "fio ns/r" "osd@vbd" "osd@qsd" "osd@fio"
while IFS='|' read -r label args rw bs depth; do
    # vbd, qsd and fio take turns in each round, so a change in the shared
    # machine's load falls on all three rather than on whoever ran then
    declare -A all=([vbd]= [qsd]= [fio]=) nsr=([vbd]= [qsd]= [fio]=) osd=([vbd]= [qsd]= [fio]=) busy=([vbd]= [qsd]= [fio]=)
    for _ in $(seq "$REPS"); do
        for who in vbd qsd; do
            bin=$VBD_DAEMON; [ $who = qsd ] && bin=qemu-storage-daemon
            serve "$bin"
            c0=$(cpu_ns $spid) o0=$(cpu_ns $osd_pid) h0=$(host_busy)
            out=$("$VBD_BENCH" --vhost-user "$sock" -q 1 $args -t "$SECS" --json) || fail "vbd-bench against $who"
            c1=$(cpu_ns $spid) o1=$(cpu_ns $osd_pid) h1=$(host_busy)
            busy[$who]="${busy[$who]} $(busy_pct $h0 $h1 $SECS)"
            req=$(field "$out" requests)
            all[$who]="${all[$who]} $(field "$out" iops)"
            nsr[$who]="${nsr[$who]} $(( (c1 - c0) / (req + 1) ))"
            osd[$who]="${osd[$who]} $(( (o1 - o0) / (req + 1) ))"
            net_unserve
        done
        o0=$(cpu_ns $osd_pid) h0=$(host_busy)
        read -r fi fn < <(fio_run "$rw" "$bs" "$depth")
        o1=$(cpu_ns $osd_pid) h1=$(host_busy)
        busy[fio]="${busy[fio]} $(busy_pct $h0 $h1 $SECS)"
        all[fio]="${all[fio]} $fi"
        nsr[fio]="${nsr[fio]} $fn"
        osd[fio]="${osd[fio]} $(echo "($o1 - $o0) / ($fi * $SECS + 1)" | bc)"
    done
    declare -A iops=() ns=() os=()
    for who in vbd qsd fio; do
        iops[$who]=$(printf '%s\n' ${all[$who]} | median)
        ns[$who]=$(printf '%s\n' ${nsr[$who]} | median)
        os[$who]=$(printf '%s\n' ${osd[$who]} | median)
    done
    printf '%-18s %9.0f %9.0f %9.0f %7.2f %7.2f %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f\n' "$label" "${iops[vbd]}" "${iops[qsd]}" \
        "${iops[fio]}" "$(echo "${iops[vbd]} / ${iops[qsd]}" | bc -l)" "$(echo "${iops[vbd]} / ${iops[fio]}" | bc -l)" \
        "${ns[vbd]}" "${ns[qsd]}" "${ns[fio]}" "${os[vbd]}" "${os[qsd]}" "${os[fio]}"
    # every round, in order (IOPS, then server ns/r): vbd / qsd / fio
    echo "  rounds: vbd${all[vbd]} / qsd${all[qsd]} / fio${all[fio]}" | sed 's/\.[0-9]*//g'
    echo "  ns/r:   vbd${nsr[vbd]} / qsd${nsr[qsd]} / fio${nsr[fio]}; osd vbd${osd[vbd]} / qsd${osd[qsd]} / fio${osd[fio]}"
    echo "  host CPUs busy at normal priority, %: vbd${busy[vbd]} / qsd${busy[qsd]} / fio${busy[fio]}"
done <<ROWS
4k randread QD32|-w randread -b 4k -d 32|randread|4k|32
4k randwrite QD32|-w randwrite -b 4k -d 32|randwrite|4k|32
1M read QD4|-w read -b 1M -d 4|read|1M|4
1M write QD4|-w write -b 1M -d 4|write|1M|4
ROWS
