#!/bin/bash
# Snapshots and dirty bitmaps over QMP under a running NBD export, checked
# with qemu-img and qemu-io: blockdev-snapshot-sync while a writer runs
# (the base stays as it was at the switch, the writer never sees an error,
# the overlay holds the new writes), blockdev-snapshot of an overlay given
# on the command line while a writer runs (the same), internal snapshots
# (qemu-img snapshot -l), persistent bitmaps (qemu-img info shows what
# qemu-storage-daemon's same commands leave), and a transaction with one
# bad action that changes nothing.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo python3
S=$T/nbd.sock
Q=$T/qmp.sock
U="nbd+unix:///disk?socket=$S"
base=$T/base.qcow2 ov=$T/overlay.qcow2 ov2=$T/overlay2.qcow2
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'

# qmp CMD [ARGS-JSON]: run one command on monitor $Q; prints the reply,
# succeeds on a "return". qmp_err CMD ARGS CLASS: must fail with CLASS.
qmp() {
    python3 - "$Q" "$1" "${2:-}" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["VBD_ROOT"], "tests", "qmp"))
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
r = m.cmd(sys.argv[2], json.loads(sys.argv[3]) if sys.argv[3] else None)
print(json.dumps(r))
sys.exit(0 if "return" in r else 1)
PY
}
qmp_err() {
    local out
    out=$(qmp "$1" "$2") && fail "$1 $2 succeeded: $out"
    case "$out" in *"\"class\": \"$3\""*) ;; *) fail "$1 $2: expected class $3: $out" ;; esac
}
export VBD_ROOT

step "a qcow2 node exported over NBD, a monitor; the overlay for blockdev-snapshot on the command line (backing null)"
must qemu-img create -q -f qcow2 "$base" 64M
must qemu-io -f qcow2 -c "write -P 0xa1 0 4M" -c "write -P 0xa2 60M 1M" "$base" >/dev/null
must qemu-img create -q -f qcow2 -u -b "$ov" -F qcow2 "$ov2" 64M
start_daemon --chardev socket,id=mon0,path="$Q",server=on,wait=off --monitor chardev=mon0 \
    --blockdev driver=file,node-name=f0,filename="$base" --blockdev driver=qcow2,node-name=disk0,file=f0 \
    --blockdev driver=file,node-name=f2,filename="$ov2" --blockdev '{"driver":"qcow2","node-name":"top2","file":"f2","backing":null}' \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on
wait_sock "$Q" "$dpid" "$T/daemon.log"

step "blockdev-snapshot-sync while qemu-io writes over NBD: the writer sees no error, the base is frozen at the switch"
writes=""
for i in $(seq 0 1023); do writes="$writes -c 'write -P 0xb2 $((8 * 1048576 + i * 16384)) 16k'"; done
eval qemu-io -f raw $writes "'$U'" >"$T/writer.log" 2>&1 &
wpid=$!
out=$(qmp blockdev-snapshot-sync "{\"node-name\":\"disk0\",\"snapshot-file\":\"$ov\",\"snapshot-node-name\":\"ov1\",\"format\":\"qcow2\"}") ||
    fail "blockdev-snapshot-sync: $out"
must qemu-img convert -U -f qcow2 -O raw "$base" "$T/base-at-snapshot.raw"
python3 -c '
import sys
d = open(sys.argv[1], "rb").read()
n = sum(d[o:o + 16384] == b"\xb2" * 16384 for o in range(8 << 20, 24 << 20, 16384))
print(f"the writer had written {n} of its 1024 blocks when the snapshot switched")' "$T/base-at-snapshot.raw"
wait $wpid || { cat "$T/writer.log"; fail "the writer saw an error across the snapshot"; }
! grep -qi "error\|fail" "$T/writer.log" || { cat "$T/writer.log"; fail "the writer reported an error"; }
must qemu-io -f raw -c "write -P 0xc3 0 1M" -c "write -P 0xc4 32M 2M" -c flush "$U" >/dev/null
must qemu-io -f raw -r -c "read -P 0xc3 0 1M" -c "read -P 0xa1 1M 3M" -c "read -P 0xb2 8M 16M" -c "read -P 0xc4 32M 2M" \
    -c "read -P 0xa2 60M 1M" "$U" >/dev/null
out=$(qemu-img info -U --output=json "$base") || fail "qemu-img info -U on the base while the daemon runs: $out"
must qemu-img compare -U -f qcow2 -F raw "$base" "$T/base-at-snapshot.raw"
must qemu-io -f qcow2 -U -r -c "read -P 0xa1 0 4M" -c "read -P 0 32M 2M" "$base" >/dev/null
qcheck -U "$base"
info=$(qemu-img info -U --backing-chain --output=json "$ov") || fail "qemu-img info on the overlay"
python3 - "$info" "$base" <<'PY' || fail "the overlay's backing chain: $info"
import json, sys
chain = json.loads(sys.argv[1])
assert len(chain) == 2, chain
assert chain[0]["backing-filename"] == sys.argv[2] and chain[0]["backing-filename-format"] == "qcow2", chain[0]
assert chain[1]["filename"] == sys.argv[2] and chain[0]["virtual-size"] == chain[1]["virtual-size"]
PY
# the overlay itself holds the writes made after the switch: 0..1M and 32M..34M
qemu-img map -U --output=json "$ov" | python3 -c '
import json, sys
m = [e for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]]
def own(a, b):  # [a, a+b) wholly in extents of the overlay itself (adjacent ones joined)
    for e in sorted(m, key=lambda e: e["start"]):
        if e["start"] <= a < e["start"] + e["length"]:
            a, b = e["start"] + e["length"], a + b - e["start"] - e["length"]
            if b <= 0:
                return True
    return False
sys.exit(0 if own(0, 1 << 20) and own(32 << 20, 2 << 20) and not own(60 << 20, 1 << 20) else 1)' ||
    fail "the overlay does not hold the writes made after the snapshot"

step "bad requests: unknown node, overlay name in use, the old node is busy, bad mode, raw overlay"
qmp_err blockdev-snapshot-sync "{\"node-name\":\"nope\",\"snapshot-file\":\"$T/x.qcow2\",\"snapshot-node-name\":\"x\"}" GenericError
qmp_err blockdev-snapshot-sync "{\"node-name\":\"ov1\",\"snapshot-file\":\"$T/x.qcow2\",\"snapshot-node-name\":\"f0\"}" GenericError
qmp_err blockdev-snapshot-sync "{\"node-name\":\"disk0\",\"snapshot-file\":\"$T/x.qcow2\",\"snapshot-node-name\":\"x\"}" GenericError
qmp_err blockdev-snapshot-sync "{\"node-name\":\"ov1\",\"snapshot-file\":\"$T/x.qcow2\",\"snapshot-node-name\":\"x\",\"mode\":\"bad\"}" GenericError
qmp_err blockdev-snapshot-sync "{\"node-name\":\"ov1\",\"snapshot-file\":\"$T/x.raw\",\"snapshot-node-name\":\"x\",\"format\":\"raw\"}" GenericError
qmp_err blockdev-snapshot-sync "{\"node-name\":\"ov1\",\"snapshot-file\":\"$T/x.qcow2\"}" GenericError
[ ! -e "$T/x.qcow2" ] && [ ! -e "$T/x.raw" ] || fail "a refused snapshot left a file"

step "internal snapshots on the overlay: created, listed by qemu-img snapshot -l, deleted with SnapshotInfo returned"
must qmp blockdev-snapshot-internal-sync '{"device":"ov1","name":"s1"}' >/dev/null
must qmp blockdev-snapshot-internal-sync '{"device":"ov1","name":"s2"}' >/dev/null
must qemu-io -f raw -c "write -P 0xd4 0 64k" -c flush "$U" >/dev/null
qemu-img snapshot -U -l "$ov" | grep -q " s1 " || fail "s1 not listed: $(qemu-img snapshot -U -l "$ov")"
qemu-img snapshot -U -l "$ov" | grep -q " s2 " || fail "s2 not listed"
qmp_err blockdev-snapshot-internal-sync '{"device":"ov1","name":"s1"}' GenericError
qmp_err blockdev-snapshot-internal-sync '{"device":"disk0","name":"s3"}' GenericError # below the overlay now
qmp_err blockdev-snapshot-internal-sync '{"device":"nope","name":"s3"}' GenericError
qmp_err blockdev-snapshot-delete-internal-sync '{"device":"ov1","name":"nope"}' GenericError
qmp_err blockdev-snapshot-delete-internal-sync '{"device":"ov1"}' GenericError
out=$(qmp blockdev-snapshot-delete-internal-sync '{"device":"ov1","name":"s2"}') || fail "delete s2: $out"
python3 -c '
import json, sys
r = json.loads(sys.argv[1])["return"]
assert r["name"] == "s2" and isinstance(r["id"], str) and r["vm-state-size"] == 0, r
for k in ("date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec"):
    assert isinstance(r[k], int), k' "$out" || fail "SnapshotInfo: $out"
! qemu-img snapshot -U -l "$ov" | grep -q " s2 " || fail "s2 still listed after its deletion"

step "persistent bitmaps: add (granularity, disabled), enable, disable, clear, merge, remove; an in-memory one cannot take a persistent one's name"
bm_ops='[
 ["block-dirty-bitmap-add", {"name":"b1","persistent":true}],
 ["block-dirty-bitmap-add", {"name":"b2","persistent":true,"granularity":131072,"disabled":true}],
 ["block-dirty-bitmap-add", {"name":"b3","persistent":true,"granularity":512}],
 ["block-dirty-bitmap-add", {"name":"b4","persistent":true}],
 ["block-dirty-bitmap-disable", {"name":"b1"}],
 ["block-dirty-bitmap-enable", {"name":"b2"}],
 ["block-dirty-bitmap-merge", {"target":"b1","bitmaps":["b3"]}],
 ["block-dirty-bitmap-clear", {"name":"b3"}],
 ["block-dirty-bitmap-remove", {"name":"b4"}]]'
# run_ops SOCKET NODE: the same list on any monitor (vbd-daemon's here, qemu-storage-daemon's below)
run_ops() {
    python3 - "$1" "$2" "$bm_ops" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["VBD_ROOT"], "tests", "qmp"))
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
for cmd, args in json.loads(sys.argv[3]):
    args["node"] = sys.argv[2]
    r = m.cmd(cmd, args)
    if "return" not in r:
        sys.exit(f"{cmd} {args}: {r}")
PY
}
must cp "$ov" "$T/bm-qsd.qcow2" # before the bitmaps; qemu-storage-daemon does the same below
run_ops "$Q" ov1 || fail "bitmap commands"
must qemu-io -f raw -c "write -P 0xe1 40M 64k" -c flush "$U" >/dev/null
qmp_err block-dirty-bitmap-add '{"node":"ov1","name":"b1"}' GenericError # in memory, a persistent one's name
qmp_err block-dirty-bitmap-add '{"node":"ov1","name":"b1","persistent":true}' GenericError
qmp_err block-dirty-bitmap-add '{"node":"f0","name":"b9","persistent":true}' GenericError
qmp_err block-dirty-bitmap-add '{"node":"ov1","name":"b9","persistent":true,"granularity":1000}' GenericError
qmp_err block-dirty-bitmap-remove '{"node":"ov1","name":"b4"}' GenericError
qmp_err block-dirty-bitmap-merge '{"node":"ov1","target":"b1","bitmaps":["nope"]}' GenericError

step "a transaction with one bad action changes nothing"
before=$(qemu-img info -U --output=json "$ov")
qmp_err transaction "{\"actions\":[
 {\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"ov1\",\"name\":\"t1\",\"persistent\":true}},
 {\"type\":\"block-dirty-bitmap-clear\",\"data\":{\"node\":\"ov1\",\"name\":\"b2\"}},
 {\"type\":\"block-dirty-bitmap-remove\",\"data\":{\"node\":\"ov1\",\"name\":\"b3\"}},
 {\"type\":\"block-dirty-bitmap-disable\",\"data\":{\"node\":\"ov1\",\"name\":\"b2\"}},
 {\"type\":\"blockdev-snapshot-internal-sync\",\"data\":{\"device\":\"ov1\",\"name\":\"t2\"}},
 {\"type\":\"blockdev-snapshot-sync\",\"data\":{\"node-name\":\"ov1\",\"snapshot-file\":\"$T/t3.qcow2\",\"snapshot-node-name\":\"t3\"}},
 {\"type\":\"block-dirty-bitmap-remove\",\"data\":{\"node\":\"ov1\",\"name\":\"nope\"}}]}" GenericError
after=$(qemu-img info -U --output=json "$ov")
python3 - "$before" "$after" <<'PY' || fail "the failed transaction changed the image: $before -> $after"
import json, sys
b, a = (json.loads(x) for x in sys.argv[1:])
key = lambda i: (sorted((x["name"], x["granularity"], x["flags"]) for x in i["format-specific"]["data"].get("bitmaps", [])),
                 sorted(s["name"] for s in i.get("snapshots", [])))
assert key(b) == key(a), (key(b), key(a))
PY
must qemu-io -f raw -c "write -P 0xe2 44M 64k" -c flush "$U" >/dev/null
must qemu-io -f qcow2 -U -r -c "read -P 0xe2 44M 64k" "$ov" >/dev/null # still the export's image
qmp_err transaction '{"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"ov1","name":"t4","persistent":true}}],"properties":{"completion-mode":"grouped"}}' GenericError
must qmp transaction '{"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"ov1","name":"t5","persistent":true}},{"type":"blockdev-snapshot-internal-sync","data":{"device":"ov1","name":"t6"}}],"properties":{"completion-mode":"individual"}}' >/dev/null
qemu-img snapshot -U -l "$ov" | grep -q " t6 " || fail "t6 (from a good transaction) not listed"
must qmp block-dirty-bitmap-remove '{"node":"ov1","name":"t5"}' >/dev/null

step "blockdev-snapshot while qemu-io writes: the command line's overlay (backing null) goes on top of ov1"
qmp_err blockdev-snapshot '{"node":"ov1","overlay":"nope"}' GenericError
qmp_err blockdev-snapshot '{"node":"disk0","overlay":"top2"}' GenericError # disk0 is below ov1
writes=""
for i in $(seq 0 511); do writes="$writes -c 'write -P 0xf1 $((48 * 1048576 + i * 16384)) 16k'"; done
eval qemu-io -f raw $writes "'$U'" >"$T/writer2.log" 2>&1 &
wpid=$!
out=$(qmp blockdev-snapshot '{"node":"ov1","overlay":"top2"}') || fail "blockdev-snapshot: $out"
must qemu-img convert -U -f qcow2 -O raw "$ov" "$T/ov-at-snapshot.raw"
wait $wpid || { cat "$T/writer2.log"; fail "the writer saw an error across blockdev-snapshot"; }
! grep -qi "error\|fail" "$T/writer2.log" || { cat "$T/writer2.log"; fail "the writer reported an error"; }
qmp_err blockdev-snapshot '{"node":"ov1","overlay":"top2"}' GenericError
must qemu-io -f raw -r -c "read -P 0xf1 48M 8M" -c "read -P 0xe2 44M 64k" -c "read -P 0xd4 0 64k" -c "read -P 0xa2 60M 1M" "$U" >/dev/null
must qemu-img compare -U -f qcow2 -F raw "$ov" "$T/ov-at-snapshot.raw"
stop_daemon
must qemu-img compare -f qcow2 -F raw "$ov" "$T/ov-at-snapshot.raw"

step "offline: qemu-img check clean on all three, the chain, the internal snapshot's contents, the bitmaps"
qcheck "$base"
qcheck "$ov"
qcheck "$ov2"
[ "$(qemu-img info --backing-chain --output=json "$ov2" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 3 ] ||
    fail "overlay2 -> overlay -> base chain"
must qemu-img compare -f qcow2 -F raw "$base" "$T/base-at-snapshot.raw"
must qemu-img convert -l snapshot.name=s1 -O raw "$ov" "$T/s1.raw"
must qemu-io -f raw -r -c "read -P 0xc3 0 64k" -c "read -P 0xb2 8M 16M" "$T/s1.raw" >/dev/null
# the enabled bitmaps saw the export's writes after they were added
qemu-nbd -r -f qcow2 -B b2 -k "$T/qnbd.sock" "$ov" &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
wait_sock "$T/qnbd.sock" "$qpid"
nbdinfo --map=qemu:dirty-bitmap:b2 "nbd+unix://?socket=$T/qnbd.sock" | awk '$3 == 1 {print $1, $2}' >"$T/b2.map"
kill $qpid; wait $qpid 2>/dev/null
grep -q "^ *41943040 *131072$" "$T/b2.map" || fail "b2 does not mark the write at 40M: $(cat "$T/b2.map")"

step "qemu-storage-daemon's same bitmap commands leave the same bitmaps (names, granularity, flags)"
if command -v qemu-storage-daemon >/dev/null; then
    qq=$T/qsd.sock
    qemu-storage-daemon --chardev socket,id=m,path="$qq",server=on,wait=off --monitor chardev=m \
        --blockdev driver=file,node-name=f,filename="$T/bm-qsd.qcow2" --blockdev '{"driver":"qcow2","node-name":"q","file":"f","backing":null}' &
    qsdpid=$!
    on_exit "kill $qsdpid 2>/dev/null"
    run_ops "$qq" q || fail "qemu-storage-daemon refused the bitmap commands"
    python3 - "$qq" <<'PY' || fail "quit qemu-storage-daemon"
import os, sys
sys.path.insert(0, os.path.join(os.environ["VBD_ROOT"], "tests", "qmp"))
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
m.cmd("quit")
PY
    wait $qsdpid
    bm() { qemu-img info --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"].get("bitmaps", [])
print(sorted((b["name"], b["granularity"], b["flags"]) for b in d if b["name"] in ("b1", "b2", "b3", "b4")))'; }
    mine=$(bm "$ov") theirs=$(bm "$T/bm-qsd.qcow2")
    [ "$mine" = "$theirs" ] || fail "bitmaps differ: vbd-daemon $mine, qemu-storage-daemon $theirs"
    echo "bitmaps: $mine"
fi
echo "PASS"
