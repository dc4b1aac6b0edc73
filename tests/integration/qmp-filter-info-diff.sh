#!/bin/bash
# query-named-block-nodes of filter and raw nodes against
# qemu-storage-daemon 7.2: tests/qmp/diff-filter-info.jsonl run on both by
# qmpdiff.py (a filter's child as its image's backing-image and in
# backing_file_depth; a filter's and raw's cluster size and dirty flag from
# the child below).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
qmpdiff diff-filter-info
echo PASS
