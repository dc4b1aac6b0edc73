#!/bin/bash
# blockdev-del of a node on an iothread whose driver holds children of its
# own (beside file and backing), as libvirt deletes a disk's nodes after
# the unplug, against vbd-daemon and qemu-storage-daemon 7.2 with the same
# commands:
#  1. qcow2 with an external data file, written through an NBD export;
#  2. the same image kind, no export;
#  3. fleecing: copy-before-write over a qcow2 (its target a qcow2 over the
#     source, snapshot-access over it), the guest's export on the
#     copy-before-write node written while the point in time is read
#     through the other export; then the nodes deleted top down;
#  4. a vmdk of two extent files (twoGbMaxExtentSparse), written.
# The nodes reach io0 three ways: ve (vbd) by their exports' iothread=io0,
# the writes served there; vs (vbd) and qs (qsd) by x-blockdev-set-iothread
# once their exports are gone (qsd 7.2 aborts deleting an NBD export whose
# node is on an iothread); case 2 by x-blockdev-set-iothread in all three.
# Each blockdev-del must succeed and the daemon go on (vbd's aborted on
# its graph-thread assertion: the driver's close runs on the iothread and
# dropped its own children there: the data file, the target, the extents);
# the data written is in the images, which check clean; the point in time
# read the data from before the writes.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io qemu-storage-daemon
cd "$T"
for w in ve vs qs; do
    must qemu-img create -q -f qcow2 -o data_file="$T/$w-d1.data" $w-d1.qcow2 4M
    must qemu-img create -q -f qcow2 -o data_file="$T/$w-d2.data" $w-d2.qcow2 4M
    must qemu-img create -q -f qcow2 $w-src.qcow2 4M
    must qemu-io -f qcow2 -c "write -P 0x11 0 4M" $w-src.qcow2 >/dev/null
    must qemu-img create -q -f qcow2 -b "$T/$w-src.qcow2" -F qcow2 $w-tmp.qcow2 4M
    must qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse $w-x.vmdk 4M
done
S=$T/v.qmp
on_exit 'kill -9 $dpid $qpid 2>/dev/null'
start_daemon --object iothread,id=io0 --chardev socket,id=m,path="$S",server=on,wait=off --monitor chardev=m
qemu-storage-daemon --object iothread,id=io0 --chardev socket,id=m,path="$T/q.qmp",server=on,wait=off --monitor chardev=m 2>q.log &
qpid=$!
wait_sock "$T/q.qmp" "$qpid" q.log
T=$T python3 - <<'PY' || fail_with_daemon_log "blockdev-del of nodes on an iothread"
import os, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
T = os.environ["T"]
def run(m, who, cmd, **args):
    r = m.cmd(cmd, args)
    if "error" in r:
        sys.exit(f"FAIL: {who}: {cmd} {args}: {r['error']}")
    return r["return"]
def qio(who, uri, *cmds):
    args = ["qemu-io", "-f", "raw"] + (["-r"] if all(c.startswith("read") for c in cmds) else [])
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [uri], capture_output=True, text=True)
    if r.returncode or "fail" in r.stdout.lower() or "error" in r.stdout.lower():
        sys.exit(f"FAIL: {who}: qemu-io {cmds} on {uri}: {r.stdout} {r.stderr}")
def qcow2(w, name, **more):
    return dict(driver="qcow2", **{"node-name": name}, file={"driver": "file", "filename": f"{T}/{w}-{name}.qcow2"}, **more)
# ve: vbd, the nodes moved by their exports (iothread=io0), written on
# io0; vs and qs: vbd and qsd, written through exports on the main loop,
# then moved by x-blockdev-set-iothread (qsd 7.2 aborts deleting an NBD
# export whose node is on an iothread)
sessions = {}
for w in ("ve", "vs", "qs"):
    who = {"v": "vbd-daemon", "q": "qemu-storage-daemon"}[w[0]]
    sock = f"{T}/{w[0]}-nbd.sock"
    uri = lambda name: f"nbd+unix:///{name}?socket={sock}"
    if w[0] not in sessions:
        sessions[w[0]] = QMP(f"{T}/{w[0]}.qmp", negotiate=True)
        run(sessions[w[0]], who, "nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    m = sessions[w[0]]
    def export_add(eid, node, writable=True):
        more = {"iothread": "io0"} if w == "ve" and writable else {}
        run(m, who, "block-export-add", type="nbd", id=eid, **{"node-name": node}, name=node, writable=writable, **more)
    def move(node):
        """vs, qs: the node (and what is under it) to io0, its exports gone"""
        if w != "ve":
            run(m, who, "x-blockdev-set-iothread", **{"node-name": node, "iothread": "io0"})
    def export_del(eid):
        run(m, who, "block-export-del", id=eid)
        m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)
    # 1. qcow2 with a data file, on io0, written through its export
    run(m, who, "blockdev-add", **qcow2(w, "d1"))
    export_add("e1", "d1")
    qio(who, uri("d1"), "write -P 0x21 64k 128k")
    export_del("e1")
    move("d1")
    run(m, who, "blockdev-del", **{"node-name": "d1"})
    # 2. moved by x-blockdev-set-iothread, no export
    run(m, who, "blockdev-add", **qcow2(w, "d2"))
    run(m, who, "x-blockdev-set-iothread", **{"node-name": "d2", "iothread": "io0"})
    run(m, who, "blockdev-del", **{"node-name": "d2"})
    # 3. fleecing, the guest's node on io0
    run(m, who, "blockdev-add", **qcow2(w, "src"))
    run(m, who, "blockdev-add", **qcow2(w, "tmp", backing="src"))
    run(m, who, "blockdev-add", driver="copy-before-write", **{"node-name": "cbw"}, file="src", target="tmp")
    run(m, who, "blockdev-add", driver="snapshot-access", **{"node-name": "fl"}, file="cbw")
    export_add("guest", "cbw")
    export_add("efl", "fl", writable=False)
    qio(who, uri("cbw"), "write -P 0x22 1M 256k")
    qio(who, uri("fl"), "read -P 0x11 1M 256k")
    export_del("efl")
    export_del("guest")
    move("fl")
    for node in ("fl", "cbw", "tmp", "src"):
        run(m, who, "blockdev-del", **{"node-name": node})
    # 4. a vmdk of several extent files
    run(m, who, "blockdev-add", driver="vmdk", **{"node-name": "x"}, file={"driver": "file", "filename": f"{T}/{w}-x.vmdk"})
    export_add("ex", "x")
    qio(who, uri("x"), "write -P 0x23 2M 64k")
    export_del("ex")
    move("x")
    run(m, who, "blockdev-del", **{"node-name": "x"})
    left = [n["node-name"] for n in run(m, who, "query-named-block-nodes")]
    if left:
        sys.exit(f"FAIL: {who}: nodes left after the deletes: {left}")
    print(f"{w}: {who}: every blockdev-del done")
PY
stop_daemon
kill -TERM $qpid; wait $qpid || fail "qemu-storage-daemon exited with $?: $(cat q.log)"
# reads_as FMT IMG WHAT QEMU-IO-COMMANDS...: each read -P must pass
reads_as() {
    local fmt=$1 img=$2 what=$3 args=() c out
    shift 3
    for c in "$@"; do args+=(-c "$c"); done
    out=$(qemu-io -f "$fmt" "${args[@]}" "$img" 2>&1) || fail "$img: qemu-io: $out"
    ! grep -q -i "fail" <<<"$out" || fail "$img: $what: $out"
}
for w in ve vs qs; do
    for i in d1.qcow2 d2.qcow2 src.qcow2 tmp.qcow2 x.vmdk; do qcheck $w-$i; done
    reads_as qcow2 $w-d1.qcow2 "not the data written" "read -P 0x21 64k 128k" "read -P 0 0 64k"
    reads_as qcow2 $w-src.qcow2 "not the data written" "read -P 0x22 1M 256k" "read -P 0x11 0 1M"
    reads_as qcow2 $w-tmp.qcow2 "not the point in time" "read -P 0x11 1M 256k"
    reads_as vmdk $w-x.vmdk "not the data written" "read -P 0x23 2M 64k"
done
echo OK
