#!/bin/bash
# chardev-add/-change/-remove/-send-break, ringbuf-read/-write and
# query-chardev-backends answer as qemu-storage-daemon 7.2 does, error
# texts included (tests/qmp/diff-chardev.jsonl, run by tests/qmp/qmpdiff.py;
# deliberate differences are marked there with why).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
TMPDIR=$T VBD_DAEMON=$VBD_DAEMON QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" \
    "$VBD_ROOT/tests/qmp/diff-chardev.jsonl" || fail "qmpdiff found differences"
echo PASS
