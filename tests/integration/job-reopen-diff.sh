#!/bin/bash
# blockdev-reopen read-only of a node a block job writes (a commit's base,
# an active commit's base in READY, a mirror's and a backup's target) is
# refused, as qemu-storage-daemon 7.2 refuses it (its job holds the write
# permission): tests/qmp/diff-job-reopen.jsonl run on both by qmpdiff.py,
# errors' texts compared. vbd made the node read-only under the job.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-job-reopen.jsonl" \
    --both --blockdev --both "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
    --both --blockdev --both "driver=file,node-name=fmid,filename={DIR}/mid.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"mid","file":"fmid","backing":"base"}' \
    --both --blockdev --both "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"mid"}' \
    --both --blockdev --both "driver=file,node-name=ftgt,filename={DIR}/tgt.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":"ftgt","backing":null}' ||
    fail "vbd-daemon and qemu-storage-daemon differ"
