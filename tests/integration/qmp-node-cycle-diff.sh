#!/bin/bash
# blockdev-add of a node whose child references the node itself (or a node
# above it) by name: refused as qemu-storage-daemon 7.2 refuses it
# (tests/qmp/diff-node-cycle.jsonl), the daemon serving on; before round
# 26 vbd-daemon made the node its own child and died of a stack overflow
# or hung (found by fuzz-blockdev-opts).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3
qmpdiff diff-node-cycle
echo ok
