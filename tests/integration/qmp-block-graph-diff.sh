#!/bin/bash
# x-debug-query-block-graph answers as qemu-storage-daemon 7.2 does, ids,
# child names and permissions included (tests/qmp/diff-block-graph.jsonl,
# run by tests/qmp/qmpdiff.py; deliberate differences are marked there).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img
TMPDIR=$T qmpdiff diff-block-graph
echo PASS
