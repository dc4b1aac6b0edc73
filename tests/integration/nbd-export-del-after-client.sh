#!/bin/bash
# block-export-del (mode=safe) of an NBD export right after its client has
# exited, as a script does (qemu-io against the export, then the delete),
# against vbd-daemon (main loop and an iothread) and qemu-storage-daemon
# 7.2 (main loop): every delete succeeds with both. vbd refused some with "export 'e'
# still in use" (2 of 50 on the main loop) when the client's EOF was
# still waiting in the loop iteration of the command: it now waits for
# connections whose client has closed its end. A client still connected
# (past NBD_OPT_GO) is refused at once by both, in the same words, and
# reads on; once it has closed, the delete succeeds at once.
. "$(dirname "$0")/lib.sh"
need python3 qemu-io qemu-storage-daemon
cd "$T"
truncate -s 16M v.raw q.raw
S=$T/v.qmp
on_exit 'kill -9 $dpid $qpid 2>/dev/null'
start_daemon --chardev socket,id=m,path="$S",server=on,wait=off --monitor chardev=m \
    --blockdev driver=file,node-name=d,filename="$T/v.raw"
qemu-storage-daemon --chardev socket,id=m,path="$T/q.qmp",server=on,wait=off --monitor chardev=m \
    --blockdev driver=file,node-name=d,filename="$T/q.raw" 2>q.log &
qpid=$!
wait_sock "$T/q.qmp" "$qpid" q.log
T=$T python3 - <<'PY' || fail_with_daemon_log "block-export-del after a client"
import os, struct, subprocess, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/integration")
import nbdproto
from qmp import QMP
T = os.environ["T"]
answers = {}
for who, rounds in (("v", 100), ("q", 30)):
    m = QMP(f"{T}/{who}.qmp", negotiate=True)
    sock = f"{T}/nbd-{who}.sock"
    uri = f"nbd+unix:///disk?socket={sock}"
    assert "error" not in m.cmd("object-add", {"qom-type": "iothread", "id": "io0"})
    assert "error" not in m.cmd("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}})
    # (qsd 7.2 aborts on the second block-export-add with iothread= in this
    # loop: vbd's alone on the iothread)
    for iothread in (None, "io0") if who == "v" else (None,):
        refused = 0
        for i in range(rounds if iothread is None else 30):
            add = {"type": "nbd", "id": "e", "node-name": "d", "name": "disk", "writable": True}
            if iothread:
                add["iothread"] = iothread
            r = m.cmd("block-export-add", add)
            if "error" in r:
                sys.exit(f"FAIL: {who}: block-export-add: {r['error']}")
            last = i % 250 + 1
            subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {i % 250 + 1} 0 4k", "-c", f"read -P {i % 250 + 1} 0 4k", uri],
                           check=True, stdout=subprocess.DEVNULL)
            r = m.cmd("block-export-del", {"id": "e"})
            if "error" in r:
                refused += 1
                r = m.cmd("block-export-del", {"id": "e", "mode": "hard"})
                if "error" in r:
                    sys.exit(f"FAIL: {who}: block-export-del mode=hard: {r['error']}")
            m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)
        print(f"{who} {iothread or 'main loop'}: refused {refused} of {i + 1}")
        if refused:
            sys.exit(f"FAIL: {who}: block-export-del right after the client exited refused {refused} times")
    # a client still connected (past NBD_OPT_GO): refused, and it reads on;
    # closed, the export goes at once
    add = {"type": "nbd", "id": "e", "node-name": "d", "name": "disk", "writable": True}
    assert "error" not in m.cmd("block-export-add", add)
    c = nbdproto.connect(sock)
    nbdproto.handshake(c, export="disk", go=True)
    answers[who] = m.cmd("block-export-del", {"id": "e"}).get("error")
    c.sendall(nbdproto.request(0, 1, 0, 4096))  # NBD_CMD_READ
    magic, err, cookie = struct.unpack(">IIQ", nbdproto.recvn(c, 16))
    data = nbdproto.recvn(c, 4096)
    if err or cookie != 1 or data != bytes([last]) * 4096:
        sys.exit(f"FAIL: {who}: the connected client's read after the refused delete: error {err}")
    c.close()
    r = m.cmd("block-export-del", {"id": "e"})
    if "error" in r:
        sys.exit(f"FAIL: {who}: block-export-del after the connected client closed: {r['error']}")
    m.wait_event("BLOCK_EXPORT_DELETED", timeout=120)
print("connected client:", answers)
if answers["v"] is None or answers["v"] != answers["q"]:
    sys.exit(f"FAIL: a connected client's export deleted, or other words: vbd {answers['v']}, qsd {answers['q']}")
PY
stop_daemon
echo OK
