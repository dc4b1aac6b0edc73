#!/bin/bash
# query-named-block-nodes' order (the newest node first, a format's file
# before it, its backing after), query-blockstats' (the oldest first) and
# null-co's names (json: with its size or read-zeroes, also in a raw or
# qcow2 node's name above it) against qemu-storage-daemon 7.2:
# tests/qmp/diff-node-order.jsonl, lists compared in order.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-node-order
echo ok
