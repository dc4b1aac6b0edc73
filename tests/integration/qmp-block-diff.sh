#!/bin/bash
# The block commands against qemu-storage-daemon 7.2: tests/qmp/diff-block.jsonl
# (good and bad requests: unknown node, duplicate node-name, missing and
# wrong-typed arguments, blockdev-del in use, reopen, resize, write
# threshold and corruption events) gives replies of the same structure and error class from
# both daemons, except the differences marked in the script.
source "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
out=$(QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-block.jsonl" \
    --both --object --both iothread,id=io0 \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --blockdev --both "driver=file,node-name=wf,filename={DIR}/w.raw" \
    --both --export --both "type=nbd,id=ew,node-name=wf,writable=on" \
    --both --blockdev --both "driver=file,node-name=cf,filename={DIR}/c.qcow2" \
    --both --blockdev --both "driver=qcow2,node-name=c,file=cf" \
    --both --export --both "type=nbd,id=ec,node-name=c" 2>&1)
rc=$?
echo "$out"
[ $rc = 0 ] || fail "qmpdiff: differences from qemu-storage-daemon (exit $rc)"
case "$out" in *" 0 differences"*) ;; *) fail "qmpdiff printed no summary" ;; esac
echo PASS
