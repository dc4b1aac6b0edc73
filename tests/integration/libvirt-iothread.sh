#!/bin/bash
# vbd-daemon --libvirt-disk with <driver iothread='N'>: libvirt names
# QEMU's iothread objects iothreadN, so the disk's vhost-user-blk export runs
# on vbd's --object iothread,id=iothreadN. Seen from QMP: while the export
# uses it, object-del of the iothread is refused; the same disk without the
# attribute leaves the iothread free. A missing iothread object is a
# one-line error and no daemon.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
cd "$T"
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
must qemu-img create -q -f qcow2 disk.qcow2 16M
S=$T/vu.sock
disk_xml() { # ATTRS
    cat >disk.xml <<XML
<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' $1/>
  <source file='$T/disk.qcow2'/>
  <target dev='vda' bus='virtio'/>
</disk>
XML
}
objdel() { # expect: ok|refused
    python3 - "$1" <<'PY' || fail "object-del iothread1: expected $1"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP("qmp.sock", negotiate=True)
r = m.cmd("object-del", {"id": "iothread1"})
want = sys.argv[1]
if want == "refused" and "error" not in r:
    sys.exit(f"object-del succeeded while the export uses iothread1: {r}")
if want == "ok" and "error" in r:
    sys.exit(f"object-del refused: {r}")
print(r)
PY
}
for attr in "iothread='1'" ""; do
    step "<driver ${attr:-(no iothread)}>"
    disk_xml "$attr"
    rm -f qmp.sock
    start_daemon --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
        --object iothread,id=iothread1 --libvirt-disk "$T/disk.xml" --vhost-user "$S"
    wait_sock "$T/qmp.sock" "$dpid" "$T/daemon.log"
    if [ -n "$attr" ]; then objdel refused; else objdel ok; fi
    stop_daemon
done
step "iothread='2' without an iothread2 object"
disk_xml "iothread='2'"
must_fail_with "iothread2" "$VBD_DAEMON" --libvirt-disk "$T/disk.xml" --vhost-user "$S"
echo ok
