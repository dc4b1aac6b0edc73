#!/bin/bash
# qcow2 both ways. qemu-img -> vbd: images qemu-img makes (v2/v3, cluster
# sizes 512 to 2M, refcount widths, extended L2, zlib/zstd compression,
# backing chains over raw, zero and discarded ranges) read by vbd exactly as
# qemu reads them; info and map JSON identical. vbd -> qemu-img: images vbd
# creates and writes (allocating, partial-cluster, over a backing file,
# growing) are clean for `qemu-img check` and equal to a raw reference.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
writes=(-c "write -P 0x11 0 1M" -c "write -P 0x22 3000 5000" -c "write -P 0x33 7M 130k" -c "write -z 2M 256k"
        -c "write -P 0x44 $((30 << 20)) 64k" -c "discard 7M 64k" -c "write -P 0x55 $(((64 << 20) - 4096)) 4096")
same_json() { # what: vbd-img and qemu-img agree on `$@`
    "$VBD_IMG" "$@" >v.json 2>&1 || fail "vbd-img $*: $(cat v.json)"
    qemu-img "$@" >q.json 2>&1 || fail "qemu-img $*"
    diff -u q.json v.json >d.txt || fail "vbd-img $* differs from qemu-img: $(cat d.txt)"
}
check_reads() { # IMG: vbd reads what qemu reads (compare against qemu's raw conversion)
    must qemu-img convert -O raw "$1" ref.raw
    "$VBD_IMG" compare -q -F raw "$1" ref.raw || fail "vbd reads $1 differently from qemu"
    same_json map --output=json "$1"
    same_json info --output=json "$1"
}

step "qemu-img -> vbd: versions, cluster sizes, refcount widths, extended L2"
for opts in compat=0.10 compat=1.1 cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 refcount_bits=64 \
            extended_l2=on,cluster_size=64k extended_l2=on,cluster_size=2M lazy_refcounts=on; do
    rm -f a.qcow2
    must qemu-img create -q -f qcow2 -o "$opts" a.qcow2 64M
    qemu-io -f qcow2 "${writes[@]}" a.qcow2 >/dev/null || fail "qemu-io on $opts"
    check_reads a.qcow2
done

step "qemu-img -> vbd: compressed clusters (zlib, zstd)"
qemu-img create -q -f raw src.raw 16M
must qemu-io -f raw -c "write -P 0x66 0 3M" -c "write -P 0x67 5M 100k" src.raw >/dev/null
for ct in zlib zstd; do
    rm -f c.qcow2
    must qemu-img convert -c -O qcow2 -o compression_type=$ct src.raw c.qcow2
    "$VBD_IMG" compare -q -F raw c.qcow2 src.raw || fail "compressed ($ct) clusters read wrong"
    same_json map --output=json c.qcow2
    # partial overwrite of a compressed cluster: copy-on-write decompresses it
    must "$VBD_IO" -c "write -P 0x68 70000 1000" c.qcow2 >/dev/null
    must qemu-io -f raw -c "write -P 0x68 70000 1000" src.raw >/dev/null
    qcheck c.qcow2
    must qemu-img compare -q c.qcow2 src.raw
done

step "vbd -> qemu-img: convert -c (zlib, zstd) packs compressed clusters qemu reads"
for ct in zlib zstd; do
    rm -f vc.qcow2
    must "$VBD_IMG" convert -c -O qcow2 -o compression_type=$ct src.raw vc.qcow2
    qcheck vc.qcow2
    must qemu-img compare -q vc.qcow2 src.raw
    qemu-img check vc.qcow2 | grep -q "[1-9][0-9.]*% compressed clusters" || fail "no compressed clusters ($ct)"
    [ "$(stat -c %s vc.qcow2)" -lt $((2 << 20)) ] || fail "compressed image is not smaller than its data ($ct)"
done

step "qemu-img -> vbd: internal snapshots listed as qemu-img lists them; the active layer reads right"
rm -f sn.qcow2
must qemu-img create -q -f qcow2 sn.qcow2 16M
must qemu-io -c "write -P 1 0 1M" sn.qcow2 >/dev/null
must qemu-img snapshot -c first sn.qcow2
must qemu-io -c "write -P 2 0 64k" sn.qcow2 >/dev/null
must qemu-img snapshot -c second sn.qcow2
same_json snapshot -l sn.qcow2
same_json info sn.qcow2
check_reads sn.qcow2
must "$VBD_IO" -c "write -P 3 0 4k" -c "write -P 4 512k 4k" sn.qcow2 >/dev/null   # copy-on-write of shared L2 and data
qcheck sn.qcow2
same_json check --output=json sn.qcow2
must qemu-io -r -c "read -P 3 0 4k" -c "read -P 2 4k 60k" -c "read -P 4 512k 4k" sn.qcow2 >/dev/null
must qemu-img convert -l snapshot.name=first -O raw sn.qcow2 first.raw
must qemu-io -f raw -r -c "read -P 1 0 1M" first.raw >/dev/null

step "vbd -> qemu-img: snapshots created, applied and deleted by vbd"
rm -f vs.qcow2
must "$VBD_IMG" create -q -f qcow2 vs.qcow2 16M
must "$VBD_IO" -c "write -P 0x11 0 1M" -c "write -P 0x12 8M 64k" vs.qcow2 >/dev/null
must "$VBD_IMG" snapshot -c one vs.qcow2
must "$VBD_IO" -c "write -P 0x21 0 64k" -c "write -P 0x22 100k 4k" -c "write -z 8M 64k" vs.qcow2 >/dev/null
must "$VBD_IMG" snapshot -c two vs.qcow2
must "$VBD_IO" -c "write -P 0x31 2M 64k" vs.qcow2 >/dev/null
qcheck vs.qcow2
same_json snapshot -l vs.qcow2
same_json check --output=json vs.qcow2
must qemu-img convert -l snapshot.name=one -O raw vs.qcow2 one.raw
must qemu-io -f raw -r -c "read -P 0x11 0 1M" -c "read -P 0x12 8M 64k" -c "read -P 0 2M 64k" one.raw >/dev/null
cp vs.qcow2 vs-qemu.qcow2
must qemu-img snapshot -a two vs-qemu.qcow2       # qemu applies a snapshot vbd made
must qemu-io -r -c "read -P 0x21 0 64k" -c "read -P 0x22 100k 4k" -c "read -P 0 8M 64k" -c "read -P 0 2M 64k" vs-qemu.qcow2 >/dev/null
must "$VBD_IMG" snapshot -a one vs.qcow2
qcheck vs.qcow2
must qemu-io -r -c "read -P 0x11 0 1M" -c "read -P 0x12 8M 64k" -c "read -P 0 2M 64k" vs.qcow2 >/dev/null
must "$VBD_IMG" snapshot -d two vs.qcow2
must "$VBD_IMG" snapshot -d one vs.qcow2
qcheck vs.qcow2
[ -z "$(qemu-img snapshot -l vs.qcow2)" ] || fail "snapshots left after deleting them"
# the same messages as qemu-img's
must_fail_with "Could not apply snapshot 'nosuch': Failed to load snapshot: No such file or directory" \
    "$VBD_IMG" snapshot -a nosuch vs.qcow2
must_fail_with "Could not delete snapshot 'nosuch': snapshot not found" "$VBD_IMG" snapshot -d nosuch vs.qcow2

step "qemu-img -> vbd: a backing chain of 3 over raw"
rm -f base.raw mid.qcow2 top.qcow2
qemu-img create -q -f raw base.raw 64M
must qemu-io -f raw -c "write -P 0x01 0 8M" base.raw >/dev/null
must qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
must qemu-io -f qcow2 -c "write -P 0x02 1M 1M" -c "write -z 3M 64k" mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 100M
must qemu-io -f qcow2 -c "write -P 0x03 1536k 4k" -c "write -P 0x04 90M 1M" top.qcow2 >/dev/null
check_reads top.qcow2
same_json info --output=json --backing-chain top.qcow2

step "vbd -> qemu-img: vbd creates and writes, qemu-img check clean, data equal"
for opts in "" compat=0.10 cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 refcount_bits=64 \
            extended_l2=on compression_type=zstd lazy_refcounts=on; do
    rm -f v.qcow2 v.raw
    must "$VBD_IMG" create -q -f qcow2 ${opts:+-o $opts} v.qcow2 64M
    qcheck v.qcow2
    same_json info --output=json v.qcow2
    must qemu-img create -q -f raw v.raw 64M
    for w in "0 1M" "3000 5000" "7M 130k" "$((30 << 20)) 64k" "$(((64 << 20) - 4096)) 4096" "1M 1"; do
        set -- $w
        must "$VBD_IO" -c "write -P 0x$(printf %02x $((RANDOM % 250 + 1))) $1 $2" v.qcow2 >/dev/null
    done
    must qemu-img convert -f qcow2 -O raw v.qcow2 vref.raw
    qcheck v.qcow2
    "$VBD_IMG" compare -q -F raw v.qcow2 vref.raw || fail "vbd disagrees with qemu about its own image ($opts)"
    same_json map --output=json v.qcow2
done

step "vbd -> qemu-img: concurrent allocating writes into the same and neighbouring clusters"
rm -f cc.qcow2 cc.raw
must "$VBD_IMG" create -q -f qcow2 -o cluster_size=64k cc.qcow2 4M
qemu-img create -q -f raw cc.raw 4M
A=(); for i in $(seq 0 15); do A+=(-c "aio_write -P $((i + 1)) $((i * 12288)) 12288"); done
A+=(-c aio_flush)
must "$VBD_IO" -f qcow2 "${A[@]}" cc.qcow2 >/dev/null
must qemu-io -f raw "${A[@]}" cc.raw >/dev/null
qcheck cc.qcow2
must qemu-img compare -q cc.qcow2 cc.raw

step "vbd -> qemu-img: random allocating writes over a backing file, and growth"
rm -f b.raw o.qcow2
qemu-img create -q -f raw b.raw 32M
must qemu-io -f raw -c "write -P 0x77 0 32M" b.raw >/dev/null
cp b.raw expect.raw
must "$VBD_IMG" create -q -f qcow2 -b b.raw -F raw o.qcow2
python3 - >cmds.txt <<'PY'
import random
r = random.Random(7)
for i in range(200):
    off = r.randrange(0, 32 << 20); ln = r.randrange(1, 200000); ln = min(ln, (32 << 20) - off)
    print('write -P 0x%02x %d %d' % (r.randrange(1, 255), off, ln))
PY
args=(); while read -r l; do args+=(-c "$l"); done <cmds.txt
must "$VBD_IO" -f qcow2 "${args[@]}" o.qcow2 >/dev/null
must qemu-io -f raw "${args[@]}" expect.raw >/dev/null
qcheck o.qcow2
must qemu-img compare -q o.qcow2 expect.raw
must "$VBD_IMG" compare -q -F raw o.qcow2 expect.raw
must "$VBD_IMG" resize -q o.qcow2 10G
qcheck o.qcow2
[ "$(qemu-img info --output=json o.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 10737418240 ] ||
    fail "resize not seen by qemu-img"
must "$VBD_IO" -c "write -P 0x99 9G 1M" o.qcow2 >/dev/null
must qemu-io -f qcow2 -c "read -P 0x99 9G 1M" -c "read -P 0x77 31M 4k" o.qcow2 >/dev/null
qcheck o.qcow2
step "vbd -> qemu-img: write-zeroes and discard (zero flag, unmapping, partial clusters), with and without backing"
qemu-img create -q -f raw zb.raw 8M
must qemu-io -f raw -c "write -P 0x21 0 8M" zb.raw >/dev/null
Z=(-c "write -P 0x31 0 2M" -c "write -z 64k 256k" -c "write -z 1000 3000" -c "discard 512k 128k" -c "write -z -u 1M 128k"
   -c "discard 4M 256k")
for opts in "" compat=0.10 extended_l2=on; do
    for back in none raw; do
        [ "$opts/$back" = compat=0.10/raw ] && continue # v2 cannot record zeroes over a backing file: discard keeps data
        rm -f z.qcow2 z.raw
        if [ $back = raw ]; then
            must "$VBD_IMG" create -q -f qcow2 ${opts:+-o $opts} -b zb.raw -F raw z.qcow2 8M; cp zb.raw z.raw
        else
            must "$VBD_IMG" create -q -f qcow2 ${opts:+-o $opts} z.qcow2 8M; qemu-img create -q -f raw z.raw 8M
        fi
        must "$VBD_IO" --image-opts "${Z[@]}" "driver=qcow2,discard=unmap,file.driver=file,file.filename=z.qcow2" >/dev/null
        must qemu-io -f raw "${Z[@]}" z.raw >/dev/null
        qcheck z.qcow2
        qemu-img compare -q z.qcow2 z.raw || fail "zeroes/discard ($opts, backing $back) read back wrong"
    done
done
echo OK
