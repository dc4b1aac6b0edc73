#!/bin/bash
# The export and object commands against qemu-storage-daemon 7.2
# (tests/qmp/diff-export.jsonl run by tests/qmp/qmpdiff.py): the same reply
# structure and error class for good and bad requests (and an error's text
# where the line is marked '# exact'), the deliberate
# differences marked in the script; no sanitizer report from vbd-daemon.
# Then the stop (tests/qmp/diff-stop-quit.jsonl, diff-stop-sigterm.jsonl):
# the same events in the same order from the stop to the monitor's end.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
qmpdiff_nulls diff-export
export VBD_DAEMON
for how in quit sigterm; do
    python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-stop-$how.jsonl" \
        --both --blockdev --both driver=null-co,node-name=n0,size=67108864 \
        --both --blockdev --both driver=null-co,node-name=n1,size=67108864 \
        --both --blockdev --both driver=null-co,node-name=t0,size=67108864 \
        --both --nbd-server --both 'addr.type=unix,addr.path={DIR}/nbd.sock' \
        --both --export --both type=nbd,id=e0,node-name=n0,name=one || fail "qmpdiff: the stop by $how differs (above)"
done
echo OK
