#!/bin/bash
# blockdev-reopen of a running mirror's source to read-only against
# qemu-storage-daemon 7.2 (tests/qmp/diff-mirror-reopen.jsonl): allowed
# while nothing writes the source (the job only reads it), refused with a
# writable export on it; the job copies on and its target takes the
# source's read-only state at the pivot.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-mirror-reopen
echo ok
