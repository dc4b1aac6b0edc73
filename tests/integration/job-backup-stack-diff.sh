#!/bin/bash
# Two backups of one source at once against qemu-storage-daemon 7.2
# (tests/qmp/diff-backup-stack.jsonl run by qmpdiff.py): the second stacks
# its copy-before-write node as qsd's (query-named-block-nodes and the
# export's node while both run, after either ends first), busy-node errors
# in qsd's words, and each target equal to the source at its own job's
# start (qemu-img compare) with writes racing through the source's export.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
TMPDIR=$T qmpdiff diff-backup-stack \
    --blockdev "$(qcow2_node_in {DIR} src)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)" \
    --blockdev "$(qcow2_node_in {DIR} tgt2)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=src,name=src,writable=on"
echo ok
