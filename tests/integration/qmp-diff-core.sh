#!/bin/bash
# The core of QMP (negotiation, ids, request shape errors, parse errors,
# the core commands) replies as qemu-storage-daemon 7.2 does: same keys and
# JSON types, same error classes (tests/qmp/diff-core.jsonl, run by
# tests/qmp/qmpdiff.py; deliberate differences are marked there with why).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
TMPDIR=$T VBD_DAEMON=$VBD_DAEMON python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-core.jsonl" || fail "qmpdiff found differences"
echo PASS
