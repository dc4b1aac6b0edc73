#!/bin/bash
# block-export-add's iothread and fixed-iothread for NBD exports against
# qemu-storage-daemon 7.2 (tests/qmp/diff-export-iothread.jsonl run by
# tests/qmp/qmpdiff.py): an export moves its node to its iothread (a
# failed move ignored unless fixed-iothread), fixed-iothread keeps the node
# there (x-blockdev-set-iothread force refused with qsd's words), an export
# without it follows its node; idle clients follow a move at once (the
# iothread left can be deleted right after). Same replies, the errors'
# texts too.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
qmpdiff_nulls diff-export-iothread
# a backup or mirror target joining its source's thread: refused while an
# export of the target with fixed-iothread keeps it on another thread
qmpdiff_nulls diff-job-target-fixed-iothread
# idle NBD clients follow their node's move at once: object-del of the
# iothread it left succeeds right after the move
qmpdiff_nulls diff-export-idle-move
echo OK
