#!/bin/bash
# test-timeout: 2400 (run.sh: ~250 qemu-img/vbd-img/python runs, CPU-starved at nice 19: 36 s at load 4, 691-760 s at load 28-31, 1003 s at load 44; 1200 s is too close)
# resize --shrink gives the space back as qemu-img 7.2 does, and loses
# nothing that stays. (img-shrink.sh: what the shrunk image reads and maps.)
#
# 1. The same image (qemu-img's, data written by qemu-io) shrunk by each
#    tool: the files are the same bytes and the same allocation (FIEMAP,
#    fiemap.py: written and unwritten extents; st_blocks also counts the
#    file system's own blocks, which differ with fragmentation), and
#    qemu-img check is clean. QEMU discards what it frees: data clusters
#    past the new end, the L2 tables past it, refcount blocks left empty,
#    a bitmap's old data; vbd-img kept them (the same bytes, a freed
#    cluster amid the file still allocated, or holding its old data), and
#    at an L1 table's boundary its file ended at the L1 table's entries,
#    qemu-img's at the end of a cluster.
# 2. Integrity, both ways: vbd-img shrinks an image qemu-img and qemu-io
#    made, qemu-img shrinks one vbd-img and vbd-io made; each with a
#    snapshot, compressed clusters (one host cluster holding clusters on
#    both sides of the new end), a persistent bitmap: qemu-img check clean
#    (no leaks), every byte below the new end as a shadow raw file has it
#    (qemu-io's writes mirrored), the snapshot's data as it was taken, the
#    bitmap's bits below the new end kept (nbdinfo), growing again shows
#    zeroes.
# Runtime (ASan): ~25 s at load 2.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3 jq
cd "$T"
FIEMAP="python3 $VBD_ROOT/tests/integration/fiemap.py"

# IMG NEWSIZE [bytes]: copies q.qcow2 and v.qcow2 of IMG shrunk by each
# tool; the same allocation, check clean, the same bytes unless "anybytes"
same_shrink() {
    local img=$1 size=$2 what=$3
    cp "$img" q.qcow2
    cp "$img" v.qcow2
    must qemu-img resize -q --shrink q.qcow2 "$size"
    out=$("$VBD_IMG" resize -q --shrink v.qcow2 "$size" 2>&1) || fail "$what: vbd-img resize: $out"
    qcheck v.qcow2
    $FIEMAP q.qcow2 | cut -d' ' -f2- >q.map
    $FIEMAP v.qcow2 | cut -d' ' -f2- >v.map
    diff q.map v.map >/dev/null || fail "$what: allocated as [$(cat v.map)], qemu-img's [$(cat q.map)]"
    [ "${4:-}" = anybytes ] || cmp q.qcow2 v.qcow2 || fail "$what: not qemu-img's image byte for byte"
}
# the writes of a qemu-io command list into IMG and, mirrored, into SHADOW (raw)
both_write() { # IO-TOOL IMG SHADOW CMD...
    local io=$1 img=$2 sh=$3
    shift 3
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    must "$io" -f qcow2 "${args[@]}" "$img" >/dev/null
    # the shadow takes them uncompressed
    must qemu-io -f raw "${args[@]//-c /}" "$sh" >/dev/null
}

step "allocation and bytes as qemu-img's: data past the new end, 512 B to 2 MiB clusters"
for o in "" cluster_size=512 cluster_size=4k cluster_size=2M extended_l2=on,cluster_size=16k refcount_bits=1 \
    refcount_bits=64 compat=0.10 lazy_refcounts=on; do
    rm -f i.qcow2
    must qemu-img create -q -f qcow2 ${o:+-o $o} i.qcow2 96M
    # written first, so at lower host offsets: data past the new end amid the file;
    # compressed writes are of whole clusters
    c=64k
    [ "$o" != cluster_size=2M ] || c=2M
    must qemu-io -c 'write -P 6 95M 1M' -c 'write -P 1 0 3M' -c 'write -P 2 20M 100k' -c 'write -z 30M 1M' \
        -c 'write -P 3 33M 512' -c 'write -P 4 60M 2M' -c "write -c -P 5 80M $c" -c "write -c -P 7 34M $c" \
        -c 'write -P 8 50M 64k' i.qcow2 >/dev/null
    same_shrink i.qcow2 33M "${o:-defaults}, 96M to 33M"
    same_shrink i.qcow2 $(((20 << 20) + 1536)) "${o:-defaults}, to inside a cluster"
done

step "a refcount block left empty, an L1 table's boundary, a snapshot, compressed clusters"
rm -f i.qcow2
must qemu-img create -q -f qcow2 -o cluster_size=512 i.qcow2 8M
must qemu-io -c 'write -P 1 4M 1M' -c 'write -P 2 0 1M' i.qcow2 >/dev/null
same_shrink i.qcow2 2M "a refcount block counting only clusters past the end"
rm -f i.qcow2
must qemu-img create -q -f qcow2 i.qcow2 2G
same_shrink i.qcow2 1G "an empty image to an L1 table's boundary"
must qemu-io -c 'write -P 2 0 1M' i.qcow2 >/dev/null
same_shrink i.qcow2 1G "data below an L1 table's boundary"
must qemu-io -c 'write -P 1 1500M 1M' -c 'write -P 3 600M 64k' i.qcow2 >/dev/null
same_shrink i.qcow2 512M "data on both sides of an L1 table's boundary"
rm -f i.qcow2
must qemu-img create -q -f qcow2 i.qcow2 64M
must qemu-io -c 'write -P 1 0 64M' i.qcow2 >/dev/null
must qemu-img snapshot -c s0 i.qcow2
must qemu-io -c 'write -P 2 8M 100k' -c 'write -P 3 40M 64k' -c 'write -P 4 20M 4k' \
    i.qcow2 >/dev/null
same_shrink i.qcow2 20M "a snapshot holding clusters past the end"
rm -f i.qcow2
must qemu-img create -q -f qcow2 -o cluster_size=4k i.qcow2 16M
must qemu-io -c 'write -c -P 1 0 64k' -c 'write -c -P 2 8M 64k' -c 'write -c -P 3 64k 64k' i.qcow2 >/dev/null
same_shrink i.qcow2 40k "compressed clusters sharing host clusters across the end"

step "persistent bitmaps: stored anew past what is kept, the old bits' clusters discarded"
rm -f i.qcow2
must qemu-img create -q -f qcow2 i.qcow2 64M
must qemu-img bitmap --add i.qcow2 a
must qemu-img bitmap --add -g 512 --disable i.qcow2 d
must qemu-io -c 'write 30M 1M' -c 'write 1M 64k' -c 'write 40M 64k' i.qcow2 >/dev/null
must qemu-img bitmap --merge a i.qcow2 d
# the bytes of the old directory (freed, kept) differ: QEMU marks its
# bitmaps in use there at its open
same_shrink i.qcow2 20M "bitmaps" anybytes
for t in q v; do
    qemu-img info --output=json $t.qcow2 | jq -c '.["format-specific"].data.bitmaps' >bm.$t
done
diff -u bm.q bm.v || fail "bitmaps listed differently after the shrink"

# 2. integrity, both ways
# MAKER: q (qemu-img, qemu-io) or v (vbd-img, vbd-io) makes the image,
# the other tool shrinks it
integrity() {
    local maker=$1 img=$1.qcow2 sh=$1.raw mk io other
    if [ $maker = q ]; then
        mk=qemu-img io=qemu-io other=$VBD_IMG
    else
        mk=$VBD_IMG io=$VBD_IO other=qemu-img
    fi
    step "integrity: made by $mk, shrunk by ${other##*/}"
    rm -f "$img" "$sh" snap.raw
    must "$mk" create -q -f qcow2 -o cluster_size=4k "$img" 32M
    must qemu-img create -q -f raw "$sh" 32M
    both_write $io "$img" "$sh" 'write -P 1 0 10M' 'write -P 1 16M 16M'
    must "$mk" snapshot -c s0 "$img"
    cp "$sh" snap.raw
    must "$mk" bitmap --add "$img" b
    # after the snapshot: compressed clusters packed into shared host
    # clusters on both sides of the new end (12M; compressed writes go to
    # unallocated clusters only), data past it and below it written again
    # (the snapshot's copy stays), zeroes
    both_write $io "$img" "$sh" 'write -c -P 2 11M 1M' 'write -c -P 3 12M 1M' 'write -P 4 20M 2M' \
        'write -z 10M 64k' 'write -P 5 4M 8k' 'write -c -P 6 14M 64k'
    out=$("$other" resize -q --shrink "$img" 12M 2>&1) || fail "${other##*/} resize --shrink: $out"
    qcheck "$img"
    truncate -s 12M "$sh"
    qemu-img compare -q -f qcow2 -F raw "$img" "$sh" || fail "made by $mk: the data below the new end changed"
    must qemu-img convert -l snapshot.name=s0 -O raw "$img" s0.raw
    # (read at the image's size now)
    cmp -n $((12 << 20)) s0.raw snap.raw || fail "made by $mk: the snapshot's data changed in the shrink"
    [ "$(qemu-img info --output=json "$img" | jq -r '.["format-specific"].data.bitmaps[0].name')" = b ] ||
        fail "made by $mk: the bitmap is gone"
    if command -v qemu-nbd >/dev/null && command -v nbdinfo >/dev/null; then
        rm -f n.sock
        qemu-nbd -r -t -k "$T/n.sock" -B b -f qcow2 "$img" 2>qn.log &
        local p=$!
        wait_sock n.sock "$p" qn.log
        nbdinfo --map=qemu:dirty-bitmap:b "nbd+unix:///?socket=$T/n.sock" >map.txt || fail "nbdinfo: $(cat qn.log)"
        kill $p
        wait $p 2>/dev/null
        # dirty: 4M+8k, 10M+64k, 11M-12M (the writes below the new end)
        grep -Eq "^ *4194304 +8192 +1" map.txt && grep -Eq "^ *10485760 +65536 +1" map.txt &&
            grep -Eq "^ *11534336 +1048576 +1" map.txt || fail "made by $mk: the bitmap lost bits below the end: $(cat map.txt)"
    fi
    must "$VBD_IMG" resize -q "$img" 32M
    qcheck "$img"
    qemu-io -r -c 'read -P 0 12M 20M' "$img" | grep -q '^read' || fail "made by $mk: the discarded data came back"
    must qemu-img bitmap --remove "$img" b # (no snapshot is applied with one)
    must qemu-img snapshot -a s0 "$img"
    qcheck "$img"
    qemu-img compare -q -f qcow2 -F raw "$img" snap.raw || fail "made by $mk: the snapshot applied reads otherwise"
}
integrity q
integrity v
echo ok
