#!/bin/bash
# blockdev-reopen changes what qemu-storage-daemon 7.2 lets it change for
# vbd's drivers (detect-zeroes, discard, cache.no-flush, cache.direct of a
# format node, backing: null or another node, a throttle node's group),
# resets what an entry leaves out, refuses the rest with qsd's words, and
# does the whole list or nothing: tests/qmp/diff-reopen.jsonl run on both
# by qmpdiff.py, errors' texts compared. (vbd changed read-only only.)
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-reopen \
    --object throttle-group,id=g0 --object throttle-group,id=g1 \
    --blockdev "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
    --blockdev "driver=file,node-name=fbase2,filename={DIR}/base2.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"base2","file":"fbase2","backing":null}' \
    --blockdev "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
    --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"base"}' \
    --blockdev "driver=file,node-name=fr,filename={DIR}/r.raw" \
    --blockdev '{"driver":"raw","node-name":"r0","file":"fr"}' \
    --blockdev '{"driver":"throttle","node-name":"t0","file":"r0","throttle-group":"g0"}'
echo ok
