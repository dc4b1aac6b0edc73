#!/bin/bash
# The export and object commands against qemu-storage-daemon 7.2
# (tests/qmp/diff-export.jsonl run by tests/qmp/qmpdiff.py): the same reply
# structure and error class for good and bad requests (and an error's text
# where the line is marked '# exact'), the deliberate
# differences marked in the script; no sanitizer report from vbd-daemon.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
export VBD_DAEMON
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-export.jsonl" \
    --both --blockdev --both driver=null-co,node-name=n0,size=67108864 \
    --both --blockdev --both driver=null-co,node-name=n1,size=67108864 || fail "qmpdiff found differences (above)"
echo OK
