#!/bin/bash
# Wrong option values get qemu-img's words and exit code, checked before the
# image is touched, also for options vbd-img takes but has no use for
# (commit's -t/-r, rebase's -t/-T, amend's -t): the same command line run
# by qemu-img and vbd-img prints the same lines and exits alike, and the
# image is unchanged; right values of the same options still work.
. "$(dirname "$0")/lib.sh"
need qemu-img
cd "$T"
must qemu-img create -q -f qcow2 b.qcow2 16M
must qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
cp t.qcow2 t0.qcow2
same_as_qemu_img() { # ARGS...: same output (tool name aside) and exit code; the image unchanged
    local q v qrc vrc
    q=$(qemu-img "$@" 2>&1 </dev/null); qrc=$?
    cmp -s t.qcow2 t0.qcow2 || fail "qemu-img $* changed the image"
    v=$("$VBD_IMG" "$@" 2>&1 </dev/null); vrc=$?
    cmp -s t.qcow2 t0.qcow2 || fail "vbd-img $* changed the image"
    [ "$qrc" = "$vrc" ] || fail "vbd-img $*: exit $vrc, qemu-img $qrc ($v)"
    [ "${v//vbd-img/qemu-img}" = "$q" ] || fail "vbd-img $*: '$v', qemu-img: '$q'"
}
step "wrong values"
same_as_qemu_img commit -r -1 t.qcow2
same_as_qemu_img commit -r 1Q t.qcow2
same_as_qemu_img commit -t bogus t.qcow2
same_as_qemu_img rebase -t bogus -u -b b.qcow2 t.qcow2
same_as_qemu_img rebase -T bogus -u -b b.qcow2 t.qcow2
same_as_qemu_img amend -t bogus -o lazy_refcounts=on t.qcow2
step "right values"
must "$VBD_IMG" commit -q -t writeback -r 1M -d t.qcow2
must "$VBD_IMG" rebase -t writeback -T writeback -u -b b.qcow2 -F qcow2 t.qcow2
must "$VBD_IMG" amend -t writeback -o lazy_refcounts=on t.qcow2
echo OK
