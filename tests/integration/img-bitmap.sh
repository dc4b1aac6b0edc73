#!/bin/bash
# vbd-img bitmap against qemu-img bitmap: the same actions on copies of the
# same image leave the same bitmaps (qemu-img info: names, flags,
# granularity) with the same dirty bits (exported by qemu-nbd -B and by
# vbd-daemon's bitmap=, read with nbdinfo --map=qemu:dirty-bitmap:NAME),
# and qemu-img check finds both clean; bitmaps made by one tool are changed
# by the other; errors are qemu-img's. amend compat=0.10 on an image with
# bitmaps is accepted, as by qemu-img 7.2.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo python3
cd "$T"

bitmaps_of() { # IMG: the bitmaps as qemu-img info lists them (JSON, one line)
    qemu-img info --output=json "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("bitmaps"))'
}
names_of() { # IMG
    qemu-img info --output=json "$1" |
        python3 -c 'import json,sys; print(" ".join(b["name"] for b in json.load(sys.stdin)["format-specific"]["data"].get("bitmaps", [])))'
}
dirty_map() { # IMG BITMAP: the map qemu-nbd exports
    rm -f q.sock
    qemu-nbd -r -t -k "$T/q.sock" -B "$2" -f qcow2 "$1" 2>qn.log &
    local p=$!
    for _ in $(seq 1200); do [ -S q.sock ] && break; kill -0 $p 2>/dev/null || break; sleep 0.05; done
    nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///?socket=$T/q.sock" || fail "qemu-nbd -B $2 $1: $(cat qn.log)"
    kill $p; wait $p 2>/dev/null
}
vbd_map() { # IMG BITMAP: the map vbd-daemon exports
    rm -f v.sock
    # a read-only node, as qemu-nbd -r opens it: an enabled bitmap on a read-only export of a
    # writable node is refused (qsd 7.2's nbd_export_create)
    "$VBD_DAEMON" --blockdev driver=file,node-name=f0,filename="$1",read-only=on --blockdev driver=qcow2,node-name=d0,file=f0,read-only=on \
        --nbd-server addr.type=unix,addr.path="$T/v.sock" --export type=nbd,id=e0,node-name=d0,name=disk,bitmap="$2" 2>vd.log &
    local p=$!
    for _ in $(seq 1200); do [ -S v.sock ] && break; kill -0 $p 2>/dev/null || break; sleep 0.05; done
    nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///disk?socket=$T/v.sock" || fail "vbd-daemon bitmap=$2 $1: $(cat vd.log)"
    kill $p; wait $p 2>/dev/null
}
# IMG.q and IMG.v: copies of IMG changed by qemu-img and by vbd-img with
# the same arguments (@ stands for the file); both exit statuses and
# messages must agree
both() { # IMG ARGS...
    on_copies "$@"
    [ $qrc = $vrc ] || fail "$*: vbd-img exits $vrc ($(cat v.out)), qemu-img $qrc ($(cat q.out))"
    sed "s/^qemu-img:/vbd-img:/; s/#block[0-9]*/NODE/g; s/'[^']*\\.q'/FILE/g" q.out >q.cmp
    sed "s/#block[0-9]*/NODE/g; s/'[^']*\\.v'/FILE/g" v.out >v.cmp
    [ -n "${LOOSE:-}" ] || diff -u q.cmp v.cmp >d.txt || fail "$*: vbd-img's output differs from qemu-img's: $(cat d.txt)"
}
same_result() { # IMG: IMG.v has the bitmaps and bits of IMG.q, both clean
    local img=$1 b
    qcheck "$img.q"
    qcheck "$img.v"
    [ "$(bitmaps_of "$img.v")" = "$(bitmaps_of "$img.q")" ] ||
        fail "$img: bitmaps $(bitmaps_of "$img.v"), qemu-img made $(bitmaps_of "$img.q")"
    for b in $(names_of "$img.q"); do
        dirty_map "$img.q" "$b" >q.map
        dirty_map "$img.v" "$b" >v.map
        diff -u q.map v.map >d.txt || fail "$img: bitmap $b differs from qemu-img's: $(cat d.txt)"
    done
}

must qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null

step "errors: qemu-img's messages and exit codes"
must qemu-img bitmap --add base.qcow2 a
for args in "@ a" "--add @" "--add -g 64k @ a --remove" "--remove -g 64k @ a" "--add -b x.qcow2 @ z" "--merge a -F qcow2 @ a" \
    "--add @ a" "--remove @ nope" "--clear @ nope" "--enable @ nope" "--disable @ nope" "--merge nope @ a" "--merge a @ nope" \
    "--add -g 1000 @ z" "--add -g 256 @ z" "--add -g 4G @ z" "--add -g abc @ z" "--add @ ''" \
    "--add --add @ z"; do
    eval "both base.qcow2 bitmap $args"
    [ $vrc != 0 ] || fail "bitmap $args succeeded"
done
long=x$(printf 'y%.0s' $(seq 1023))
LOOSE=1 both base.qcow2 bitmap --add @ "$long" # messages too long for one log line: only the start and the reason compared
[ $vrc = 1 ] || fail "a 1024-character bitmap name was accepted"
grep -q "^vbd-img: Operation add on bitmap $long failed: Can't make bitmap 'xyyy.*Name length exceeds maximum (1023 characters)$" v.out ||
    fail "1024-character name: $(cut -c1-200 v.out)"
grep -q "Name length exceeds maximum (1023 characters)" q.out || fail "qemu-img's message changed: $(cut -c1-200 q.out)"
qcheck base.qcow2.v
must qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
both v2.qcow2 bitmap --add @ z
grep -q "Cannot store dirty bitmaps in qcow2 v2 files" v.out || fail "v2: $(cat v.out)"
must qemu-img create -q -f raw r.raw 1M
both r.raw bitmap --add -f raw @ z
grep -q "Can't store persistent bitmaps" v.out || fail "raw: $(cat v.out)"

step "--add: default granularity follows the cluster size (4k..64k); -g; --disable"
for cs in 512 8k 64k 2M; do
    must qemu-img create -q -f qcow2 -o cluster_size=$cs c.qcow2 16M
    both c.qcow2 bitmap --add @ b
    same_result c.qcow2
done
both base.qcow2 bitmap --add -g 512 @ fine
same_result base.qcow2
both base.qcow2 bitmap --add -g 2G @ huge
same_result base.qcow2
both base.qcow2 bitmap --add --disable @ off
same_result base.qcow2
both base.qcow2 bitmap --add @ "$(printf 'n%.0s' $(seq 1023))"
same_result base.qcow2

step "writes tracked by qemu into a bitmap vbd-img made; --clear, --disable, --enable, --merge, --remove by both tools"
must "$VBD_IMG" bitmap --add base.qcow2 vb
must "$VBD_IMG" bitmap --add -g 1M --disable base.qcow2 vd
qemu-io -c 'write -P 2 2M 64k' -c 'write -P 3 30M 200k' -c 'write -z 40M 1M' -c 'discard 50M 64k' base.qcow2 >/dev/null
qcheck base.qcow2
[ -n "$(dirty_map base.qcow2 vb | awk '$3 == 1')" ] || fail "qemu did not track writes in a bitmap vbd-img added"
[ -z "$(dirty_map base.qcow2 vd | awk '$3 == 1')" ] || fail "a disabled bitmap vbd-img added tracked writes"
for args in "--clear @ a" "--disable @ a" "--enable @ vd" "--merge a @ vd" "--merge vb @ vd" "--merge a @ a" "--remove @ vb" \
    "--remove @ a" "--add --merge a @ n" "--remove --add -g 128k @ a" "--clear --merge vb --disable @ vd" \
    "--add --disable --enable @ n2" "--disable --enable --disable @ a" "--add @ nb --merge nope" "--merge vb --remove @ a"; do
    eval "both base.qcow2 bitmap $args"
    same_result base.qcow2
done
both base.qcow2 bitmap --merge vb @ vd
grep -q . v.out && fail "a merge printed: $(cat v.out)"
for b in vb vd; do
    dirty_map base.qcow2.v $b >q.map
    vbd_map base.qcow2.v $b >v.map
    diff -u q.map v.map || fail "vbd-daemon exports bitmap $b differently from qemu-nbd"
done
grep -q " 1 *dirty" v.map || fail "the merged bitmap has no dirty extent: $(cat v.map)"

step "--merge from another image (-b, -F), and into an image qemu-img made"
cp base.qcow2 other.qcow2
must qemu-img bitmap --add -g 4k other.qcow2 src
qemu-io -c 'write 5M 12k' -c 'write 63M 512' other.qcow2 >/dev/null
both base.qcow2 bitmap --merge src -b other.qcow2 -F qcow2 @ a
same_result base.qcow2
both base.qcow2 bitmap --merge src -b other.qcow2 @ vd
same_result base.qcow2
both base.qcow2 bitmap --merge nope -b other.qcow2 @ vd
[ $vrc != 0 ] || fail "merge of a missing source bitmap succeeded"

step "bitmaps vbd-img changed, then written by vbd-io (tracked by vbd) and by qemu-io: the same bits"
cp base.qcow2 w.qcow2
must "$VBD_IMG" bitmap --clear --enable w.qcow2 vd
cp w.qcow2 wq.qcow2
"$VBD_IO" -c 'write -P 4 7M 4k' -c 'write -z 9M 128k' w.qcow2 >/dev/null || fail "vbd-io write"
qemu-io -c 'write -P 4 7M 4k' -c 'write -z 9M 128k' wq.qcow2 >/dev/null
qcheck w.qcow2
dirty_map wq.qcow2 vd >q.map
dirty_map w.qcow2 vd >v.map
diff -u q.map v.map || fail "vbd's tracking after vbd-img --clear --enable differs from qemu's"

step "convert --bitmaps: the bitmaps (names, flags, granularity, bits) copied as qemu-img copies them; its refusals"
must qemu-img create -q -f qcow2 cb.qcow2 64M
qemu-io -c 'write -P 1 0 1M' cb.qcow2 >/dev/null
must qemu-img bitmap --add cb.qcow2 e1
must qemu-img bitmap --add -g 4k --disable cb.qcow2 d1
qemu-io -c 'write -P 2 10M 100k' -c 'write -P 3 30M 4k' cb.qcow2 >/dev/null
must qemu-img bitmap --add cb.qcow2 e2
must qemu-img bitmap --merge e1 cb.qcow2 d1
must qemu-img convert -O qcow2 --bitmaps cb.qcow2 out.qcow2.q
must "$VBD_IMG" convert -O qcow2 --bitmaps cb.qcow2 out.qcow2.v
same_result out.qcow2
qemu-img compare -q out.qcow2.q out.qcow2.v || fail "convert --bitmaps: the data differ"
must qemu-img create -q -f qcow2 small.qcow2 8M
for args in "--bitmaps -O raw cb.qcow2 n.raw" "--bitmaps -O qcow2 -o compat=0.10 cb.qcow2 n.qcow2" \
    "--skip-broken-bitmaps -O qcow2 cb.qcow2 n.qcow2" "--bitmaps -O qcow2 cb.qcow2 small.qcow2 n.qcow2"; do
    rm -f n.raw n.qcow2
    "$VBD_IMG" convert $args >v.out 2>&1; vrc=$?
    rm -f n.raw n.qcow2
    qemu-img convert $args >q.out 2>&1; qrc=$?
    sed -i 's/^qemu-img:/vbd-img:/' q.out
    [ $qrc = $vrc ] && diff -u q.out v.out || fail "convert $args: vbd-img exit $vrc ($(cat v.out)), qemu-img $qrc ($(cat q.out))"
done
rm -f n.raw n.qcow2
# bitmaps of images of different sizes are not merged
both cb.qcow2 bitmap --add --merge e1 -b small.qcow2 -F qcow2 @ m
must qemu-img bitmap --add small.qcow2 s1
both cb.qcow2 bitmap --add --merge s1 -b small.qcow2 -F qcow2 @ m

step "amend -o compat=0.10 with bitmaps: accepted (qemu-img 7.2 accepts it); the bitmaps go, nothing leaks"
cp base.qcow2 d.qcow2
qemu-io -c 'write -z 20M 64k' d.qcow2 >/dev/null
both d.qcow2 amend -o compat=0.10 @
qcheck d.qcow2.v
qemu-img compare -q d.qcow2.q d.qcow2.v 2>/dev/null || fail "downgraded image reads differently from qemu-img's"
out=$(qemu-img info d.qcow2.v 2>&1)
case $out in *"compat: 0.10"*) ;; *) fail "not downgraded: $out" ;; esac
case $out in *bitmap*) fail "bitmaps left in a v2 image: $out" ;; esac
must "$VBD_IMG" amend -o compat=1.1 d.qcow2.v
must "$VBD_IMG" bitmap --add d.qcow2.v again
qcheck d.qcow2.v
[ "$(names_of d.qcow2.v)" = again ] || fail "bitmaps after upgrading again: $(names_of d.qcow2.v)"
echo ok
