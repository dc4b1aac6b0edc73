#!/bin/bash
# qom-list / qom-get / qom-set of "/", "/chardevs" (every chardev, its
# type and a socket's connected and addr), "/objects" (there once an
# object was made) and partial paths, against qemu-storage-daemon 7.2
# (tests/qmp/diff-qom-chardevs.jsonl).
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
export VBD_DAEMON
qmpdiff diff-qom-chardevs
echo ok
