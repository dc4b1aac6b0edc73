#!/bin/bash
# Read-only of file nodes under a read-only qcow2, against
# qemu-storage-daemon 7.2 (tests/qmp/diff-reopen-file-ro.jsonl): a file
# child given inline follows its qcow2 on both; a file node made on its
# own stays read-write in qsd (its write lock dropped) where vbd makes it
# read-only: marked differences, described in the jsonl's header.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon qemu-img qemu-io
export VBD_DAEMON
qmpdiff diff-reopen-file-ro
echo ok
