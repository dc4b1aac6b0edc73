#!/bin/bash
# A backup started inside its source's drain (blockdev-backup,
# drive-backup and transactions) and the drain of all nodes every
# transaction begins with: JOB_STATUS_CHANGE in qemu-storage-daemon 7.2's
# order (tests/qmp/diff-job-start-drain.jsonl run on both by qmpdiff.py,
# ?events compares sequences); block_resize of a backup's source names
# its copy-before-write node as qsd.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff_job_chain diff-job-start-drain
echo OK
