#!/bin/bash
# Job states and verbs against qemu-storage-daemon 7.2
# (tests/qmp/diff-job-states.jsonl run by qmpdiff.py): transactions with
# auto-finalize/auto-dismiss off, each verb on a wrong state (class and
# text), set-speed on each job type, the query commands while paused,
# mirror/commit cancel with force in READY, complete in standby.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
q() { printf '{"driver":"qcow2","node-name":"%s","file":{"driver":"file","filename":"{DIR}/%s.qcow2"}%s}' "$1" "$2" "${3:-}"; }
TMPDIR=$T qmpdiff diff-job-states \
    --blockdev "$(q base base ',"backing":null')" \
    --blockdev "$(q mid mid ',"backing":"base"')" \
    --blockdev "$(q top top ',"backing":"mid"')" \
    --blockdev "$(q mt mtgt)" \
    --blockdev "$(q t1 t1)" \
    --blockdev "$(q t2 t2)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=top,name=top,writable=on"
echo ok
