#!/bin/bash
# test-slow: ThreadSanitizer builds (make build-tsan) of the tools that run
# threads, each run with halt_on_error=1: any report fails the test.
#  vbd-img convert -m 4 between images on tmpfs, the only case where the
#    copy runs on loop threads (img-convert.c convert_threads): raw->raw,
#    qcow2->raw (the source mapped on the main loop, read on the threads),
#    raw->qcow2 and a qcow2 with a backing file -> qcow2 -W (clusters placed
#    on the main loop, data written from the threads); every result equal
#    to its source by qemu-img compare, qcow2 targets qemu-img check clean;
#    strace shows the -m 4 converts start their copy threads ("vbd-convert").
#  vbd-nbd --aio=threads (the file driver's thread pool does the I/O) of a
#    raw file and of a qcow2: nbdcopy writes 4 connections x 64 requests
#    into it while qemu-io reads and writes its own range over a 5th
#    connection and the TSan vbd-bench verifies a pattern over 2 more; the
#    export ends equal to its shadow by qemu-img compare (and over NBD).
# vbd-bench itself runs one loop and no thread of its own: it is the TSan
# build's client here, not a threaded path.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdcopy strace
TSAN_BUILD=${VBD_TSAN_BUILD:-$VBD_ROOT/build-tsan}
TIMG=$TSAN_BUILD/src/tools/vbd-img
TNBD=$TSAN_BUILD/src/tools/vbd-nbd
TBENCH=$TSAN_BUILD/src/tools/vbd-bench
for x in "$TIMG" "$TNBD" "$TBENCH"; do
    [ -x "$x" ] || skip "no ThreadSanitizer build of ${x##*/} (make build-tsan)"
done
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || skip "/dev/shm is not tmpfs"
[ "$(nproc)" -ge 2 ] || skip "one CPU: vbd-img convert copies on one thread"
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1"
shm=$(mktemp -d /dev/shm/vbd-test.XXXXXX)
npid=
on_exit "rm -rf $shm; [ -n \"\$npid\" ] && kill \$npid 2>/dev/null"

tsan_check() { # LOG WHAT: fail with the report if LOG has one
    if grep -q "ThreadSanitizer" "$1"; then
        grep -A40 "WARNING: ThreadSanitizer" "$1" | head -80
        fail "ThreadSanitizer report ($2)"
    fi
}
tsan_run() { # WHAT CMD...: CMD must exit 0 with no report
    local what=$1
    shift
    "$@" >"$T/run.log" 2>&1
    local rc=$?
    tsan_check "$T/run.log" "$what"
    [ $rc = 0 ] || { tail -20 "$T/run.log"; fail "$what: exit status $rc"; }
}

# 40 MiB: data, zeroes and holes in runs of 64 KiB .. 1 MiB, so the threads
# take turns over every kind of chunk
python3 - "$shm/src.raw" <<'PY'
import random, sys
r = random.Random(2525)
with open(sys.argv[1], "wb") as f:
    size, off = 40 << 20, 0
    while off < size:
        n = min(r.choice([64, 128, 512, 1024]) << 10, size - off)
        k = r.random()
        if k < 0.5:
            f.write(r.randbytes(n))
        elif k < 0.7:
            f.write(bytes(n))
        else:
            f.seek(n, 1)
        off += n
    f.truncate(size)
PY
must qemu-img convert -q -f raw -O qcow2 "$shm/src.raw" "$shm/src.qcow2"
# a qcow2 whose top holds every other MiB of src.raw, the rest in its backing file
must qemu-img create -q -f qcow2 "$shm/base.qcow2" 40M
must qemu-img create -q -f qcow2 -b "$shm/base.qcow2" -F qcow2 "$shm/top.qcow2"
python3 - "$shm" <<'PY'
import sys
d = sys.argv[1]
data = open(f"{d}/src.raw", "rb").read()
for i in range(40):
    open(f"{d}/mib.{i}", "wb").write(data[i << 20:(i + 1) << 20])
PY
for i in $(seq 0 39); do
    img=base
    [ $((i % 2)) = 1 ] && img=top
    echo "write -s $shm/mib.$i $((i << 20)) 1M" >>"$shm/$img.cmds"
done
must qemu-io -f qcow2 "$shm/base.qcow2" <"$shm/base.cmds" >/dev/null
must qemu-io -f qcow2 "$shm/top.qcow2" <"$shm/top.cmds" >/dev/null
rm -f "$shm"/mib.*
must qemu-img compare -q -f raw -F qcow2 "$shm/src.raw" "$shm/top.qcow2"

step "vbd-img convert -m 4 (loop threads) on tmpfs: raw, qcow2 and a backing chain"
for c in "raw raw" "qcow2 raw" "raw qcow2" "qcow2 qcow2"; do
    set -- $c
    rm -f "$shm/dst"
    tsan_run "convert -m 4 $1 -> $2" "$TIMG" convert -m 4 -f "$1" -O "$2" "$shm/src.$1" "$shm/dst"
    must qemu-img compare -q -f raw -F "$2" "$shm/src.raw" "$shm/dst"
    [ "$2" = qcow2 ] && qcheck "$shm/dst"
done
rm -f "$shm/dst"
tsan_run "convert -m 4 -W of a backing chain" "$TIMG" convert -m 4 -W -f qcow2 -O qcow2 "$shm/top.qcow2" "$shm/dst"
must qemu-img compare -q -f raw -F qcow2 "$shm/src.raw" "$shm/dst"
qcheck "$shm/dst"
# the -m 4 converts did run on threads: each names itself (prctl PR_SET_NAME)
for c in "raw raw" "qcow2 qcow2"; do
    set -- $c
    rm -f "$shm/dst"
    strace -f -qq -e trace=prctl -o "$T/strace.out" "$TIMG" convert -m 4 -f "$1" -O "$2" "$shm/src.$1" "$shm/dst" >"$T/run.log" 2>&1 ||
        fail "convert -m 4 $1 -> $2 under strace: $(tail -5 "$T/run.log")"
    tsan_check "$T/run.log" "convert -m 4 $1 -> $2 under strace"
    grep -q '"vbd-convert"' "$T/strace.out" || fail "convert -m 4 $1 -> $2 started no copy thread: the threaded copy was not exercised"
done

step "vbd-nbd --aio=threads: qemu-img convert -m 16 -W, qemu-io, vbd-bench --verify and nbdcopy reads at once"
# layout of the 48 MiB export: vbd-bench --verify owns [0, 4M), qemu-io
# [4M, 8M), qemu-img convert writes src.raw at [8M, 48M) through a raw
# window; nbdcopy reads the whole export meanwhile (4 connections x 64)
cp "$shm/src.raw" "$T/src.raw"
truncate -s 4M "$T/shadow.raw"
must qemu-io -f raw "$T/shadow.raw" -c "write -P 0x5a 0 1M" -c "write -P 0xa5 1M 1M" -c "write -P 0x3c 3M 1M" >/dev/null
cat "$T/src.raw" >>"$T/shadow.raw"
for fmt in raw qcow2; do
    rm -f "$T/exp.$fmt"
    must qemu-img create -q -f "$fmt" "$T/exp.$fmt" 48M
    rm -f "$T/nbd.sock"
    "$TNBD" --aio=threads --cache=none -f "$fmt" -x disk -k "$T/nbd.sock" --shared=0 --persistent "$T/exp.$fmt" 2>"$T/vbd-nbd.log" &
    npid=$!
    wait_sock "$T/nbd.sock" "$npid" "$T/vbd-nbd.log"
    uri="nbd+unix:///disk?socket=$T/nbd.sock"
    nbd="file.driver=nbd,file.server.type=unix,file.server.path=$T/nbd.sock,file.export=disk"
    "$TBENCH" --nbd "$uri" -q 2 -d 16 --verify --size 4M >"$T/bench.log" 2>&1 &
    bpid=$!
    qemu-io --image-opts "driver=raw,offset=4M,size=4M,$nbd" -c "aio_write -P 0x5a 0 1M" -c "aio_write -P 0xa5 1M 1M" \
        -c "aio_write -z 2M 1M" -c "aio_write -P 0x3c 3M 1M" -c aio_flush -c "read -P 0x5a 0 1M" -c "read -P 0xa5 1M 1M" \
        -c "read -P 0 2M 1M" -c "read -P 0x3c 3M 1M" >"$T/qemu-io.log" 2>&1 &
    ipid=$!
    nbdcopy --connections=4 --requests=64 "$uri" null: >"$T/nbdcopy.log" 2>&1 &
    cpid=$!
    qemu-img convert -n -m 16 -W -f raw "$T/src.raw" --target-image-opts "driver=raw,offset=8M,size=40M,$nbd" >"$T/convert.log" 2>&1 ||
        { cat "$T/convert.log"; tsan_check "$T/vbd-nbd.log" "vbd-nbd $fmt"; fail "qemu-img convert into vbd-nbd --aio=threads ($fmt)"; }
    wait $cpid || { cat "$T/nbdcopy.log"; tsan_check "$T/vbd-nbd.log" "vbd-nbd $fmt"; fail "nbdcopy out of vbd-nbd --aio=threads ($fmt)"; }
    wait $ipid || { cat "$T/qemu-io.log"; tsan_check "$T/vbd-nbd.log" "vbd-nbd $fmt"; fail "qemu-io over vbd-nbd --aio=threads ($fmt)"; }
    ! grep -q "Pattern verification failed" "$T/qemu-io.log" || fail "qemu-io read back other data ($fmt): $(cat "$T/qemu-io.log")"
    wait $bpid || { cat "$T/bench.log"; tsan_check "$T/vbd-nbd.log" "vbd-nbd $fmt"; fail "vbd-bench --verify over vbd-nbd ($fmt)"; }
    tsan_check "$T/bench.log" "vbd-bench over vbd-nbd ($fmt)"
    # [4M, 48M) over NBD equals its shadow
    must qemu-img compare -q --image-opts "driver=raw,file.driver=file,file.filename=$T/shadow.raw" \
        "driver=raw,offset=4M,$nbd"
    kill -TERM $npid
    wait $npid
    rc=$?
    npid=
    tsan_check "$T/vbd-nbd.log" "vbd-nbd --aio=threads $fmt"
    [ $rc = 0 ] || { tail -20 "$T/vbd-nbd.log"; fail "vbd-nbd exit status $rc ($fmt)"; }
    [ "$fmt" = qcow2 ] && qcheck "$T/exp.qcow2"
    # and so does the image itself
    must qemu-img compare -q --image-opts "driver=raw,file.driver=file,file.filename=$T/shadow.raw" \
        "driver=raw,offset=4M,file.driver=$fmt,file.file.driver=file,file.file.filename=$T/exp.$fmt"
done
echo OK
