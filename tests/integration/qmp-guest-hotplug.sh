#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# Hot add/remove under load with a real guest (issue 12, section 5): a
# Linux guest under QEMU keeps pattern writers and readers running on disk
# A (qcow2, vhost-user-blk on an iothread) of a vbd-daemon with a QMP
# monitor. Meanwhile, three times over QMP: node B (a fresh qcow2 over a
# file) comes with blockdev-add and is exported over NBD; qemu-io writes
# and reads it from a second client; block-export-del mode=safe is refused
# while that client is connected (GenericError, as qsd), mode=hard cuts it
# off and BLOCK_EXPORT_DELETED arrives; then B goes out over vhost-user-blk
# on an iothread added with object-add, vbd-bench writes and verifies it,
# block-export-del with vbd-bench connected deletes it, as qsd 7.2 (cycle
# by cycle mode=hard, the default mode, mode=safe); blockdev-del B
# (refused while exported) and object-del of its iothread. After every
# step the guest must have completed more rounds on A (A never stalls).
# The host then fills A's last block with 'S' through an NBD export of A:
# the guest stops, re-verifies every region and must print GUEST-RESULT:
# PASS with no I/O error on its console. Each B equals (qemu-img compare)
# a raw reference holding what qemu-io and vbd-bench wrote; qemu-img check
# is clean on A and on every B.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img qemu-io python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
S=$T/vu-a.sock
Q=$T/qmp.sock
CYCLES=3
# run-guest.sh's QEMU runs under timeout(1) in a process group of its own: end it through its parent
stop_guest() { [ -n "$gpid" ] || return 0; kill $(pgrep -P $gpid) $gpid 2>/dev/null; wait $gpid 2>/dev/null; gpid=; }
on_exit 'stop_guest; [ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
must qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
for i in $(seq $CYCLES); do must qemu-img create -q -f qcow2 "$T/b$i.qcow2" 32M; done

step "guest writers on A (qcow2, vhost-user-blk, 2 queues on an iothread) behind a QMP monitor"
start_daemon --chardev socket,id=m,path="$Q",server=on,wait=off --monitor chardev=m --object iothread,id=ioA \
    --blockdev driver=file,node-name=Af,filename="$T/a.qcow2" --blockdev driver=qcow2,node-name=A,file=Af \
    --export type=vhost-user-blk,id=expA,addr.type=unix,addr.path="$S",node-name=A,writable=on,num-queues=2,iothread=ioA
: >"$T/console.log"
gpid=
"$G/run-guest.sh" --vhost-user "$S" --num-queues 2 --workload "$G/workloads/until-stopped.sh" --timeout 1200 \
    --log "$T/console.log" >"$T/guest.out" 2>&1 &
gpid=$!

VBD_QMP_PY=$VBD_ROOT/tests/qmp python3 - "$T" "$VBD_BENCH" "$CYCLES" "$gpid" <<'PY' || { tail -20 "$T/console.log"; tail -30 "$T/daemon.log"; fail "see above"; }
import os, re, struct, subprocess, sys
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from exports import (QMP, QemuIo, delete_nbd_export_in_use, delete_vhost_user_export_in_use, expect_error, fail,
                     nbd_uri, step)
from exports import wait_for as wait_for_every

T, BENCH, CYCLES, GUEST = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
NBD = T + "/nbd.sock"

def ok(reply):
    if reply != {"return": {}}:
        fail("expected success, got %s" % reply)

def guest_alive():
    try:
        os.kill(GUEST, 0)
        return True
    except ProcessLookupError:
        return False

def wait_for(what, cond, timeout=300):
    wait_for_every(what, cond, timeout, 0.05)

def console():
    with open(T + "/console.log", "rb") as f:
        return f.read().decode("latin-1").replace("\r", "")

def rounds():
    c = console()
    if "GUEST-RESULT" in c:
        fail("the guest ended early: " + c[c.index("GUEST-RESULT"):].splitlines()[0])
    if re.search(r"I/O error|blk_update_request|Buffer I/O", c):
        fail("I/O error on the guest's console")
    r = re.findall(r"vbd: round (\d+) ok", c)
    return int(r[-1]) if r else 0

def guest_advanced(what):
    """A is being served: the guest completes another round of writes and checks."""
    start = rounds()
    wait_for("the guest's writers on A to make progress after " + what,
             lambda: rounds() > start or not guest_alive())
    if not guest_alive():
        fail("the guest exited after " + what)

def uri(name):
    return nbd_uri(NBD, name)

def qemu_io(target, *cmds, fmt="raw"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [target], capture_output=True, text=True)
    if r.returncode != 0 or re.search("fail|error", r.stdout + r.stderr, re.I):
        fail("qemu-io %s %s: %s %s" % (target, cmds, r.stdout, r.stderr))

# vbd-bench --verify's pattern over [0, 8M): the 8-byte word at byte p is p * K ^ C
BENCH_SIZE = 8 << 20
K, C, M64 = 0x9E3779B97F4A7C15, 0x7662642d62656e63, (1 << 64) - 1
bench_data = struct.pack("<%dQ" % (BENCH_SIZE // 8), *((p * K ^ C) & M64 for p in range(0, BENCH_SIZE, 8)))

step("the guest boots and its writers run on A")
wait_for("the guest's first round on A", lambda: rounds() > 0 or not guest_alive(), timeout=1200)
if not guest_alive():
    fail("the guest exited before its first round")
m = QMP(T + "/qmp.sock", negotiate=True)
m.execute("nbd-server-start", addr={"type": "unix", "data": {"path": NBD}})

for i in range(1, CYCLES + 1):
    img, ref = "%s/b%d.qcow2" % (T, i), "%s/ref%d.raw" % (T, i)
    with open(ref, "wb") as f:
        f.truncate(32 << 20)
    step("cycle %d/%d: blockdev-add B, exported over NBD; qemu-io writes and reads it" % (i, CYCLES))
    m.execute("blockdev-add", driver="qcow2", node_name="B", file={"driver": "file", "filename": img})
    ok(m.cmd("block-export-add", {"type": "nbd", "id": "expB", "node-name": "B", "name": "diskB", "writable": True}))
    expect_error(m.cmd("blockdev-del", {"node-name": "B"}), "GenericError", "")  # exported: in use
    writes = ["write -P %d 8M 4M" % (0x10 + i), "write -P %d 20M 64k" % (0x40 + i), "write -z 9M 64k"]
    qemu_io(uri("diskB"), *writes)
    qemu_io(ref, *writes)
    b = QemuIo(NBD, "diskB")
    out = b.run("read -P %d 8M 1M" % (0x10 + i))
    if not any("bytes at offset" in l for l in out):
        fail("reading B back: %s" % out)
    guest_advanced("B was exported over NBD and used")

    step("cycle %d: safe delete refused while qemu-io is connected; hard delete cuts it off" % i)
    delete_nbd_export_in_use(m, "expB", b, "read -P %d 20M 64k" % (0x40 + i), timeout=120)
    guest_advanced("the NBD export of B was deleted")

    step("cycle %d: B over vhost-user-blk on an iothread from object-add; vbd-bench verifies it" % i)
    iot = "ioB%d" % i
    vu = "%s/vu-b%d.sock" % (T, i)
    m.execute("object-add", qom_type="iothread", id=iot)
    m.execute("block-export-add", type="vhost-user-blk", id="vuB", node_name="B", writable=True,
              addr={"type": "unix", "path": vu}, iothread=iot, num_queues=2)
    r = subprocess.run([BENCH, "--vhost-user", vu, "--verify", "--size", "8M", "-q", "2", "-d", "8"],
                       capture_output=True, text=True)
    if r.returncode != 0 or "read back identical" not in r.stdout:
        fail("vbd-bench --verify on B: %s %s" % (r.stdout, r.stderr))
    with open(ref, "r+b") as f:
        f.write(bench_data)
    mode = ("safe", "hard", None)[i % 3]
    step("cycle %d: block-export-del (mode %s) while vbd-bench reads B ends it; blockdev-del B" % (i, mode or "default"))
    delete_vhost_user_export_in_use(m, "vuB", vu, BENCH, T + "/daemon.log", timeout=120, wait=300, mode=mode,
                                    connected=lambda: guest_advanced("vbd-bench reads B"))
    m.execute("blockdev-del", node_name="B")
    m.execute("object-del", id=iot)
    if [e["id"] for e in m.execute("query-block-exports")] != ["expA"]:
        fail("exports left: %s" % m.execute("query-block-exports"))
    if any(n["node-name"] == "B" for n in m.execute("query-named-block-nodes")):
        fail("node B still listed after blockdev-del")
    guest_advanced("node B was removed")

step("the host writes the stop marker into A's last block through an NBD export of A")
ok(m.cmd("block-export-add", {"type": "nbd", "id": "ctl", "node-name": "A", "name": "ctl", "writable": True}))
qemu_io(uri("ctl"), "write -P 0x53 %d 4k" % ((64 << 20) - 4096))
# qemu-io has exited, its write acknowledged; the server may not have seen the disconnection yet
m.execute("block-export-del", id="ctl", mode="hard")
if m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)["data"] != {"id": "ctl"}:
    fail("BLOCK_EXPORT_DELETED for ctl")
print("guest at round %d when told to stop" % rounds(), flush=True)
m.close()
PY
step "the guest's workload ends: every region re-verified, GUEST-RESULT: PASS"
wait $gpid; grc=$?
gpid=
cat "$T/guest.out"
[ $grc = 0 ] || fail "the guest's workload on A failed (run-guest exit $grc)"
! tr -d '\r' <"$T/console.log" | grep -a -E "I/O error|blk_update_request|Buffer I/O" || fail "I/O errors on the guest's console"
grep -aq "until-stopped: done" "$T/console.log" || fail "the workload did not reach its final check"
stop_daemon

step "every B holds what the clients wrote (qemu-img compare); qemu-img check clean on A and every B"
for i in $(seq $CYCLES); do
    out=$(qemu-img compare -f qcow2 -F raw "$T/b$i.qcow2" "$T/ref$i.raw" 2>&1) || fail "B of cycle $i: $out"
    qcheck "$T/b$i.qcow2"
done
qcheck "$T/a.qcow2"
echo OK
