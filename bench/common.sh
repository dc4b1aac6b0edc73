# Shared helpers for the side-by-side benchmarks (sourced).
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build}
VBD_IMG=$VBD_BUILD/src/tools/vbd-img
REPS=${REPS:-3}
# SYSCALL_NS=N (e.g. 1000: a PVM guest) emulates a host where a null syscall
# costs ~N ns in total: every program a benchmark starts (servers and
# clients alike, "${TAX[@]}" before its name) runs under bench/syscall-tax,
# whose seccomp filters make each syscall dearer (page faults stay as they
# are). The filter size is calibrated once here and passed on in the
# environment. Unset: TAX is empty and nothing changes.
TAX=()
if [ -n "${SYSCALL_NS:-}" ]; then
    SYSCALL_TAX=$VBD_BUILD/bench/syscall-tax
    [ -x "$SYSCALL_TAX" ] || { echo "SYSCALL_NS needs $SYSCALL_TAX (ninja -C $VBD_BUILD)" >&2; exit 1; }
    SYSCALL_TAX_INSNS=${SYSCALL_TAX_INSNS:-$("$SYSCALL_TAX" --ns "$SYSCALL_NS" --calibrate | awk '{print $2}')}
    export SYSCALL_TAX_INSNS
    TAX=("$SYSCALL_TAX" --ns "$SYSCALL_NS" --)
fi
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# seconds of one "Run completed in X seconds." run
bench_secs() { "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'; }
machine() { echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(qemu-img --version | head -1)"; }
# user+system CPU time of a process (all its threads), in ns
cpu_ns() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f\n", ($14 + $15) * 1e9 / hz}' "/proc/$1/stat"; }
# run_cpu FILE CMD...: runs CMD (its output passes through) and writes its
# user+system CPU time in ns (all threads, waited-for children) to FILE: the
# CPU per request or per MiB of a tool, as cpu_ns is for a server (both count
# in 10 ms steps: runs shorter than ~1 s of CPU give rough figures)
run_cpu() {
    local f=$1 rc=0
    shift
    /usr/bin/time -f '%U %S' -o "$f.time" "$@" || rc=$?
    tail -1 "$f.time" | awk '{printf "%.0f\n", ($1 + $2) * 1e9}' >"$f"
    return $rc
}
# jiffies all CPUs spent busy at normal priority so far (user + system +
# irq + softirq: the user time of the other sessions' nice-19 builds and tests
# left out; their system time is not separable and counts)
host_busy() { awk '/^cpu / {print $2 + $4 + $7 + $8}' /proc/stat; }
# % of the host's CPUs busy at normal priority between two host_busy readings SECONDS apart
busy_pct() { echo $(( ($2 - $1) * 100 / ($(getconf CLK_TCK) * $3 * $(nproc)) )); }
# a kind of host, for RESULTS.md: a syscall's cost decides which way several rows go
host_kind() {
    local v; v=$(systemd-detect-virt --vm 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" != none ] || v=$(grep -qw hypervisor /proc/cpuinfo && echo "vm" || echo "bare metal")
    local tax=
    [ ${#TAX[@]} = 0 ] || tax=", emulated ~$(syscall_ns "${TAX[@]}") ns (seccomp, $SYSCALL_TAX_INSNS loads)"
    echo "$v, ~$(syscall_ns) ns per syscall$tax$(autogroup_note)"
}
# With autogroups a nice value only counts inside its own session (sched(7)): other sessions'
# `nice -n 19` jobs then compete with a benchmark as whole groups of equal weight
autogroup_note() {
    [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] || return 0
    echo ", sched_autogroup on (other sessions' niced jobs compete at full weight)"
}
# each CPU's idle share (%) since the snapshot given (empty: prints a snapshot to pass later)
cpu_idle() {
    if [ -z "${1:-}" ]; then awk '/^cpu[0-9]/ {printf "%s:%d:%d ", $1, $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; return; fi
    local now; now=$(cpu_idle)
    paste <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$now") | awk -F'[:\t]' 'NF == 6 {printf "%s %d%% ", $1, 100 * ($5 - $2) / ($6 - $3 + 1)}'
}
# ns of one getppid() (a null syscall), best of 3 short runs of perf bench
# (arguments: a prefix to run it under, e.g. "${TAX[@]}")
syscall_ns() {
    for _ in 1 2 3; do "$@" perf bench syscall basic -l 300000 2>/dev/null | awk '/usecs\/op/ {printf "%.0f\n", $1 * 1000}'; done |
        sort -n | head -1
}

# ---- the mirror benchmarks (job-mirror.sh, job-mirror-active.sh) ----
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
spid=
# bench_dir PARENT NAME: a new directory for the images under PARENT, the
# current one from now on ($dir); it and the server go at exit.
bench_dir() {
    dir=$(mktemp -d "$1/$2.XXXXXX")
    trap 'kill $spid 2>/dev/null || true; rm -rf "$dir"' EXIT
    cd "$dir"
}
# vu_serve WHO BLOCKDEV: vbd-daemon (WHO=vbd) or qemu-storage-daemon (qsd)
# on CPU 0 with the node "src" (BLOCKDEV: its JSON) exported writable over
# vhost-user-blk on $dir/vu.sock (one queue), QMP on $dir/qmp.sock; spid is
# its pid. vu_unserve stops it.
vu_serve() {
    local bin=$VBD_DAEMON
    [ "$1" = qsd ] && bin=qemu-storage-daemon
    rm -f vu.sock qmp.sock
    taskset -c 0 "$bin" --chardev socket,id=q,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "$2" \
        --export type=vhost-user-blk,id=e0,node-name=src,addr.type=unix,addr.path="$dir/vu.sock",writable=on,num-queues=1 \
        >daemon.log 2>&1 &
    spid=$!
    for _ in $(seq 100); do [ -S vu.sock ] && [ -S qmp.sock ] && return; sleep 0.05; done
    echo "server $bin did not start: $(cat daemon.log)" >&2; exit 1
}
vu_unserve() {
    kill $spid; wait $spid 2>/dev/null || true
    spid=
}

# ---- the network-storage benchmarks (rbd.sh, rbd-ab.sh, iscsi.sh, iscsi-row.sh) ----
# They source tests/integration/lib.sh ($T, on_exit, fail) and lib-ceph.sh
# or lib-tgt.sh after this file.
# iscsi_bench_setup NAME: a 1 GiB LUN on /dev/shm (every byte written, so
# reads measure the target) served by a private tgtd; THIN=0 turns its thin
# provisioning off (no GET LBA STATUS: vbd's NBD server asks block status
# before every structured read, one more round trip to the target each).
# Sets node (the iscsi blockdev, node-name i0) and sock.
iscsi_bench_setup() {
    local img
    img=$(mktemp "/dev/shm/$1.XXXXXX")
    on_exit "rm -f $img"
    qemu-img create -q -f raw "$img" 1G
    qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
    tgt_start "$img"
    [ "${THIN:-1}" = 1 ] || tgt_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=0
    node="driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1"
    sock=$T/server.sock
}
# rbd_bench_setup: a one-OSD cluster with the 1 GiB image rbd/bench, filled
# (librbd answers never-written objects from the object map without the
# OSD: reads would not measure the cluster). CACHE=writeback (default:
# cache.direct=off, librbd's cache on, as QEMU sets rbd_cache) or none
# (cache.direct=on: rbd_cache off). Sets cacheopt, osd_pid and sock.
rbd_bench_setup() {
    ceph_start >&2
    CACHE=${CACHE:-writeback} cacheopt=
    case $CACHE in writeback) ;; none) cacheopt=,cache.direct=on ;; *) fail "CACHE=writeback or none" ;; esac
    rbd -c "$CEPH_CONF" create --size 1G bench || fail "rbd create"
    CEPH_CONF=$CEPH_CONF fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench --rw=write --bs=4M \
        --iodepth=8 --size=1G >/dev/null || fail "fio fill"
    osd_pid=$(_ceph_pid osd.0) || fail "no osd.0"
    sock=$T/server.sock
}
# net_serve BIN KIND NODE BLOCKDEV...: BIN (vbd-daemon or
# qemu-storage-daemon) with those blockdevs, exporting NODE writable on
# $sock: KIND vu (vhost-user-blk, one queue) or nbd (export "disk"); its
# output in $T/server.log; spid is its pid. net_unserve stops it.
net_serve() {
    local bin=$1 kind=$2 exp=$3 b a=()
    shift 3
    for b in "$@"; do a+=(--blockdev "$b"); done
    rm -f "$sock"
    case $kind in
    vu) "$bin" "${a[@]}" --export type=vhost-user-blk,id=e0,node-name="$exp",addr.type=unix,addr.path="$sock",writable=on,num-queues=1 \
        >"$T/server.log" 2>&1 & ;;
    nbd) "$bin" "${a[@]}" --nbd-server addr.type=unix,addr.path="$sock" --export type=nbd,id=e0,node-name="$exp",name=disk,writable=on \
        >"$T/server.log" 2>&1 & ;;
    esac
    spid=$!
    for _ in $(seq 200); do
        case $kind in
        vu) [ -S "$sock" ] && return ;;
        nbd) nbdinfo --size "nbd+unix:///disk?socket=$sock" >/dev/null 2>&1 && return ;;
        esac
        sleep 0.05
    done
    cat "$T/server.log" >&2; fail "server $bin did not start"
}
net_unserve() { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; spid=; }
# sum_tasks PID FIELD [FIELD2]: a /proc status field summed over the process's threads
sum_tasks() {
    cat /proc/$1/task/*/status 2>/dev/null | awk -v a="$2" -v b="${3:-}" '$1 == a":" || (b != "" && $1 == b":") {s += $2} END {print s + 0}'
}
# per-thread CPU ticks of a process: "tid:ticks ..." (a snapshot for busiest_thread)
thread_ticks() { for f in /proc/$1/task/*/stat; do awk '{printf "%s:%d ", $1, $14 + $15}' "$f" 2>/dev/null; done; }
# busiest_thread SNAPSHOT0 SNAPSHOT1 SECONDS: the % of one CPU its busiest
# thread used in between (a single-threaded event loop near 100 % is the bottleneck)
busiest_thread() {
    paste <(tr ' ' '\n' <<<"$1" | sort) <(tr ' ' '\n' <<<"$2" | sort) | awk -F'[:\t]' -v hz="$(getconf CLK_TCK)" -v s="$3" \
        'NF == 4 && $1 == $3 {d = $4 - $2; if (d > m) m = d} END {printf "%d\n", m * 100 / (hz * s)}'
}
# perf_stat_print REQUESTS FILE: the syscalls and context switches of a
# `perf stat -o FILE` run per request (those above one per 50 requests)
perf_stat_print() {
    awk -v n="$1" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 + 0 > n / 50) printf "    %-40s %8.3f /req\n", $2, $1 / n }' "$2"
}
