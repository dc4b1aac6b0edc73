#!/bin/bash
# vbd-img check beside qemu-img check on every format vbd writes (lib.sh
# img_formats_base; img_same/img_unchanged: the same exit code, stdout,
# stderr and files): human and JSON output; -r where nothing needs repair
# writes nothing (vhdx's headers included: qemu-img renews them at the
# first write only, and so does vbd now); qcow2 -r on a leaked cluster and
# on a cluster in use counted 0 as qemu-img does it: the findings first,
# then the repairs, then the double check, whose image end offset is the
# repaired image's; -r leaks refuses the count of 0 (exit 1, nothing
# written); an empty qcow2 has no L1 table. Also words qemu-img prints
# around an open: rebase's new backing file of the wrong format,
# --object's types and members (throttle-group and authz-simple/-list made
# as by qemu-img and qemu-io: vbd's tools refused them); convert -c
# refused before any target.
# (img-check-formats.sh: damaged images of the other formats;
# qcow2-check-matrix.sh: qcow2's counters.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
img_formats_base
size=$(stat -c %s base/v3.qcow2)
cp base/v3.qcow2 base/leak.qcow2
truncate -s $((size + 4 * 65536)) base/leak.qcow2
qcow2_set_refcount base/leak.qcow2 $((size / 65536 + 1)) 1
# a data cluster whose stored count is 0
data=$(qemu-img map --output=json base/v3.qcow2 | python3 -c 'import json,sys; print([e["offset"] for e in json.load(sys.stdin) if e["data"]][0] // 65536)')
cp base/v3.qcow2 base/corrupt.qcow2
qcow2_set_refcount base/corrupt.qcow2 "$data" 0
cp base/leak.qcow2 base/both.qcow2
qcow2_set_refcount base/both.qcow2 "$data" 0

step "check on every format, human and JSON; -r with nothing to repair writes nothing"
for e in $IMG_FORMATS; do
    IFS=: read -r i _ _ <<<"$e"
    img_unchanged check $i
    img_unchanged check --output=json $i
done
for i in v3.qcow2 x.vhdx e.qed; do
    img_unchanged check -r all $i
done
img_unchanged amend -f vhdx -o bogus=1 x.vhdx

step "qcow2 check -r: the findings, the repairs, the double check"
img_same check -r leaks leak.qcow2
img_same check -r all --output=json leak.qcow2
img_unchanged check -r leaks corrupt.qcow2
img_unchanged check -r leaks --output=json both.qcow2
img_unchanged check both.qcow2
# (-r all on a cluster counted 0: qemu-img rebuilds the refcount structure
# at the end of the file, vbd repairs the count in place; both clean after:
# qcow2-check.sh)

step "an empty qcow2 (no L1 table, as qemu-img makes it): clean when vbd-img makes it, resized and written by vbd"
: >base/empty.raw
for args in "create -f qcow2 n.qcow2 0" "create -f qcow2 -o compat=0.10 n.qcow2 0" "convert -O qcow2 empty.raw n.qcow2" \
            "dd -O qcow2 if=r.raw of=n.qcow2 bs=64k skip=80 count=3"; do
    # shellcheck disable=SC2086 # $args is words
    img_same $args
    qcheck v/n.qcow2
done
for mk in qemu-img "$VBD_IMG"; do
    rm -f n.qcow2
    must "$mk" create -q -f qcow2 n.qcow2 0
    must "$VBD_IMG" snapshot -c s n.qcow2
    must "$VBD_IMG" resize -q n.qcow2 4M
    must "$VBD_IO" -c 'write -P 5 0 1M' n.qcow2 >/dev/null
    must qemu-io -c 'read -P 5 0 1M' n.qcow2 >/dev/null
    must "$VBD_IMG" snapshot -a s n.qcow2
    qcheck n.qcow2
done

step "convert -c into a format that cannot compress: refused before the target is made"
img_unchanged convert -c -O raw v3.qcow2 n.raw
img_unchanged convert -c -O vdi v3.qcow2 n.vdi

step "rebase: a new backing file of the wrong format, in qemu-img's words"
img_unchanged rebase -b r.raw -F qcow2 ov.qcow2
img_unchanged rebase -b nosuch.qcow2 -F qcow2 ov.qcow2

step "--object: a type qemu-img does not know, one it cannot make, a member it does not take; throttle groups and authz lists"
for o in bogus,id=x id=x iothread,id=x secret,id=s,data=x,bogus=1 secret,id=s,data=x,format=bogus secret,data=x ''; do
    img_unchanged info --object "$o" v3.qcow2
done
# throttle groups and authz lists are made as by qemu-img and qemu-io (a
# throttle filter takes its group); their members checked in QEMU's words
for o in throttle-group,id=t0 throttle-group,id=t0,x-iops-total=x throttle-group,id=t0,bogus=1 throttle-group \
    authz-simple,id=a,identity=x authz-simple,id=a authz-list,id=b authz-list,id=b,policy=bogus authz-listfile,id=c,filename=x; do
    img_unchanged info --object "$o" v3.qcow2
done
io_same --object throttle-group,id=t0,x-bps-total=4194304 --image-opts driver=throttle,throttle-group=t0,file.driver=raw,file.file.filename=r.raw \
    -c "read -P 1 0 4k" -c "write -P 3 0 4k" -c "read -P 3 0 4k"
io_same --image-opts driver=throttle,throttle-group=nope,file.driver=raw,file.file.filename=r.raw -c "read 0 4k"
step "--image-opts: read-only=off opens read-write (force-share=on then refused, as qemu-img)"
img_unchanged info --image-opts driver=qcow2,file.filename=v3.qcow2,force-share=on,read-only=off
img_unchanged check --image-opts driver=qcow2,file.filename=v3.qcow2,force-share=on,read-only=off
img_unchanged info --image-opts driver=qcow2,file.filename=v3.qcow2,force-share=on,read-only=on
echo PASS
