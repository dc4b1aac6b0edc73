#!/bin/bash
# A mirror into a target smaller or larger than its source against
# qemu-storage-daemon 7.2 (tests/qmp/diff-mirror-size.jsonl): the command
# succeeds, the job fails at its start with qsd's events and error and
# leaves the target as it was; the same size still mirrors.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-mirror-size
echo ok
