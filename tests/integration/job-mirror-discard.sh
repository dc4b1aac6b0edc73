#!/bin/bash
# A write-blocking mirror in READY, and a guest discard in flight beside a
# guest write over the same cluster. The discard reaches the source through
# an export of the source node itself (the job's filter, mirror_top, drops
# discards, as QEMU's does), opened with discard=unmap. An NBD client sends
# a 128 KiB write over two clusters and a discard of the first one back to
# back (32 pairs; the first pair of each two in the other order); the
# source's clusters lie in reverse order on the host, so the qcow2 write is
# two writes and lets the discard in on the first cluster while it writes
# the second: the discard lands after the write's data there, and completes
# first. The write's copy to the target, at its end, marked its clusters
# clean: on the old code that dropped the discard's dirty mark, and the
# target kept the write's data where the source reads zeroes (block-job-
# cancel in READY: the target must be the source at that moment; job-
# complete: the guest reads the target from then on). Now a discard waits
# for the write-blocking copies of its granules. The source and target
# must be equal, and hold in each first cluster the write or the zeroes.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
pairs=32
for end in cancel complete; do
    step "write-blocking mirror, write and discard of one cluster at once, then $end"
    rm -f src.qcow2 tgt.qcow2
    must qemu-img create -q -f qcow2 src.qcow2 $((pairs * 128))k
    # the clusters in reverse order on the host: a write over two is two writes
    fill=()
    for ((c = 2 * pairs - 1; c >= 0; c--)); do fill+=(-c "write -P 0x55 $((c * 64))k 64k"); done
    must qemu-io -f qcow2 "${fill[@]}" src.qcow2 >/dev/null
    must qemu-img create -q -f qcow2 tgt.qcow2 $((pairs * 128))k
    job_daemon_start vbd src --blockdev '{"driver":"qcow2","node-name":"src","discard":"unmap","file":{"driver":"file","filename":"'"$T"'/src.qcow2","discard":"unmap"}}'
    python3 - "$end" "$pairs" <<'PY' || fail "$end: $(tail -20 daemon.log)"
import os, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
end, pairs = sys.argv[1], int(sys.argv[2])
s = Session("qmp.sock", "vbd")
s.run("blockdev-add", driver="qcow2", **{"node-name": "tgt"},
      file={"driver": "file", "filename": os.getcwd() + "/tgt.qcow2"})
s.run("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
                            "copy-mode": "write-blocking"})
s.status("m", "created"); s.status("m", "running"); s.status("m", "ready")
# an export of the source node itself, under the job's filter (whose
# discards stop there, as QEMU's mirror_top's): the guest's discards reach it
s.run("block-export-add", type="nbd", id="direct", **{"node-name": "src"}, name="direct", writable=True)
# the guest: each write and its discard sent back to back, replies read after
import nbdproto as nbd, struct
c = nbd.connect("unix:nbd.sock", timeout=300)
nbd.handshake(c, "direct")
k = 64 * 1024
for i in range(pairs):
    w = nbd.request(nbd.CMD_WRITE, 2 * i, 2 * i * k, 2 * k) + b"\x11" * (2 * k)
    d = nbd.request(nbd.CMD_TRIM, 2 * i + 1, 2 * i * k, k)
    c.sendall(w + d if i % 2 else d + w)  # both orders
for _ in range(2 * pairs):
    magic, err, cookie = struct.unpack(">IIQ", nbd.recvn(c, 16))
    if magic != nbd.SIMPLE_REPLY_MAGIC or err:
        fail(f"request {cookie}: error {err}")
c.sendall(nbd.request(nbd.CMD_FLUSH, 99999, 0, 0))
magic, err, cookie = struct.unpack(">IIQ", nbd.recvn(c, 16))
if err:
    fail(f"flush: error {err}")
c.sendall(nbd.request(nbd.CMD_DISC, 0, 0, 0))
c.close()
if end == "cancel":
    s.run("block-job-cancel", device="m")
    ev = s.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
    if ev["device"] != "m" or "error" in ev:
        fail(f"BLOCK_JOB_COMPLETED {ev}")
else:
    s.run("job-complete", id="m")
    s.completed("m")
PY
    # what the guest reads now (the source, or the target after the pivot)
    must qemu-io -f raw -c "read 0 1" "nbd+unix:///disk?socket=$T/nbd.sock" >/dev/null
    job_daemon_stop vbd
    qcheck src.qcow2
    qcheck tgt.qcow2
    # each first cluster: the write's data or zeroes (whichever landed
    # last); the source and the target must agree
    out=$(qemu-img compare -f qcow2 -F qcow2 src.qcow2 tgt.qcow2 2>&1) || fail "$end: the target is not the source: $out"
    must qemu-img convert -O raw src.qcow2 src.raw
    python3 - src.raw "$pairs" <<'PY' || fail "$end: the source holds neither the write nor the zeroes, or no discard came after its write"
import sys
raw = open(sys.argv[1], "rb").read()
k = 64 * 1024
zeroes = 0
for i in range(int(sys.argv[2])):
    a, b = raw[2 * i * k:(2 * i + 1) * k], raw[(2 * i + 1) * k:(2 * i + 2) * k]
    if b != b"\x11" * k or a not in (b"\x11" * k, bytes(k)):
        sys.exit(1)
    zeroes += a == bytes(k)
print(f"{zeroes} of {sys.argv[2]} discards landed after their write")
if not zeroes:
    sys.exit("no discard landed after its write: the race was not set up")
PY
done
echo ok
