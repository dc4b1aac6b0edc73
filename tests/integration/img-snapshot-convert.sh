#!/bin/bash
# convert -l (snapshot.id=, snapshot.name=, or an id or a name) copies an
# internal snapshot's content as qemu-img convert -l does: the same bytes,
# the same size, the same errors; -o ? is -o help for every verb taking -o.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

step "an image with two snapshots, at other sizes, with compressed, zero and discarded clusters"
must qemu-img create -q -f qcow2 s.qcow2 64M
qemu-io -c 'write -P 1 0 2M' -c 'write -c -P 2 4M 128k' -c 'write -z 8M 1M' -c 'write -P 3 60M 64k' s.qcow2 >/dev/null
must qemu-img snapshot -c first s.qcow2
qemu-io -c 'write -P 4 0 64k' -c 'discard 4M 64k' -c 'write -P 5 9M 4k' s.qcow2 >/dev/null
must qemu-img resize -q s.qcow2 96M
qemu-io -c 'write -P 6 90M 1M' s.qcow2 >/dev/null
must qemu-img snapshot -c 1 s.qcow2 # named like the first one's id: -l 1 means the id, snapshot.name=1 this one
qemu-io -c 'write -P 7 1M 4k' s.qcow2 >/dev/null
qcheck s.qcow2

for l in first 1 2 snapshot.name=first snapshot.id=1 snapshot.id=2 snapshot.name=1 snapshot.id=1,snapshot.name=first; do
    for fmt in raw qcow2; do
        step "convert -l $l -O $fmt: the bytes qemu-img copies"
        rm -f v.out q.out
        must "$VBD_IMG" convert -l "$l" -O $fmt s.qcow2 v.out
        must qemu-img convert -l "$l" -O $fmt s.qcow2 q.out
        [ $fmt = qcow2 ] && qcheck v.out
        qemu-img compare -q -s q.out v.out || fail "convert -l $l -O $fmt: the content differs from qemu-img's"
    done
done
cp s.qcow2 a.qcow2
must qemu-img snapshot -a first a.qcow2
must "$VBD_IMG" convert -l first -O raw s.qcow2 first.raw
[ "$(stat -c %s first.raw)" = $((96 << 20)) ] || fail "convert -l first: $(stat -c %s first.raw) bytes, not the image's size (qemu-img keeps it)"
must qemu-img convert -O raw a.qcow2 a.raw
cmp -n $((64 << 20)) a.raw first.raw || fail "convert -l first is not the snapshot's data"
cmp -n $((32 << 20)) -i $((64 << 20)) first.raw /dev/zero || fail "convert -l first: past the snapshot's size it does not read zeroes"
"$VBD_IMG" convert -l 1 -O raw s.qcow2 one.raw && cmp first.raw one.raw || fail "convert -l 1 did not take the id first"
"$VBD_IMG" convert -l snapshot.name=1 -O raw s.qcow2 one.raw && ! cmp -s first.raw one.raw ||
    fail "convert -l snapshot.name=1 took the snapshot with id 1"
qcheck s.qcow2

step "convert -l errors: qemu-img's"
for l in nope snapshot.name=nope snapshot.id=1,snapshot.name=1 snapshot.foo=1 snapshot.id= ; do
    "$VBD_IMG" convert -l "$l" -O raw s.qcow2 x.raw >v.err 2>&1 && fail "convert -l $l succeeded"
    qemu-img convert -l "$l" -O raw s.qcow2 x.raw >q.err 2>&1 && fail "qemu-img convert -l $l succeeded"
    sed -i 's/^qemu-img:/vbd-img:/' q.err
    diff -u q.err v.err || fail "convert -l $l: the error differs from qemu-img's"
done
must_fail_with "No support for concatenating multiple snapshot" "$VBD_IMG" convert -l first -O raw s.qcow2 s.qcow2 x.raw
must qemu-img create -q -f raw r.raw 1M
must_fail_with "Failed to load snapshot" "$VBD_IMG" convert -l first -f raw -O raw r.raw x.raw

step "-o ? is -o help"
for cmd in "create -f qcow2 -o ? x.qcow2" "create -f raw -o ?" "convert -O qcow2 -o ? s.qcow2 y.qcow2" "amend -o ? s.qcow2" \
    "measure -O qcow2 -o ? --size 1G" "create -f qcow2 -o cluster_size=4k,? x.qcow2"; do
    help=${cmd//\?/help}
    # shellcheck disable=SC2086
    "$VBD_IMG" $cmd >q1.out 2>&1; rc1=$?
    # shellcheck disable=SC2086
    "$VBD_IMG" $help >q2.out 2>&1; rc2=$?
    [ $rc1 = $rc2 ] || fail "vbd-img $cmd exits $rc1, $help $rc2"
    diff -u q2.out q1.out || fail "vbd-img $cmd differs from $help"
    grep -q . q1.out || fail "vbd-img $cmd printed nothing"
    # shellcheck disable=SC2086
    qemu-img $help >q3.out 2>&1; rc3=$?
    [ $rc1 = $rc3 ] || fail "vbd-img $cmd exits $rc1, qemu-img $help $rc3: $(cat q1.out) / $(cat q3.out)"
done
"$VBD_IMG" amend -o ? s.qcow2 >q1.out || fail "amend -o ?"
qemu-img amend -o ? s.qcow2 >q3.out || fail "qemu-img amend -o ?"
grep -v encrypt q3.out | diff -u - q1.out || fail "amend -o ? lists other options than qemu-img's (encryption aside)"
[ ! -e x.qcow2 ] && [ ! -e y.qcow2 ] || fail "-o ? created an image"
echo ok
