#!/bin/bash
# block_resize against a second file node of the daemon on the same image,
# against qemu-storage-daemon 7.2: tests/qmp/diff-resize-lock.jsonl run on
# both by qmpdiff.py (the command's resize lock is refused where a format
# over the other node unshares it, taken and given back otherwise; the
# lock bytes compared each time).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-resize-lock
echo PASS
