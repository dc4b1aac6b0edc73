#!/bin/bash
# qcow2 image maintenance verbs against qemu-img: measure prints the same
# numbers; rebase (safe and -u), commit, amend (compat up and down with
# zero clusters and snapshots, lazy_refcounts, backing file, size), resize
# (grow with preallocation, grow and shrink with snapshots, shrink) and create
# -o preallocation leave images that qemu-img check finds clean and that
# read as a raw reference says. Internal snapshots with VM state (made by
# QEMU's savevm) survive; persistent bitmaps we do not track are dropped
# without leaking their clusters.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

same() { # vbd-img and qemu-img print the same for `$@`
    "$VBD_IMG" "$@" >v.out 2>&1 || fail "vbd-img $*: $(cat v.out)"
    qemu-img "$@" >q.out 2>&1 || fail "qemu-img $*: $(cat q.out)"
    diff -u q.out v.out >d.txt || fail "vbd-img $* differs from qemu-img: $(cat d.txt)"
}
equal() { # IMG REF.raw: qemu reads IMG as REF
    qemu-img compare -q "$1" "$2" || fail "$1 does not read as $2 in qemu-img"
}

step "measure: the same numbers as qemu-img"
must qemu-img create -q -f raw src.raw 100M
qemu-io -f raw -c 'write -P 1 0 3M' -c 'write -P 2 50M 100k' -c 'write -P 3 99M 1M' src.raw >/dev/null
must qemu-img convert -O qcow2 src.raw src.qcow2
for a in "--size 1G -O qcow2" "--size 10G -O qcow2 -o cluster_size=4k" "--size 3T -O qcow2 -o refcount_bits=1,extended_l2=on" \
         "--size 100M -O qcow2 -o preallocation=full" "--size 100M -O raw" "-f raw src.raw -O qcow2" \
         "-f raw src.raw -O qcow2 -o cluster_size=512" "-f qcow2 src.qcow2 -O qcow2 -o cluster_size=2M" \
         "-f qcow2 src.qcow2 -O qcow2 -o compat=0.10" "-f qcow2 src.qcow2 -O raw" "-f raw src.raw -O qcow2 -o preallocation=metadata"; do
    # shellcheck disable=SC2086
    same measure $a
    # shellcheck disable=SC2086
    same measure --output=json $a
done

step "create -o preallocation: the layout qemu-img makes"
for p in metadata falloc full; do
    rm -f p.qcow2 q.qcow2
    must "$VBD_IMG" create -q -f qcow2 -o preallocation=$p p.qcow2 100M
    must qemu-img create -q -f qcow2 -o preallocation=$p q.qcow2 100M
    qcheck p.qcow2
    qemu-img map --output=json p.qcow2 >pm.json
    qemu-img map --output=json q.qcow2 >qm.json
    diff -u qm.json pm.json || fail "preallocation=$p: the map differs from qemu-img's"
    [ "$(stat -c %s p.qcow2)" = "$(stat -c %s q.qcow2)" ] || fail "preallocation=$p: file size $(stat -c %s p.qcow2) vs qemu $(stat -c %s q.qcow2)"
    if [ $p != metadata ]; then
        [ "$(du -k p.qcow2 | cut -f1)" -ge 100000 ] || fail "preallocation=$p: only $(du -k p.qcow2 | cut -f1) KiB on disk"
    fi
    qemu-io -c 'write -P 9 5M 1M' p.qcow2 >/dev/null
    qcheck p.qcow2
done
must_fail_with "extended_l2" "$VBD_IMG" create -q -f qcow2 -o preallocation=metadata -b src.qcow2 -F qcow2 pb.qcow2
must_fail_with "Parameter 'preallocation' does not accept value 'lots'" "$VBD_IMG" create -q -f qcow2 -o preallocation=lots pb.qcow2 1M

step "rebase: safe mode keeps what the guest sees, -u only rewrites the header"
must qemu-img create -q -f qcow2 base1.qcow2 64M
qemu-io -c 'write -P 0x11 0 8M' base1.qcow2 >/dev/null
must qemu-img create -q -f qcow2 base2.qcow2 64M
qemu-io -c 'write -P 0x22 4M 8M' base2.qcow2 >/dev/null
must "$VBD_IMG" create -q -f qcow2 -b base1.qcow2 -F qcow2 top.qcow2
"$VBD_IO" -c 'write -P 0x33 1M 1M' -c 'write -z 6M 64k' -c 'write -P 0x44 10M 3k' top.qcow2 >/dev/null || fail "vbd-io"
must qemu-img convert -O raw top.qcow2 top.raw
must "$VBD_IMG" rebase -b base2.qcow2 -F qcow2 top.qcow2
qcheck top.qcow2
equal top.qcow2 top.raw
qemu-img info top.qcow2 | grep -q "^backing file: base2.qcow2" || fail "rebase did not record base2"
qemu-img info top.qcow2 | grep -q "^backing file format: qcow2" || fail "rebase lost the backing format"
must "$VBD_IMG" rebase -u -b base1.qcow2 -F qcow2 top.qcow2
qemu-img info top.qcow2 | grep -q "^backing file: base1.qcow2" || fail "rebase -u did not record base1"
must "$VBD_IMG" rebase -b "" top.qcow2
qemu-img info top.qcow2 | grep -q "^backing file" && fail "rebase -b '' kept a backing file"
equal top.qcow2 top.raw
qcheck top.qcow2

step "commit: the base takes the overlay's data, the overlay is emptied (-d keeps it)"
rm -f base1.qcow2 top.qcow2
must qemu-img create -q -f qcow2 base1.qcow2 64M
qemu-io -c 'write -P 0x11 0 8M' base1.qcow2 >/dev/null
must "$VBD_IMG" create -q -f qcow2 -b base1.qcow2 -F qcow2 top.qcow2
"$VBD_IO" -c 'write -P 0x33 1M 1M' -c 'write -z 6M 64k' -c 'write -P 5 60M 100k' top.qcow2 >/dev/null
must qemu-img convert -O raw top.qcow2 top.raw
cp top.qcow2 keep.qcow2
must "$VBD_IMG" commit -q top.qcow2
qcheck top.qcow2
qcheck base1.qcow2
equal base1.qcow2 top.raw
equal top.qcow2 top.raw
[ "$(qemu-img map --output=json top.qcow2 | grep -c '"depth": 0')" = 0 ] || fail "commit left data in the overlay"
cp base1.qcow2 base1.bak
must qemu-img create -q -f qcow2 -b base1.qcow2 -F qcow2 top2.qcow2
qemu-io -c 'write -P 0x66 2M 1M' top2.qcow2 >/dev/null
must qemu-img convert -O raw top2.qcow2 top2.raw
must "$VBD_IMG" commit -q -d top2.qcow2
equal base1.qcow2 top2.raw
[ "$(qemu-img map --output=json top2.qcow2 | grep -c '"depth": 0')" -ge 1 ] || fail "commit -d emptied the overlay"

step "commit -b BASE: a chain of three committed into its bottom; the top is not emptied (as qemu-img)"
rm -f c0.qcow2 c1.qcow2 c2.qcow2
must qemu-img create -q -f qcow2 c0.qcow2 64M
must qemu-img create -q -f qcow2 -b c0.qcow2 -F qcow2 c1.qcow2
must qemu-img create -q -f qcow2 -b c1.qcow2 -F qcow2 c2.qcow2
qemu-io -c 'write -P 1 0 1M' c0.qcow2 >/dev/null
qemu-io -c 'write -P 2 1M 1M' -c 'write -z 0 64k' c1.qcow2 >/dev/null
qemu-io -c 'write -P 3 2M 1M' -c 'write -P 4 1536k 64k' c2.qcow2 >/dev/null
must qemu-img convert -O raw c2.qcow2 c2.raw
cp c0.qcow2 c0.bak; cp c1.qcow2 c1.bak; cp c2.qcow2 c2.bak
must "$VBD_IMG" commit -q -b c0.qcow2 c2.qcow2
qcheck c0.qcow2
equal c0.qcow2 c2.raw
equal c2.qcow2 c2.raw
qemu-img map --output=json c2.qcow2 | grep -q '"depth": 0, "present": true' || fail "commit -b emptied the top image"
cp c0.bak c0.qcow2; cp c1.bak c1.qcow2; cp c2.bak c2.qcow2
qemu-img commit -q -b c0.qcow2 c2.qcow2
qemu-img map --output=json c2.qcow2 >q.map
cp c0.bak c0.qcow2; cp c1.bak c1.qcow2; cp c2.bak c2.qcow2
must "$VBD_IMG" commit -q -b c0.qcow2 c2.qcow2
"$VBD_IMG" map --output=json c2.qcow2 >v.map
diff -u q.map v.map || fail "after commit -b the chain maps differently from qemu-img's result"
must_fail_with "Did not find 'nothere.qcow2' in the backing chain" "$VBD_IMG" commit -b nothere.qcow2 c2.qcow2

step "amend compat=0.10: zero clusters expanded, snapshots keep their data"
must qemu-img create -q -f qcow2 a.qcow2 64M
qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 1M' -c 'write -P 2 4M 64k' a.qcow2 >/dev/null
must qemu-img snapshot -c s1 a.qcow2
qemu-io -c 'write -z 4M 64k' -c 'write -z -u 10M 128k' -c 'write -P 3 20M 64k' a.qcow2 >/dev/null
must qemu-img convert -O raw a.qcow2 a.raw
must qemu-img convert -l snapshot.name=s1 -O raw a.qcow2 s1.raw
must "$VBD_IMG" amend -o compat=0.10 a.qcow2
qemu-img info a.qcow2 | grep -q "compat: 0.10" || fail "amend did not downgrade"
qcheck a.qcow2
equal a.qcow2 a.raw
must qemu-img convert -l snapshot.name=s1 -O raw a.qcow2 s1b.raw
cmp s1.raw s1b.raw || fail "the snapshot's data changed when zero clusters were expanded"
must "$VBD_IMG" amend -o compat=1.1,lazy_refcounts=on a.qcow2
qemu-img info a.qcow2 | grep -q "lazy refcounts: true" || fail "lazy_refcounts=on not set"
qcheck a.qcow2
equal a.qcow2 a.raw
must "$VBD_IMG" amend -o lazy_refcounts=off a.qcow2
qemu-img info a.qcow2 | grep -q "lazy refcounts: false" || fail "lazy_refcounts=off not set"
must "$VBD_IMG" amend -o refcount_bits=64 a.qcow2
qemu-img info a.qcow2 | grep -q "refcount bits: 64" || fail "amend did not change refcount_bits"
qcheck a.qcow2
equal a.qcow2 a.raw
must "$VBD_IMG" amend -o refcount_bits=16 a.qcow2
qcheck a.qcow2
must_fail_with "Cannot decrease refcount entry width to 1 bits" "$VBD_IMG" amend -o refcount_bits=1 a.qcow2
must_fail_with "Invalid parameter 'cluster_size'" "$VBD_IMG" amend -o cluster_size=4k a.qcow2
must_fail_with "Lazy refcounts" "$VBD_IMG" amend -o compat=0.10,lazy_refcounts=on a.qcow2

step "resize: grow with snapshots, apply a snapshot taken at a larger size, shrink"
must "$VBD_IMG" amend -o size=128M a.qcow2
qemu-io -c 'write -P 4 100M 1M' a.qcow2 >/dev/null
must qemu-img snapshot -c big a.qcow2
must qemu-img convert -O raw a.qcow2 big.raw
must "$VBD_IMG" snapshot -a s1 a.qcow2
[ "$(qemu-img info --output=json a.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = $((64 << 20)) ] ||
    fail "applying s1 did not restore its 64 MiB size"
must "$VBD_IMG" snapshot -a big a.qcow2
qcheck a.qcow2
equal a.qcow2 big.raw
# shrinking with snapshots (qemu-img does it): the active image loses its tail, the snapshots keep theirs
must "$VBD_IMG" resize -q --shrink a.qcow2 64M
qcheck a.qcow2
cp a.qcow2 a2.qcow2
must qemu-img snapshot -a big a2.qcow2
qcheck a2.qcow2
equal a2.qcow2 big.raw
rm -f s.qcow2
must "$VBD_IMG" create -q -f qcow2 s.qcow2 1G
"$VBD_IO" -c 'write -P 7 0 1M' -c 'write -P 8 900M 1M' s.qcow2 >/dev/null
must "$VBD_IMG" resize -q --shrink s.qcow2 512M # discards the data at 900M, as qemu-img
qcheck s.qcow2
qemu-io -r -c 'read -P 7 0 1M' s.qcow2 | grep -q "^read" || fail "shrink lost data"
must "$VBD_IMG" resize -q --preallocation=falloc s.qcow2 2G
qcheck s.qcow2
qemu-io -r -c 'read -P 0 900M 1M' -c 'read -P 0 1500M 1M' s.qcow2 | grep -q "verification failed" && fail "grown area is not zero"
[ "$(du -m s.qcow2 | cut -f1)" -ge 1500 ] || fail "resize --preallocation=falloc allocated only $(du -m s.qcow2 | cut -f1) MiB"

step "lazy refcounts: a killed writer leaves a dirty image; the next read-write open repairs it"
rm -f l.qcow2
must "$VBD_IMG" create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k l.qcow2 1G
args=(); for k in $(seq 200); do args+=(-c "write -P 5 $((k * 4100000)) 1M"); [ $((k % 4)) = 0 ] && args+=(-c flush); done
dirty=0
for try in 1 2 3 4 5; do
    "$VBD_IO" "${args[@]}" l.qcow2 >o.txt 2>&1 &
    pid=$!
    for _ in $(seq 1000); do [ "$(grep -c wrote o.txt)" -ge 10 ] && break; sleep 0.01; done
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    wait_lock_free l.qcow2 # io_uring's file references can outlive the reaped writer (lib.sh)
    if qemu-img info --output=json l.qcow2 | grep -q '"dirty-flag": true'; then dirty=1; break; fi
done
[ $dirty = 1 ] || fail "the writer was never caught with a dirty image in 5 tries"
"$VBD_IO" -c 'read -P 5 4100000 1M' l.qcow2 >/dev/null || fail "the repairing open failed"
qemu-img info --output=json l.qcow2 | grep -q '"dirty-flag": false' || fail "the image is still dirty after a read-write open"
qcheck l.qcow2

step "VM state of a QEMU snapshot: counted by check, kept through our snapshot operations"
if command -v qemu-system-x86_64 >/dev/null; then
    must qemu-img create -q -f qcow2 v.qcow2 64M
    qemu-io -c 'write -P 3 0 1M' v.qcow2 >/dev/null
    printf 'savevm vm1\nquit\n' | timeout 60 qemu-system-x86_64 -machine none -nodefaults -display none -monitor stdio \
        -drive if=none,file=v.qcow2,id=d0 >savevm.log 2>&1
    qemu-img snapshot -l v.qcow2 | grep -q vm1 || fail "savevm made no snapshot: $(tail -3 savevm.log)"
    out=$("$VBD_IMG" check v.qcow2 2>&1) || fail "vbd-img check of an image with VM state: $out"
    must "$VBD_IMG" snapshot -c s2 v.qcow2
    qemu-io -c 'write -P 9 0 1M' v.qcow2 >/dev/null
    must "$VBD_IMG" snapshot -a vm1 v.qcow2
    qcheck v.qcow2
    printf 'loadvm vm1\nquit\n' | timeout 60 qemu-system-x86_64 -machine none -nodefaults -display none -monitor stdio \
        -drive if=none,file=v.qcow2,id=d0 >loadvm.log 2>&1
    grep -qi "error" loadvm.log && fail "QEMU cannot load the VM state after our snapshot operations: $(grep -i error loadvm.log)"
    qemu-io -r -c 'read -P 3 0 1M' v.qcow2 | grep -q "^read" || fail "vm1's disk data is wrong"
    must "$VBD_IMG" snapshot -d vm1 v.qcow2
    qcheck v.qcow2
fi

step "external data files: qemu-img's read by vbd, vbd's read by qemu-img, data_file_raw kept a valid raw image"
must qemu-img create -q -f qcow2 -o data_file=qd.raw qd.qcow2 64M
qemu-io -c 'write -P 1 0 100k' -c 'write -P 2 10M 4k' -c 'write -z 20M 1M' -c 'write -P 3 40M 64k' qd.qcow2 >/dev/null
must qemu-img convert -O raw qd.qcow2 qd.ref
"$VBD_IMG" compare -q -F raw qd.qcow2 qd.ref || fail "vbd reads qemu's data-file image differently"
for verb in "info --output=json" "map --output=json"; do
    # shellcheck disable=SC2086
    same $verb qd.qcow2
done
for o in data_file=vd.raw data_file=vd.raw,extended_l2=on data_file=vd.raw,data_file_raw=on; do
    rm -f vd.qcow2 vd.raw
    must "$VBD_IMG" create -q -f qcow2 -o $o vd.qcow2 64M
    "$VBD_IO" -c 'write -P 1 0 100k' -c 'write -P 2 10M 3k' -c 'write -z 11M 1M' -c 'discard 0 64k' \
        -c 'write -P 4 30M 1M' -c 'write -z 30M 64k' vd.qcow2 >/dev/null || fail "vbd-io on $o"
    qcheck vd.qcow2
    qemu-io -r -c 'read -P 0 0 64k' -c 'read -P 1 64k 36k' -c 'read -P 2 10M 3k' -c 'read -P 0 11M 1M' -c 'read -P 0 30M 64k' \
        -c 'read -P 4 30784k 960k' vd.qcow2 >qio.txt
    grep -q "verification failed" qio.txt && fail "qemu reads vbd's $o image wrong: $(grep -m1 failed qio.txt)"
    [ "$(stat -c %s vd.qcow2)" -lt 1048576 ] || fail "$o: data went into the qcow2 file ($(stat -c %s vd.qcow2) bytes)"
    case $o in *raw=on*) qemu-img compare -q -f qcow2 -F raw vd.qcow2 vd.raw || fail "the raw data file differs from the image" ;; esac
done
# 512-byte clusters: the header cluster holds the extensions only without the feature name table (as qemu-img makes it)
must "$VBD_IMG" create -q -f qcow2 -o cluster_size=512,data_file=small.raw small.qcow2 1M
qcheck small.qcow2
qemu-img info small.qcow2 | grep -q "data file: small.raw" || fail "512-byte clusters: data file name lost"
must "$VBD_IMG" create -q -f qcow2 -o cluster_size=512 -b vd.qcow2 -F qcow2 small2.qcow2
qcheck small2.qcow2
must_fail_with "compatibility level" "$VBD_IMG" create -q -f qcow2 -o data_file=x.raw,compat=0.10 x.qcow2 1M
must_fail_with "requires data-file" "$VBD_IMG" create -q -f qcow2 -o data_file_raw=on x.qcow2 1M
must_fail_with "Could not create snapshot 's': -95 (Operation not supported)" "$VBD_IMG" snapshot -c s vd.qcow2
mv vd.raw moved.raw
must_fail_with "data file" "$VBD_IMG" info vd.qcow2
"$VBD_IO" -r --image-opts -c 'read -P 2 10M 3k' driver=qcow2,file.filename=vd.qcow2,data-file.filename=moved.raw >/dev/null ||
    fail "data-file= does not override the name in the header"

step "cache options: tiny L2 and refcount caches evict and write back correctly; cache-clean-interval accepted"
rm -f cs.qcow2 cq.qcow2
must "$VBD_IMG" create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 cs.qcow2 8G
must qemu-img create -q -f qcow2 -o cluster_size=4k cq.qcow2 8G
python3 - >wcmds.txt <<'PY'
import random
r = random.Random(7)
for k in range(200):  # spread over 8 GiB: many L2 tables and refcount blocks (64-bit refcounts: 512 per block)
    print('write -P 0x%02x %d %d' % (k % 200 + 1, r.randrange(0, 8 << 30, 4096), r.choice([4096, 12288, 65536])))
    if k % 50 == 49:
        print('flush')
PY
wargs=(); while read -r l; do wargs+=(-c "$l"); done <wcmds.txt
"$VBD_IO" --image-opts "${wargs[@]}" driver=qcow2,file.filename=cs.qcow2,l2-cache-size=16k,refcount-cache-size=8k,cache-clean-interval=1 >/dev/null ||
    fail "vbd-io with small caches"
qemu-io "${wargs[@]}" cq.qcow2 >/dev/null
qcheck cs.qcow2
qemu-img compare -q cs.qcow2 cq.qcow2 || fail "small caches: the data differs from qemu-io's"
must_fail_with "cache-size" "$VBD_IO" --image-opts -c 'read 0 4k' driver=qcow2,file.filename=cs.qcow2,l2-cache-size=1M,refcount-cache-size=1M,cache-size=1M

step "persistent bitmaps: vbd's writes, zeroes and discards are tracked; qemu-nbd exports what vbd recorded"
need qemu-nbd nbdinfo
must qemu-img create -q -f qcow2 bm.qcow2 64M
must qemu-img bitmap --add bm.qcow2 b0
must qemu-img bitmap --add --granularity 1M bm.qcow2 b1
must qemu-img bitmap --add --disable bm.qcow2 off
qemu-io -c 'write -P 1 1M 64k' bm.qcow2 >/dev/null
out=$("$VBD_IMG" check bm.qcow2 2>&1) || fail "vbd-img check of an image with bitmaps: $out"
same info bm.qcow2
same info --output=json bm.qcow2
"$VBD_IO" -c 'write -P 2 10M 4k' -c 'write -z 20M 128k' -c 'discard 30M 64k' bm.qcow2 >/dev/null || fail "vbd-io on bm.qcow2"
qcheck bm.qcow2
same info --output=json bm.qcow2   # no bitmap left in-use by a clean close
dirty_map() { # BITMAP: the dirty ranges qemu-nbd exports for it
    rm -f q.sock
    qemu-nbd -r -t -k "$T/q.sock" -B "$1" -f qcow2 bm.qcow2 2>qn.log &
    local p=$!
    wait_sock q.sock "$p" qn.log
    nbdinfo --map=qemu:dirty-bitmap:"$1" "nbd+unix:///?socket=$T/q.sock" | awk '$3 == 1 { print $1, $2 }'
    kill $p; wait $p 2>/dev/null
}
[ "$(dirty_map b0 | tr '\n' ' ')" = "1048576 65536 10485760 65536 20971520 131072 31457280 65536 " ] ||
    fail "b0 does not hold vbd's writes: $(dirty_map b0 | tr '\n' ' ')"
[ "$(dirty_map b1 | tr '\n' ' ')" = "1048576 1048576 10485760 1048576 20971520 1048576 31457280 1048576 " ] ||
    fail "b1 (1 MiB granularity) does not hold vbd's writes: $(dirty_map b1 | tr '\n' ' ')"
[ -z "$(dirty_map off)" ] || fail "a disabled bitmap changed: $(dirty_map off)"
# applying an internal snapshot may change every cluster: the enabled bitmaps must say so
must qemu-img snapshot -c s0 bm.qcow2
must "$VBD_IMG" snapshot -a s0 bm.qcow2
qcheck bm.qcow2
[ "$(dirty_map b0 | tr '\n' ' ')" = "0 67108864 " ] || fail "after a snapshot revert b0 is not all dirty: $(dirty_map b0 | tr '\n' ' ')"
[ -z "$(dirty_map off)" ] || fail "a disabled bitmap changed on revert"
# a resize carries the bitmaps along (QEMU 7.2 does): the new area is clean
must "$VBD_IMG" resize -q bm.qcow2 128M
qcheck bm.qcow2
[ "$(dirty_map b0 | tr '\n' ' ')" = "0 67108864 " ] || fail "after a grow b0 is not as before: $(dirty_map b0 | tr '\n' ' ')"
# killed while open: the bitmap stays marked in-use, which QEMU reports as inconsistent (never silently stale)
io_start held.out bm.qcow2
io_cmd "write -P 3 40M 4k"
io_wait "wrote 4096/4096"
kill -9 $iopid; wait $iopid 2>/dev/null
exec 7>&-
qemu-img info -U bm.qcow2 | grep -q "in-use" || fail "a killed writer left the bitmap looking consistent"
echo ok
