#!/bin/bash
# Raw and filter nodes read-write over a read-only node, against
# qemu-storage-daemon 7.2: tests/qmp/diff-perm-readonly-writer.jsonl run on
# both by qmpdiff.py (they open; each writer that comes above them, an
# export, a job's target, a format, a resize, is refused then, in
# qsd's words; readers run).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-perm-readonly-writer
echo PASS
