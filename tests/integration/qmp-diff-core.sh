#!/bin/bash
# The core of QMP (negotiation, ids, request shape errors, parse errors,
# the core commands) replies as qemu-storage-daemon 7.2 does: same keys and
# JSON types, same error classes (tests/qmp/diff-core.jsonl, run by
# tests/qmp/qmpdiff.py; deliberate differences are marked there with why).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
TMPDIR=$T VBD_DAEMON=$VBD_DAEMON python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$VBD_ROOT/tests/qmp/diff-core.jsonl" || fail "qmpdiff found differences"
# a harness failure (a '!' command that fails, after each daemon's directory
# was made) is exit status 2 and leaves no directory behind
mkdir "$T/h"
printf '! true\n{"execute": "query-version"}\n! exit 3\n' >"$T/h.jsonl"
rc=0
TMPDIR=$T/h VBD_DAEMON=$VBD_DAEMON python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" "$T/h.jsonl" >"$T/h.out" 2>&1 || rc=$?
[ $rc = 2 ] || fail "qmpdiff: a failing '!' line gave exit status $rc, not 2: $(cat "$T/h.out")"
grep -q "exited 3" "$T/h.out" || fail "qmpdiff did not say why it failed: $(cat "$T/h.out")"
[ -z "$(ls -A "$T/h")" ] || fail "qmpdiff left its directories after a harness failure: $(ls "$T/h")"
echo PASS
