#!/bin/bash
# x-debug-query-block-graph with a running mirror, stream, commit and active
# commit job answers as qemu-storage-daemon 7.2 does
# (tests/qmp/diff-block-graph-jobs.jsonl, run by tests/qmp/qmpdiff.py).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
TMPDIR=$T VBD_DAEMON=$VBD_DAEMON QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" \
    "$VBD_ROOT/tests/qmp/diff-block-graph-jobs.jsonl" || fail "qmpdiff found differences"
echo PASS
