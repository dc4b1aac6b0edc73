#!/bin/bash
# A mirror or backup into a node over its source (a filter, raw) against
# qemu-storage-daemon 7.2: tests/qmp/diff-job-over-source.jsonl run on both
# by qmpdiff.py (refused in qsd's words; the daemons stop at the end: vbd
# hung in such a backup); a fleecing backup (target's backing = source) runs.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-job-over-source
echo PASS
