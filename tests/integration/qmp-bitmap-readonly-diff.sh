#!/bin/bash
# Dirty bitmaps added, enabled, disabled, cleared and removed on read-only
# nodes (opened so, or reopened read-only): every reply equals
# qemu-storage-daemon 7.2's, errors' texts too, but for the deliberate
# differences marked in tests/qmp/diff-bitmap-readonly.jsonl.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-bitmap-readonly
echo ok
