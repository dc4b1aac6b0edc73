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
QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} "$VBD_ROOT/tests/qmp/diff-bitmap-merge-checks.jsonl" ||
    fail "qmpdiff found differences (above)"
echo ok
