#!/bin/bash
# NBD exports served on the thread of their node. A qcow2 node d0 lives on
# iothread io0 (a vhost-user-blk export with 2 rings there takes it); an
# NBD export (block-export-add iothread=io0) serves a raw window w over
# d0's last 16 MiB, so both exports write to the one qcow2 node, each in
# its own half. vbd-stress QD 64 on the 2 rings (first 16 MiB) and
# vbd-stress QD 64 over NBD, 4 connections (the window), write at once,
# every read checked against their models, while w's graph (w and d0)
# moves io0 -> io1 -> main loop -> io0 ... (x-blockdev-set-iothread force:
# the NBD connections follow between two requests, the rings hop) and io1
# is deleted and made again each time the graph has left it (refused while
# an NBD connection still runs there: polled until the connections have
# followed). At the end the image holds both models, qemu-img check clean.
# NBD_IOT_ROUNDS moves, NBD_IOT_SEED.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
need_stress
cd "$T"
ROUNDS=${NBD_IOT_ROUNDS:-30}
truncate -s 32M init.raw
mixed_data m1 1 && dd if=m1 of=init.raw bs=1M seek=3 conv=notrunc status=none
mixed_data m2 2 && dd if=m2 of=init.raw bs=1M seek=20 conv=notrunc status=none
dd if=init.raw of=winit.raw bs=1M skip=16 status=none
must qemu-img convert -q -f raw -O qcow2 init.raw d0.qcow2
S=$T/qmp.sock
on_exit 'kill -9 $dpid 2>/dev/null'
stress_daemon vhost d0 --object iothread,id=io1 --blockdev "$(qcow2_node d0 null)" \
    --nbd-server addr.type=unix,addr.path="$T/nbd.sock"
T=$T STRESS=$STRESS ROUNDS=$ROUNDS SEED=${NBD_IOT_SEED:-$RANDOM} python3 - <<'PY' || fail_with_daemon_log "NBD + vhost-user on an iothread under moves"
import os, signal, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
T, seed, rounds = os.environ["T"], int(os.environ["SEED"]), int(os.environ["ROUNDS"])
s = Session(T + "/qmp.sock", "vbd")
s.run("blockdev-add", driver="raw", **{"node-name": "w"}, file="d0", offset=16 << 20, size=16 << 20)
s.run("block-export-add", type="nbd", id="n0", **{"node-name": "w"}, name="w", writable=True, iothread="io0")
common = [os.environ["STRESS"], "--ops", str(1 << 40), "--qd", "64", "--align", "512", "--hot", "4", "--hot-move", "32"]
vu = subprocess.Popen(common + ["--seed", str(seed), "--init", T + "/init.raw", "--range", str(16 << 20),
                                "--shadow-out", T + "/vu.raw", "--vhost-user", T + "/vu.sock", "--queues", "2"],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
nb = subprocess.Popen(common + ["--seed", str(seed + 1), "--init", T + "/winit.raw", "--shadow-out", T + "/nbd.raw",
                                "--nbd", f"nbd+unix:///w?socket={T}/nbd.sock", "--conns", "4"],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for p in (vu, nb):
    print(p.stdout.readline().strip(), file=sys.stderr)  # its seed: running, SIGUSR1 handled
places = ["io1", None, "io0"]
refused = 0  # object-del io1 refused: an NBD connection had not followed yet
for i in range(rounds):
    to = places[i % 3]
    s.run("x-blockdev-set-iothread", **{"node-name": "w"}, iothread=to, force=True)
    if to is None:
        # io1 has no node left; the NBD connections leave it at their next request
        for _ in range(1200):
            r = s.m.cmd("object-del", {"id": "io1"})
            if "error" not in r:
                break
            if "in use by" not in r["error"]["desc"]:
                fail(f"object-del io1: {r}")
            refused += 1
            time.sleep(0.05)
        else:
            fail("io1 still in use 60 s after the graph left it")
        s.run("object-add", **{"qom-type": "iothread", "id": "io1"})
    for p in (vu, nb):
        if p.poll() is not None:
            fail(f"a writer ended during the moves: {p.communicate()[0][-3000:]}")
for p in (vu, nb):
    p.send_signal(signal.SIGUSR1)
for name, p in (("vhost-user", vu), ("nbd", nb)):
    out = p.communicate()[0]
    if p.returncode:
        fail(f"vbd-stress over {name}: {out[-3000:]}")
    print(name, out.strip().splitlines()[-1], file=sys.stderr)
print(f"{rounds} moves; object-del io1 refused {refused} times while a connection was still there", file=sys.stderr)
s.run("block-export-del", id="n0")
s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
PY
stop_daemon
qcheck d0.qcow2
must qemu-img convert -q -f qcow2 -O raw d0.qcow2 final.raw
must cmp -n $((16 << 20)) final.raw vu.raw
must cmp -n $((16 << 20)) final.raw nbd.raw $((16 << 20)) 0
echo ok
