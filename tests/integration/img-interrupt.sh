#!/bin/bash
# vbd-img commit, convert -m 8 and dd interrupted by SIGINT or SIGTERM in
# the middle: strace delivers the signal at the Nth data write of the tool
# (-e inject=SYSCALL:signal=SIG:when=N+: the same point on every run,
# whatever the load; commit, convert and dd write inline on the tool's
# own thread with pwritev2, counted per thread), the tool dies of it (qemu-img's default handling),
# and then:
#  - commit (the base a qcow2 image half allocated, so the commit both
#    allocates clusters and writes over its own: overwrite runs): the
#    base checks without corruption (leaked clusters allowed), every
#    sector of it holds the base's old data or the overlay's; the overlay
#    checks clean and reads as before; a second commit then completes
#    and the base reads as the overlay did;
#  - commit killed while it empties the overlay (the base flushed): the
#    overlay checks without corruption and reads as before, the base as
#    the overlay;
#  - convert -m 8 -W into qcow2 and dd into qcow2: the target checks
#    without corruption, each sector the source's or zero.
# SIGINT comes early, SIGTERM late: at commit's pwritev2 4 and 16 of
# about 25, convert's 12 and 24 of about 33 (its first ones make the
# target), dd's pwritev2 6 and 40 of about 69. A
# qcow2 target's new clusters mostly read as zeroes then: their L2 tables
# were still in the tool's memory (leaked clusters, no corruption).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace python3
cd "$T"
# no leak check: the tool is killed by the signal
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
export VBD_NO_IO_URING=1 # every data write a syscall strace counts

# interrupted SIG N SYSCALL OUT CMD...: CMD under strace, SIG delivered at
# its Nth SYSCALL (per thread) and every one after; CMD must die of it
interrupted() {
    local sig=$1 n=$2 call=$3 out=$4 rc=0
    shift 4
    # (the group's stderr: bash's "Terminated" for the strace it waited for;
    # env: a test started in the background has SIGINT ignored, and an
    # ignored signal stays ignored across exec)
    rc=$({ strace -f -qq -o /dev/null -e trace="$call" -e inject="$call:signal=$sig:when=$n+" \
        env --default-signal=INT,TERM "$@" >"$out" 2>&1
        echo $?; } 2>/dev/null)
    case $sig:$rc in
    INT:130 | TERM:143) ;;
    *) fail "$* was not stopped by SIG$sig at write $n (exit $rc): $(tail -3 "$out")" ;;
    esac
}

# check_allowed IMG OLD NEW: qemu-img check finds no corruption in IMG
# (qcow2; leaked clusters allowed), and each 512-byte sector of it reads
# as raw file OLD's (or zeroes, OLD "zero") or as raw file NEW's; prints
# how many sectors read as NEW's and not OLD's after WHAT
check_allowed() { # IMG OLD NEW WHAT
    local img=$1 old=$2 new=$3 rc=0
    qemu-img check -q -f qcow2 "$img" >check.out 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check $img (exit $rc): $(tail -5 check.out)"
    must qemu-img convert -f qcow2 -O raw "$img" now.raw
    python3 - now.raw "$old" "$new" >changed.out <<'PY' || fail "$img: a sector that is neither $old's nor $new's: $(cat changed.out)"
import sys
now, new = open(sys.argv[1], 'rb').read(), open(sys.argv[3], 'rb').read()
old = bytes(len(new)) if sys.argv[2] == 'zero' else open(sys.argv[2], 'rb').read()
assert len(now) == len(old) == len(new), (len(now), len(old), len(new))
changed = 0
for i in range(0, len(now), 512):
    s = now[i:i + 512]
    if s == old[i:i + 512]:
        continue
    if s != new[i:i + 512]:
        sys.exit('sector %d (offset %d) is neither' % (i // 512, i))
    changed += 1
print(changed)
PY
    echo "$img: $(cat changed.out) sectors $4 before the signal"
}

# the chain: base.qcow2 (64 MiB, data in its first 32 MiB), over it
# top.qcow2 with data across the whole disk (cluster-aligned and not)
make_chain() {
    rm -f base.qcow2 top.qcow2
    must qemu-img create -q -f qcow2 base.qcow2 64M
    must qemu-io -f qcow2 -c "write -P 0x11 0 32M" base.qcow2
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    must qemu-io -f qcow2 -c "write -P 0x22 1M 12M" -c "write -P 0x33 20M 30M" -c "write -P 0x44 55000 3000" \
        -c "write -P 0x55 60M 4M" -c "write -z 52M 1M" top.qcow2
    must qemu-img convert -f qcow2 -O raw base.qcow2 base-old.raw
    must qemu-img convert -f qcow2 -O raw top.qcow2 view.raw
}

for spec in "INT 4 12 6" "TERM 16 24 40"; do
    read -r sig at_commit at_convert at_dd <<<"$spec"
    {
        step "commit, SIG$sig at write $at_commit"
        make_chain
        interrupted $sig "$at_commit" pwritev2 commit.out "$VBD_IMG" commit -p top.qcow2
        check_allowed base.qcow2 base-old.raw view.raw committed
        qcheck -f qcow2 top.qcow2
        must qemu-img compare -q -f qcow2 -F raw top.qcow2 view.raw
        must "$VBD_IMG" commit -q top.qcow2
        qcheck -f qcow2 base.qcow2
        must qemu-img compare -q -f qcow2 -F raw base.qcow2 view.raw

        step "convert -m 8 -W, SIG$sig at write $at_convert"
        make_chain
        rm -f conv.qcow2
        interrupted $sig "$at_convert" pwritev2 convert.out "$VBD_IMG" convert -m 8 -W -f qcow2 -O qcow2 top.qcow2 conv.qcow2
        check_allowed conv.qcow2 zero view.raw written

        step "dd, SIG$sig at write $at_dd"
        rm -f dd.qcow2
        interrupted $sig "$at_dd" pwritev2 dd.out "$VBD_IMG" dd -f qcow2 -O qcow2 bs=1M if=top.qcow2 of=dd.qcow2
        check_allowed dd.qcow2 zero view.raw written
    }
done

# the commit's last step: the base is flushed, then the overlay emptied
# (its first pwritev, on a pool thread: the L2 table zeroed, then the
# refcounts); killed there, the overlay still reads as before (through the
# base now) and checks without corruption
for sig in INT TERM; do
    step "commit, SIG$sig while it empties the overlay"
    make_chain
    interrupted $sig 1 pwritev commit.out "$VBD_IMG" commit -p top.qcow2
    grep -q "100.00/100%" commit.out || fail "the commit did not reach its end before SIG$sig: $(cat commit.out)"
    qcheck -f qcow2 base.qcow2
    must qemu-img compare -q -f qcow2 -F raw base.qcow2 view.raw
    rc=0
    qemu-img check -q -f qcow2 top.qcow2 >check.out 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check top.qcow2 (exit $rc): $(tail -5 check.out)"
    must qemu-img compare -q -f qcow2 -F raw top.qcow2 view.raw
done
echo "PASS"
