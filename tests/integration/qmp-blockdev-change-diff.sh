#!/bin/bash
# x-blockdev-change on a quorum replies as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-blockdev-change.jsonl: QEMU's refusals word for word, a
# child added by node name votes and takes writes, one removed by its
# child name takes none; the images compared with the expected ones), and
# vbd-daemon --state keeps the new set of children across a restart.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON

step "QMP and NBD: replies, events and data equal to qemu-storage-daemon's"
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-blockdev-change.jsonl" \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" || fail "qmpdiff found differences (above)"

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
echo PASS
