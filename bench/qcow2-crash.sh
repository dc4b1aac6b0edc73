#!/bin/bash
# 1000 SIGKILL cycles of the qcow2 crash-consistency test (CI runs 50).
# Not a benchmark of speed: a longer run of tests/integration/qcow2-crash.sh.
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build} CRASH_CYCLES=${CRASH_CYCLES:-1000} \
    exec bash "$(dirname "$0")/../tests/integration/qcow2-crash.sh"
