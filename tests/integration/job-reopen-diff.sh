#!/bin/bash
# blockdev-reopen read-only of a node a block job writes (a commit's base,
# an active commit's base in READY, a mirror's and a backup's target) is
# refused, as qemu-storage-daemon 7.2 refuses it (its job holds the write
# permission): tests/qmp/diff-job-reopen.jsonl run on both by qmpdiff.py,
# errors' texts compared. vbd made the node read-only under the job.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff_job_chain diff-job-reopen
