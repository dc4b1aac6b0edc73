#!/bin/bash
# test-timeout: 600
# A qcow2 left by vbd-img and vbd-io as qemu-img 7.2 and qemu-io leave it,
# byte for byte (cmp; snapshot dates zeroed), after the verbs that open an
# image read-write:
# - persistent bitmaps: QEMU's close stores every consistent bitmap anew
#   after any read-write open (new data clusters and table for each, a new
#   directory, the old clusters freed: qcow2_store_persistent_dirty_bitmaps);
#   vbd's close wrote them back in place but after amend and resize. Here
#   after snapshot -c/-d, check -r all/leaks, rebase -u, commit (into a base
#   with bitmaps, and a top with them), a write, with enabled and disabled
#   bitmaps (QEMU marks disabled ones in use at its open too: the old
#   directory's bytes), and one open that was never read-write (commit's
#   look at the chain) does not move them a second time;
# - snapshot -c and -d: the table without its last entry's padding, the old
#   table and what only a deleted snapshot held punched (qemu-img's file
#   length and bytes; the bitmap verb is left alone: it lays out its own);
# - a discard of the whole image over a raw backing file (zero clusters in
#   new L2 tables): a new table goes into the clusters the discard freed
#   before it, as QEMU's l2_allocate (vbd's went past them: 4 KiB more with
#   4 KiB clusters, 60 KiB with 512 bytes);
# and each image clean to qemu-img check. Then the close's store and a
# resize with bitmaps stopped at every write (blkdebug): each image they
# leave is consistent (leaks at most), with its data and bitmaps.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

# zero each internal snapshot's date and VM clock (the time of the run)
cat >dates.py <<'EOF'
import struct, sys
for p in sys.argv[1:]:
    with open(p, 'r+b') as f:
        h = f.read(72)
        nb, off = struct.unpack('>IQ', h[60:72])
        for _ in range(nb):
            f.seek(off)
            e = f.read(40)
            idl, nl = struct.unpack('>HH', e[12:16])
            extra = struct.unpack('>I', e[36:40])[0]
            f.seek(off + 16)
            f.write(bytes(16))
            off = (off + 40 + extra + idl + nl + 7) & ~7
EOF

mkdir base
# bm: two enabled bitmaps with dirty bits; dis: and a disabled one;
# donly: only a disabled one; nb: none; each 4 MiB, 64 KiB clusters
must qemu-img create -q -f qcow2 base/bm.qcow2 4M
must qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' base/bm.qcow2 >/dev/null
must qemu-img bitmap --add base/bm.qcow2 b0
must qemu-img bitmap --add -g 512k base/bm.qcow2 b1
must qemu-io -c 'write -P 2 1M 64k' -c 'write -P 3 3M 8k' base/bm.qcow2 >/dev/null
cp base/bm.qcow2 base/dis.qcow2
must qemu-img bitmap --add base/dis.qcow2 d0
must qemu-io -c 'write -P 4 2M 64k' base/dis.qcow2 >/dev/null
must qemu-img bitmap --disable base/dis.qcow2 d0
must qemu-io -c 'write -P 4 3M 64k' base/dis.qcow2 >/dev/null
must qemu-img create -q -f qcow2 base/donly.qcow2 4M
must qemu-img bitmap --add base/donly.qcow2 d0
must qemu-io -c 'write -P 4 2M 64k' base/donly.qcow2 >/dev/null
must qemu-img bitmap --disable base/donly.qcow2 d0
must qemu-img create -q -f qcow2 base/nb.qcow2 4M
must qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' -c 'write -P 3 3M 8k' base/nb.qcow2 >/dev/null
for i in bm nb; do
    cp base/$i.qcow2 base/$i-s.qcow2
    must qemu-img snapshot -c s1 base/$i-s.qcow2
    must qemu-io -c 'write -P 8 0 64k' base/$i-s.qcow2 >/dev/null
done

# same IMAGE TOOL-ARGS...: in q/ and v/ (copies of base/IMAGE as i.qcow2),
# the QEMU tool and vbd's with ARGS (%i: the image); the same exit code,
# then i.qcow2 and every other image there byte for byte, checked
same() {
    local img=$1 tool=$2 f rq=0 rv=0 a args=()
    shift 2
    for a; do args+=("${a//%i/i.qcow2}"); done
    rm -rf q v && mkdir q v
    cp base/$img q/i.qcow2 && cp base/$img v/i.qcow2
    [ ! -e base/b-$img ] || { cp base/b-$img q/b.qcow2 && cp base/b-$img v/b.qcow2; }
    # side by side: the two halves need not wait for each other
    local qt=qemu-$tool vt=$VBD_IMG
    [ $tool = img ] || vt=$VBD_IO
    (cd q && $qt "${args[@]}" >../q.out 2>&1; echo $? >../q.rc) &
    (cd v && "$vt" "${args[@]}") >v.out 2>&1 || rv=$?
    wait $!
    rq=$(cat q.rc)
    ! grep -q -e Sanitizer -e 'runtime error' v.out || fail "$img $*: $(cat v.out)"
    [ $rq = $rv ] || fail "$img $*: exit $rv, the QEMU tool's $rq: $(cat v.out)"
    [[ ${args[*]} != snapshot* ]] || python3 dates.py q/i.qcow2 v/i.qcow2
    for f in $(cd q && ls); do
        cmp q/$f v/$f || fail "$img $*: $f is not the QEMU tool's byte for byte"
        qemu-img check -q v/$f || fail "$img $*: $f: qemu-img check"
    done
    echo "same: $img $*"
}

step "persistent bitmaps stored anew at the close, as qemu-img's and qemu-io's close store them"
# (dis: enabled and disabled bitmaps; donly: no enabled one to track)
same dis.qcow2 img snapshot -c s1 %i
same dis.qcow2 img check -r all %i
same bm.qcow2 img check -r leaks %i
same dis.qcow2 img rebase -u -b '' %i
same donly.qcow2 img rebase -u -b '' %i
same dis.qcow2 io -c 'write -P 7 2M 64k' %i
same donly.qcow2 io -c 'read 0 64k' %i
same bm-s.qcow2 img snapshot -d s1 %i
# commit: a base with bitmaps under an overlay (with a bitmap of its own
# for -d: the top is opened read-write once, as qemu-img opens it)
for b in dis; do
    ln -sf $b.qcow2 base/b.qcow2 # the overlays name b.qcow2 (same() copies base/b-IMAGE there)
    (cd base && must qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t$b.qcow2)
    # one cluster new to the base, the others over its own: qemu-img's
    # commit (a mirror job) copies chunks side by side, and where two
    # clusters are new which comes first varies
    must qemu-io -c 'write -P 9 0 64k' -c 'write -P 8 2M 64k' base/t$b.qcow2 >/dev/null
    cp base/t$b.qcow2 base/td$b.qcow2
    must qemu-img bitmap --add base/td$b.qcow2 tb
    must qemu-io -c 'write -P 6 1M 64k' base/td$b.qcow2 >/dev/null
    rm base/b.qcow2
    cp base/$b.qcow2 base/b-t$b.qcow2 && cp base/$b.qcow2 base/b-td$b.qcow2
    same td$b.qcow2 img commit -d %i
    # (the emptied top keeps its L2 table in vbd: README; the base compared)
    rm -rf q v && mkdir q v
    for k in q v; do cp base/t$b.qcow2 $k/i.qcow2 && cp base/b-t$b.qcow2 $k/b.qcow2; done
    (cd q && must qemu-img commit -q i.qcow2) && (cd v && must "$VBD_IMG" commit -q i.qcow2)
    cmp q/b.qcow2 v/b.qcow2 || fail "commit into $b.qcow2: the base is not qemu-img's byte for byte"
    qemu-img check -q v/b.qcow2 || fail "commit into $b.qcow2: qemu-img check of the base"
done

step "internal snapshots: the table's length, the old table and a deleted snapshot's clusters punched"
same nb.qcow2 img snapshot -c s1 %i
same nb-s.qcow2 img snapshot -c s2 %i
same nb-s.qcow2 img snapshot -d s1 %i
# (the space: one file-system block apart at most, the file system's)
dq=$(stat -c %b q/i.qcow2) dv=$(stat -c %b v/i.qcow2)
[ $((dq - dv)) -le 8 ] && [ $((dv - dq)) -le 8 ] || fail "snapshot -d: $dv blocks allocated, qemu-img's $dq"

step "a whole-image discard over a raw backing file: the new L2 tables where qemu-io puts them"
must qemu-img create -q -f raw base/r.raw 4M
must qemu-io -f raw -c 'write -P 9 0 4M' base/r.raw >/dev/null
for cs in 512 4k; do
    (cd base && must qemu-img create -q -f qcow2 -o cluster_size=$cs -b r.raw -F raw d$cs.qcow2 4M)
    must qemu-io -c 'write -P 1 0 256k' base/d$cs.qcow2 >/dev/null
    for c in 'discard 0 4M'; do
        rm -rf q v && mkdir q v
        for k in q v; do cp base/d$cs.qcow2 $k/i.qcow2 && ln -s ../base/r.raw $k/r.raw; done
        (cd q && must qemu-io -c "$c" i.qcow2 >/dev/null) && (cd v && must "$VBD_IO" -c "$c" i.qcow2 >/dev/null)
        cmp q/i.qcow2 v/i.qcow2 || fail "$c over a raw backing file, $cs clusters: not qemu-io's image byte for byte"
        [ "$(stat -c %b q/i.qcow2)" = "$(stat -c %b v/i.qcow2)" ] ||
            fail "$c, $cs clusters: $(stat -c %b v/i.qcow2) blocks allocated, qemu-io's $(stat -c %b q/i.qcow2)"
        qemu-img check -q v/i.qcow2 || fail "$c, $cs clusters: qemu-img check"
    done
done

step "the close's store and a resize's stopped at every write: a consistent image with its data and bitmaps"
must qemu-img convert -O raw base/dis.qcow2 dis.raw
qemu-img info --output=json base/dis.qcow2 | grep -o '"name": "[^"]*"' | sort >names
# crash_loop TOOL ARGS...: TOOL ARGS (%o: the image's options) on copies
# of dis.qcow2 under blkdebug (every write from the (K+1)th on fails, as if
# the machine stopped there) for K = 0, 1... until the image is the one a
# run without faults leaves; each consistent to qemu-img check (leaks
# allowed, as QEMU's own crash leaves them), with its data and bitmaps
crash_loop() {
    local tool=$1 k=0 a args full
    shift
    for a; do args+=("${a//%o/driver=qcow2,file.filename=full.qcow2}"); done
    cp base/dis.qcow2 full.qcow2
    must "$tool" "${args[@]}" >/dev/null
    while :; do
        cp base/dis.qcow2 c.qcow2
        args=()
        for a; do
            args+=("${a//%o/driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=c.qcow2,file.inject-error.0.event=write_aio,file.inject-error.0.iotype=write,file.inject-error.0.x-skip=$k}")
        done
        "$tool" "${args[@]}" >out 2>&1
        ! grep -q -e Sanitizer -e 'runtime error' out || fail "${tool##*/} $* K=$k: $(cat out)"
        # the image left, read by three qemu-img runs at once
        qemu-img check c.qcow2 >check.out 2>&1 &
        pcheck=$!
        qemu-img compare -q c.qcow2 dis.raw >compare.out 2>&1 &
        pcompare=$!
        qemu-img info --output=json c.qcow2 >info.json 2>&1 || fail "K=$k: qemu-img info: $(cat info.json)"
        crc=0
        wait $pcheck || crc=$?
        case $crc in 0 | 3) ;; *) fail "${tool##*/} $*: writes after $k lost: qemu-img check: $(cat check.out)" ;; esac
        wait $pcompare || fail "${tool##*/} $* K=$k: the guest data changed: $(cat compare.out)"
        grep -o '"name": "[^"]*"' info.json | sort | cmp -s - names || fail "${tool##*/} $* K=$k: bitmaps lost"
        ! cmp -s c.qcow2 full.qcow2 || break
        k=$((k + 1))
        [ $k -lt 60 ] || fail "${tool##*/} $*: the image differs from a run without faults after 60 writes"
    done
    [ $k -ge 4 ] || fail "${tool##*/} $*: only $k writes before the image was complete: the faults did not reach it"
    echo "${tool##*/} $*: stopped at each of its first $k writes: consistent"
}
# a read opens the image read-write: the open marks the bitmaps in use,
# the close stores them anew
crash_loop "$VBD_IO" --image-opts -c 'read 0 64k' %o
# a resize stores them anew, in use until the close clears it
crash_loop "$VBD_IMG" resize -q --image-opts %o 8M
echo PASS
