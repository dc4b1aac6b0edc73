# Shared helpers for the side-by-side benchmarks (sourced).
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build}
VBD_IMG=$VBD_BUILD/src/tools/vbd-img
REPS=${REPS:-3}
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# seconds of one "Run completed in X seconds." run
bench_secs() { "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'; }
machine() { echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(qemu-img --version | head -1)"; }
