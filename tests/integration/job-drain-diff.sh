#!/bin/bash
# A drained section of a block job's node pauses the job (JOB_STATUS_CHANGE
# paused/standby and back) and the change goes through, as
# qemu-storage-daemon 7.2's drain does: blockdev-reopen of an option of a
# mirror's, a backup's, a stream's and a commit's node while it runs;
# a bitmap change shows no event (tests/qmp/diff-job-drain.jsonl run on
# both by qmpdiff.py). vbd refused those reopens while a job used the node.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff_job_chain diff-job-drain
