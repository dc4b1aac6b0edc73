#!/bin/bash
# 1000 SIGKILL cycles of the qcow2 crash-consistency test (CI runs 50).
# Not a benchmark of speed: a longer run of tests/integration/qcow2-crash.sh.
#   bench/qcow2-crash.sh [--only N] [--new-seeds] [--kill-ms M | --kill-at-write K|random] [--keep DIR] [CYCLES]
# --only N: every cycle uses cycle N's image options and write list (e.g. 17:
# cluster_size=512,refcount_bits=1); --new-seeds: N's options, a fresh write
# list per cycle; --kill-ms M: kill within the first M ms (default 500);
# --kill-at-write K: kill once K of the 190 writes completed (random: 1-190);
# --keep DIR: on a failure keep the crashed image, commands and output there.
# The same knobs as environment variables: CRASH_ONLY, CRASH_NEW_SEEDS,
# CRASH_KILL_MS, CRASH_KILL_AT_WRITE, CRASH_KEEP, CRASH_CYCLES (see the test's header).
while [ $# -gt 0 ]; do
    case $1 in
        --only) export CRASH_ONLY=$2; shift 2 ;;
        --new-seeds) export CRASH_NEW_SEEDS=1; shift ;;
        --kill-ms) export CRASH_KILL_MS=$2; shift 2 ;;
        --kill-at-write) export CRASH_KILL_AT_WRITE=$2; shift 2 ;;
        --keep) export CRASH_KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
        [0-9]*) export CRASH_CYCLES=$1; shift ;;
        *) echo "bench/qcow2-crash.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case ${CRASH_KILL_AT_WRITE:-random} in random|[1-9]|[1-9][0-9]|1[0-8][0-9]|190) ;;
    *) echo "bench/qcow2-crash.sh: --kill-at-write takes 1-190 or random, not '$CRASH_KILL_AT_WRITE'" >&2; exit 2 ;; esac
for v in CRASH_ONLY CRASH_KILL_MS CRASH_CYCLES; do
    case ${!v:-1} in ''|*[!0-9]*|0) echo "bench/qcow2-crash.sh: $v must be a positive number, not '${!v}'" >&2; exit 2 ;; esac
done
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build} CRASH_CYCLES=${CRASH_CYCLES:-1000} \
    exec bash "$(dirname "$0")/../tests/integration/qcow2-crash.sh"
