#!/bin/bash
# block_resize over QMP on a node under a vhost-user-blk export: the front
# end gets VHOST_USER_BACKEND_CONFIG_CHANGE_MSG and GET_CONFIG has the new
# capacity (as SIGHUP does after an outside resize), for a raw node over a
# file and for a qcow2 node (grown, then shrunk); qemu-img sees the sizes and
# the qcow2 image stays clean.
. "$(dirname "$0")/lib.sh"
need python3 qemu-img
S=$T/qmp.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
truncate -s 64M "$T/disk.img"
qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M || fail "qemu-img create"
start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --blockdev driver=file,node-name=file0,filename="$T/disk.img" --blockdev driver=raw,node-name=disk0,file=file0 \
    --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$T/vu0.sock",writable=on \
    --blockdev driver=file,node-name=file1,filename="$T/disk.qcow2" --blockdev driver=qcow2,node-name=disk1,file=file1 \
    --export type=vhost-user-blk,id=e1,node-name=disk1,addr.type=unix,addr.path="$T/vu1.sock",writable=on
wait_sock "$T/vu0.sock" "$dpid" "$T/daemon.log"
wait_sock "$T/vu1.sock" "$dpid" "$T/daemon.log"
PYTHONPATH=$VBD_ROOT/tests/qmp T=$T python3 - "$S" <<'PY' || fail "resize over QMP"
import json, os, subprocess, sys
from qmp import QMP
from vhost_user import capacity, config_change, front_end
T = os.environ["T"]
m = QMP(sys.argv[1], negotiate=True)

def resize(node, size):
    r = m.cmd("block_resize", {"node-name": node, "size": size})
    assert r == {"return": {}}, r
def qemu_img_size(path, fmt):
    out = subprocess.run(["qemu-img", "info", "-U", "-f", fmt, "--output=json", path], capture_output=True, text=True)
    return json.loads(out.stdout)["virtual-size"]

a, ch = front_end(f"{T}/vu0.sock")
assert capacity(a) == 64 * 2048
resize("disk0", 96 << 20)
config_change(ch)
assert capacity(a) == 96 * 2048, capacity(a)
assert os.path.getsize(f"{T}/disk.img") == 96 << 20
b, chb = front_end(f"{T}/vu1.sock")
assert capacity(b) == 64 * 2048
resize("disk1", 128 << 20)
config_change(chb)
assert capacity(b) == 128 * 2048, capacity(b)
assert qemu_img_size(f"{T}/disk.qcow2", "qcow2") == 128 << 20
resize("disk1", 32 << 20)   # shrink, as QEMU's block_resize allows for qcow2
config_change(chb)
assert capacity(b) == 32 * 2048, capacity(b)
assert qemu_img_size(f"{T}/disk.qcow2", "qcow2") == 32 << 20
r = m.cmd("block_resize", {"node-name": "disk1", "size": 1000})
assert r["error"]["class"] == "GenericError", r
assert capacity(b) == 32 * 2048
a.close(); b.close()
PY
stop_daemon
qcheck "$T/disk.qcow2"
[ "$(stat -c %s "$T/disk.img")" = $((96 << 20)) ] || fail "disk.img size"
echo PASS
