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
# (a vbd run and the qemu-img run after it), RUNS=1 prints every rep;
# "rerun v/q" counts the runs of each tool taken again because the guest
# handed memory to its host meanwhile (see reported_mib).
# REPORTED_RETRIES=N: at most N retries per run (default 2; 0: none).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
echo "machine: $(machine)${TAX:+; host: $(host_kind)}; medians of $REPS runs"
printf '%-10s %-26s %9s %9s %7s %7s %9s %9s %9s %9s %9s\n' where case "vbd s" "qemu s" ratio worst "vbd cpu" "qemu cpu" "vbd MiB" "qemu MiB" "rerun v/q"
for d in $DIRS; do
    src=$d/vbd-conv-src-$$.raw
    srcq=$d/vbd-conv-src-$$.qcow2
    trap 'rm -f "$src" "$srcq" "$d"/vbd-conv-out-$$*' EXIT
    # MiB of free memory this guest has handed to its host so far (free page
    # reporting; this host's page_reporting module counts them): the next
    # touch of such a page faults on the host, and a page-cache write into
    # it costs ~3x. The output freed before a run (512 MiB) often pushes the
    # guest's waiting free memory over the module's threshold (max_waiting_mib,
    # 1024 here); a pass reported in the window from a run's rm to its end
    # cost vbd 0.276 -> 0.422 s and qemu-img 0.383 -> 0.574 s (median wall,
    # /var/tmp qcow2->raw, 24 runs each, load 12-20; 2026-12-06): which tool
    # a pass lands on decided the /var/tmp rows' medians (0.64x one round,
    # 2.23x another). Such a run is taken again, either tool's, so that
    # both are timed on memory the guest still has. 0 where the host has no
    # such counter.
    reported_mib() {
        local f=/sys/module/page_reporting/parameters/reported_kib
        if [ -r $f ]; then echo $(( $(cat $f) / 1024 )); else echo 0; fi
    }
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
    qemu-img convert -f raw -O raw "$src" "$d/vbd-conv-out-$$.warm"; rm_mark=$(reported_mib); rm -f "$d/vbd-conv-out-$$.warm"; sync
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
        v=() q=() vc=() qc=() vp=() qp=()
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
        # timed_run RERUN_VAR TOOL...: one timed convert from a removed output
        # and a synced disk, into w and c; taken again (at most
        # REPORTED_RETRIES times) while the guest reported memory to its host
        # between the rm and the end (reported_mib). Not runs of 2 s or more
        # (-c, -t none on a disk): a pass costs them a few per cent, and
        # one falls into nearly every such run.
        # The window starts at the rm that freed the memory the run writes
        # into: its own, or the one at the end of the row before (rm_mark).
        timed_run() {
            local -n rerun=$1; shift
            local tries=0
            while :; do
                [ ! -e "$out" ] || rm_mark=$(reported_mib)
                rm -f "$out"; sync; hot_memory
                read -r w c < <(timed "${TAX[@]}" "$@" convert $args "$in" "$out")
                passed=$(($(reported_mib) > rm_mark))
                ((tries < ${REPORTED_RETRIES:-2})) && ((passed)) && (($(echo "$w < 2" | bc))) || break
                tries=$((tries + 1)); rerun=$((rerun + 1))
            done
            # RUNS=1 marks a run timed with a pass in its window anyway (retries used up)
            ((passed)) && w_mark='*' || w_mark=
        }
        vr=0 qr=0
        run_vbd() {
            timed_run vr "$VBD_IMG"
            # the space used once written back (sync: ext4 counts a file's extent
            # tree blocks only then, whether its blocks were reserved or allocated)
            sync; v+=("$w"); vc+=("$c"); vp+=("$w_mark"); vm=$(du -m "$out" | cut -f1)
            qemu-img compare -q -f raw -F "$ext" "$src" "$out" || { echo "$label: vbd output differs!" >&2; exit 1; }
            [ "$ext" = raw ] || qemu-img check -q -f "$ext" "$out" || { echo "$label: qemu-img check of vbd's output failed" >&2; exit 1; }
        }
        run_qemu() {
            timed_run qr qemu-img
            sync; q+=("$w"); qc+=("$c"); qp+=("$w_mark"); qm=$(du -m "$out" | cut -f1)
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
        rm_mark=$(reported_mib); rm -f "$out"; sync
        vs=$(printf '%s\n' "${v[@]}" | median); qs=$(printf '%s\n' "${q[@]}" | median)
        vcs=$(printf '%s\n' "${vc[@]}" | median); qcs=$(printf '%s\n' "${qc[@]}" | median)
        # the lowest ratio of one rep (qemu-img's run / vbd's run just before it)
        worst=$(for i in "${!v[@]}"; do echo "${q[$i]} / ${v[$i]}" | bc -l; done | sort -g | head -1)
        printf '%-10s %-26s %9.3f %9.3f %7.2f %7.2f %9.3f %9.3f %9s %9s %9s\n' "$d" "$label" "$vs" "$qs" "$(echo "$qs / $vs" | bc -l)" \
            "$worst" "$vcs" "$qcs" "$vm" "$qm" "$vr/$qr"
        # RUNS=1: every rep's wall and cpu seconds too (vbd, then qemu-img;
        # '*': the guest reported memory to its host during that run anyway)
        if [ -n "${RUNS:-}" ]; then
            for i in "${!v[@]}"; do printf ' %s/%s%s-%s/%s%s' "${v[$i]}" "${vc[$i]}" "${vp[$i]}" "${q[$i]}" "${qc[$i]}" "${qp[$i]}"; done
            echo
        fi
    done
    rm -f "$src" "$srcq" "$d"/vbd-conv-out-$$*
done
