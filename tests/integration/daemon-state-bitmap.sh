#!/bin/bash
# vbd-daemon --state with an NBD export of an in-memory dirty bitmap (the
# fleecing pattern): the bitmap dies with the process, as in QEMU, so FILE
# keeps the export without it. After kill -9 the daemon starts again from
# FILE (it does not refuse over a missing bitmap), the export is there and
# serves the data, and it offers no qemu:dirty-bitmap context (a backup
# tool then does a full backup, never an incremental one from an empty map).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdinfo python3
cd "$T"
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
must qemu-img create -q -f qcow2 disk.qcow2 8M
must qemu-io -f qcow2 -c "write -P 0x3c 1M 64k" disk.qcow2 >/dev/null
start() {
    rm -f qmp.sock nbd.sock
    "$VBD_DAEMON" --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
        --state "$T/state.json" 2>>daemon.log &
    dpid=$!
    wait_sock "$T/qmp.sock" "$dpid" daemon.log
}
start
python3 - <<'PY' || fail "QMP setup"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP("qmp.sock", negotiate=True)
m.execute("blockdev-add", **{"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "disk.qcow2"}})
m.execute("block-dirty-bitmap-add", node="d0", name="b0")
m.execute("nbd-server-start", addr={"type": "unix", "data": {"path": "nbd.sock"}})
m.execute("block-export-add", type="nbd", id="e0", **{"node-name": "d0"}, name="d0", bitmaps=[{"node": "d0", "name": "b0"}])  # an enabled bitmap by name on a read-only export: refused, as qsd
PY
must nbdinfo --map=qemu:dirty-bitmap:b0 "nbd+unix:///d0?socket=$T/nbd.sock" >/dev/null
kill -9 $dpid; wait $dpid 2>/dev/null; dpid=
wait_lock_free disk.qcow2
start
wait_sock "$T/nbd.sock" "$dpid" daemon.log
must qemu-io -f raw -r -c "read -P 0x3c 1M 64k" "nbd+unix:///d0?socket=$T/nbd.sock" >/dev/null
nbdinfo --list --json "nbd+unix:///?socket=$T/nbd.sock" >list.json || fail "nbdinfo --list"
grep -q '"d0"' list.json || fail "export d0 not back: $(cat list.json)"
! grep -q "qemu:dirty-bitmap" list.json || fail "the export still offers a dirty bitmap after the restart"
grep -q "kept without its in-memory bitmap 'b0'" daemon.log || fail "no warning in the log: $(cat daemon.log)"
kill -TERM $dpid; wait $dpid; rc=$?; dpid=
[ $rc = 0 ] || fail "exit $rc"
! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
echo ok
