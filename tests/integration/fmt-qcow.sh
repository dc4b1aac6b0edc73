#!/bin/bash
# The qcow (version 1) format, read-only, as qemu-img 7.2 reads it. Images
# from qemu-img create -f qcow + qemu-io writes, a compressed one (qemu-img
# convert -c -O qcow), one over a raw backing file and one over a qcow2
# backing file: vbd-img convert -O raw equals qemu-img's, info and map
# --output=json equal qemu-img's, compare and check answer as qemu-img's,
# unaligned vbd-io reads return qemu's bytes, vbd-nbd -r serves the same
# bytes (nbdcopy), writes are refused in one line, and corrupted headers
# and tables give one-line errors (no crash, no leak under ASan).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3 nbdcopy
cd "$T"

# same_as_qemu IMG: convert, info, map, compare and reads agree with qemu-img's
same_as_qemu() {
    local img=$1
    must "$VBD_IMG" convert -O raw "$img" v.raw
    qemu-img convert -f qcow -O raw "$img" q.raw 2>q.err || fail "qemu-img convert $img: $(cat q.err)"
    cmp v.raw q.raw || fail "vbd-img convert -O raw of $img differs from qemu-img's"
    "$VBD_IMG" info --output=json "$img" >v.json || fail "vbd-img info $img"
    qemu-img info --output=json "$img" >q.json
    cmp v.json q.json || fail "info of $img differs: $(diff v.json q.json)"
    "$VBD_IMG" info "$img" >v.txt || fail "vbd-img info $img"
    qemu-img info "$img" >q.txt
    cmp v.txt q.txt || fail "human info of $img differs: $(diff v.txt q.txt)"
    "$VBD_IMG" map --output=json "$img" >v.map || fail "vbd-img map $img"
    qemu-img map --output=json "$img" >q.map
    cmp v.map q.map || fail "map of $img differs: $(diff v.map q.map)"
    out=$("$VBD_IMG" compare "$img" q.raw 2>&1) || fail "vbd-img compare $img q.raw: $out"
    [ "$out" = "Images are identical." ] || fail "vbd-img compare said: $out"
    q=$(qemu-img check "$img" 2>&1); qrc=$?
    v=$("$VBD_IMG" check "$img" 2>&1); vrc=$?
    [ $vrc = $qrc ] && [ "${v//vbd-img/qemu-img}" = "$q" ] || fail "check of $img: vbd $vrc '$v', qemu $qrc '$q'"
    # unaligned reads across clusters, against qemu's bytes
    local size r
    size=$(stat -c %s q.raw)
    for r in "0 1" "511 1025" "4000 70000" "$((size / 2 - 3)) 7777" "$((size - 700)) 700"; do
        set -- $r
        "$VBD_IO" -r -c "read -v $1 $2" "$img" >v.out 2>&1 || fail "vbd-io read $r of $img: $(cat v.out)"
        qemu-io -r -f qcow -c "read -v $1 $2" "$img" >q.out 2>&1
        cmp <(grep -v '^read \|ops/sec' v.out) <(grep -v '^read \|ops/sec' q.out) || fail "vbd-io read $r of $img returned other bytes"
    done
    # writes are refused, in one line
    must_fail_with "the qcow format is read-only in vbd" "$VBD_IO" -f qcow -c 'write 0 512' "$img"
    must_fail_with "the qcow format is read-only in vbd" "$VBD_IMG" resize -f qcow "$img" 100M
}

step "plain: qemu-io writes, partial clusters, a hole, the last cluster"
must qemu-img create -q -f qcow p.qcow 8M
must qemu-io -f qcow -c 'write -P 0x22 4096 8192' -c 'write -P 0x33 3M 100k' -c 'write -P 0x44 7M 1M' \
    -c 'write -P 0x55 1000 3000' p.qcow >/dev/null
same_as_qemu p.qcow

step "compressed: qemu-img convert -c -O qcow, odd size"
mixed_data m.raw 3
# qemu-img 7.2 writes every cluster, then fails its closing zero-length
# compressed write (qcow takes none) and exits 1 without a word: the image is
# whole, as qemu-img compare shows
qemu-img convert -q -c -f raw -O qcow m.raw c.qcow 2>q.err
[ ! -s q.err ] || fail "qemu-img convert -c -O qcow: $(cat q.err)"
out=$(qemu-img compare -f raw -F qcow m.raw c.qcow 2>&1) || fail "qemu-img's compressed qcow differs from its source: $out"
same_as_qemu c.qcow
cmp v.raw m.raw || fail "the compressed image does not read as its source"
# a mixed image: compressed clusters, then plain ones written over some
must qemu-io -f qcow -c 'write -P 0x66 64k 8k' -c 'write -P 0x67 1M 4096' c.qcow >/dev/null
same_as_qemu c.qcow

step "backing files: raw and qcow2, shorter than the overlay"
must qemu-img create -q -f raw base.raw 4M
must qemu-io -f raw -c 'write -P 0x11 0 4M' base.raw >/dev/null
must qemu-img create -q -f qcow -b base.raw -F raw br.qcow 8M
must qemu-io -f qcow -c 'write -P 0x77 1M 64k' -c 'write -P 0x78 4000k 200k' br.qcow >/dev/null
same_as_qemu br.qcow
must qemu-img create -q -f qcow2 base.qcow2 2M
must qemu-io -f qcow2 -c 'write -P 0x12 512k 1M' base.qcow2 >/dev/null
must qemu-img create -q -f qcow -b base.qcow2 -F qcow2 bq.qcow 4M
must qemu-io -f qcow -c 'write -P 0x79 1M 4k' bq.qcow >/dev/null
same_as_qemu bq.qcow

step "vbd-nbd -r serves the qcow image's bytes"
sock=$T/nbd.sock
"$VBD_NBD" -r -k "$sock" br.qcow 2>"$T/nbd.log" &
npid=$!
wait_sock "$sock" "$npid" "$T/nbd.log"
qemu-img convert -f qcow -O raw br.qcow q.raw
must nbdcopy "nbd+unix:///?socket=$sock" n.raw
wait $npid || fail "vbd-nbd exited $?: $(cat "$T/nbd.log")"
cmp n.raw q.raw || fail "vbd-nbd -r served other bytes than qemu-img reads"
! grep -q Sanitizer "$T/nbd.log" || { cat "$T/nbd.log"; fail "sanitizer report from vbd-nbd"; }

step "hostile headers and tables: one-line errors"
hostile() { # IMAGE PYTHON-EDIT EXPECTED-SUBSTRING
    cp "$1" h.qcow
    python3 -c "import struct; f=open('h.qcow','r+b'); $2" || fail "edit"
    must_fail_with "$3" "$VBD_IMG" info h.qcow
    must_fail_with "$3" "$VBD_IMG" convert -f qcow -O raw h.qcow h.raw
}
hostile p.qcow "f.seek(32); f.write(bytes([8]))" "cluster_bits: Cluster size must be between 512 and 64k"
hostile p.qcow "f.seek(32); f.write(bytes([17]))" "cluster_bits: Cluster size must be between 512 and 64k"
hostile p.qcow "f.seek(33); f.write(bytes([5]))" "l2_bits: L2 table size must be between 512 and 64k"
hostile p.qcow "f.seek(33); f.write(bytes([14]))" "l2_bits: L2 table size must be between 512 and 64k"
hostile p.qcow "f.seek(24); f.write(struct.pack('>Q', 1))" "size: Image size is too small"
hostile p.qcow "f.seek(24); f.write(struct.pack('>Q', (1 << 64) - 1))" "size: Image too large"
hostile p.qcow "f.seek(24); f.write(struct.pack('>Q', 1 << 62))" "size: Image too large"
hostile p.qcow "f.seek(40); f.write(struct.pack('>Q', 1 << 40))" "l1_table_offset: the L1 table"
hostile p.qcow "f.seek(36); f.write(struct.pack('>I', 2))" "crypt_method: invalid encryption method in qcow header"
hostile p.qcow "f.seek(36); f.write(struct.pack('>I', 1))" "Use of AES-CBC encrypted qcow images is no longer supported"
hostile br.qcow "f.seek(16); f.write(struct.pack('>I', 1024))" "backing_file_size: Backing file name too long"
hostile br.qcow "f.seek(8); f.write(struct.pack('>Q', 1 << 40))" "backing_file_offset: the backing file name is past the end"
# qemu-img agrees on the header errors it shares with us
cp p.qcow h.qcow
python3 -c "f=open('h.qcow','r+b'); f.seek(32); f.write(bytes([8]))"
q=$(qemu-img info h.qcow 2>&1) && fail "qemu-img opened cluster_bits 8"
[ "$q" = "qemu-img: Could not open 'h.qcow': Cluster size must be between 512 and 64k" ] || fail "qemu-img 7.2 words changed: $q"

# tables pointing past the file, a compressed cluster that does not inflate: the read fails, nothing crashes
l1=$(python3 -c "import struct; f=open('p.qcow','rb'); f.seek(40); print(struct.unpack('>Q', f.read(8))[0])")
cp p.qcow h.qcow
python3 -c "import struct; f=open('h.qcow','r+b'); f.seek($l1); f.write(struct.pack('>Q', 1 << 40))"
out=$("$VBD_IMG" convert -f qcow -O raw h.qcow h.raw 2>&1) && fail "an L2 table past the file converted"
case "$out" in *"L2 table 0 at 1099511627776 is past the end of the file"*) ;; *) fail "L2 error: $out" ;; esac
l2=$(python3 -c "import struct; f=open('p.qcow','rb'); f.seek($l1); print(struct.unpack('>Q', f.read(8))[0])")
cp p.qcow h.qcow
python3 -c "import struct; f=open('h.qcow','r+b'); f.seek($l2 + 8); f.write(struct.pack('>Q', 1 << 40))"
out=$("$VBD_IO" -r -c 'read 4096 4096' h.qcow 2>&1) && fail "a cluster past the file was read"
case "$out" in *"is misaligned or past the end of the file"*) ;; *) fail "cluster error: $out" ;; esac
# the first compressed cluster of c.qcow (its L2 tables hold 512 entries of 4 KiB clusters)
read -r idx e < <(python3 - <<'PY'
import struct
f = open('c.qcow', 'rb')
f.seek(40); l1 = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0]
f.seek(l2); es = struct.unpack('>512Q', f.read(4096))
i = next(i for i, e in enumerate(es) if e >> 63)
print(i, es[i])
PY
) || fail "no compressed cluster in c.qcow"
cp c.qcow h.qcow
python3 -c "f=open('h.qcow','r+b'); f.seek($((e & ((1 << 51) - 1)))); f.write(b'\xff' * 16)"
out=$("$VBD_IO" -r -c "read $((idx * 4096)) 512" h.qcow 2>&1) && fail "a corrupt compressed cluster was read"
case "$out" in *"does not inflate to 4096 bytes"*) ;; *) fail "inflate error: $out" ;; esac
echo PASS
