#!/bin/bash
# vbd-img convert -p, compare -p and rebase -p beside qemu-img's (7.2),
# the same command line in copies of the same images: the same progress
# on stdout, QEMU's lines ("    (P/100%)", each ended by \r, then one \n;
# none with -q). convert counts the bytes copied as data only (its
# allocated sectors: not zeroes, not what the target's backing file
# holds; with -S 0 zeroes too): 0 before the sources are opened, a line
# at each chunk of data that moved the count by more than a point, 100
# twice at the end; a convert that fails ends the line without 100.
# compare adds each extent both images describe alike (2 MiB of data at a
# time) over the larger size, rebase a fixed step per unallocated range of
# up to 2 MiB; both print a line per 2 points. vbd-img counted every byte
# of the size (32 lines for 64 MiB where qemu-img prints 9 for its 17 MiB
# of data) and printed no 0.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
mkdir base
# 17 MiB of data (9 chunks of up to 2 MiB), 4 MiB of zero clusters, the rest unallocated
must qemu-img create -q -f qcow2 base/a.qcow2 64M
must qemu-io -f qcow2 -c 'write -P 1 0 16M' -c 'write -P 2 40M 1M' -c 'write -z 48M 4M' base/a.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 base/o.qcow2
must qemu-io -f qcow2 -c 'write -P 3 20M 512k' -c 'write -P 4 62M 2M' base/o.qcow2 >/dev/null
must qemu-img create -q -f qcow2 base/e.qcow2 8M
must qemu-img create -q -f raw base/r.raw 8M
must qemu-io -f raw -c 'write -P 5 1M 3M' base/r.raw >/dev/null
truncate -s 1M base/small.raw

same() {
    tools_run qemu-img "$VBD_IMG" "$@"
    tools_same "$@"
}

step "convert -p: data counted as qemu-img counts it"
same convert -p -O raw a.qcow2 n.raw
same convert -p -O qcow2 a.qcow2 n.qcow2
same convert -p -S 0 -O raw a.qcow2 n.raw
same convert -p -c -O qcow2 a.qcow2 n.qcow2
same convert -p -m 1 -O raw o.qcow2 n.raw
same convert -p -O qcow2 -B a.qcow2 -F qcow2 o.qcow2 n.qcow2
same convert -p -O raw e.qcow2 n.raw
same convert -p -O raw r.raw n.raw
same convert -p -O raw a.qcow2 r.raw e.qcow2 n.raw
same convert -p -q -O raw a.qcow2 n.raw

step "convert -p that fails: 0, the error, the line's end"
same convert -p -O raw nosuch n.raw
same convert -p -n -O raw a.qcow2 small.raw
same convert -p -O bogus a.qcow2 n.raw
same convert -p -l s -O raw a.qcow2 r.raw n.raw
# checks made before qemu-img's progress starts print none
same convert -p -O raw a.qcow2
same convert -p -T bogus -O raw a.qcow2 n.raw
step "compare -p: qemu-img's steps (an extent both images describe alike at once, 2 MiB of data at a time) and 2-point lines"
must qemu-img create -q -f qcow2 base/b.qcow2 64M
must qemu-io -f qcow2 -c 'write -P 1 0 8M' base/b.qcow2 >/dev/null
must qemu-img create -q -f qcow2 base/c.qcow2 32M
must qemu-io -f qcow2 -c 'write -P 1 0 16M' base/c.qcow2 >/dev/null
cp base/a.qcow2 base/a2.qcow2
for args in "a.qcow2 a2.qcow2" "a.qcow2 b.qcow2" "b.qcow2 a.qcow2" "a.qcow2 c.qcow2" "c.qcow2 a.qcow2" "-s a.qcow2 c.qcow2" \
    "-s a.qcow2 b.qcow2" "a.qcow2 o.qcow2" "-q a.qcow2 a2.qcow2" "a.qcow2 nosuch" "-f raw r.raw r.raw" "e.qcow2 r.raw"; do
    # shellcheck disable=SC2086 # $args is words
    same compare -p $args
done
step "rebase -p: a fixed step for each range of up to 2 MiB the image does not allocate, 2-point lines"
for args in "-b e.qcow2 -F qcow2" "-b '' " "-u -b e.qcow2 -F qcow2" "-q -b e.qcow2 -F qcow2" "-b nosuch -F qcow2" \
    "-t bogus -b e.qcow2 -F qcow2"; do
    eval "set -- $args"
    same rebase -p "$@" o.qcow2
    qemu-img compare -q q/o.qcow2 v/o.qcow2 || fail "rebase -p $args: the images differ"
done
echo PASS
