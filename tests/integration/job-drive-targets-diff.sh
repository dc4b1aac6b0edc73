#!/bin/bash
# The nodes drive-mirror and drive-backup open by filename, against
# qemu-storage-daemon 7.2: tests/qmp/diff-drive-targets.jsonl run on both by
# qmpdiff.py. Not the monitor's: a drive-mirror target its pivot gave
# users (an export) closes with the last of them, one without users at the
# job's end (finalized, not dismissed), a drive-backup target at the job's
# end; query-named-block-nodes, blockdev-del's answers (qsd's words), the
# image lock bytes and another process's open of the image follow.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-drive-targets \
    --blockdev "$(qcow2_node_in {DIR} src)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)"
echo PASS
