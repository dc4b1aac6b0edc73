#!/bin/bash
# qcow2's pass-discard-request/-snapshot/-other options, and the space a
# snapshot's create, delete and revert free, as QEMU 7.2 gives it back.
#
# 1. The options: taken by vbd-img and vbd-io as by qemu-img and qemu-io
#    (vbd refused them as unknown), a bad value refused in their words.
# 2. The same image (qemu-img's, data written by qemu-io) changed by each
#    tool: the files take the same space (FIEMAP, fiemap.py), qemu-img
#    compare and check agree. A guest's discard gives its clusters back
#    with discard=unmap or pass-discard-request=on, and keeps them with
#    pass-discard-request=off even with discard=unmap (vbd followed
#    discard=unmap alone). snapshot -d/-a/-c give back what they free (the
#    deleted snapshot's clusters, the reverted image's, the old snapshot
#    table): QEMU frees them with pass-discard-snapshot, on by default;
#    vbd-img kept them all (snapshot -d of a snapshot holding 1 MiB of its
#    own left the file 1 MiB larger than qemu-img's). pass-discard-snapshot=off
#    keeps them, for both. The snapshot table ends where its last entry
#    does, unpadded, as QEMU writes it (vbd-img's file was up to 7 bytes
#    longer after snapshot -c).
# Runtime (ASan): ~10 s at load 2.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
FIEMAP="python3 $VBD_ROOT/tests/integration/fiemap.py"

# base.qcow2: 1 MiB of data in snapshot s1, other data since
must qemu-img create -q -f qcow2 base.qcow2 4M
must qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 3 2M 64k' base.qcow2 >/dev/null
must qemu-img snapshot -c s1 base.qcow2
must qemu-io -f qcow2 -c 'write -P 2 0 1M' base.qcow2 >/dev/null

# same_space WHAT: q.qcow2 and v.qcow2 have the same length and take the
# same space, are the same image, and v.qcow2 is clean
same_space() {
    $FIEMAP q.qcow2 | cut -d' ' -f2- >q.map
    $FIEMAP v.qcow2 | cut -d' ' -f2- >v.map
    diff q.map v.map >/dev/null || fail "$1: allocated as [$(cat v.map)], qemu's [$(cat q.map)]"
    must qemu-img compare -q q.qcow2 v.qcow2
    qcheck v.qcow2
}

step "the options taken, a bad value refused in QEMU's words"
for o in pass-discard-request=on pass-discard-snapshot=off pass-discard-other=on \
    pass-discard-request=off,pass-discard-other=off; do
    for k in q v; do cp base.qcow2 $k.qcow2; done
    spec="driver=qcow2,file.filename=%s,$o"
    # shellcheck disable=SC2059 # spec is the format
    q=$(qemu-io --image-opts -c 'read -q -P 2 0 1M' "$(printf "$spec" q.qcow2)" 2>&1) || fail "qemu-io $o: $q"
    # shellcheck disable=SC2059
    v=$("$VBD_IO" --image-opts -c 'read -q -P 2 0 1M' "$(printf "$spec" v.qcow2)" 2>&1) || fail "vbd-io $o: $v"
    [ "${q//qemu-io/TOOL}" = "${v//vbd-io/TOOL}" ] || fail "vbd-io $o: [$v], qemu-io's [$q]"
    # shellcheck disable=SC2059
    must "$VBD_IMG" info --image-opts "$(printf "$spec" v.qcow2)" >/dev/null
done
cp base.qcow2 q.qcow2
q=$(qemu-img info --image-opts driver=qcow2,file.filename=q.qcow2,pass-discard-snapshot=x 2>&1) &&
    fail "qemu-img took pass-discard-snapshot=x"
v=$("$VBD_IMG" info --image-opts driver=qcow2,file.filename=q.qcow2,pass-discard-snapshot=x 2>&1) &&
    fail "vbd-img took pass-discard-snapshot=x"
[ "${q//qemu-img/TOOL}" = "${v//vbd-img/TOOL}" ] || fail "bad value: [$v], qemu-img's [$q]"

step "a discard's clusters: discard=unmap and pass-discard-request"
for o in "" discard=unmap, pass-discard-request=on, discard=unmap,pass-discard-request=off, \
    pass-discard-request=off,; do
    for k in q v; do cp base.qcow2 $k.qcow2; done
    must qemu-io --image-opts -c 'discard 2M 64k' -c 'discard 0 512k' "${o}driver=qcow2,file.filename=q.qcow2" >/dev/null
    must "$VBD_IO" --image-opts -c 'discard 2M 64k' -c 'discard 0 512k' "${o}driver=qcow2,file.filename=v.qcow2" >/dev/null
    same_space "discard with '${o%,}'"
done

step "snapshot -d, -a, -c: what they free goes back (pass-discard-snapshot, on by default)"
for op in "-d s1" "-a s1" "-c s2"; do
    for k in q v; do cp base.qcow2 $k.qcow2; done
    # shellcheck disable=SC2086 # op is words
    must qemu-img snapshot $op q.qcow2
    # shellcheck disable=SC2086
    must "$VBD_IMG" snapshot $op v.qcow2
    same_space "snapshot $op"
    for k in q v; do cp base.qcow2 $k.qcow2; done
    # shellcheck disable=SC2086
    must qemu-img snapshot $op --image-opts driver=qcow2,file.filename=q.qcow2,pass-discard-snapshot=off
    # shellcheck disable=SC2086
    must "$VBD_IMG" snapshot $op --image-opts driver=qcow2,file.filename=v.qcow2,pass-discard-snapshot=off
    same_space "snapshot $op, pass-discard-snapshot=off"
done
echo OK
