#!/bin/bash
# The jobs' implicit filter nodes against qemu-storage-daemon 7.2
# (tests/qmp/diff-job-implicit.jsonl run by qmpdiff.py): mirror_top,
# commit_top and stream's copy-on-read listed by query-named-block-nodes
# while the job runs without filter-node-name, gone after a cancel or the
# end; the data read through the export after the mirror's pivot.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
TMPDIR=$T qmpdiff diff-job-implicit \
    --blockdev "$(qcow2_node_in {DIR} base null)" \
    --blockdev "$(qcow2_node_in {DIR} mid base)" \
    --blockdev "$(qcow2_node_in {DIR} top mid)" \
    --blockdev '{"driver":"qcow2","node-name":"mt","file":{"driver":"file","filename":"{DIR}/mtgt.qcow2"}}' \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=top,name=top,writable=on"
echo ok
