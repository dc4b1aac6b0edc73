#!/bin/bash
# block-dirty-bitmap-merge's checks against qemu-storage-daemon 7.2 word
# for word (tests/qmp/diff-bitmap-merge-checks.jsonl): sources of another
# size ("Bitmaps are of different sizes (destination size is N, source
# size is M) and can't be merged"; vbd said "Bitmaps are incompatible"), an
# inconsistent (in-use) source or target, and QEMU 7.2's order: a missing
# source named before a busy or read-only target, that one before an
# inconsistent source or one of another size.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON
qmpdiff diff-bitmap-merge-checks
echo ok
