#!/bin/bash
# Run every side-by-side benchmark (vbd vs the reference tool, one run each,
# ratios printed). Not a test: nothing here asserts a speed.
#   bench/run.sh BUILD_DIR [NAME...]   e.g. bench/run.sh build img-bench nbd-bench
set -u
BUILD=${1:-build}; shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export VBD_BUILD=$(cd "$ROOT/$BUILD" 2>/dev/null && pwd || echo "$BUILD")
export PATH="$VBD_BUILD/src/tools:$PATH"
mkdir -p "$ROOT/bench/out"
if [ $# -gt 0 ]; then names=("$@"); else
    names=(); for f in "$ROOT"/bench/*-*.sh; do n=${f##*/}; names+=("${n%.sh}"); done
fi
for n in "${names[@]}"; do
    echo "=== $n"
    bash "$ROOT/bench/$n.sh" 2>&1 | tee "$ROOT/bench/out/$n.txt"
done
