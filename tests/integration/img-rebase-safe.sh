#!/bin/bash
# vbd-img rebase (safe mode) writes what qemu-img rebase writes: the old
# backing's data only where old and new backing differ under unallocated
# parts of the image, nothing where they agree (zeroes included). The same
# chain is rebased by both tools: the guest-visible content is unchanged,
# the map (host offsets aside) and the file size equal qemu-img's result,
# and the result checks clean.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
mixed_data mixed.raw 5
chain() { # base (real-looking data) <- mid (a few writes) <- top (a few writes)
    rm -f base.qcow2 mid.qcow2 top.qcow2 zero.qcow2
    must qemu-img convert -O qcow2 mixed.raw base.qcow2
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    must qemu-io -f qcow2 -c "write -P 3 1M 300k" -c "write -z 4M 64k" -c "write -P 4 5M 4k" -c "write -P 0 2M 128k" \
        mid.qcow2 >/dev/null
    must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    must qemu-io -f qcow2 -c "write -P 5 1100k 8k" -c "write -P 6 0 64k" top.qcow2 >/dev/null
    must qemu-img create -q -f qcow2 zero.qcow2 6M   # a new backing that reads as zeroes
}
shape() { qemu-img map --output=json "$1" | sed 's/, "offset": [0-9]*//'; }
for new in base.qcow2 zero.qcow2 ""; do
    step "rebase top onto '${new:-(none)}'"
    chain
    must qemu-img convert -O raw top.qcow2 expect.raw
    cp top.qcow2 vtop.qcow2
    must qemu-img rebase -q -b "$new" -F qcow2 top.qcow2
    must "$VBD_IMG" rebase -q -b "$new" -F qcow2 vtop.qcow2
    must qemu-img compare -F raw vtop.qcow2 expect.raw >/dev/null
    diff <(shape top.qcow2) <(shape vtop.qcow2) || fail "map after rebase onto '$new' differs from qemu-img's"
    qs=$(stat -c %s top.qcow2); vs=$(stat -c %s vtop.qcow2)
    echo "sizes: qemu-img $qs, vbd $vs"
    [ "$qs" = "$vs" ] || fail "rebase onto '$new': file size $vs, qemu-img's $qs"
    qcheck vtop.qcow2
done
step "backings shorter than the image (old 4M, new 2M, image 6M): both read as zeroes past their ends"
head -c 4M mixed.raw >old.raw
must qemu-img convert -O qcow2 old.raw old.qcow2
must qemu-img create -q -f qcow2 new.qcow2 2M
must qemu-io -f qcow2 -c "write -P 9 0 1M" new.qcow2 >/dev/null
rm -f top.qcow2; must qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 top.qcow2 6M
must qemu-io -f qcow2 -c "write -P 5 100k 8k" -c "write -P 6 3M 64k" -c "write -P 7 5M 4k" top.qcow2 >/dev/null
must qemu-img convert -O raw top.qcow2 expect.raw
cp top.qcow2 vtop.qcow2
must qemu-img rebase -q -b new.qcow2 -F qcow2 top.qcow2
must "$VBD_IMG" rebase -q -b new.qcow2 -F qcow2 vtop.qcow2
must qemu-img compare -F raw vtop.qcow2 expect.raw >/dev/null
diff <(shape top.qcow2) <(shape vtop.qcow2) || fail "map after rebase onto a shorter backing differs from qemu-img's"
[ "$(stat -c %s top.qcow2)" = "$(stat -c %s vtop.qcow2)" ] || fail "rebase onto a shorter backing: file sizes differ"
qcheck vtop.qcow2
step "zeroes of both backings interleaved with data of one (skipped unread only where both read as zeroes)"
# old: data, a zero cluster range, a hole, data; new (raw, with holes):
# data over old's zeroes and over old's hole, old's data again in part
rm -f old.qcow2 new.raw top.qcow2
must qemu-img create -q -f qcow2 old.qcow2 8M
must qemu-io -f qcow2 -c "write -P 1 0 2M" -c "write -z 2M 1M" -c "write -P 2 5M 1M" -c "write -z 7M 512k" old.qcow2 >/dev/null
must qemu-img create -q -f raw new.raw 8M
must qemu-io -f raw -c "write -P 1 0 1M" -c "write -P 3 2560k 1M" -c "write -P 2 5632k 512k" -c "write -P 4 7296k 64k" \
    new.raw >/dev/null
must qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c "write -P 5 64k 64k" -c "write -P 6 2560k 64k" top.qcow2 >/dev/null
must qemu-img convert -O raw top.qcow2 expect.raw
cp top.qcow2 vtop.qcow2
must qemu-img rebase -q -b new.raw -F raw top.qcow2
must "$VBD_IMG" rebase -q -b new.raw -F raw vtop.qcow2
must qemu-img compare -F raw vtop.qcow2 expect.raw >/dev/null
diff <(shape top.qcow2) <(shape vtop.qcow2) || fail "map after rebase onto a raw backing with holes differs from qemu-img's"
[ "$(stat -c %s top.qcow2)" = "$(stat -c %s vtop.qcow2)" ] || fail "rebase onto a raw backing with holes: file sizes differ"
qcheck vtop.qcow2
echo OK
