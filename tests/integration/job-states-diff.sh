#!/bin/bash
# Job states and verbs against qemu-storage-daemon 7.2
# (tests/qmp/diff-job-states.jsonl run by qmpdiff.py): transactions with
# auto-finalize/auto-dismiss off, each verb on a wrong state (class and
# text), set-speed on each job type, the query commands while paused,
# mirror/commit cancel with force in READY, complete in standby.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
q() { printf '{"driver":"qcow2","node-name":"%s","file":{"driver":"file","filename":"{DIR}/%s.qcow2"}%s}' "$1" "$2" "${3:-}"; }
TMPDIR=$T QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-job-states.jsonl" \
    --both --blockdev --both "$(q base base ',"backing":null')" \
    --both --blockdev --both "$(q mid mid ',"backing":"base"')" \
    --both --blockdev --both "$(q top top ',"backing":"mid"')" \
    --both --blockdev --both "$(q mt mtgt)" \
    --both --blockdev --both "$(q t1 t1)" \
    --both --blockdev --both "$(q t2 t2)" \
    --both --nbd-server --both "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --both --export --both "type=nbd,id=e0,node-name=top,name=top,writable=on" \
    || fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
