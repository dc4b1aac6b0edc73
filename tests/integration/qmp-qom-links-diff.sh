#!/bin/bash
# qom-get of the QOM containers' child properties ("/objects" ID ->
# "/objects/ID", "/" objects and chardevs, "/chardevs" ID) and qom-list of
# them against qemu-storage-daemon 7.2: tests/qmp/diff-qom-links.jsonl.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon python3
qmpdiff diff-qom-links
echo ok
