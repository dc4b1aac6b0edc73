#!/bin/bash
# A QMP client that connects while the command line is still being
# applied (the monitor is given first; a later --blockdev's open waits on
# a slow NBD server) sees the daemon as the command line made it: its
# commands wait until every node is open, never a node half open or
# missing.
. "$(dirname "$0")/lib.sh"
need nbdkit python3 qemu-img
cd "$T"
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null; [ -z "$npid" ] || kill $npid 2>/dev/null'
truncate -s 8M disk.raw
# nbdkit's delay filter holds each client's open for 2 s
nbdkit -f -U "$T/nbd.sock" --filter=delay file disk.raw delay-open=2 2>nbdkit.log &
npid=$!
wait_sock "$T/nbd.sock" "$npid" nbdkit.log

step "commands sent during a slow --blockdev open wait for it"
"$VBD_DAEMON" --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
    --blockdev '{"driver":"nbd","node-name":"remote","server":{"type":"unix","path":"'"$T"'/nbd.sock"}}' \
    --blockdev raw,node-name=top,file=remote 2>daemon.log &
dpid=$!
python3 - <<'PY' || fail "early client"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP("qmp.sock", negotiate=True)
nodes = {n["node-name"]: n for n in m.execute("query-named-block-nodes")}
for name in ("remote", "top"):
    if name not in nodes:
        sys.exit(f"node '{name}' missing from query-named-block-nodes: {sorted(nodes)}")
    if nodes[name]["image"]["virtual-size"] != 8 << 20:
        sys.exit(f"node '{name}' has size {nodes[name]['image']['virtual-size']}")
m.execute("quit")
PY
wait $dpid; rc=$?; dpid=
[ $rc = 0 ] || fail "vbd-daemon exited with $rc: $(tail -3 daemon.log)"
! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
echo ok
