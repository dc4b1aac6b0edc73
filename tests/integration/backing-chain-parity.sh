#!/bin/bash
# A backing chain with a missing member, and backing loops that no file
# identity shows (json: and NBD backing names), beside qemu-img/qemu-io 7.2:
#  1. base <- mid <- top, base removed: info --backing-chain names the
#     missing file as qemu-img does (image by image: the file that cannot be
#     opened, not the top), and every verb that opens the chain (info, check,
#     map, convert, compare, rebase -u/-b, commit) gives qemu-img's words,
#     exit code and images;
#  2. an image whose backing name is json:{...} of itself, and one whose
#     backing is an NBD export of its own bytes: info --backing-chain gives
#     qemu-img's one line ("Backing file '...' creates an infinite loop."),
#     and the verbs that open the whole chain (vbd-img convert/check/map,
#     vbd-io, vbd-nbd) refuse it with that line instead of opening it again
#     and again (the old code opened json: levels until the fds ran out and
#     printed "Could not open backing file: " a thousand times; qemu-io -r
#     -U and qemu-img convert -U recurse on the json: one until memory runs
#     out: ~200 KB of "Could not open backing file: " and "Could not
#     allocate metadata caches" under a 4 GB limit). Read-write, both tools
#     stop at the second open of the image, on its own write lock.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"

step "a chain with a missing member, verb by verb"
mkdir base
must qemu-img create -q -f qcow2 base/base.qcow2 1M
must qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 base/mid.qcow2
must qemu-img create -q -f qcow2 -F qcow2 -b mid.qcow2 base/top.qcow2
must qemu-img create -q -f qcow2 base/other.qcow2 1M
must qemu-io -c 'write -P 3 0 64k' base/top.qcow2 >/dev/null
rm base/base.qcow2
# same ARGS...: qemu-img and vbd-img run ARGS in fresh copies of base/
same() {
    tools_run qemu-img "$VBD_IMG" "$@"
    tools_same "$@"
    # each image's own layer (its backing is missing) and header alike
    local f layer='json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"%s"}}'
    for f in mid.qcow2 top.qcow2 other.qcow2; do
        # shellcheck disable=SC2059
        must qemu-img compare -q -U "$(printf "$layer" "q/$f")" "$(printf "$layer" "v/$f")"
        [ "$(cd q && qemu-img info -U --output=json "$f" | grep -v actual-size)" = \
          "$(cd v && qemu-img info -U --output=json "$f" | grep -v actual-size)" ] ||
            fail "$f: headers differ after: $*"
    done
}
same info --backing-chain top.qcow2
same info --backing-chain --output=json top.qcow2
same info --backing-chain mid.qcow2
same info top.qcow2
same check top.qcow2
same map top.qcow2
same convert -O raw top.qcow2 out.raw
same compare top.qcow2 other.qcow2
same compare other.qcow2 top.qcow2
same rebase -u -F qcow2 -b other.qcow2 top.qcow2
same rebase -F qcow2 -b other.qcow2 top.qcow2
same commit top.qcow2
same commit mid.qcow2

step "a backing loop through json:"
self='json:{"driver":"qcow2","file":{"driver":"file","filename":"loop.qcow2"}}'
must qemu-img create -q -f qcow2 loop.qcow2 1M
must qemu-img rebase -u -F qcow2 -b "$self" loop.qcow2
line="qemu-img: Backing file '$self' creates an infinite loop."
q=$(qemu-img info --backing-chain loop.qcow2 2>&1) && fail "qemu-img info of the json: loop succeeded"
[ "$q" = "$line" ] || fail "qemu-img 7.2 words changed: $q"
# one line, exit 1, in bounded time (timeout: the old code took minutes)
loop_refused() { # WHAT OUTPUT RC
    [ "$3" = 1 ] || fail "$1: exit $3 ($2)"
    [ "$(wc -l <<<"$2")" = 1 ] && grep -q "creates an infinite loop" <<<"$2" || fail "$1: $2"
}
v=$(timeout 60 "$VBD_IMG" info --backing-chain loop.qcow2 2>&1); rc=$?
[ $rc = 1 ] && [ "${v//vbd-img/qemu-img}" = "$q" ] || fail "vbd-img info --backing-chain: exit $rc, '$v', qemu-img: '$q'"
v=$(timeout 60 "$VBD_IMG" convert -U -O raw loop.qcow2 out.raw 2>&1); loop_refused "vbd-img convert" "$v" $?
v=$(timeout 60 "$VBD_IMG" check -U loop.qcow2 2>&1); loop_refused "vbd-img check" "$v" $?
v=$(timeout 60 "$VBD_IMG" map -U loop.qcow2 2>&1); loop_refused "vbd-img map" "$v" $?
v=$(timeout 60 "$VBD_IO" -r -U -c 'read 0 4k' loop.qcow2 2>&1); loop_refused "vbd-io -r -U" "$v" $?
# read-write, both stop at the second open's lock (the image holds its own write lock)
q=$(timeout 60 qemu-io -c 'read 0 4k' loop.qcow2 2>&1) && fail "qemu-io opened the json: loop read-write"
v=$(timeout 60 "$VBD_IO" -c 'read 0 4k' loop.qcow2 2>&1); rc=$?
[ $rc = 1 ] && [ "${v//vbd-io/qemu-io}" = "$q" ] || fail "vbd-io (read-write): exit $rc: '$v', qemu-io: '$q'"
v=$(timeout 60 "$VBD_NBD" -r -k "$T/never.sock" loop.qcow2 2>&1); loop_refused "vbd-nbd" "$v" $?
[ ! -e "$T/never.sock" ] || fail "vbd-nbd served the json: loop"
# (qemu-img check opens the chain too, and recurses: the image alone)
qcheck 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"loop.qcow2"}}' 

step "a backing loop through NBD"
# nloop.qcow2's backing file is an NBD export of nloop.qcow2's own bytes
sock=$T/nbd.sock
must qemu-img create -q -f qcow2 nloop.qcow2 1M
must qemu-img rebase -u -F qcow2 -b "nbd+unix:///?socket=$sock" nloop.qcow2
"$VBD_NBD" -r -t -f raw -e 4 -k "$sock" nloop.qcow2 2>"$T/nbd.log" &
npid=$!
wait_sock "$sock" "$npid" "$T/nbd.log"
line="qemu-img: Backing file 'nbd+unix:///?socket=$sock' creates an infinite loop."
q=$(qemu-img info -U --backing-chain nloop.qcow2 2>&1) && fail "qemu-img info of the NBD loop succeeded"
[ "$q" = "$line" ] || fail "qemu-img 7.2 words changed: $q"
v=$(timeout 60 "$VBD_IMG" info -U --backing-chain nloop.qcow2 2>&1); rc=$?
[ $rc = 1 ] && [ "${v//vbd-img/qemu-img}" = "$q" ] || fail "vbd-img info --backing-chain (NBD): exit $rc, '$v', qemu-img: '$q'"
v=$(timeout 60 "$VBD_IMG" convert -U -O raw nloop.qcow2 out.raw 2>&1); loop_refused "vbd-img convert (NBD)" "$v" $?
v=$(timeout 60 "$VBD_IO" -r -U -c 'read 0 4k' nloop.qcow2 2>&1); loop_refused "vbd-io (NBD)" "$v" $?
v=$(timeout 60 "$VBD_IMG" info --backing-chain "nbd+unix:///?socket=$sock" 2>&1); rc=$?
[ $rc = 1 ] && grep -q "^vbd-img: Backing file 'nbd+unix:///?socket=$sock' creates an infinite loop.$" <<<"$v" ||
    fail "vbd-img info --backing-chain of the export: exit $rc: $v"
kill -TERM $npid; wait $npid
! grep -q Sanitizer "$T/nbd.log" || { cat "$T/nbd.log"; fail "sanitizer report from vbd-nbd"; }
qcheck 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"nloop.qcow2"}}' 
echo OK
