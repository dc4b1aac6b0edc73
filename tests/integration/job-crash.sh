#!/bin/bash
# Crash safety of block jobs: vbd-daemon is killed with SIGKILL in the
# middle of a block-stream, an intermediate and an active block-commit
# (after a few chunks were copied: the job's progress is polled). Every
# image must pass qemu-img check (leaks allowed, as after any crash of a
# qcow2 writer in QEMU) and the chain must read as before the job (the
# chain is changed only after the data is on disk). SIGTERM during a job
# cancels it and the daemon exits 0 with the images clean.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
mixed_disk base.raw 24 1 14
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
must qemu-io -f qcow2 -c 'write -P 0x61 0 5M' -c 'write -P 0x62 12M 6M' mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c 'write -P 0x71 3M 4M' -c 'write -z 20M 1M' top.qcow2 >/dev/null
for i in base mid top; do cp $i.qcow2 $i.0; done
fresh() { for i in base mid top; do cp $i.0 $i.qcow2; done; }
must qemu-img convert -q -O raw top.qcow2 view.raw

start() {
    "$VBD_DAEMON" --chardev socket,id=q,path="$T/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev '{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"'"$T"'/top.qcow2"}}' \
        --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
        --export type=nbd,id=e0,node-name=top,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$T/nbd.sock" "$dpid" daemon.log
}
on_exit 'kill -9 $dpid 2>/dev/null'
# start JOB ARGS (JSON) and wait until it has copied at least AT bytes
job_until() {
    python3 - "$1" "$2" <<'PY' || fail "job $1 did not get to $2 bytes: $(tail -3 daemon.log)"
import json, os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
s = Session("qmp.sock", "vbd")
args, at = json.loads(sys.argv[1]), int(sys.argv[2])
cmd = args.pop("cmd")
s.run(cmd, **args)
while True:
    j = s.job(args["job-id"])
    if not j or j["status"] not in ("created", "running", "ready"):
        fail(f"job ended early: {j}")
    if j["current-progress"] >= at:
        break
    time.sleep(0.02)  # polling the progress
PY
}
check_after() { # $1: what; the images consistent and the chain reading as before
    for i in base mid top; do
        out=$(qemu-img check $i.qcow2 2>&1); rc=$?
        [ $rc = 0 ] || [ $rc = 3 ] || fail "$1: qemu-img check $i.qcow2 exit $rc: $out"
    done
    must qemu-img compare -q -f qcow2 -F raw top.qcow2 view.raw
    qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2$' || fail "$1: top.qcow2 re-pointed: $(qemu-img info top.qcow2)"
}
n=0
for job in '{"cmd":"block-stream","job-id":"j","device":"top","speed":4194304}' \
           '{"cmd":"block-commit","job-id":"j","device":"top","top-node":"#MID","speed":4194304}' \
           '{"cmd":"block-commit","job-id":"j","device":"top","speed":4194304}'; do
    for at in 1048576 4194304 9437184; do
        n=$((n + 1))
        step "SIGKILL during $job after $at bytes"
        fresh
        start
        # the auto-opened backing nodes have generated names: find mid's
        mid=$(python3 -c "
import os, sys
sys.path.insert(0, os.environ['VBD_ROOT'] + '/tests/qmp')
from qmp import QMP
m = QMP('$T/qmp.sock', negotiate=True)
print([x['node-name'] for x in m.execute('query-named-block-nodes') if x['file'].endswith('/mid.qcow2')][0])")
        job_until "${job/\#MID/$mid}" $at
        kill -9 $dpid; wait $dpid 2>/dev/null; dpid=
        wait_lock_free top.qcow2
        check_after "kill $n"
    done
done
step "SIGTERM during a job: cancelled, exit 0, images clean"
fresh
start
job_until '{"cmd":"block-stream","job-id":"j","device":"top","speed":4194304}' 2097152
kill -TERM $dpid; wait $dpid; rc=$?; dpid=
[ $rc = 0 ] || fail "vbd-daemon exited with $rc after SIGTERM during a job: $(tail -5 daemon.log)"
! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
for i in base mid top; do qcheck $i.qcow2; done
must qemu-img compare -q -f qcow2 -F raw top.qcow2 view.raw
echo ok
