#!/bin/bash
# The quorum filter (issue 14 part 3) against qemu-storage-daemon 7.2 and
# qemu-io: tests/qmp/diff-quorum.jsonl runs on both daemons (three children,
# one corrupted with qemu-io: the majority's data and QUORUM_REPORT_BAD;
# rewrite-corrupted repairs the child; vote-threshold=3 gives EIO and
# QUORUM_FAILURE; a child failing reads through blkdebug is tolerated;
# QEMU's errors for bad options, word for word). Then the --blockdev keyval
# form on qcow2 children read back by qemu-img, fifo, a write no quorum of
# children took, the model-based stress test through a quorum node (every
# child ends equal to the model), and hostile options as one-line errors.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON

step "QMP and NBD: replies, data and events equal to qemu-storage-daemon's"
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-quorum.jsonl" \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" || fail "qmpdiff found differences (above)"

step "a guest reading a corrupted range over and over: QUORUM_REPORT_BAD at most once a second, as qemu-storage-daemon"
# 50 reads in one qemu-io; both daemons must hold the events back (QEMU:
# the first at once, the latest of each second when it ends). The count
# depends on how long the reads take on a loaded host: asserted is that it
# is below one per read and at most one a second from the first read to the
# last event, plus the first and the last (a fixed "at most 10" failed
# when a loaded host stretched the reads past 10 s), on both.
for d in q v; do
    mkdir -p "$T/rl$d"
    for x in a b c; do must qemu-img create -q -f raw "$T/rl$d/$x.img" 1M; done
    must qemu-io -f raw -c "write -P 0x66 0 64k" "$T/rl$d/c.img" >/dev/null
done
python3 - "$VBD_ROOT/tests/qmp" "$T" "$VBD_DAEMON" <<'PY' || fail "event rate limit (above)"
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from qmp import QMP
T, vbd = sys.argv[2], sys.argv[3]
counts = {}
for d, binary in (("q", "qemu-storage-daemon"), ("v", vbd)):
    dd = f"{T}/rl{d}"
    args = [binary, "--chardev", f"socket,id=m,path={dd}/qmp.sock,server=on,wait=off", "--monitor", "chardev=m",
            "--nbd-server", f"addr.type=unix,addr.path={dd}/nbd.sock"]
    for x in "abc":
        args += ["--blockdev", f"driver=file,node-name=f{x},filename={dd}/{x}.img"]
    args += ["--blockdev", '{"driver":"quorum","node-name":"q","children":["fa","fb","fc"],"vote-threshold":2}',
             "--export", "type=nbd,id=e,node-name=q,name=q"]
    p = subprocess.Popen(args, stderr=open(f"{dd}/daemon.log", "w"))
    try:
        for _ in range(600):
            if os.path.exists(f"{dd}/qmp.sock"):
                break
            time.sleep(0.05)
        m = QMP(f"{dd}/qmp.sock")
        m.execute("qmp_capabilities")
        cmds = []
        for _ in range(50):
            cmds += ["-c", "read -P 0 0 4k"]
        t0 = time.monotonic()
        r = subprocess.run(["qemu-io", "-f", "raw", "-r", f"nbd+unix:///q?socket={dd}/nbd.sock"] + cmds,
                           capture_output=True, text=True)
        if r.stdout.count("read 4096/4096") != 50:
            sys.exit(f"{binary}: not 50 good reads: {r.stdout[-300:]}{r.stderr}")
        n, last = 0, t0
        try:
            while True:  # the last one comes about a second after the reads
                ev = m.wait_event("QUORUM_REPORT_BAD", timeout=2.5)
                last = time.monotonic()
                if ev["data"]["node-name"] != "fc":
                    sys.exit(f"{binary}: {ev}")
                n += 1
        except (TimeoutError, OSError):
            pass
        counts[binary] = n, round(last - t0, 1)
    finally:
        p.terminate()
        rc = p.wait()
    log = open(f"{dd}/daemon.log").read()
    if rc != 0 or "Sanitizer" in log or "runtime error" in log:
        sys.exit(f"{binary} exited {rc}: {log}")
print("    QUORUM_REPORT_BAD events for 50 bad reads (count, seconds from the first read to the last event):", counts)
if any(n < 1 or n >= 50 or n > int(secs) + 2 for n, secs in counts.values()):
    sys.exit("expected at least one, fewer than one per read and at most one a second (+2) on both")
PY

step "qcow2 children: writes reach all three, a majority outvotes a corrupted one (vbd-io)"
for x in a b c; do must qemu-img create -q -f qcow2 "$T/$x.qcow2" 4M; done
Q="driver=quorum,vote-threshold=2"
i=0
for x in a b c; do
    Q="$Q,children.$i.driver=qcow2,children.$i.node-name=c$x,children.$i.file.driver=file,children.$i.file.filename=$T/$x.qcow2"
    i=$((i + 1))
done
must "$VBD_IO" --image-opts "$Q" -c "write -P 0x5a 0 1M" -c "write -z 1M 64k" -c "write -P 0x5b 3M 4k" -c "flush" >/dev/null
for x in a b c; do
    qcheck -f qcow2 "$T/$x.qcow2"
    qemu-io -f qcow2 -r "$T/$x.qcow2" -c "read -P 0x5a 0 1M" -c "read -P 0 1M 64k" -c "read -P 0x5b 3M 4k" |
        grep -c "^read" | grep -qx 3 || fail "$x.qcow2 does not hold what was written through the quorum"
done
must qemu-io -f qcow2 -c "write -P 0x77 512k 8k" "$T/b.qcow2" >/dev/null
out=$("$VBD_IO" --image-opts "$Q" -c "read -P 0x5a 0 1M" 2>&1)
[[ $out == "read 1048576/1048576 bytes at offset 0"* ]] || fail "majority read: $out"

step "read-pattern=fifo reads the first child that answers"
must qemu-img create -q -f raw "$T/f0.raw" 1M
must qemu-img create -q -f raw "$T/f1.raw" 1M
must qemu-io -f raw -c "write -P 0x11 0 1M" "$T/f0.raw" >/dev/null
must qemu-io -f raw -c "write -P 0x22 0 1M" "$T/f1.raw" >/dev/null
F="driver=quorum,vote-threshold=1,read-pattern=fifo,children.0.driver=file,children.0.filename=$T/f0.raw"
F="$F,children.1.driver=file,children.1.filename=$T/f1.raw"
out=$("$VBD_IO" --image-opts "$F" -c "read -P 0x11 512k 8k" 2>&1)
[[ $out == "read 8192/8192 bytes at offset 524288"* ]] || fail "fifo read of child 0: $out"
FB="driver=quorum,vote-threshold=1,read-pattern=fifo,children.0.driver=raw,children.0.file.driver=blkdebug"
FB="$FB,children.0.file.image.driver=file,children.0.file.image.filename=$T/f0.raw,children.0.file.inject-error.0.event=read_aio"
FB="$FB,children.1.driver=file,children.1.filename=$T/f1.raw"
out=$("$VBD_IO" --image-opts "$FB" -c "read -P 0x22 512k 8k" 2>&1)
[[ $out == "read 8192/8192 bytes at offset 524288"* ]] || fail "fifo past a failing child: $out"

step "a write fewer than vote-threshold children took fails, with the children's error"
W="driver=quorum,vote-threshold=2,children.0.driver=file,children.0.filename=$T/f0.raw"
W="$W,children.1.driver=raw,children.1.file.driver=blkdebug,children.1.file.image.driver=file"
W="$W,children.1.file.image.filename=$T/f1.raw,children.1.file.inject-error.0.event=write_aio,children.1.file.inject-error.0.errno=28"
out=$("$VBD_IO" --image-opts "$W" -c "write -P 1 0 4k" 2>&1)
[ "$out" = "write failed: No space left on device" ] || fail "write with 1 of 2 children: $out"
out=$("$VBD_IO" --image-opts "${W/vote-threshold=2/vote-threshold=1}" -c "write -P 3 0 4k" 2>&1)
[[ $out == "wrote 4096/4096 bytes at offset 0"* ]] || fail "write with 1 of 2 children, threshold 1: $out"
qemu-io -f raw -r "$T/f0.raw" -c "read -P 3 0 4k" | grep -q "^read 4096/4096" || fail "the write did not reach child 0"

step "the model-based stress test (tests/stress/vbd-stress) through a quorum of three raw files"
need_stress
head -c 2M /dev/urandom >"$T/init.raw" && truncate -s 8M "$T/init.raw"
S3="driver=quorum,vote-threshold=2"
for i in 0 1 2; do
    cp "$T/init.raw" "$T/s$i.raw"
    S3="$S3,children.$i.driver=raw,children.$i.file.driver=file,children.$i.file.filename=$T/s$i.raw"
done
out=$(timeout -k 10 600 "$STRESS" --seed 77 --ops 1500 --init "$T/init.raw" --shadow-out "$T/shadow.raw" --no-discard \
      --image-opts "$S3" 2>&1) || fail "vbd-stress through quorum, seed 77: $(echo "$out" | tail -5)"
for i in 0 1 2; do must qemu-img compare -q -f raw -F raw "$T/s$i.raw" "$T/shadow.raw"; done

step "hostile options: one-line errors"
C2="children.0.driver=file,children.0.filename=$T/s0.raw,children.1.driver=file,children.1.filename=$T/s1.raw"
must_fail_with "threshold may not exceed children count" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=3,$C2" -c "read 0 512"
must_fail_with "Parameter 'vote-threshold' expects a value >= 1" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=0,$C2" -c "read 0 512"
must_fail_with "Parameter 'vote-threshold' is missing" "$VBD_IO" --image-opts "driver=quorum,$C2" -c "read 0 512"
must_fail_with "Parameter 'children' is missing" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=1" -c "read 0 512"
must_fail_with "Option children is not a valid array" "$VBD_IO" --image-opts \
    "driver=quorum,vote-threshold=1,children.0.driver=file,children.0.filename=$T/s0.raw,children.2.driver=file,children.2.filename=$T/s1.raw" -c "read 0 512"
must_fail_with "Parameter 'read-pattern' does not accept value 'x'" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=1,read-pattern=x,$C2" -c "read 0 512"
must_fail_with "quorum: blkverify=on is not supported by vbd" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=2,blkverify=on,$C2" -c "read 0 512"
truncate -s 4M "$T/s1.raw"
must_fail_with "quorum: children differ in size" "$VBD_IO" --image-opts "driver=quorum,vote-threshold=1,$C2" -c "read 0 512"
echo OK
