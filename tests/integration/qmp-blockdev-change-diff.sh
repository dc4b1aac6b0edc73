#!/bin/bash
# x-blockdev-change on a quorum replies as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-blockdev-change.jsonl: QEMU's refusals word for word, a
# child added by node name votes and takes writes, one removed by its
# child name takes none; the images compared with the expected ones),
# vbd-daemon --state keeps the new set of children across a restart, and
# a child added and removed over and over while a client writes through the
# quorum changes nothing for the writes (the children there all along end
# equal, no write fails).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON

step "QMP and NBD: replies, events and data equal to qemu-storage-daemon's"
qmpdiff diff-blockdev-change \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock"

step "--state: the quorum's children after x-blockdev-change come back after a restart"
# fc is added after the quorum: the replay must make it first
cd "$T"
S=$T/qmp.sock
for x in a b c; do must qemu-img create -q -f raw s$x.img 1M; done
qmpd() { start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q --state "$T/st.json"; }
qmpd
qmp_py "$S" <<PY || fail "QMP changes"
for x in "ab":
    ok("blockdev-add", driver="file", **{"node-name": "f" + x, "filename": "$T/s%s.img" % x})
ok("blockdev-add", driver="quorum", **{"node-name": "q", "vote-threshold": 2}, children=["fa", "fb"])
ok("blockdev-add", driver="file", **{"node-name": "fc", "filename": "$T/sc.img"})
ok("x-blockdev-change", parent="q", node="fc")
ok("x-blockdev-change", parent="q", child="children.0")
PY
stop_daemon
qmpd
qmp_py "$S" <<PY || fail "after the restart"
ok("nbd-server-start", addr={"type": "unix", "data": {"path": "$T/nbd.sock"}})
ok("block-export-add", type="nbd", id="e", **{"node-name": "q"}, writable=True)
r = m.cmd("blockdev-del", {"node-name": "fa"})
assert "return" in r, r  # no longer a child
r = m.cmd("blockdev-del", {"node-name": "fc"})
assert "error" in r, r  # a child
PY
must qemu-io -f raw -c "write -P 0x44 0 64k" "nbd+unix:///q?socket=$T/nbd.sock" >/dev/null
stop_daemon
must qemu-io -f raw -r -c "read -P 0 0 64k" sa.img >/dev/null
must qemu-io -f raw -r -c "read -P 0x44 0 64k" sb.img >/dev/null
must qemu-io -f raw -r -c "read -P 0x44 0 64k" sc.img >/dev/null

step "children added and removed while 400 writes are in flight: no write fails, the other children end equal"
for x in a b c; do must qemu-img create -q -f raw w$x.img 8M; done
start_daemon --chardev socket,id=q,path="$S",server=on,wait=off --monitor chardev=q \
    --nbd-server addr.type=unix,addr.path="$T/nbdw.sock"
qmp_py "$S" <<PY || fail "changes under writes"
import subprocess
for x in "abc":
    ok("blockdev-add", driver="file", **{"node-name": "w" + x, "filename": "$T/w%s.img" % x})
ok("blockdev-add", driver="quorum", **{"node-name": "q", "vote-threshold": 1}, children=["wa", "wb"])
ok("block-export-add", type="nbd", id="e", **{"node-name": "q"}, writable=True)
cmds = []
for i in range(400):
    cmds += ["-c", "aio_write -P %d %d 64k" % (i % 250 + 1, (i * 77 % 120) * 65536)]
    if i % 50 == 49:
        cmds += ["-c", "aio_flush"]
cmds += ["-c", "aio_flush"]
io = subprocess.Popen(["qemu-io", "-f", "raw", "nbd+unix:///q?socket=$T/nbdw.sock"] + cmds,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
changes = 0
while io.poll() is None or changes == 0:
    ok("x-blockdev-change", parent="q", node="wc")
    ok("x-blockdev-change", parent="q", child="children.2")
    changes += 1
out = io.communicate()[0]
assert io.returncode == 0 and "failed" not in out and out.count("wrote 65536/65536") == 400, out[-500:]
ok("block-export-del", id="e", mode="hard")
print("changes during the writes:", changes)
PY
stop_daemon
must qemu-img compare -q -f raw -F raw wa.img wb.img
echo PASS
