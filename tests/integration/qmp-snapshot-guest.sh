#!/bin/bash
# test-timeout: 1800 (run.sh: its guest may take --timeout 1200 without KVM)
# A live external snapshot under a running Linux guest: the guest's pattern
# writers (tests/guest/workloads/snapshot.sh) run on a vhost-user-blk disk
# over a qcow2 node while blockdev-snapshot-sync puts an overlay on top. The
# guest never sees an error, the base stays exactly as it was at the switch
# (qemu-img compare against a copy taken then), the overlay holds what the
# guest wrote afterwards, qemu-img check is clean on both. Once with the
# export's rings on the main loop over a qcow2 base, once on two iothreads
# over a raw base (requests run on the iothreads until the switch, then on
# the main loop, where the qcow2 overlay lives). Both cases share one boot:
# a disk each, each served by a vbd-daemon of its own, the second case's
# writers start when the first case's have stopped.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img qemu-io python3 busybox
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
stop_at=$((60 << 20)) # the block the host writes STOP into
export VBD_ROOT
on_exit '[ -n "${gpid:-}" ] && kill -9 $gpid 2>/dev/null'

qmp() { # SOCKET COMMAND ARGS-JSON
    python3 - "$1" "$2" "$3" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["VBD_ROOT"], "tests", "qmp"))
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
r = m.cmd(sys.argv[2], json.loads(sys.argv[3]))
print(json.dumps(r))
sys.exit(0 if "return" in r else 1)
PY
}

# start_case NAME FMT: the case's base and daemon ($iot: daemon arguments, $vu_opts: export options)
start_case() {
    local name=$1 fmt=$2 base=$T/$1-base.$2
    must qemu-img create -q -f $fmt "$base" 64M
    start_named $name --chardev socket,id=m0,path="$T/$name.qmp",server=on,wait=off --monitor chardev=m0 $iot \
        --blockdev driver=file,node-name=f0,filename="$base" --blockdev driver=$fmt,node-name=disk0,file=f0 \
        --export "type=vhost-user-blk,id=vu0,node-name=disk0,addr.type=unix,addr.path=$T/$name.sock,writable=on$vu_opts" \
        --nbd-server addr.type=unix,addr.path="$T/$name.nbd" --export type=nbd,id=n0,node-name=disk0,name=disk,writable=on
}

# snap_case NAME FMT TAG: once the writers on the guest's disk TAG run, the snapshot and the STOP
snap_case() {
    local name=$1 fmt=$2 tag=$3 base=$T/$1-base.$2 ov=$T/$1-overlay.qcow2
    step "$name: blockdev-snapshot-sync while the guest writes"
    local end=$((SECONDS + 1200)) # the guest's --timeout: it has ended by then
    while [ $SECONDS -lt $end ]; do
        grep -q "$tag: snapshot: writers running" "$T/console.log" 2>/dev/null && break
        kill -0 $gpid 2>/dev/null || break
        sleep 0.05
    done
    grep -q "$tag: snapshot: writers running" "$T/console.log" || { cat "$T/guest.out"; fail "$name: the guest's writers never started"; }
    out=$(qmp "$T/$name.qmp" blockdev-snapshot-sync "{\"node-name\":\"disk0\",\"snapshot-file\":\"$ov\",\"snapshot-node-name\":\"ov0\"}") ||
        fail "blockdev-snapshot-sync: $out"
    must qemu-img convert -U -f $fmt -O raw "$base" "$T/$name-at-snapshot.raw"
    must qemu-io -f raw -c "write -P 0x53 $stop_at 4k" -c flush "nbd+unix:///disk?socket=$T/$name.nbd" >/dev/null
}

# check_case NAME FMT TAG: after the boot, the base, the overlay and the chain
check_case() {
    local name=$1 fmt=$2 tag=$3 base=$T/$1-base.$2 ov=$T/$1-overlay.qcow2
    step "$name: the base is as at the switch, the overlay holds what came after"
    grep -a "$tag: snapshot: stopped after" "$T/console.log" | tr -d '\r' | sed 's/^.*vbd: /  /'
    stop_named $name
    must qemu-img compare -f $fmt -F raw "$base" "$T/$name-at-snapshot.raw"
    [ $fmt = raw ] || qcheck "$base"
    qcheck "$ov"
    [ "$(qemu-img info --output=json "$ov" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename"))')" = "$base" ] ||
        fail "the overlay's backing file is not the base"
    # the guest's last pass is in the chain; the base has the first MiB and older passes only
    last=$(grep -a -o "$tag: snapshot: stopped after [0-9]*" "$T/console.log" | tr -d '\r' | awk '{print $NF}')
    must qemu-img convert -f qcow2 -O raw "$ov" "$T/final.raw"
    for r in "0 2048 snap" "8192 4096 snap-$last" "16384 4096 snap-$last"; do
        set -- $r
        want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=$3; pattern $1 $2" | md5sum)
        got=$(dd if="$T/final.raw" bs=512 skip=$1 count=$2 2>/dev/null | md5sum)
        [ "$want" = "$got" ] || fail "sectors $1+$2 of the chain are not the guest's seed $3 pattern"
    done
    # the last pass ran after the host's STOP, so after the switch: the overlay has it, the base not
    for first in 8192 16384; do
        want=$(busybox sh -c "VBD_DEV=none; . $G/guest-lib.sh; seed=snap-$last; pattern $first 4096" | md5sum)
        got=$(dd if="$T/$name-at-snapshot.raw" bs=512 skip=$first count=4096 2>/dev/null | md5sum)
        [ "$want" != "$got" ] || fail "the base holds the pass the guest wrote after the snapshot"
    done
    qemu-img map --output=json "$ov" | python3 -c '
import json, sys
m = [e for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]]
def own(a, b):  # [a, a+b) wholly in extents of the overlay itself (adjacent ones joined)
    for e in sorted(m, key=lambda e: e["start"]):
        if e["start"] <= a < e["start"] + e["length"]:
            a, b = e["start"] + e["length"], a + b - e["start"] - e["length"]
            if b <= 0:
                return True
    return False
sys.exit(0 if own(4 << 20, 2 << 20) and own(8 << 20, 2 << 20) and not own(0, 1 << 20) else 1)' ||
        fail "the overlay does not hold (only) the writes made after the snapshot"
}

iot= vu_opts=
start_case main qcow2
iot="--object iothread,id=io0 --object iothread,id=io1" vu_opts=",num-queues=2,iothread.0=io0,iothread.1=io1"
start_case iothreads raw
rm -f "$T/console.log"
"$G/run-guest.sh" --vhost-user "$T/main.sock" --num-queues 2 --workload "$G/workloads/snapshot.sh" \
    --env VBD_SEED=snap --env VBD_STOP_OFFSET=$stop_at \
    --vhost-user "$T/iothreads.sock" --num-queues 2 --workload "$G/workloads/snapshot.sh" \
    --env VBD_SEED=snap --env VBD_STOP_OFFSET=$stop_at \
    --timeout 1200 --log "$T/console.log" >"$T/guest.out" 2>&1 &
gpid=$!
snap_case main qcow2 disk0
snap_case iothreads raw disk1
wait $gpid || { cat "$T/guest.out"; fail "the guest saw an error across a snapshot"; }
gpid=
tail -1 "$T/guest.out"
check_case main qcow2 disk0
check_case iothreads raw disk1
echo PASS
