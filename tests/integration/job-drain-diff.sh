#!/bin/bash
# A drained section of a block job's node pauses the job (JOB_STATUS_CHANGE
# paused/standby and back) and the change goes through, as
# qemu-storage-daemon 7.2's drain does: blockdev-reopen of an option of a
# mirror's, a backup's, a stream's and a commit's node while it runs;
# a bitmap change shows no event (tests/qmp/diff-job-drain.jsonl run on
# both by qmpdiff.py). vbd refused those reopens while a job used the node.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-job-drain.jsonl" \
    --both --blockdev --both "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
    --both --blockdev --both "driver=file,node-name=fmid,filename={DIR}/mid.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"mid","file":"fmid","backing":"base"}' \
    --both --blockdev --both "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"mid"}' \
    --both --blockdev --both "driver=file,node-name=ftgt,filename={DIR}/tgt.qcow2" \
    --both --blockdev --both '{"driver":"qcow2","node-name":"tgt","file":"ftgt","backing":null}' ||
    fail "vbd-daemon and qemu-storage-daemon differ"
