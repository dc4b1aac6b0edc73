#!/bin/bash
# vbd-img convert vs qemu-img convert of a 2 GiB raw image with data,
# written zeroes and holes (as ../shared/bench/img-convert.sh lays it
# out), raw -> raw, raw -> qcow2 (also compressed, -c) and, from a qcow2
# copy of it (made by qemu-img), qcow2 -> raw and qcow2 -> qcow2. Ratio =
# qemu time / vbd time (>1: vbd faster); "cpu" is user+system seconds of
# the tool (all its threads), which compares across hosts better than the
# wall time. Every vbd output is compared with the source (qemu-img
# compare) and every qcow2 one checked (qemu-img check); CASES=REGEX runs
# only the rows whose label matches; "worst" is the lowest ratio of one rep
# (a vbd run and the qemu-img run after it), RUNS=1 prints every rep.
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine)${TAX:+; host: $(host_kind)}; medians of $REPS runs"
printf '%-10s %-26s %9s %9s %7s %7s %9s %9s %9s %9s\n' where case "vbd s" "qemu s" ratio worst "vbd cpu" "qemu cpu" "vbd MiB" "qemu MiB"
for d in $DIRS; do
    src=$d/vbd-conv-src-$$.raw
    srcq=$d/vbd-conv-src-$$.qcow2
    trap 'rm -f "$src" "$srcq" "$d"/vbd-conv-out-$$*' EXIT
    python3 - "$src" <<'PY'
import os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * M)
zero = bytes(M)
for i in range(512):
    os.pwrite(fd, os.urandom(M), i * 4 * M)
    os.pwrite(fd, zero, i * 4 * M + M)
os.close(fd)
PY
    qemu-img convert -f raw -O qcow2 "$src" "$srcq"
    # One untimed copy first: on ext4 the first convert after the source is
    # written and synced cost 3.5-3.8 s of system time (vbd-img of main and
    # of convperf4 alike, 0.3 s on the next run; 2026-12-03), and vbd runs
    # first in every rep.
    qemu-img convert -f raw -O raw "$src" "$d/vbd-conv-out-$$.warm"; rm -f "$d/vbd-conv-out-$$.warm"; sync
    # wall (monotonic clock) and cpu (user+sys, from wait4's rusage) seconds
    # of one run of "$@", to the microsecond: /usr/bin/time counts in 10 ms
    # steps, a tenth of the 0.1 s rows (python starts before the clock does)
    timed() {
        python3 -c '
import os, sys, time
t = time.monotonic()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, st, ru = os.wait4(pid, 0)
w = time.monotonic() - t
if os.waitstatus_to_exitcode(st):
    sys.exit(1)
print("%.4f %.4f" % (w, ru.ru_utime + ru.ru_stime))' "$@" || exit 1
    }
    # HOT_MIB=N: touch N MiB of fresh memory and free it. This guest hands
    # free memory back to its host (page_reporting_order=11 on the kernel
    # command line: free 8 MiB blocks are reported after ~2 s); the page
    # cache a run writes may then come from memory the host has to fault
    # in again, or from pages freed a moment before, depending on how long
    # the sync before the run took. Freed just before the run, they are at
    # the head of the free lists, the same for every run.
    hot_memory() {
        [ "${HOT_MIB:-0}" -gt 0 ] || return 0
        python3 -c 'import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b"\1" * (len(b) // 4096)' "$HOT_MIB"
    }
    for case in "raw->raw|-f raw -O raw|raw|raw" "raw->raw -m 16 -W|-f raw -O raw -m 16 -W|raw|raw" \
                "raw->raw -t none|-f raw -O raw -t none -T none|raw|raw" "raw->qcow2|-f raw -O qcow2|qcow2|raw" \
                "raw->qcow2 -m 16 -W|-f raw -O qcow2 -m 16 -W|qcow2|raw" "raw->qcow2 -c|-f raw -O qcow2 -c|qcow2|raw" \
                "qcow2->raw|-f qcow2 -O raw|raw|qcow2" "qcow2->qcow2|-f qcow2 -O qcow2|qcow2|qcow2"; do
        IFS='|' read -r label args ext sfmt <<<"$case"
        [[ $label =~ ${CASES:-.} ]] || continue
        in=$src; [ "$sfmt" = qcow2 ] && in=$srcq
        v=() q=() vc=() qc=()
        out=$d/vbd-conv-out-$$.$ext
        # Each timed run, either tool's, starts from the same state: the
        # output of the run before removed and everything written back
        # (sync: no earlier run's writeback or ext4's discard of its freed
        # blocks overlaps this one; both tools write the target unsafe,
        # without a flush at the end: qemu-img convert's -t default, vbd-img's
        # too), the source warm in the page cache (written and read just
        # before, never dropped: with drop_caches each run would time the
        # shared virtio disk's read of 1 GiB, and evict the other sessions'
        # caches), and with HOT_MIB=N N MiB of memory touched and freed just
        # before (see hot_memory). The tools alternate which one goes first.
        run_vbd() {
            rm -f "$out"; sync; hot_memory
            read -r w c < <(timed "${TAX[@]}" "$VBD_IMG" convert $args "$in" "$out")
            # the space used once written back (sync: ext4 counts a file's extent
            # tree blocks only then, whether its blocks were reserved or allocated)
            sync; v+=("$w"); vc+=("$c"); vm=$(du -m "$out" | cut -f1)
            qemu-img compare -q -f raw -F "$ext" "$src" "$out" || { echo "$label: vbd output differs!" >&2; exit 1; }
            [ "$ext" = raw ] || qemu-img check -q -f "$ext" "$out" || { echo "$label: qemu-img check of vbd's output failed" >&2; exit 1; }
        }
        run_qemu() {
            rm -f "$out"; sync; hot_memory
            read -r w c < <(timed "${TAX[@]}" qemu-img convert $args "$in" "$out")
            sync; q+=("$w"); qc+=("$c"); qm=$(du -m "$out" | cut -f1)
        }
        for r in $(seq "$REPS"); do
            if ((r % 2)); then run_vbd; run_qemu; else run_qemu; run_vbd; fi
        done
        # Not left for the next case (another name when the target format
        # changes): its memory is then freed just before that case's first
        # vbd run, as vbd's output's is before every qemu-img run. This
        # guest hands free memory back to its host (page_reporting on the
        # kernel command line), and memory freed seconds before may cost
        # the next writer more (a 512 MiB tmpfs write: 0.23-0.25 s of
        # system time just after a free, 0.34-0.41 s 3-5 s after it in one
        # series; two later series showed no difference; 2026-12-06).
        rm -f "$out"; sync
        vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
        vcs=$(printf '%s\n' "${vc[@]}" | median); qcs=$(printf '%s\n' "${qc[@]}" | median)
        # the lowest ratio of one rep (qemu-img's run / vbd's run just before it)
        worst=$(for i in "${!v[@]}"; do echo "${q[$i]} / ${v[$i]}" | bc -l; done | sort -g | head -1)
        printf '%-10s %-26s %9.3f %9.3f %7.2f %7.2f %9.3f %9.3f %9s %9s\n' "$d" "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" \
            "$worst" "$vcs" "$qcs" "$vm" "$qm"
        # RUNS=1: every rep's wall and cpu seconds too (vbd, then qemu-img)
        if [ -n "${RUNS:-}" ]; then
            for i in "${!v[@]}"; do printf ' %s/%s-%s/%s' "${v[$i]}" "${vc[$i]}" "${q[$i]}" "${qc[$i]}"; done
            echo
        fi
    done
    rm -f "$src" "$srcq" "$d"/vbd-conv-out-$$*
done
