#!/bin/bash
# An NBD export deleted and added back, again and again, under 64 requests
# in flight on 4 connections: vbd-stress (random overlapping writes and
# write-zeroes on a few hot clusters, every read checked against its model)
# reconnects (reconnect-delay) and sends again what was in flight. Between
# the delete and the add the node moves to an iothread or back to the main
# loop, in turns: the export is served where the node lives.
#  - after each block-export-del (mode hard) the image on disk, read by
#    qemu-img, holds every write acknowledged before the command, and none
#    issued after its reply (vbd-stress --points);
#  - no request is lost or applied out of order across the reconnects: the
#    image equals the model at the end, qemu-img check is clean.
# qcow2 and raw. EXPORT_READD_SEED, EXPORT_READD_ROUNDS.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
SEED=${EXPORT_READD_SEED:-2424}
ROUNDS=${EXPORT_READD_ROUNDS:-8}
stress_init 3 5

for fmt in qcow2 raw; do
    step "$fmt: $ROUNDS rounds of block-export-del (hard) + iothread move + block-export-add under QD 64 (seed $SEED)"
    rm -f "img.$fmt" p*.raw points
    must qemu-img convert -q -f raw -O "$fmt" init.raw "img.$fmt"
    rm -f qmp.sock nbd.sock
    "$VBD_DAEMON" --object iothread,id=io0 --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off \
        --monitor chardev=q --blockdev "driver=file,node-name=f0,filename=$PWD/img.$fmt" \
        --blockdev "driver=$fmt,node-name=d0,file=f0" --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export type=nbd,id=g,node-name=d0,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
    python3 - "$fmt" "$STRESS" "$SEED" "$ROUNDS" <<'PY' || fail "$fmt: $(tail -20 daemon.log)"
import os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
from stress import Stress, after_some, points
fmt, stress_bin, seed, rounds = sys.argv[1:5]
cwd = os.getcwd()
s = Session("qmp.sock", "vbd")
st = Stress([stress_bin, "--seed", seed, "--ops", str(1 << 40), "--qd", "64", "--hot", "8", "--hot-move", "64",
             "--no-discard", "--init", "init.raw", "--shadow-out", "shadow.raw", "--points", "points",
             "--reconnect-delay", "30", "--nbd", "nbd+unix:///disk?socket=nbd.sock", "--conns", "4"])
pf = open("points", "w")
for r in range(int(rounds)):
    after_some(s, 64, st, f"before round {r}", kinds=("wr",))  # the clients are back and writing
    ts = time.monotonic_ns()
    s.run("block-export-del", id="g", mode="hard")
    ev = s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)["data"]
    tr = time.monotonic_ns()
    if ev["id"] != "g":
        fail(f"BLOCK_EXPORT_DELETED {ev}")
    # nothing reaches the node now: what it holds is on disk
    sh(f"qemu-img convert -U -f {fmt} -O raw '{cwd}/img.{fmt}' p{r}.raw", f"reading the image after delete {r}")
    pf.write(f"{ts} {tr} {cwd}/p{r}.raw\n")
    pf.flush()
    s.run("x-blockdev-set-iothread", **{"node-name": "d0", "iothread": "io0" if r % 2 else None})
    s.run("block-export-add", type="nbd", id="g", **{"node-name": "d0"}, name="disk", writable=True)
    st.alive(f"in round {r}")
points(st.finish(), "the deletes")
PY
    job_daemon_stop vbd-daemon
    [ "$fmt" = qcow2 ] && qcheck img.qcow2
    out=$(qemu-img compare -f "$fmt" -F raw "img.$fmt" shadow.raw 2>&1) || fail "$fmt: the image differs from the model: $out"
done
echo ok
