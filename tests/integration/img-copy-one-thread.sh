#!/bin/bash
# vbd-img dd, commit, compare and rebase (safe) read one chunk at a time:
# each read from the source's file (through qcow2, and through to its
# backing file) and each write to the target is made by vbd-img's own
# thread (VBD_REQ_INLINE, VBD_OPEN_INLINE_WRITES), not handed to a pool
# worker and waited for.
# strace -f (VBD_NO_IO_URING=1: a request the loop hands off is a syscall
# of a pool thread, another pid in the trace) records the reads and writes
# of the images' files: the 1 MiB blocks all made by the main thread.
# The results are qemu-img's byte for byte (compare: its verdict).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace python3
cd "$T"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" VBD_NO_IO_URING=1

# one_thread TRACE MIN FILE...: every read and write of 1 MiB or more of
# the FILEs in TRACE was made by vbd-img's main thread (the pid that ran
# execve), and there were at least MIN (metadata, 64 KiB or less, may
# still go to the pool: not counted)
one_thread() {
    python3 - "$@" <<'PY'
import re, sys
trace, want, files = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
main, pids, n = None, {}, 0
for line in open(trace):
    if main is None and re.match(r'\d+\s+execve\(', line):
        main = line.split()[0]
    m = re.match(r'(\d+)\s+(pread64|preadv2?|pwrite64|pwritev2?)\(\d+<([^>]*)>.*= (\d+)$', line)
    if not m or m.group(3) not in files or int(m.group(4)) < 1 << 20:
        continue
    n += 1
    pids[m.group(1)] = pids.get(m.group(1), 0) + 1
if main is None or set(pids) != {main} or n < want:
    sys.exit('%d reads and writes of 1 MiB or more, by thread: %s (main thread %s; want all of them, at least %d)' % (n, pids, main, want))
PY
}
traced() { # OUT CMD...
    local out=$1
    shift
    strace -f -qq -y --seccomp-bpf -o "$out.st" -e trace=execve,pread64,preadv,preadv2,pwrite64,pwritev,pwritev2 "$@" >"$out.out" 2>&1 ||
        fail "$*: $(tail -3 "$out.out")"
}

# src.qcow2: 16 MiB, 64K clusters, 4 MiB of data in runs (contiguous on the
# host), the rest unallocated; over a backing file (8 MiB of data) that
# shows through it
must qemu-img create -q -f qcow2 back.qcow2 16M
must qemu-io -f qcow2 -c 'write -q -P 9 0 8M' back.qcow2
must qemu-img create -q -f qcow2 -b back.qcow2 -F qcow2 src.qcow2
must qemu-io -f qcow2 -c 'write -q -P 1 1M 2M' -c 'write -q -P 2 6M 1M' -c 'write -q -P 3 12M 1M' src.qcow2

step "dd bs=1M qcow2 (over a backing file) -> raw: reads and writes on vbd-img's thread, the output qemu-img's"
must qemu-img dd -f qcow2 -O raw bs=1M if=src.qcow2 of=q.raw
traced dd "$VBD_IMG" dd -f qcow2 -O raw bs=1M if="$T/src.qcow2" of="$T/v.raw"
cmp q.raw v.raw || fail "dd: the output is not qemu-img's, byte for byte"
# blocks 1, 2, 6 and 12 read from src.qcow2's file, 0, 3, 4, 5 and 7 through
# to back.qcow2's (the rest reads as zeroes), all 16 written
one_thread dd.st 25 "$T/src.qcow2" "$T/back.qcow2" "$T/v.raw" || fail "dd's reads and writes"

step "dd bs=1M count=10 skip=3 qcow2 -> qcow2: the same, and the image qemu-img's"
must qemu-img dd -f qcow2 -O qcow2 bs=1M count=10 skip=3 if=src.qcow2 of=q.qcow2
traced ddq "$VBD_IMG" dd -f qcow2 -O qcow2 bs=1M count=10 skip=3 if="$T/src.qcow2" of="$T/v.qcow2"
qcheck v.qcow2
qemu-img compare -q q.qcow2 v.qcow2 || fail "dd -O qcow2: the output reads differently from qemu-img's"
# blocks 3-7 read (6 from src.qcow2's file, the others from back.qcow2's),
# and 7 written (new clusters, consecutive on the host: one request each)
one_thread ddq.st 12 "$T/src.qcow2" "$T/back.qcow2" "$T/v.qcow2" || fail "dd -O qcow2's reads and writes"

step "commit: the top's data read and the base written on vbd-img's thread, the base qemu-img's byte for byte"
for k in q v; do rm -rf $k && mkdir $k && cp --sparse=always back.qcow2 src.qcow2 $k/; done
must qemu-img commit -q q/src.qcow2
traced commit "$VBD_IMG" commit -q "$T/v/src.qcow2"
cmp q/back.qcow2 v/back.qcow2 || fail "commit: the base is not qemu-img's, byte for byte"
# 2 MiB at 1M, 1 MiB at 6M and at 12M: read and written in chunks of 1 MiB or more
one_thread commit.st 6 "$T/v/src.qcow2" "$T/v/back.qcow2" || fail "commit's reads and writes"
step "compare raw with qcow2 (over a backing file): the reads on vbd-img's thread, the verdict qemu-img's"
must qemu-img convert -f qcow2 -O raw src.qcow2 src.raw
traced cmp "$VBD_IMG" compare -f raw -F qcow2 "$T/src.raw" "$T/src.qcow2"
grep -qx "Images are identical." cmp.out || fail "compare: $(cat cmp.out)"
# 16 MiB of raw in 2 MiB steps (8), the qcow2 side's data and backing reads
one_thread cmp.st 12 "$T/src.raw" "$T/src.qcow2" "$T/back.qcow2" || fail "compare's reads"
must qemu-io -f raw -c 'write -q -P 7 13M 4k' src.raw
rc=0
"$VBD_IMG" compare -f raw -F qcow2 "$T/src.raw" "$T/src.qcow2" >cmpd.out 2>&1 || rc=$?
[ $rc = 1 ] || fail "compare of images that differ: exit $rc, $(cat cmpd.out)"
[ "$(cat cmpd.out)" = "$(qemu-img compare -f raw -F qcow2 src.raw src.qcow2)" ] || fail "compare: $(cat cmpd.out)"

step "rebase -b (safe) onto another backing file: the backing files read on vbd-img's thread, the image as qemu-img's"
must qemu-img create -q -f qcow2 back2.qcow2 16M
must qemu-io -f qcow2 -c 'write -q -P 9 0 4M' -c 'write -q -P 5 4M 4M' back2.qcow2
for k in q v; do rm -rf $k && mkdir $k && cp --sparse=always back.qcow2 back2.qcow2 src.qcow2 $k/; done
must qemu-img rebase -q -b back2.qcow2 -F qcow2 q/src.qcow2
traced rebase "$VBD_IMG" rebase -q -b back2.qcow2 -F qcow2 "$T/v/src.qcow2"
qcheck v/src.qcow2
qemu-img compare -q q/src.qcow2 v/src.qcow2 || fail "rebase: the image reads differently from qemu-img's"
qemu-img compare -q src.qcow2 v/src.qcow2 || fail "rebase: the image's content changed"
# the old and the new backing file where the image does not allocate, in chunks of 1 MiB or more
one_thread rebase.st 4 "$T/v/back.qcow2" "$T/v/back2.qcow2" || fail "rebase's reads"
echo OK
