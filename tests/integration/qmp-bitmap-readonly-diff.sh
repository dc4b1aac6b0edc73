#!/bin/bash
# Dirty bitmaps added, enabled, disabled, cleared and removed on read-only
# nodes (opened so, or reopened read-only): every reply equals
# qemu-storage-daemon 7.2's, errors' texts too, but for the deliberate
# differences marked in tests/qmp/diff-bitmap-readonly.jsonl.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-bitmap-readonly.jsonl" ||
    fail "vbd-daemon and qemu-storage-daemon differ"
echo ok
