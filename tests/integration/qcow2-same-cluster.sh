#!/bin/bash
# Requests in flight on the same cluster (the cases that lost data before
# the range locks in qcow2.c): each runs concurrent requests through vbd-io's
# aio commands, then qemu-img check must be clean and qemu-io must read what
# was written; snapshots must still read their own data. Also compressed
# clusters of real-looking data (their sector counts use L2 entry bits
# 56-61) written by qemu-img and by vbd-img read back through every path.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
verify() { # image, then qemu-io "read -P" commands that must all verify
    local img=$1 out; shift
    local args=(); for c in "$@"; do args+=(-c "read -P $c"); done
    out=$(qemu-io -f qcow2 -r "${args[@]}" "$img" 2>&1) || fail "qemu-io read of $img: $out"
    ! grep -q "verification failed\|failed" <<<"$out" || fail "$img does not hold the data written: $out"
}

step "partial writes into a cluster shared with an internal snapshot (COW from the snapshot)"
for cs in 4k 64k 2M; do
    rm -f s.qcow2
    must qemu-img create -q -f qcow2 -o cluster_size=$cs s.qcow2 16M
    must qemu-io -f qcow2 -c 'write -P 1 0 16M' s.qcow2 >/dev/null
    must qemu-img snapshot -c s0 s.qcow2
    must "$VBD_IO" -f qcow2 -c 'aio_write -P 2 0 4k' -c 'aio_write -P 3 32k 4k' -c 'aio_write -P 4 8k 4k' \
        -c 'aio_write -P 5 40k 8k' -c aio_flush -c 'write -P 9 1M 64k' s.qcow2 >/dev/null
    qcheck s.qcow2
    verify s.qcow2 '2 0 4k' '1 4k 4k' '4 8k 4k' '1 12k 20k' '3 32k 4k' '1 36k 4k' '5 40k 8k' '9 1M 64k'
    must qemu-img snapshot -a s0 s.qcow2
    qcheck s.qcow2
    verify s.qcow2 '1 0 16M'
done

step "extended L2 over a backing file: partial writes into one unallocated cluster"
must qemu-img create -q -f qcow2 b.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 1 0 16M' b.qcow2 >/dev/null
for cs in 16k 64k 2M; do
    rm -f o.qcow2
    must qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs -b b.qcow2 -F qcow2 o.qcow2
    must "$VBD_IO" -f qcow2 -c 'aio_write -P 2 0 4k' -c 'aio_write -P 3 8k 4k' -c 'aio_write -P 4 12k 1k' \
        -c aio_flush o.qcow2 >/dev/null
    qcheck o.qcow2
    verify o.qcow2 '2 0 4k' '1 4k 4k' '3 8k 4k' '4 12k 1k' '1 13k 3k' '1 16k 1M'
done

step "zeroes (unmapping and not) and writes in flight on the same clusters"
rm -f d.qcow2
must qemu-img create -q -f qcow2 -o cluster_size=64k d.qcow2 16M
must qemu-io -f qcow2 -c 'write -P 1 0 1M' d.qcow2 >/dev/null
must "$VBD_IO" -f qcow2 -c 'aio_write -P 2 0 4k' -c 'aio_write -z -u 64k 64k' -c 'aio_write -P 3 128k 4k' \
    -c 'aio_write -z 192k 64k' -c 'aio_write -P 4 196k 4k' -c 'aio_write -z -u 256k 64k' \
    -c 'aio_write -P 5 256k 4k' -c aio_flush d.qcow2 >/dev/null
qcheck d.qcow2
verify d.qcow2 '2 0 4k' '1 4k 60k' '0 64k 64k' '3 128k 4k' '1 132k 60k' '0 192k 4k' '4 196k 4k' '0 200k 56k' \
    '5 256k 4k' '0 260k 60k'

step "compressed clusters of real-looking data (text, random, zero runs)"
{ for i in $(seq 3000); do echo "line $i: the quick brown fox $((i * 7919 % 10007))"; done
  head -c 2M /dev/urandom | base64; head -c 1M /dev/zero; head -c 1M /dev/urandom; } >mixed.raw
truncate -s 8M mixed.raw
for ct in zlib zstd; do
    for cs in 4k 64k 2M; do
        rm -f q.qcow2 v.qcow2
        must qemu-img convert -q -c -O qcow2 -o cluster_size=$cs,compression_type=$ct mixed.raw q.qcow2
        out=$("$VBD_IMG" compare mixed.raw q.qcow2 2>&1) || fail "vbd-img compare of qemu-img's convert -c ($ct, $cs): $out"
        must "$VBD_IMG" convert -q -c -O qcow2 -o cluster_size=$cs,compression_type=$ct mixed.raw v.qcow2
        qcheck v.qcow2
        out=$(qemu-img compare mixed.raw v.qcow2 2>&1) || fail "qemu-img compare of vbd-img's convert -c ($ct, $cs): $out"
        out=$("$VBD_IMG" compare mixed.raw v.qcow2 2>&1) || fail "vbd-img compare of its own convert -c ($ct, $cs): $out"
        # writes over compressed clusters: partial ones need the cluster decompressed
        must "$VBD_IO" -f qcow2 -c 'aio_write -P 7 4k 512' -c 'aio_write -P 8 6k 512' -c aio_flush q.qcow2 >/dev/null
        qcheck q.qcow2
        cp mixed.raw want.raw
        must qemu-io -f raw -c 'write -P 7 4k 512' -c 'write -P 8 6k 512' want.raw >/dev/null
        out=$(qemu-img compare want.raw q.qcow2 2>&1) || fail "compressed image after partial writes ($ct, $cs): $out"
    done
done
echo OK
