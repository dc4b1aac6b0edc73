#!/bin/bash
# Image fleecing as backup tools do it, by vbd-daemon and by
# qemu-storage-daemon 7.2 on copies of the same image, one QMP script:
#  - an in-memory bitmap b0 on the source records a first round of guest
#    writes (qemu-io over a writable NBD export of the source);
#  - at the point in time: b0 is disabled, a qcow2 fleecing target (its
#    backing the source) and a copy-before-write filter over the source
#    are added, the guest's export moves onto the filter, and a
#    snapshot-access node is exported read-only with b0 as
#    qemu:dirty-bitmap:b0;
#  - nbdcopy reads the fleecing export while a second round of writes
#    overwrites the disk, and again after them: both copies equal the
#    disk as it was at the point in time (base + round 1), the source ends
#    base + round 1 + round 2;
#  - nbdinfo --map=qemu:dirty-bitmap:b0 shows exactly round 1's clusters,
#    the same for both daemons.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdcopy nbdinfo python3
cd "$T"
mixed_disk base.raw 16 1 9
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
R1="-c 'write -P 0xb1 64k 64k' -c 'write -P 0xb2 3M 1M' -c 'write -P 0xb3 10M 100k' -c 'write -z 14M 64k'"
R2="-c 'write -P 0xc1 0 2M' -c 'write -P 0xc2 3M 4k' -c 'write -P 0xc3 9M 4M' -c 'write -z 14M 2M' -c 'write -P 0xc4 5000 300k'"
cp base.raw pit.raw
eval "qemu-io -f raw $R1 pit.raw" >/dev/null || fail "model"
cp pit.raw final.raw
eval "qemu-io -f raw $R2 final.raw" >/dev/null || fail "model"

on_exit 'kill -9 $dpid 2>/dev/null'
# qcow2: a single-loop node; raw: a multi-loop node (io.c's direct-call path
# must still mark its bitmap)
for fmt in qcow2 raw; do
for d in vbd qsd; do
    step "$d $fmt"
    rm -rf "$T/$d-$fmt" && mkdir "$T/$d-$fmt" && cd "$T/$d-$fmt"
    cp ../base.$fmt src.$fmt
    must qemu-img create -q -f qcow2 -b "$PWD/src.$fmt" -F $fmt fleece.qcow2 16M
    bin=$VBD_DAEMON
    [ $d = qsd ] && bin=qemu-storage-daemon
    "$bin" --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"'$fmt'","node-name":"src","file":{"driver":"file","filename":"'"$PWD"'/src.'$fmt'"}}' \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
    python3 - "$d" "$R1" "$R2" <<'PY' || fail "$d"
import os, subprocess, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, r1, r2 = sys.argv[1:4]
s = Session("qmp.sock", who)
cwd = os.getcwd()
disk = "nbd+unix:///disk?socket=nbd.sock"
def del_export(eid):
    # a client that just exited may not be gone from the server yet: "safe"
    # removal waits for that (the condition, polled, up to 30 s)
    for _ in range(600):
        r = s.m.cmd("block-export-del", {"id": eid})
        if "error" not in r:
            break
        if "still in use" not in r["error"]["desc"]:
            fail(f"{who}: block-export-del {eid}: {r}")
        time.sleep(0.05)
    else:
        fail(f"{who}: export {eid} still in use after 30 s")
    s.m.wait_event("BLOCK_EXPORT_DELETED", timeout=60)
s.run("block-dirty-bitmap-add", node="src", name="b0")
s.run("block-export-add", type="nbd", id="guest", **{"node-name": "src"}, name="disk", writable=True)
sh(f"qemu-io -f raw {r1} '{disk}'", "round 1")
del_export("guest")
# the point in time
s.run("block-dirty-bitmap-disable", node="src", name="b0")
s.run("blockdev-add", driver="qcow2", **{"node-name": "tmp"}, file={"driver": "file", "filename": f"{cwd}/fleece.qcow2"},
      backing="src")
s.run("blockdev-add", driver="copy-before-write", **{"node-name": "cbw"}, file="src", target="tmp")
s.run("blockdev-add", driver="snapshot-access", **{"node-name": "fleece"}, file="cbw")
s.run("block-export-add", type="nbd", id="guest", **{"node-name": "cbw"}, name="disk", writable=True)
s.run("block-export-add", type="nbd", id="fl", **{"node-name": "fleece"}, name="fleece",
      bitmaps=[{"node": "src", "name": "b0"}])
fl = "nbd+unix:///fleece?socket=nbd.sock"
w = subprocess.Popen(f"qemu-io -f raw {r2} '{disk}'", shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sh(f"nbdcopy '{fl}' during.raw", "nbdcopy during round 2")
if w.wait():
    fail(f"{who}: round 2: {w.stderr.read()}")
sh(f"nbdcopy '{fl}' after.raw", "nbdcopy after round 2")
open("map.txt", "w").write(sh(f"nbdinfo --map=qemu:dirty-bitmap:b0 '{fl}'", "nbdinfo"))
sh(f"qemu-img compare -q -f raw -F raw '{disk}' ../final.raw", "the disk after round 2")
for e in ("fl", "guest"):
    del_export(e)
for n in ("fleece", "cbw", "tmp"):
    s.run("blockdev-del", **{"node-name": n})
PY
    kill -TERM $dpid; wait $dpid; rc=$?; dpid=
    [ $rc = 0 ] || fail "$d exited with $rc: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$d: $(cat daemon.log)"
    must cmp during.raw ../pit.raw
    must cmp after.raw ../pit.raw
    [ $fmt = qcow2 ] && qcheck src.qcow2
    qcheck fleece.qcow2
    must qemu-img compare -q -f $fmt -F raw src.$fmt ../final.raw
    cd "$T"
done
cmp -s vbd-$fmt/map.txt qsd-$fmt/map.txt || fail "$fmt: dirty bitmap maps differ: vbd $(cat vbd-$fmt/map.txt) qsd $(cat qsd-$fmt/map.txt)"
# round 1's clusters (64 KiB): 64k, 3M-4M, 10M-10M+128k, 14M-14M+64k
exp="$(printf '%s\n' '0 65536 0 clean' '65536 65536 1 dirty' '131072 3014656 0 clean' '3145728 1048576 1 dirty' \
    '4194304 6291456 0 clean' '10485760 131072 1 dirty' '10616832 4063232 0 clean' '14680064 65536 1 dirty' \
    '14745600 2031616 0 clean')"
[ "$(awk '{print $1, $2, $3, $4}' vbd-$fmt/map.txt)" = "$exp" ] || fail "$fmt: dirty bitmap map: $(cat vbd-$fmt/map.txt)"
done
echo ok
