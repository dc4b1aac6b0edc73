#!/bin/bash
# vbd-img info and map beside qemu-img's on every format vbd writes (qcow2
# v2/v3/extended L2, raw, vmdk, vhdx, vpc, vdi, qed) and an overlay: the
# same command line run by both tools, each in its own copy of the images
# (lib.sh img_unchanged), gives the same exit code, stdout and stderr, in
# human and JSON output, with -U, -f, --backing-chain and map's
# -s/-l/--start-offset/--max-length, and writes nothing.
# (img-parity-check.sh: check; img-parity.sh: bad command lines and the
# other verbs' options.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
img_formats_base

step "info and map on every format, human and JSON"
for e in $IMG_FORMATS ov.qcow2:qcow2:; do
    IFS=: read -r i f _ <<<"$e"
    img_unchanged info $i
    img_unchanged info --output=json -U -f $f $i
    img_unchanged map --output=json -s 1M -l 5M $i
done
for i in v2.qcow2 r.raw s.vmdk x.vhdx ov.qcow2; do
    img_unchanged map $i
done
img_unchanged info --backing-chain ov.qcow2
img_unchanged info --backing-chain --output=json ov.qcow2
img_unchanged map --output=json --start-offset=4M --max-length=2M ov.qcow2
echo PASS
