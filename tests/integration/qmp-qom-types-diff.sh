#!/bin/bash
# qom-list-types and qom-list-properties answer as qemu-storage-daemon 7.2
# does for the object types vbd-daemon makes (tests/qmp/diff-qom-types.jsonl,
# run by tests/qmp/qmpdiff.py; deliberate differences are marked there).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
TMPDIR=$T qmpdiff diff-qom-types
echo PASS
