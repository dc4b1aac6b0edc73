#!/bin/bash
# What a VMM and a guest driver see of a vhost-user-blk export, from
# qemu-storage-daemon 7.2 and from vbd-daemon started with the same
# --blockdev/--export command line (tests/qmp/vu_probe.py: the features
# and protocol features offered, the config space field by field,
# GET_CONFIG/SET_CONFIG at odd sizes, GET_ID, an unknown request; reads,
# writes, flushes, discards and write-zeroes with and without the unmap flag,
# in range and not, aligned and not, the data read back and the image's
# allocated blocks after them, on a fresh image for each daemon).
# Every line must be the same, except the deliberate differences listed
# below with their reasons; a listed line that no longer differs fails too,
# so that the list stays true. Writable and read-only exports, 4096-byte
# blocks on 2 queues with discard=unmap, qcow2 with discard=unmap, raw with
# detect-zeroes.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
img=$T/disk.img
mkimg="truncate -s 64M $img" # how each probe's fresh image is made
qpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$qpid" ] && kill -9 $qpid 2>/dev/null'

# Deliberate differences, "CASES|LINE|why" (CASES: a comma-separated list,
# or * for every case); a line listed for a case must differ there.
deliberate='
*|features|vbd offers no NOTIFY_ON_EMPTY (legacy, Linux drops it), no DISCARD where the node drops discards (no discard=unmap) and no DISCARD/WRITE_ZEROES on a read-only export (qsd offers them and ignores or fails the requests)
*|protocol-features|vbd offers INFLIGHT_SHMFD (requests in flight replayed after a restart: qsd 7.2 has none) and RESET_DEVICE; no PAGEFAULT, BACKEND_SEND_FD, HOST_NOTIFIER (no postcopy or host notifiers)
writable,read-only,raw-detect-zeroes,qcow2-unmap|queue-num|without num-queues= vbd takes up to 16 rings (QEMU asks one per vCPU), qsd exactly one
*|config.size_max|vbd: 1 MiB segments; qsd 0, which Linux raises to a 4 KiB max_segment_size
*|config.seg_max|vbd: 254, as QEMU'"'"'s own virtio-blk with 256-entry rings; qsd 126
*|config.wce|vbd says the write cache is on (it is: writethrough=off), so the guest flushes; qsd says write through over the same write-back cache, and the guest never flushes
4k-2q-unmap,raw-detect-zeroes,qcow2-unmap|config.write_zeroes_may_unmap|vbd: 1 where zeroing may unmap (discard=unmap)
writable|discard 8 blocks at block 24|without discard=unmap vbd offers no DISCARD (above) and fails one sent anyway UNSUPP, as the virtio spec lets it; qsd says done and discards nothing
writable|discard of 0 sectors|the same: no DISCARD offered without discard=unmap
writable|discard of 1 sector at sector 1|the same: no DISCARD offered without discard=unmap
writable|discard of its max sectors|the same: no DISCARD offered without discard=unmap
writable|discard of 128 KiB at 256 KiB|the same: no DISCARD offered without discard=unmap
qcow2-unmap|discard of 128 KiB at 256 KiB, image blocks|vbd gives a qcow2 cluster the guest discarded back to the file system once the L2 table that no longer names it is on disk (at the next flush, lines "after a flush"); qsd at once
qcow2-unmap|write-zeroes unmap of 128 KiB at 768 KiB, image blocks|the same, for zeroes with the unmap flag
*|get-config(32,2)|vbd answers from the offset asked; qsd from the start of the config whatever the offset
*|get-config(0,256)|vbd answers with zeros past the fields it has; qsd answers with no config (a front end asking for more than 60 bytes fails)
*|get-id(64 bytes) used length|the used length: vbd counts the bytes it wrote (20 and the status byte), qsd the whole buffer
*|read past the end used length|the used length: vbd counts the bytes it wrote (the status byte), qsd the whole buffer
*|request type 99 used length|the used length: vbd counts the bytes it wrote (the status byte), qsd the whole buffer
'

# probe CASE BINARY ARGS...: the probe's lines for BINARY's export at $T/vu.sock
probe() {
    local case=$1 bin=$2 pid; shift 2
    rm -f "$T/vu.sock" "$img"
    must $mkimg
    "$bin" "$@" 2>>"$T/$case.log" &
    pid=$!
    [ "$bin" = qemu-storage-daemon ] && qpid=$pid || dpid=$pid
    for _ in $(seq 1200); do [ -S "$T/vu.sock" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
    [ -S "$T/vu.sock" ] || fail "$case: $bin did not start: $(cat "$T/$case.log")"
    PYTHONPATH=$VBD_ROOT/tests/qmp python3 "$VBD_ROOT/tests/qmp/vu_probe.py" "$T/vu.sock" "$img" ||
        fail "$case: the probe failed against $bin: $(tail -5 "$T/$case.log")"
    kill -TERM $pid
    wait $pid || fail "$case: $bin exited with $? after SIGTERM: $(tail -5 "$T/$case.log")"
    qpid= dpid=
}

compare() { # CASE ARGS...
    local case=$1; shift
    step "$case: qemu-storage-daemon and vbd-daemon, $*"
    probe "$case" qemu-storage-daemon "$@" >"$T/$case.qsd"
    probe "$case" "$VBD_DAEMON" "$@" >"$T/$case.vbd"
    ! grep -q -e Sanitizer -e 'runtime error' "$T/$case.log" || fail "$case: $(cat "$T/$case.log")"
    python3 - "$case" "$T/$case.qsd" "$T/$case.vbd" "$deliberate" <<'PY' || fail "$case: vbd-daemon differs from qemu-storage-daemon (above)"
import sys
case, qf, vf, listed = sys.argv[1:]
lines = lambda f: dict(l.split(': ', 1) for l in open(f).read().splitlines())
q, v = lines(qf), lines(vf)
why = {}
for l in listed.strip().splitlines():
    cases, name, reason = l.split('|', 2)
    if cases == '*' or case in cases.split(','):
        why[name] = reason
bad = 0
for k in sorted(q.keys() | v.keys()):
    a, b = q.get(k, '(absent)'), v.get(k, '(absent)')
    if a == b and k in why:
        print('  SAME      %-30s %s, listed as a deliberate difference (%s)' % (k, a, why[k]))
        bad = 1
    elif a == b:
        print('  same      %-30s %s' % (k, a))
    elif k in why:
        print('  differs   %-30s qsd: %s | vbd: %s  (%s)' % (k, a, b, why[k]))
    else:
        print('  DIFFERS   %-30s qsd: %s | vbd: %s' % (k, a, b))
        bad = 1
sys.exit(bad)
PY
}

node="--blockdev driver=file,node-name=file0,filename=$img --blockdev driver=raw,node-name=disk0,file=file0"
vu="type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$T/vu.sock"
compare writable $node --export "$vu,writable=on"
compare read-only --blockdev driver=file,node-name=file0,filename="$img",read-only=on \
    --blockdev driver=raw,node-name=disk0,file=file0,read-only=on --export "$vu,writable=off"
compare 4k-2q-unmap --blockdev driver=file,node-name=file0,filename="$img",discard=unmap \
    --blockdev driver=raw,node-name=disk0,file=file0,discard=unmap \
    --export "$vu,writable=on,logical-block-size=4096,num-queues=2"
compare raw-detect-zeroes --blockdev driver=file,node-name=file0,filename="$img",discard=unmap \
    --blockdev driver=raw,node-name=disk0,file=file0,discard=unmap,detect-zeroes=unmap --export "$vu,writable=on"
mkimg="qemu-img create -q -f qcow2 $img 64M"
compare qcow2-unmap --blockdev driver=file,node-name=file0,filename="$img",discard=unmap \
    --blockdev driver=qcow2,node-name=disk0,file=file0,discard=unmap --export "$vu,writable=on"
echo OK
