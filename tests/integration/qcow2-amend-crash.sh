#!/bin/bash
# test-timeout: 900 (ASan, its checks side by side: 58-130 s at load 25-39, 418-435 s while the host was out of memory; before: 150 s at load 38, up to 4.5 min at load 40)
# amend -o refcount_bits=N stopped at every write: under blkdebug (every
# write from the (K+1)th on fails, as if the machine stopped there; reads
# go on) vbd-img amend runs for K = 0, 1, 2... until it has written all it
# writes (it succeeds and leaves nothing leaked). Each image it leaves must be consistent to qemu-img check (leaks
# are allowed, as QEMU's own crash leaves them), with the old refcount width
# or the new one, the same guest data in the active layer and the
# snapshot, the same bitmaps; and a second amend, without faults, finishes
# the change. Images: 64 KiB clusters with a snapshot, compressed clusters
# and a bitmap (16 to 64 bits and to 8); 512-byte clusters where the old
# refcount table grows (a new table and blocks switched to) while the
# amend allocates (64 to 32 bits), and where the new structure needs a
# larger table (16 to 64 bits). STEP (default 1; 5 and 17 for the 512-byte
# images, for the runtime at load): which K are tried.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"

# crash_amend IMAGE OLD-BITS NEW-BITS STEP: the loop above
crash_amend() {
    local img=$1 old=$2 new=$3 step=$4 k=0 rc crc bits pcheck pinfo pcompare pconvert
    must qemu-img convert -O raw $img $img.raw
    must qemu-img convert -l snapshot.name=s1 -O raw $img $img.s1.raw
    qemu-img info --output=json $img | grep -o '"name": "[^"]*"' | sort >$img.names
    while :; do
        cp $img c.qcow2
        rc=0
        "$VBD_IMG" amend -o refcount_bits=$new --image-opts \
            "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=c.qcow2,file.inject-error.0.event=write_aio,file.inject-error.0.iotype=write,file.inject-error.0.x-skip=$k" \
            >out.txt 2>&1 || rc=$?
        ! grep -q -e Sanitizer -e 'runtime error' out.txt || fail "$img K=$k: $(cat out.txt)"
        # the image left, read by four qemu-img runs at once (read-only: a
        # shared lock each; on a loaded host each waits for a CPU): check,
        # info (refcount width, snapshot and bitmap names), the guest data,
        # the snapshot's data
        qemu-img check c.qcow2 >check.out 2>&1 &
        pcheck=$!
        qemu-img info --output=json c.qcow2 >info.json 2>&1 &
        pinfo=$!
        qemu-img compare -q c.qcow2 $img.raw >compare.out 2>&1 &
        pcompare=$!
        qemu-img convert -l snapshot.name=s1 -O raw c.qcow2 s1.raw >convert.out 2>&1 &
        pconvert=$!
        crc=0
        wait $pcheck || crc=$?
        case $crc in 0 | 3) ;; *) fail "$img to $new bits, writes after $k lost: qemu-img check: $(cat check.out)" ;; esac
        wait $pinfo || fail "$img K=$k: qemu-img info: $(cat info.json)"
        bits=$(sed -n 's/.*"refcount-bits": \([0-9]*\).*/\1/p' info.json)
        [ "$bits" = $old ] || [ "$bits" = $new ] || fail "$img K=$k: refcount bits $bits"
        wait $pcompare || fail "$img K=$k ($bits bits): the guest data changed $(cat compare.out)"
        wait $pconvert || fail "$img K=$k: qemu-img convert of the snapshot: $(cat convert.out)"
        cmp -s s1.raw $img.s1.raw || fail "$img K=$k ($bits bits): the snapshot's data changed"
        grep -o '"name": "[^"]*"' info.json | sort | cmp -s - $img.names || fail "$img K=$k: snapshots or bitmaps lost"
        # done once the amend succeeded and nothing leaked (vbd-img, as
        # qemu-img, exits 0 when only its close's writes failed)
        [ $rc = 0 ] && [ $crc = 0 ] && break
        # the change finished by a second amend (leaks aside, the image clean)
        must "$VBD_IMG" amend -o refcount_bits=$new c.qcow2
        qemu-img check c.qcow2 >check.out 2>&1 &
        pcheck=$!
        qemu-img info c.qcow2 >info.out 2>&1 &
        pinfo=$!
        qemu-img compare -q c.qcow2 $img.raw >compare.out 2>&1 &
        pcompare=$!
        crc=0
        wait $pcheck || crc=$?
        case $crc in 0 | 3) ;; *) fail "$img K=$k, amended again: $(cat check.out)" ;; esac
        wait $pinfo && grep -q "refcount bits: $new" info.out || fail "$img K=$k: the second amend left $(cat info.out)"
        wait $pcompare || fail "$img K=$k, amended again: the guest data changed $(cat compare.out)"
        k=$((k + step))
    done
    echo "$img: $old to $new bits: stopped after each of $k writes (every $step), all consistent"
}

step "64 KiB clusters: snapshot, compressed clusters, a bitmap"
must qemu-img create -q -f qcow2 a.qcow2 4M
must qemu-io -c 'write -P 1 0 256k' -c 'write -c -P 2 1M 64k' -c 'write -c -P 3 1088k 64k' a.qcow2 >/dev/null
must qemu-img snapshot -c s1 a.qcow2
must qemu-img bitmap --add a.qcow2 b0
must qemu-io -c 'write -P 4 64k 64k' -c 'write -P 5 3M 64k' a.qcow2 >/dev/null
crash_amend a.qcow2 16 64 1
crash_amend a.qcow2 16 8 1

step "512-byte clusters: the old refcount table grows amid the amend (64 to 32 bits); the new one is larger (16 to 64)"
# 64 bits: one table cluster counts 2 MiB of file; this one is 12 KiB short of it
must qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 og.qcow2 8M
must qemu-io -c 'write -P 7 0 1970k' og.qcow2 >/dev/null
must qemu-img snapshot -c s1 og.qcow2
must qemu-io -c 'write -P 9 0 16k' og.qcow2 >/dev/null
crash_amend og.qcow2 64 32 ${STEP:-5}
must qemu-img create -q -f qcow2 -o cluster_size=512 b.qcow2 8M
mapfile -t w < <(for i in $(seq 0 95); do echo "-c"; echo "write -P $((i % 200 + 1)) $((i * 64))k 32k"; done)
must qemu-io "${w[@]}" b.qcow2 >/dev/null
must qemu-img snapshot -c s1 b.qcow2
crash_amend b.qcow2 16 64 ${STEP:-17}
echo PASS
