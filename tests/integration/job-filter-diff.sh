#!/bin/bash
# filter-node-name against qemu-storage-daemon 7.2: tests/qmp/diff-jobfilter.jsonl
# run on both by qmpdiff.py, error texts compared too. Each job's named
# filter (copy-on-read, commit_top, mirror_top, copy-before-write) is in
# query-named-block-nodes while the job runs, the export sits on it
# (query-block-exports), its name collides with other nodes' (and bad ones
# are refused) in QEMU's words, and it is gone when the job ends (completed,
# cancelled, after a pivot), the name free again.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-jobfilter \
    --blockdev "$(qcow2_node_in {DIR} base null)" \
    --blockdev "$(qcow2_node_in {DIR} mid base)" \
    --blockdev "$(qcow2_node_in {DIR} top mid)" \
    --blockdev "$(qcow2_node_in {DIR} tgt)" \
    --blockdev "$(qcow2_node_in {DIR} tgt2)" \
    --blockdev "$(qcow2_node_in {DIR} sbase null)" \
    --blockdev "$(qcow2_node_in {DIR} stop sbase)" \
    --blockdev "$(qcow2_node_in {DIR} msrc)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=top,name=e0,writable=on" \
    --export "type=nbd,id=e1,node-name=stop,name=e1,writable=on" \
    --export "type=nbd,id=e2,node-name=msrc,name=e2,writable=on"
echo ok
