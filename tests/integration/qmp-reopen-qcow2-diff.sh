#!/bin/bash
# blockdev-reopen of a qcow2 node's runtime options (cache sizes,
# cache-clean-interval, overlap-check, lazy-refcounts) against
# qemu-storage-daemon 7.2 (tests/qmp/diff-reopen-qcow2.jsonl): accepted and
# refused as qsd does, in its words; lazy refcounts turned off mark the
# dirty image clean (its header read back), writes read back over NBD.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-reopen-qcow2
echo ok
