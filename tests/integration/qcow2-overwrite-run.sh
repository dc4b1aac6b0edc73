#!/bin/bash
# A qcow2 write over clusters the image alone holds (COPIED) at consecutive
# host offsets goes to the file as one request (qcow2.c, overwrite_run),
# not one per cluster; anything else in the range (an unallocated cluster,
# one a snapshot shares, a host gap, a zero cluster, subclusters not yet
# allocated) ends the run and takes the per-cluster path. strace counts the
# file's write requests (vbd-io -t writeback -i threads, VBD_NO_IO_URING=1:
# each a pwritev the pool makes); every image is checked, and read back as
# qemu-io's result of the same writes.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace python3
cd "$T"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" VBD_NO_IO_URING=1

# writes IMAGE: the sizes of the write requests to IMAGE in trace v.st
writes() {
    python3 - v.st "$1" <<'PY'
import re, sys
sizes = []
for line in open(sys.argv[1]):
    m = re.match(r'\d+\s+(pwrite64|pwritev2?)\(\d+<([^>]*)>.*= (\d+)$', line)
    if m and m.group(2) == sys.argv[2]:
        sizes.append(int(m.group(3)))
print(' '.join(map(str, sizes)))
PY
}
# both IMAGE-MAKER WRITES...: the same writes by vbd-io (traced) and qemu-io
# on two copies of the image; the results must check clean and read the same
both() {
    local make=$1
    shift
    rm -f v.qcow2 q.qcow2
    eval "$make" || fail "making the image: $make"
    cp --sparse=always v.qcow2 q.qcow2
    local args=() w
    for w in "$@"; do args+=(-c "$w"); done
    strace -f -qq -y --seccomp-bpf -o v.st -e trace=pwrite64,pwritev,pwritev2 \
        "$VBD_IO" -f qcow2 -t writeback -i threads "${args[@]}" "$T/v.qcow2" >v.out 2>&1 || fail "vbd-io: $(tail -3 v.out)"
    qemu-io -f qcow2 -t writeback "${args[@]}" q.qcow2 >q.out 2>&1 || fail "qemu-io: $(tail -3 q.out)"
    qcheck v.qcow2
    qemu-img compare -q q.qcow2 v.qcow2 || fail "vbd-io's image reads differently from qemu-io's after: $*"
}
full() { # a 16 MiB image, 64 KiB clusters, all of it written once (contiguous on the host)
    qemu-img create -q -f qcow2 "$@" v.qcow2 16M && qemu-io -f qcow2 -c 'write -q -P 1 0 16M' v.qcow2 >/dev/null
}

step "1 MiB over written clusters: one request, unaligned ends too"
both full 'write -P 2 1M 1M' 'write -P 3 4194000 1048600'
w=$(writes "$T/v.qcow2")
[ "$w" = "1048576 1048600" ] || fail "writes over allocated clusters: $w (want one 1 MiB request and one of 1048600 bytes)"

step "a snapshot shares the clusters: copied on write, cluster by cluster, data right"
both 'full && qemu-img snapshot -c s1 v.qcow2' 'write -P 4 1M 1M' 'write -P 5 1M 1M'
w=$(writes "$T/v.qcow2")
# the second write finds the first's new clusters, COPIED and consecutive: one request
case " $w " in *" 1048576 "*) ;; *) fail "after copy-on-write, a write over the new clusters: $w" ;; esac
qemu-img snapshot -l v.qcow2 | grep -q s1 || fail "snapshot lost"
qemu-io -f qcow2 -c 'read -P 1 0 1M' -c 'read -P 5 1M 1M' v.qcow2 | grep -q "verification failed" && fail "data after copy-on-write"
qemu-img convert -l snapshot.name=s1 -O raw v.qcow2 s1.raw && qemu-io -f raw -c 'read -P 1 0 16M' s1.raw |
    grep -q "verification failed" && fail "the snapshot's data changed"

step "holes, zero clusters and host gaps end the run"
both 'qemu-img create -q -f qcow2 v.qcow2 16M && qemu-io -f qcow2 -c "write -q -P 1 0 256k" -c "write -q -P 1 512k 256k" -c "write -q -P 1 320k 64k" -c "write -q -z 1M 256k" -c "write -q -P 1 1280k 128k" v.qcow2 >/dev/null' \
    'write -P 6 0 1536k'
w=$(writes "$T/v.qcow2")
case " $w " in *" 1572864 "*) fail "one request over holes, zero clusters and a host gap: $w" ;; esac

step "extended L2: subclusters not yet allocated end the run"
both 'qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k v.qcow2 16M && qemu-io -f qcow2 -c "write -q -P 1 0 128k" -c "write -q -P 1 132k 4k" -c "write -q -P 1 192k 64k" v.qcow2 >/dev/null' \
    'write -P 7 0 256k' 'write -P 8 0 128k'
step "commit into an allocated base: 1 MiB requests, written by vbd-img's own thread, the base as qemu-img's"
# (VBD_OPEN_INLINE_WRITES: without, a 1 MiB buffered write goes to a pool
# worker, here another pid in the trace, and the copy waits for it)
must qemu-img create -q -f qcow2 b.qcow2 8M
must qemu-io -f qcow2 -c 'write -q -P 1 0 8M' b.qcow2
must qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
must qemu-io -f qcow2 -c 'write -q -P 2 1M 1M' -c 'write -q -P 3 4M 2M' -c 'write -q -P 4 7M 64k' t.qcow2
for k in q v; do rm -rf $k && mkdir $k && cp --sparse=always b.qcow2 t.qcow2 $k/; done
must qemu-img commit -q q/t.qcow2
strace -f -qq -y --seccomp-bpf -o v.st -e trace=pwrite64,pwritev,pwritev2 "$VBD_IMG" commit -q "$T/v/t.qcow2" >v.out 2>&1 ||
    fail "vbd-img commit: $(tail -3 v.out)"
cmp q/b.qcow2 v/b.qcow2 || fail "commit: the base is not qemu-img's, byte for byte"
python3 - v.st "$T/v/b.qcow2" <<'PY' || fail "commit's writes to the base"
import re, sys
main, sizes, others = None, [], []
for line in open(sys.argv[1]):
    m = re.match(r'(\d+)\s+(pwrite64|pwritev2?)\(\d+<([^>]*)>.*= (\d+)$', line)
    if not m or m.group(3) != sys.argv[2]:
        continue
    sizes.append(int(m.group(4)))
    others.append(m.group(1))
pids = set(others)
big = [x for x in sizes if x >= 1 << 20]
# 1 MiB at 1M, 2 MiB at 4M in chunks of at most 2 MiB: at least two requests of 1 MiB or more
if len(big) < 2 or len(pids) != 1:
    sys.exit('sizes %s from threads %s' % (sizes, sorted(pids)))
PY
echo OK
