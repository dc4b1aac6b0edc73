#!/bin/bash
# blockdev-reopen of a qcow2 node applies l2-cache-size / cache-size (the
# L2 tables' reads counted through nbdkit's log filter) and overlap-check
# (a planted overlapping write refused or let through) as
# qemu-storage-daemon 7.2 does (tests/qmp/diff-reopen-qcow2-apply.jsonl).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io nbdkit python3
qmpdiff diff-reopen-qcow2-apply
echo ok
