#!/bin/bash
# chardev-add/-change/-remove/-send-break, ringbuf-read/-write and
# query-chardev-backends answer as qemu-storage-daemon 7.2 does, error
# texts included (tests/qmp/diff-chardev.jsonl, run by tests/qmp/qmpdiff.py;
# deliberate differences are marked there with why).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
TMPDIR=$T qmpdiff diff-chardev
echo PASS
