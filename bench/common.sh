# Shared helpers for the side-by-side benchmarks (sourced).
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build}
VBD_IMG=$VBD_BUILD/src/tools/vbd-img
REPS=${REPS:-3}
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# seconds of one "Run completed in X seconds." run
bench_secs() { "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'; }
machine() { echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(qemu-img --version | head -1)"; }
# user+system CPU time of a process (all its threads), in ns
cpu_ns() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f\n", ($14 + $15) * 1e9 / hz}' "/proc/$1/stat"; }
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
    echo "$v, ~$(syscall_ns) ns per syscall$(autogroup_note)"
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
syscall_ns() {
    for _ in 1 2 3; do perf bench syscall basic -l 300000 2>/dev/null | awk '/usecs\/op/ {printf "%.0f\n", $1 * 1000}'; done |
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
