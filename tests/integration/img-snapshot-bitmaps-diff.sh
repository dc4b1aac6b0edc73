#!/bin/bash
# snapshot -a (revert to an internal snapshot) of a qcow2 image with
# persistent dirty bitmaps, vbd-img beside qemu-img 7.2: qemu-img refuses
# it ("Device has active dirty bitmaps", exit 1) whatever the bitmaps'
# state and before it looks the snapshot up, because the revert changes
# data without a write a bitmap could see (an incremental backup from the
# bitmap would miss it). Each case: the same image made for both tools,
# the same exit status and stderr, the images left equal (qemu-img
# compare, same bitmaps in qemu-img info, check clean), and the data the
# revert must (not) have brought back. Main's vbd-img reverted the image
# under an enabled or disabled bitmap (exit 0; the data changed, the
# bitmaps kept what they had).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
# make DIR BITMAPS...: a.qcow2 with 0x11 at 0 in snapshot s1, 0x22 there
# now, and the bitmaps (name:enable|disable)
make() {
    mkdir "$1" && cd "$1" || fail "mkdir $1"
    shift
    must qemu-img create -q -f qcow2 a.qcow2 1M
    must qemu-io -f qcow2 -c 'write -P 0x11 0 64k' a.qcow2 >/dev/null
    must qemu-img snapshot -c s1 a.qcow2
    must qemu-io -f qcow2 -c 'write -P 0x22 0 64k' a.qcow2 >/dev/null
    for b in "$@"; do
        if [ "${b#*:}" = disable ]; then must qemu-img bitmap --add --disable a.qcow2 "${b%%:*}"
        else must qemu-img bitmap --add a.qcow2 "${b%%:*}"; fi
    done
    cd "$T" || fail "cd"
}
n=0
# case SNAPSHOT WANT_PATTERN BITMAPS...
case_() {
    local sn=$1 want=$2 t
    shift 2
    n=$((n + 1))
    for t in q v; do
        make "$n$t" "$@"
        local bin=qemu-img
        [ $t = v ] && bin=$VBD_IMG
        (cd "$n$t" && "$bin" snapshot -a "$sn" a.qcow2 >out 2>raw; echo $? >rc)
        sed -E 's#^([^ :]*/)?(qemu-img|vbd-img):#PROG:#' "$n$t/raw" >"$n$t/err"
        ! grep -q -e Sanitizer -e 'runtime error' "$n$t/raw" || fail "vbd-img snapshot -a $sn: $(cat "$n$t/raw")"
    done
    local what="snapshot -a $sn with bitmaps [$*]"
    [ "$(cat "${n}q/rc")" = "$(cat "${n}v/rc")" ] || fail "$what: exit status qemu-img $(cat "${n}q/rc"), vbd-img $(cat "${n}v/rc"): $(cat "${n}v/err")"
    cmp -s "${n}q/err" "${n}v/err" || fail "$what: stderr differs:$(diff "${n}q/err" "${n}v/err")"
    qemu-img compare -q "${n}q/a.qcow2" "${n}v/a.qcow2" || fail "$what: the images differ after it"
    qcheck "${n}v/a.qcow2"
    [ "$(qemu-img info --output=json "${n}q/a.qcow2" | grep -A20 '"bitmaps"' | grep '"name"')" = \
        "$(qemu-img info --output=json "${n}v/a.qcow2" | grep -A20 '"bitmaps"' | grep '"name"')" ] ||
        fail "$what: the bitmaps differ after it"
    qemu-io -f qcow2 -c "read -P $want 0 64k" "${n}v/a.qcow2" | grep -q '^read 65536/' ||
        fail "$what: vbd-img's image does not read $want at 0"
    step "$what: exit status $(cat "${n}v/rc") as qemu-img's, $want at 0$( [ -s "${n}v/err" ] && echo ": $(cat "${n}v/err")")"
}
case_ s1 0x22 b0:enable
case_ s1 0x22 b0:disable
case_ s1 0x22 b0:enable b1:disable
case_ nosuch 0x22 b0:disable
# without bitmaps the revert happens (both); a missing snapshot is refused
case_ s1 0x11
case_ nosuch 0x22
echo PASS
