#!/bin/bash
# vbd-img convert to a qcow2 target on tmpfs is copied by threads with the
# split write: each thread's clusters placed on the main loop, their data
# written from the thread, linked on the main loop at the thread's next turn
# (or its end). In guest order and with -W (clusters placed as the threads
# come, as qemu-img -W writes as its coroutines come), from raw and qcow2
# sources: the content is the source's, qemu-img check is clean (every
# placed cluster linked, none leaked, also when the copy fails half way),
# and the allocation is qemu-img's (without host offsets: -W lays the
# clusters out differently from run to run, in both tools).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || skip "/dev/shm is not tmpfs"
[ "$(nproc)" -ge 2 ] || skip "one CPU: the convert copies on one thread"
shm=$(mktemp -d /dev/shm/vbd-test.XXXXXX)
on_exit "rm -rf $shm"
# 32 chunks of data (1 MiB each, every 3 MiB, some with a written zero MiB
# after them) and holes between: many turns for two threads
python3 - "$shm/src.raw" <<'PY'
import os, sys
M = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 96 * M)
for i in range(32):
    os.pwrite(fd, bytes([i % 251 + 1]) * (M - 4096) + os.urandom(4096), i * 3 * M)
    if i % 3 == 0:
        os.pwrite(fd, bytes(M), i * 3 * M + M)
os.close(fd)
PY
qemu-img convert -f raw -O qcow2 "$shm/src.raw" "$shm/src.qcow2"
for f in raw qcow2; do
    opts=("" "-W")
    [ $f = qcow2 ] || opts+=("-m 16 -W" "-o cluster_size=4k -W")
    for opt in "${opts[@]}"; do
        step "$f -> qcow2 on tmpfs, convert $opt"
        rm -f "$shm/dst.qcow2" "$shm/ref.qcow2"
        # shellcheck disable=SC2086 # $opt is words
        must "$VBD_IMG" convert $opt -f $f -O qcow2 "$shm/src.$f" "$shm/dst.qcow2"
        must qemu-img compare -f raw -F qcow2 "$shm/src.raw" "$shm/dst.qcow2" >/dev/null
        qcheck "$shm/dst.qcow2"
        # shellcheck disable=SC2086
        must qemu-img convert $opt -f $f -O qcow2 "$shm/src.$f" "$shm/ref.qcow2"
        diff <(map_shape qcow2 "$shm/dst.qcow2") <(map_shape qcow2 "$shm/ref.qcow2") ||
            fail "$f $opt: the allocation differs from qemu-img's (left: vbd)"
    done
done
# the host sector of guest 48 MiB (chunk 16's data) in the qcow2 source
host=$(qemu-img map --output=json -f qcow2 "$shm/src.qcow2" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["data"] and e["start"] <= 48 << 20 < e["start"] + e["length"] and "offset" in e:
        print((e["offset"] + (48 << 20) - e["start"]) // 512)')
[ -n "$host" ] || fail "no host offset for 48M"
for opt in "" "-W"; do
    step "a source read that fails half way ($opt): the convert fails naming it, every cluster placed is linked"
    rm -f "$shm/dst.qcow2"
    out=$("$VBD_IMG" convert $opt --image-opts -O qcow2 "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$shm/src.qcow2,file.inject-error.0.event=read_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=$host" "$shm/dst.qcow2" 2>&1) &&
        fail "convert from a failing source succeeded"
    grep -q "error while reading at byte [0-9]*: Input/output error" <<<"$out" || fail "not the read's error: $out"
    qcheck "$shm/dst.qcow2"
    # what was copied is the source's: the first chunk at least, whole
    qemu-img compare -f raw -F qcow2 "$shm/src.raw" "$shm/dst.qcow2" >/dev/null 2>&1 &&
        fail "a convert that failed half way copied everything"
    must qemu-io -f qcow2 -c "read -P 1 0 1020k" "$shm/dst.qcow2" >"$T/out"
    grep -q failed "$T/out" && fail "chunk 0 not copied: $(cat "$T/out")"
    step "a target write that fails half way ($opt): the convert fails naming it, the image stays consistent"
    rm -f "$shm/dst.qcow2"
    qemu-img create -q -f qcow2 "$shm/dst.qcow2" 96M
    # host sector 40960 (20 MiB): inside the data clusters of the ~32 MiB written
    out=$("$VBD_IMG" convert $opt -n -f qcow2 --target-image-opts "$shm/src.qcow2" "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$shm/dst.qcow2,file.inject-error.0.event=write_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=40960" 2>&1) &&
        fail "convert to a failing target succeeded"
    grep -q "error while writing at byte [0-9]*: Input/output error" <<<"$out" || fail "not the write's error: $out"
    qcheck "$shm/dst.qcow2"
done
echo PASS
