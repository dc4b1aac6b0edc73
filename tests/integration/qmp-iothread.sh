#!/bin/bash
# Nodes follow the export's iothread, and x-blockdev-set-iothread moves
# them (vbd/block.h, the concurrency contract). A qcow2 disk (its
# cache-clean timer armed, so that it moves too) behind a vhost-user-blk
# export with 2 rings on 2 iothreads is moved between io0, io1 and the main
# loop over QMP again and again while vbd-bench writes patterns and reads
# them back, with internal snapshots, bitmaps, resizes and queries in
# between; then the export is deleted, the node moved without an export,
# object-del refused while a node lives on the iothread, blockdev-del
# after a move, an NBD export (served where its node lives), an
# nbd client node that cannot move, and the daemon quits with its nodes on
# iothreads. qemu-img check is clean and the NBD-written pattern reads back.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io qemu-nbd
S=$T/qmp.sock
qpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$qpid" ] && kill $qpid 2>/dev/null'
must qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
must qemu-img create -q -f qcow2 "$T/other.qcow2" 16M
truncate -s 16M "$T/remote.img"
rm -f "$T/q.sock"
qemu-nbd -f raw -x q -k "$T/q.sock" --persistent --shared=2 "$T/remote.img" 2>"$T/qemu-nbd.log" &
qpid=$!
wait_sock "$T/q.sock" "$qpid" "$T/qemu-nbd.log"

step "moves under load, export deleted, blockdev-del after a move, nbd refused"
start_daemon --object iothread,id=io0 --object iothread,id=io1 \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=file0,filename="$T/disk.qcow2" \
    --blockdev driver=qcow2,node-name=disk0,file=file0,cache-clean-interval=1 \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$T/vu.sock",writable=on,num-queues=2,iothread.0=io0,iothread.1=io1
wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
PYTHONPATH=$VBD_ROOT/tests/qmp T=$T BENCH=$VBD_BENCH python3 - "$S" <<'PY' || fail_with_daemon_log "QMP session"
import os, subprocess, sys
from qmp import QMP, QMPError
T, BENCH = os.environ["T"], os.environ["BENCH"]
m = QMP(sys.argv[1], negotiate=True)

def ok(cmd, **args):
    try:
        return m.execute(cmd, **args)
    except QMPError as e:
        sys.exit(f"{cmd} {args}: {e}")

def err(cmd, want, **args):
    r = m.cmd(cmd, {k.replace("_", "-"): v for k, v in args.items()})
    if "error" not in r or want not in r["error"]["desc"]:
        sys.exit(f"{cmd} {args}: expected an error with {want!r}, got {r}")

def bench(*args):
    return subprocess.Popen([BENCH, "--vhost-user", f"{T}/vu.sock", "-q", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def finish(p, what):
    out = p.communicate(timeout=600)[0]
    if p.returncode != 0:
        sys.exit(f"vbd-bench {what} failed:\n{out}")
    return out

# as QEMU: a node under an export moves only with force
err("x-blockdev-set-iothread", "is associated with a BlockBackend", node_name="disk0", iothread="io1")
err("x-blockdev-set-iothread", "Cannot find iothread nope", node_name="disk0", iothread="nope", force=True)
err("x-blockdev-set-iothread", "Failed to find node with node-name='nope'", node_name="nope", iothread="io1")
places = ["io1", None, "io0", "io1", None, "io0"]
moves = 0
for rnd in range(4):
    # every byte of a pattern written and read back while the node moves
    p = bench("-d", "16", "--verify", "--size", "32M")
    i = 0
    while p.poll() is None and i < 30:
        ok("x-blockdev-set-iothread", node_name="disk0", iothread=places[i % len(places)], force=True)
        i += 1
    moves += i
    out = finish(p, f"--verify round {rnd}")
    if "read back identical" not in out:
        sys.exit(f"no verify line:\n{out}")
    # mixed load with flushes; control commands between the moves
    p = bench("-d", "32", "-w", "randrw:60", "-n", "20000", "--flush-every", "40", "--size", "32M")
    i = 0
    while p.poll() is None and i < 30:
        ok("x-blockdev-set-iothread", node_name="disk0", iothread=places[(i + rnd) % len(places)], force=True)
        if i == 1:
            ok("blockdev-snapshot-internal-sync", device="disk0", name=f"snap{rnd}")
        if i == 2:
            ok("block-dirty-bitmap-add", node="disk0", name=f"bm{rnd}", persistent=True)
        if i == 3:
            names = [n["node-name"] for n in ok("query-named-block-nodes")]
            assert "disk0" in names and "file0" in names, names
        if i == 4:
            ok("block_resize", node_name="disk0", size=64 * 1048576 + (rnd + 1) * 1048576)
        i += 1
    moves += i
    finish(p, f"randrw round {rnd}")
print(f"{moves} moves under load", file=sys.stderr)
info = [n for n in ok("query-named-block-nodes") if n["node-name"] == "disk0"][0]
snaps = [s["name"] for s in info["image"].get("snapshots", [])]
assert snaps == ["snap0", "snap1", "snap2", "snap3"], snaps
ok("blockdev-snapshot-delete-internal-sync", device="disk0", name="snap2")

# the export goes: the graph it took comes back; then it moves alone
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io1", force=True)
ok("block-export-del", id="e0", mode="hard")  # vbd-bench has gone; its hang-up may not be seen yet
m.wait_event("BLOCK_EXPORT_DELETED")
ok("object-del", id="io1")  # no export and no node uses it any more
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io0")
err("object-del", "is the home of 2 block nodes", id="io0")
# the driver calls of QMP commands follow the node to its iothread
ok("block-dirty-bitmap-add", node="disk0", name="alone", persistent=True)
ok("blockdev-snapshot-internal-sync", device="disk0", name="alone")
ok("block_resize", node_name="disk0", size=80 * 1048576)
ok("x-blockdev-set-iothread", node_name="disk0", iothread=None)
ok("object-add", qom_type="iothread", id="io1")
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io1")

# an NBD export is served where its node lives: nothing moves (io1 keeps
# the graph), and the node moves under it (force), as qsd's
ok("nbd-server-start", addr={"type": "unix", "data": {"path": f"{T}/nbd.sock"}})
ok("block-export-add", type="nbd", id="n0", node_name="disk0", name="disk", writable=True)
err("object-del", "is the home of 2 block nodes", id="io1")
ok("x-blockdev-set-iothread", node_name="disk0", iothread=None, force=True)
ok("object-del", id="io1")
ok("object-add", qom_type="iothread", id="io1")
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io1", force=True)
r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xa5 1M 3M", f"nbd+unix:///disk?socket={T}/nbd.sock"],
                   capture_output=True, text=True)
assert r.returncode == 0 and "wrote" in r.stdout, r
ok("x-blockdev-set-iothread", node_name="disk0", iothread=None, force=True)
ok("block-export-del", id="n0", mode="hard")  # qemu-io has gone; its hang-up may not be seen yet
m.wait_event("BLOCK_EXPORT_DELETED")

# an incremental backup from the persistent bitmap of a node on an
# iothread: its extents are read there (the job's point in time), then
# cleared; the target gets exactly what the NBD client wrote since "alone"
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io1")
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{T}/inc.qcow2", str(80 * 1048576)], check=True)
ok("blockdev-add", driver="qcow2", node_name="inc", file={"driver": "file", "filename": f"{T}/inc.qcow2"})
ok("blockdev-backup", job_id="bk", device="disk0", target="inc", sync="incremental", bitmap="alone")
while m.wait_event("BLOCK_JOB_COMPLETED")["data"]["device"] != "bk":
    pass
ok("blockdev-del", node_name="inc")
bms = [b for n in ok("query-named-block-nodes") if n["node-name"] == "disk0" for b in n.get("dirty-bitmaps", [])]
assert [b["count"] for b in bms if b["name"] == "alone"] == [0], bms
ok("x-blockdev-set-iothread", node_name="disk0", iothread=None)

# blockdev-del of a node that lives on an iothread: closed there, the
# iothread free again
ok("blockdev-add", driver="file", node_name="file1", filename=f"{T}/other.qcow2")
ok("blockdev-add", driver="qcow2", node_name="disk1", file="file1")
ok("x-blockdev-set-iothread", node_name="disk1", iothread="io1")
err("object-del", "is the home of 2 block nodes", id="io1")
ok("blockdev-del", node_name="disk1")
err("object-del", "is the home of 1 block node", id="io1")
ok("blockdev-del", node_name="file1")
ok("object-del", id="io1")

# an nbd client node is bound to the main loop: a graph holding one stays
ok("blockdev-add", driver="nbd", node_name="c0", server={"type": "unix", "path": f"{T}/q.sock"}, export="q")
ok("blockdev-add", driver="raw", node_name="r0", file="c0")
err("x-blockdev-set-iothread", "node 'c0' (driver nbd) is bound to the loop it was opened on", node_name="r0",
    iothread="io0")
ok("x-blockdev-set-iothread", node_name="r0", iothread=None)  # already there
ok("blockdev-del", node_name="r0")
ok("blockdev-del", node_name="c0")
# quit with disk0 on an iothread: it comes back before the iothreads stop
ok("x-blockdev-set-iothread", node_name="disk0", iothread="io0")
PY
stop_daemon
qcheck "$T/disk.qcow2"
must qemu-io -f qcow2 -c "read -P 0xa5 1M 3M" "$T/disk.qcow2" >/dev/null
[ "$(qemu-img info --output=json "$T/disk.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = $((80 * 1048576)) ] ||
    fail "the last block_resize is not in the image"
qemu-img snapshot -l "$T/disk.qcow2" | grep -q alone || fail "the snapshot taken on the iothread is not in the image"
qemu-img snapshot -l "$T/disk.qcow2" | grep -q snap2 && fail "snap2 was deleted"
qemu-img info "$T/disk.qcow2" | grep -q "alone" || fail "the bitmap added on the iothread is not in the image"
must qemu-io -f qcow2 -c "read -P 0xa5 1M 3M" "$T/inc.qcow2" >/dev/null
data=$(qemu-img map --output=json "$T/inc.qcow2" | python3 -c '
import json, sys
r = []
for e in json.load(sys.stdin):
    if e["data"]:
        if r and r[-1][1] == e["start"]:
            r[-1][1] += e["length"]
        else:
            r.append([e["start"], e["start"] + e["length"]])
print(" ".join("%d-%d" % (a, b) for a, b in r))')
[ "$data" = "1048576-4194304" ] ||
    fail "the incremental backup's target holds more or less than the bitmap's extents: $(qemu-img map "$T/inc.qcow2")"

step "the daemon quits under load with the graph on an iothread"
must qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
start_daemon --object iothread,id=io0 \
    --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=file0,filename="$T/disk.qcow2" \
    --blockdev driver=qcow2,node-name=disk0,file=file0,cache-clean-interval=1 \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$T/vu.sock",writable=on,num-queues=2,iothread=io0
wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
"$VBD_BENCH" --vhost-user "$T/vu.sock" -q 2 -d 16 --verify --size 32M >"$T/b.out" 2>&1 || { cat "$T/b.out"; fail "verify"; }
"$VBD_BENCH" --vhost-user "$T/vu.sock" -q 2 -w randwrite -t 30 >"$T/b.out" 2>&1 &
bp=$!
for _ in $(seq 1200); do grep -q "front end connected" "$T/daemon.log" && break; sleep 0.05; done
# the export took the graph to io0: QMP says who lives there
PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$S" <<'PY' || fail "QMP"
import sys
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
r = m.cmd("object-del", {"id": "io0"})
assert "error" in r and "in use by 1 export" in r["error"]["desc"], r
PY
stop_daemon
kill $bp 2>/dev/null; wait $bp 2>/dev/null
qcheck "$T/disk.qcow2"
kill $qpid; wait $qpid 2>/dev/null; qpid=
echo OK
