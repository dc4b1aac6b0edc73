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
echo OK
