#!/bin/bash
# A flush with nothing new to make durable makes no fdatasync, and one that
# has never is skipped (the file node's write counts, file.c's
# writes_begun). strace -f (the pool's syscalls: VBD_NO_IO_URING=1, -i
# threads; through io_uring strace would not see them) records every
# fdatasync/fsync and every syscall that changes the image file, and a
# SIGWINCH that vbd-io raises just before and just after each flush command
# (sigraise 28: ignored, a tgkill in the trace) marks where the flush began
# and ended:
#  1. raw (one fdatasync per flush that needs one): a flush that begins
#     after a write to the file that no fdatasync has covered makes one
#     between its marks, and there are no other fdatasyncs (two flushes
#     in a row: the second makes none; a close after a flush: none);
#     writes, write-zeroes (fallocate), discards (a punched hole) and a
#     truncate each make the next flush sync;
#  2. qcow2 (its metadata as well): the same rule for every flush, and no
#     more fdatasyncs than qemu-io makes for the same commands;
#  3. a flush that begins with an aio_write in flight, and the flushes
#     after it: the rule holds, and a flush right after a flush that began
#     with nothing in flight makes none;
#  4. resize --shrink (a table kept in part; whole L2 tables dropped), a
#     resize with bitmaps, bitmap --merge, commit, amend and snapshot -c: no fdatasync without a
#     write to the image since the one before; no more than qemu-img makes
#     for the same verb on a copy of the same image; the results read as
#     qemu-img's.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace python3
cd "$T"
# no leak check under strace: LeakSanitizer cannot stop a traced process's threads
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
TRACED=fdatasync,fsync,pwrite64,pwritev,pwritev2,write,fallocate,ftruncate,ioctl,tgkill

# traced K CMD...: CMD under strace -f, the trace in K.st (file names shown, -y)
traced() {
    local k=$1
    shift
    strace -f -qq -y --seccomp-bpf -o "$k.st" -e trace=$TRACED "$@" >"$k.out" 2>&1 ||
        fail "$k: $* failed: $(tail -3 "$k.out")"
}

# check_trace TRACE IMAGE MODE: the rule above for every flush between two
# marks; MODE exact: every fdatasync is one a flush needed (nothing else
# syncs); any: only the rule. Prints the number of fdatasyncs and fsyncs of IMAGE.
check_trace() {
    python3 - "$@" <<'PY'
import re, sys
import stracecalls  # tests/integration, on PYTHONPATH (lib.sh)
path, image, mode = sys.argv[1], sys.argv[2], sys.argv[3]
WRITES = {'pwrite64', 'pwritev', 'pwritev2', 'write', 'fallocate', 'ftruncate', 'ioctl'}
calls = stracecalls.read_calls(path)  # (name, args, entry line, exit line, result)
marks = []
for name, args, e, x, res in calls:
    if name == 'tgkill' and 'SIGWINCH' in args:
        marks.append(e)
marks.sort()
assert len(marks) % 2 == 0, 'an odd number of marks: %d' % len(marks)
on_image = [c for c in calls if ('<' + image + '>') in c[1].split(',')[0]]
# an ioctl on the image changes it only as BLKDISCARD/BLKZEROOUT (not on files)
writes = [c for c in on_image if c[0] in WRITES and (c[0] != 'ioctl' or 'BLK' in c[1])]
syncs = [c for c in on_image if c[0] in ('fdatasync', 'fsync')]
for c in syncs:
    assert c[4].startswith('0'), 'a sync failed: %r' % (c,)
bad, needed = [], 0
for k in range(0, len(marks), 2):
    p, q = marks[k], marks[k + 1]
    # a write that ended before the flush began and no sync that began after it ended before then
    dirty = [w for w in writes if w[3] < p and not any(s[2] > w[3] and s[3] < p for s in syncs)]
    inside = [s for s in syncs if p < s[2] and s[3] < q]
    if dirty:
        needed += 1
        if not any(s[2] > max(w[3] for w in dirty) for s in inside):
            bad.append('flush %d (trace lines %d-%d): the write at line %d was not synced' % (k // 2 + 1, p + 1, q + 1, dirty[-1][2] + 1))
if bad:
    sys.exit('\n'.join(bad))
if mode == 'exact' and len(syncs) != needed:
    sys.exit('%d fdatasyncs where %d flushes needed one' % (len(syncs), needed))
print(len(syncs))
PY
}

# a flush between two marks
F=(-c 'sigraise 28' -c flush -c 'sigraise 28')
CMDS=(-c 'write -P 1 0 64k' "${F[@]}" "${F[@]}"
      -c 'write -z 64k 64k' "${F[@]}" "${F[@]}"
      -c 'discard 0 4k' "${F[@]}"
      -c 'truncate 4M' "${F[@]}" "${F[@]}"
      -c 'write -P 2 1M 4k' -c 'write -P 3 2M 4k' "${F[@]}" "${F[@]}" "${F[@]}")
export VBD_NO_IO_URING=1

step "raw: a flush syncs the writes, write-zeroes, discards and truncates before it, and nothing else syncs"
must qemu-img create -q -f raw r.raw 2M
traced vraw "$VBD_IO" -f raw -t writeback -i threads -d unmap "${CMDS[@]}" "$T/r.raw"
n=$(check_trace vraw.st "$T/r.raw" exact 2>&1) || fail "raw: $n"
[ "$n" = 5 ] || fail "raw: $n fdatasyncs for 5 flushes that follow a change and 7 that do not"
qemu-io -f raw -c 'read -P 1 4k 60k' -c 'read -P 0 64k 64k' -c 'read -P 2 1M 4k' -c 'read -P 3 2M 4k' \
    -c 'read -P 0 3M 1M' r.raw | grep -q "Pattern verification failed" && fail "raw: the data is not what was written"
[ "$(stat -c %s r.raw)" = $((4 << 20)) ] || fail "raw: truncate 4M left $(stat -c %s r.raw) bytes"

step "qcow2: every flush syncs what came before it, and no more fdatasyncs than qemu-io's"
for k in v q; do
    must qemu-img create -q -f qcow2 $k.qcow2 2M
done
# the two tools side by side (separate traces and images)
traced qq qemu-io -f qcow2 -t writeback -i threads -d unmap "${CMDS[@]}" "$T/q.qcow2" &
qio=$!
traced vq "$VBD_IO" -f qcow2 -t writeback -i threads -d unmap "${CMDS[@]}" "$T/v.qcow2"
wait $qio || exit 1 # traced said why
nv=$(check_trace vq.st "$T/v.qcow2" any 2>&1) || fail "qcow2: $nv"
nq=$(check_trace qq.st "$T/q.qcow2" any 2>&1) || fail "qemu-io's trace: $nq"
[ "$nv" -le "$nq" ] || fail "qcow2: vbd-io made $nv fdatasyncs, qemu-io $nq"
qcheck v.qcow2
qemu-img compare -q q.qcow2 v.qcow2 || fail "qcow2: vbd-io's image reads differently from qemu-io's"
echo "qcow2: vbd-io $nv fdatasyncs, qemu-io $nq"

step "a flush that begins with a write in flight syncs, and so does the next one"
# the aio_write's coroutine ends its write only when the loop runs it
# again, after the flush has begun: the flush sees it in flight
must qemu-img create -q -f raw a.raw 8M
traced va "$VBD_IO" -f raw -t writeback -i threads -c 'aio_write -P 5 0 4M' "${F[@]}" -c aio_flush "${F[@]}" "${F[@]}" "$T/a.raw"
n=$(check_trace va.st "$T/a.raw" any 2>&1) || fail "aio: $n"
[ "$n" = 2 ] || fail "aio: $n fdatasyncs for a flush with a write in flight, the flush after it and a third"
qemu-io -f raw -c 'read -P 5 0 4M' a.raw | grep -q "Pattern verification failed" && fail "aio: the data is not what was written"

step "a write, then exit: the close syncs it, as qemu-io's close flushes (and -t unsafe does not)"
# (vbd's file node closed without a sync: data a tool had written and
# returned on stayed in the page cache only)
must qemu-img create -q -f raw q.raw 8M
must qemu-img create -q -f raw v.raw 8M
for c in writeback unsafe; do
    traced cq qemu-io -f raw -t $c -c 'write -P 7 0 1M' "$T/q.raw"
    traced cv "$VBD_IO" -f raw -t $c -c 'write -P 7 0 1M' "$T/v.raw"
    for k in cq cv; do
        python3 - $k.st "$T/${k#c}.raw" $c >close.out 2>&1 <<'PY' || fail "$k -t $c: $(tail -1 close.out)"
import sys
import stracecalls  # tests/integration, on PYTHONPATH (lib.sh)
path, image, cache = sys.argv[1], sys.argv[2], sys.argv[3]
calls = [c for c in stracecalls.read_calls(path) if c[1].split(',')[0].endswith('<' + image + '>')]
writes = [c[3] for c in calls if c[0] in ('pwrite64', 'pwritev', 'pwritev2')]
syncs = [c[2] for c in calls if c[0] in ('fdatasync', 'fsync')]
assert writes, 'no write of the image traced'
synced = any(s > writes[-1] for s in syncs)
want = cache == 'writeback'
assert synced == want, ('no sync after the last write before the exit' if want else 'a sync with -t unsafe (cache.no-flush)')
PY
    done
done
echo "write then exit: qemu-io and vbd-io sync once with -t writeback, never with -t unsafe"

step "aio_flush waits for the aio requests and syncs nothing, as qemu-io's (a drain, not a flush)"
must qemu-img create -q -f raw q.raw 8M
must qemu-img create -q -f raw v.raw 8M
CMDS=(-c 'aio_write -P 5 0 1M' -c aio_flush -c 'write -P 6 1M 1M')
traced aq qemu-io -f raw -t writeback "${CMDS[@]}" "$T/q.raw" &
qio=$!
traced av "$VBD_IO" -f raw -t writeback "${CMDS[@]}" "$T/v.raw"
wait $qio || exit 1 # traced said why
nq=$(check_trace aq.st "$T/q.raw" any 2>&1) || fail "qemu-io's trace: $nq"
nv=$(check_trace av.st "$T/v.raw" any 2>&1) || fail "aio_flush: $nv"
[ "$nv" -le "$nq" ] || fail "aio_flush: vbd-io made $nv fdatasyncs, qemu-io $nq"
cmp q.raw v.raw || fail "aio_flush: the images differ"
echo "aio_flush: vbd-io $nv fdatasyncs, qemu-io $nq"

step "resize --shrink, bitmap --merge, commit, amend, snapshot -c: no redundant fdatasync, no more than qemu-img's"
# (sizes: what the verbs do more of with more data is more writes between
# the same syncs: 48 extents and a 32 MiB base made the same counts)
must qemu-img create -q -f qcow2 img.qcow2 256M
must qemu-img bitmap --add img.qcow2 b0
args=()
# data on both sides of the shrink's new end (128M)
for i in $(seq 0 11); do args+=(-c "write -q -P $((i + 1)) $((i * 20 + 1))M 512k"); done
must qemu-io -f qcow2 "${args[@]}" img.qcow2
must qemu-img bitmap --add --disable img.qcow2 b1
# 2 GiB, 64K clusters: four L2 tables, the last three dropped whole by a
# shrink to 512M (their references released, the tables punched)
must qemu-img create -q -f qcow2 -o cluster_size=65536 big.qcow2 2G
must qemu-img bitmap --add big.qcow2 b0
args=()
for i in $(seq 0 15); do args+=(-c "write -q -P $((i + 1)) $((i * 128 + 3))M 256k"); done
must qemu-io -f qcow2 "${args[@]}" big.qcow2
must qemu-img bitmap --add --disable big.qcow2 b1
must qemu-img create -q -f qcow2 base.qcow2 64M
must qemu-io -f qcow2 -c 'write -q -P 7 0 8M' base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
args=()
for i in $(seq 0 5); do args+=(-c "write -q -P $((i + 9)) $((i * 4 + 1))M 1M"); done
must qemu-io -f qcow2 "${args[@]}" top.qcow2
# syncs TRACE DIR [strict]: the fdatasyncs and fsyncs of the files in DIR;
# strict: fails (a message on stdout) on one that follows another of its
# file with no write to that file between
syncs() {
    python3 - "$1" "$2" "${3:-}" <<'PY'
import re, sys
WRITES = ('pwrite64', 'pwritev', 'pwritev2', 'write', 'fallocate', 'ftruncate')
n, since, line_no = 0, {}, 0
for line in open(sys.argv[1]):
    line_no += 1
    m = re.match(r'\d+\s+(\w+)\(\d+<([^>]*)>', line)
    if not m or not m.group(2).startswith(sys.argv[2] + '/'):
        continue
    f = m.group(2)
    if m.group(1) in ('fdatasync', 'fsync'):
        if sys.argv[3] == 'strict' and not since.get(f, True):
            print('fdatasync %d (trace line %d) of %s follows the one before with no write between' % (n + 1, line_no, f))
            sys.exit(1)
        n, since[f] = n + 1, False
    elif m.group(1) in WRITES:
        since[f] = True
print(n)
PY
}
# verb_side K ARGS...: in K/ (copies of imgs), K's tool (q: qemu-img, v:
# vbd-img) traced with ARGS, @ standing for K/
verb_side() {
    local k=$1 a f bin=qemu-img args=()
    shift
    rm -rf "$k" && mkdir "$k"
    for f in "${imgs[@]}"; do cp --sparse=always "$f" "$k/"; done
    for a in "$@"; do args+=("${a//@/$T/$k}"); done
    [ $k = v ] && bin=$VBD_IMG
    traced "$k" "$bin" "${args[@]}"
}
verb() { # LABEL LE|ANY IMAGES... -- ARGS (@ stands for this tool's directory of copies; the first image is compared)
    local label=$1 le=$2 imgs=() qside
    shift 2
    while [ "$1" != -- ]; do imgs+=("$1"); shift; done
    shift
    # the two tools side by side (each its own copies and trace)
    verb_side q "$@" &
    qside=$!
    verb_side v "$@"
    wait $qside || exit 1 # traced said why
    local nq nv
    nq=$(syncs q.st "$T/q")
    nv=$(syncs v.st "$T/v" strict) || fail "$label: $nv"
    echo "$label: qemu-img $nq fdatasyncs, vbd-img $nv"
    [ "$le" = any ] || [ "$nv" -le "$nq" ] || fail "$label: vbd-img made $nv fdatasyncs, qemu-img $nq"
    qcheck "v/${imgs[0]}"
    qemu-img compare -q "q/${imgs[0]}" "v/${imgs[0]}" || fail "$label: vbd-img's image reads differently from qemu-img's"
}
# resize --shrink: 13 fdatasyncs where qemu-img makes 11 (a sync of the
# refcounts before the header's, and of an unchanged refcount table), and
# one more per L2 table dropped whole (20 for 8 GiB -> 4 GiB) before
verb "resize --shrink" le img.qcow2 -- resize -q --shrink -f qcow2 @/img.qcow2 128M
verb "resize --shrink, whole tables" le big.qcow2 -- resize -q --shrink -f qcow2 @/big.qcow2 512M
# a resize with bitmaps (two enabled, one disabled, each with bits set):
# stored anew, in use until the close as QEMU keeps them (vbd cleared
# in-use in the new directory, set it again and cleared it at the close:
# 9 fdatasyncs where qemu-img makes 8)
must qemu-img create -q -f qcow2 bm.qcow2 4M
must qemu-io -f qcow2 -c 'write -q -P 1 0 64k' bm.qcow2
must qemu-img bitmap --add bm.qcow2 b0
must qemu-img bitmap --add -g 512k bm.qcow2 b1
must qemu-img bitmap --add bm.qcow2 d0
must qemu-io -f qcow2 -c 'write -q -P 2 1M 64k' -c 'write -q -P 3 3M 8k' bm.qcow2
must qemu-img bitmap --disable bm.qcow2 d0
verb "resize with bitmaps" le bm.qcow2 -- resize -q -f qcow2 @/bm.qcow2 8M
verb "bitmap --merge" le img.qcow2 -- bitmap --merge b0 -f qcow2 @/img.qcow2 b1
verb "commit" le base.qcow2 top.qcow2 -- commit -q @/top.qcow2
verb "amend" le img.qcow2 -- amend -f qcow2 -o lazy_refcounts=on @/img.qcow2
verb "snapshot -c" le img.qcow2 -- snapshot -c s1 @/img.qcow2
echo OK
