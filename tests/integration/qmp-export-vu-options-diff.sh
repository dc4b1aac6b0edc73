#!/bin/bash
# block-export-add type=vhost-user-blk with a block size or a queue count
# qemu-storage-daemon 7.2 refuses: the same refusals in its words and order
# (tests/qmp/diff-export-vu-options.jsonl); num-queues=0 was taken by vbd.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3
qmpdiff diff-export-vu-options
echo ok
