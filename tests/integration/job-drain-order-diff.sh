#!/bin/bash
# The order of JOB_STATUS_CHANGE events when one drain pauses two mirrors
# in READY (a blockdev-reopen list over both, the same list reversed, a
# transaction), against qemu-storage-daemon 7.2
# (tests/qmp/diff-job-drain-order.jsonl): each waits for READY first, so
# no event races the drain; the sequences are compared whole.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-job-drain-order
echo ok
