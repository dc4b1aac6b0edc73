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
    echo "$v, ~$(syscall_ns) ns per syscall"
}
# ns of one getppid() (a null syscall), best of 3 short runs of perf bench
syscall_ns() {
    for _ in 1 2 3; do perf bench syscall basic -l 300000 2>/dev/null | awk '/usecs\/op/ {printf "%.0f\n", $1 * 1000}'; done |
        sort -n | head -1
}
