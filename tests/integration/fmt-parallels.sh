#!/bin/bash
# The parallels format (issue 16): images qemu-img made and qemu-io wrote
# read the same through vbd-img/vbd-io; images vbd-img and vbd-io write
# check clean and compare identical in qemu-img; the in-use flag is kept
# as QEMU 7.2 keeps it; hostile headers give a one-line error; BAT entries
# that share a cluster are found by check, unshared by check -r all and
# keep the image from read-write opens until then.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"

# writes at unaligned offsets crossing 4k, 64k and 1M cluster boundaries
WRITES=(-c 'write -P 0x11 1000 5000' -c 'write -P 0x22 65000 70000' -c 'write -P 0x33 1048000 3000'
        -c 'write -P 0x44 3145727 2' -c 'write -P 0x55 9999999 123456')
READS=(-c 'read -P 0x11 1000 5000' -c 'read -P 0x22 65000 70000' -c 'read -P 0x33 1048000 3000'
       -c 'read -P 0x44 3145727 2' -c 'read -P 0x55 9999999 123456' -c 'read -P 0 0 1000' -c 'read -P 0 6000 59000')

json_key() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2]))' "$1" "$2"; }

for cs in 4k 64k default; do
    opt=(); [ $cs = default ] || opt=(-o cluster_size=$cs)
    step "qemu-img made, qemu-io written, cluster_size=$cs"
    must qemu-img create -q -f parallels "${opt[@]}" q.img 20M
    must qemu-io -f parallels "${WRITES[@]}" q.img >/dev/null
    must "$VBD_IMG" convert -O raw q.img v.raw
    must qemu-img convert -f parallels -O raw q.img q.raw
    cmp v.raw q.raw || fail "vbd-img convert -O raw differs from qemu-img's (cluster_size=$cs)"
    out=$("$VBD_IO" -r "${READS[@]}" q.img 2>&1) || fail "vbd-io read: $out"
    "$VBD_IO" -r -c 'read -P 0x12 1000 10' q.img >/dev/null 2>&1 && fail "vbd-io accepted a wrong pattern"
    "$VBD_IMG" info --output=json q.img >v.json || fail "vbd-img info"
    qemu-img info --output=json q.img >q.json
    for k in virtual-size format; do
        [ "$(json_key v.json $k)" = "$(json_key q.json $k)" ] || fail "info $k: vbd $(json_key v.json $k) qemu $(json_key q.json $k)"
    done
    "$VBD_IMG" map --output=json q.img >v.map || fail "vbd-img map"
    qemu-img map --output=json q.img >q.map
    cmp v.map q.map || fail "map differs: $(diff v.map q.map)"

    step "vbd-img convert raw -> parallels, cluster_size=$cs"
    mixed_data m.raw 7
    must "$VBD_IMG" convert -f raw -O parallels "${opt[@]}" m.raw v.img
    must qemu-img create -q -f parallels "${opt[@]}" ref.img 6M
    [ "$(stat -c %s v.img)" -le $((6 * 1048576 + 2 * 1048576)) ] || fail "converted image larger than its data"
    qcheck -f parallels v.img
    must qemu-img compare -q -f raw -F parallels m.raw v.img
    out=$(qemu-img info --output=json v.img) || fail "qemu-img info on vbd's image: $out"
    [ "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = $((6 << 20)) ] ||
        fail "converted virtual size"

    step "vbd-io writes into a qemu-img made image, cluster_size=$cs"
    must qemu-img create -q -f parallels "${opt[@]}" w.img 20M
    must qemu-io -f parallels -c 'write -P 0x66 2M 4k' w.img >/dev/null
    cp w.img w2.img
    # concurrent writes into the same unallocated clusters, disjoint bytes
    AIO=(-c 'aio_write -P 0x71 5242880 100' -c 'aio_write -P 0x72 5244000 3000' -c 'aio_write -P 0x73 5250000 1000000'
         -c 'aio_write -P 0x74 5243180 700' -c 'aio_write -P 0x75 2097252 9000' -c 'aio_flush')
    SYNC=(-c 'write -P 0x71 5242880 100' -c 'write -P 0x72 5244000 3000' -c 'write -P 0x73 5250000 1000000'
          -c 'write -P 0x74 5243180 700' -c 'write -P 0x75 2097252 9000')
    must "$VBD_IO" -f parallels "${WRITES[@]}" "${AIO[@]}" w.img >/dev/null
    must qemu-io -f parallels "${WRITES[@]}" "${SYNC[@]}" w2.img >/dev/null
    qcheck -f parallels w.img
    must qemu-img compare -q -f parallels -F parallels w.img w2.img
done

step "version 1 images (BAT entries in sectors)"
must qemu-img create -q -f parallels -o cluster_size=64k q.img 20M
must qemu-io -f parallels "${WRITES[@]}" q.img >/dev/null
python3 - q.img <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = bytearray(f.read(64))
tracks, n = struct.unpack_from('<II', h, 28)
bat = list(struct.unpack_from('<%dI' % n, f.read(4 * n)))
h[0:16] = b'WithoutFreeSpace'
f.seek(0); f.write(h); f.write(struct.pack('<%dI' % n, *[e * tracks for e in bat]))
PY
must "$VBD_IMG" convert -O raw q.img v.raw
must qemu-img convert -f parallels -O raw q.img q.raw
cmp v.raw q.raw || fail "v1 image reads differently"

step "the in-use flag"
must qemu-img create -q -f parallels u.img 4M
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(44); f.write(b"Ynot")' u.img
qemu-io -f parallels -c 'write 0 512' u.img >/dev/null 2>&1 && fail "qemu-io wrote an image left in use"
must_fail_with "not closed correctly" "$VBD_IO" -f parallels -c 'write 0 512' u.img
must "$VBD_IO" -r -f parallels -c 'read -P 0 0 4k' u.img >/dev/null
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(44); f.write(bytes(4))' u.img
must "$VBD_IO" -f parallels -c 'write -P 9 0 512' u.img >/dev/null
[ "$(od -An -tx1 -j44 -N4 u.img | tr -d ' ')" = 00000000 ] || fail "in-use flag left set after a clean close"
must qemu-io -f parallels -c 'read -P 9 0 512' u.img >/dev/null

step "hostile headers"
must qemu-img create -q -f parallels -o cluster_size=64k h0.img 4M
must qemu-io -f parallels -c 'write -P 1 0 64k' h0.img >/dev/null
patch() { # patch FIELD-OFFSET STRUCT-FMT VALUE -> h.img
    cp h0.img h.img
    python3 -c 'import struct,sys; f=open("h.img","r+b"); f.seek(int(sys.argv[1])); f.write(struct.pack(sys.argv[2], int(sys.argv[3])))' "$@"
}
patch 28 '<I' 0;          must_fail_with "Zero sectors per track" "$VBD_IMG" info h.img
patch 28 '<I' 4294967295; must_fail_with "cluster" "$VBD_IMG" info h.img
patch 32 '<I' 4294967295; must_fail_with "Catalog too large" "$VBD_IMG" info h.img
patch 32 '<I' 400000000;  must_fail_with "bat_entries" "$VBD_IMG" info h.img
patch 48 '<I' 4294967295; must_fail_with "data_off" "$VBD_IMG" info h.img
patch 36 '<Q' 18446744073709551615; must_fail_with "Could not refresh total sector count" "$VBD_IMG" info h.img
patch 64 '<I' 1000000;    must_fail_with "BAT entry 0" "$VBD_IMG" info h.img
patch 64 '<I' 4294967295; must_fail_with "BAT entry 0" "$VBD_IO" -c 'read 0 512' h.img
# a header cut at 40 bytes reads as one zero-padded sector (QEMU counts whole
# sectors): qemu-img opens it, and so does vbd-img, with the same size
cp h0.img h.img; truncate -s 40 h.img
[ "$(qemu-img info -f parallels h.img | grep virtual)" = "$("$VBD_IMG" info -f parallels h.img | grep virtual)" ] ||
    fail "a 40-byte parallels header: qemu-img and vbd-img differ"
step "a BAT entry into the header and BAT: check reports it, -r all drops it"
# qemu-img 7.2's check passes it (and qemu-io writes that block over the
# BAT); vbd refuses a read-write open, and its check said "No errors": the
# image could not be written nor repaired. Now check's "outside image"
# (exit 2), as for an entry past the file, and -r all drops the entry.
for v in 2 1; do
    must qemu-img create -q -f parallels -o cluster_size=4k hb.img 16M # a BAT of 5 clusters
    must qemu-io -f parallels -c 'write -P 1 0 4k' -c 'write -P 2 1M 4k' hb.img >/dev/null
    python3 - hb.img $v <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = bytearray(f.read(64))
tracks, n = struct.unpack_from('<II', h, 28)
bat = list(struct.unpack_from('<%dI' % n, f.read(4 * n)))
if sys.argv[2] == '1':  # version 1: entries in sectors
    h[0:16] = b'WithoutFreeSpace'
    bat = [e * tracks for e in bat]
bat[5] = 2 * (tracks if sys.argv[2] == '1' else 1)  # 8 KiB into the file: inside the BAT
f.seek(0); f.write(h); f.write(struct.pack('<%dI' % n, *bat))
PY
    qemu-img check -f parallels hb.img >qc.out 2>&1; qrc=$?
    echo "v$v, qemu-img 7.2 check: $(head -1 qc.out) (exit $qrc)"
    must_fail_with "outside the data area" "$VBD_IO" -f parallels -c 'write 20k 4k' hb.img
    out=$("$VBD_IMG" check -f parallels hb.img 2>&1); rc=$?
    [ $rc = 2 ] || fail "v$v: check of an entry into the BAT: exit $rc: $out"
    case "$out" in *"ERROR cluster 5 is outside image"*) ;; *) fail "v$v: check: $out" ;; esac
    must "$VBD_IMG" check -q -r all -f parallels hb.img
    must "$VBD_IO" -f parallels -c 'read -P 0 20k 4k' -c 'write -P 9 20k 4k' -c 'read -P 1 0 4k' hb.img >/dev/null
    qcheck -f parallels hb.img
    must qemu-io -f parallels -c 'read -P 9 20k 4k' -c 'read -P 1 0 4k' -c 'read -P 2 1M 4k' hb.img >/dev/null
done

step "BAT entries that share a cluster: check finds them, -r all unshares them, no read-write open before"
# QEMU 7.2's check passes such an image and its qemu-io writes through one
# entry into the other's data; newer QEMU reports "duplicate offset in BAT
# entry N" and gives the entry a copy of its own
bat_set() { # IMAGE INDEX VALUE
    python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(64+4*int(sys.argv[2])); f.write(struct.pack("<I",int(sys.argv[3])))' "$@"
}
bat_get() { python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(64+4*int(sys.argv[2])); print(struct.unpack("<I",f.read(4))[0])' "$@"; }
for v in 2 1; do
    must qemu-img create -q -f parallels -o cluster_size=64k d.img 4M
    must qemu-io -f parallels -c 'write -P 1 0 64k' -c 'write -P 2 64k 64k' -c 'write -P 3 1M 64k' d.img >/dev/null
    if [ $v = 1 ]; then # version 1, entries in sectors; entry 2 half over entry 0's cluster
        python3 - d.img <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = bytearray(f.read(64))
tracks, n = struct.unpack_from('<II', h, 28)
bat = list(struct.unpack_from('<%dI' % n, f.read(4 * n)))
h[0:16] = b'WithoutFreeSpace'
bat = [e * tracks for e in bat]
bat[16] = bat[0] + tracks // 2
f.seek(0); f.write(h); f.write(struct.pack('<%dI' % n, *bat))
PY
        dup=16
    else
        bat_set d.img 1 "$(bat_get d.img 0)"
        dup=1
    fi
    must qemu-img convert -f parallels -O raw d.img before.raw
    out=$("$VBD_IMG" check -f parallels d.img 2>&1); rc=$?
    [ $rc = 2 ] || fail "v$v: check of shared clusters: exit $rc: $out"
    case "$out" in *"ERROR duplicate offset in BAT entry $dup"*) ;; *) fail "v$v: check: $out" ;; esac
    must_fail_with "BAT entries 0 and $dup that point into the same cluster" "$VBD_IO" -f parallels -c 'write -P 9 64k 512' d.img
    must_fail_with "cannot be opened read/write" "$VBD_IMG" resize -f parallels d.img 8M
    must "$VBD_IO" -r -f parallels -c 'read -P 1 0 64k' d.img >/dev/null
    out=$("$VBD_IMG" check -r all -f parallels d.img 2>&1) || fail "v$v: check -r all: $out"
    case "$out" in *"Repairing duplicate offset in BAT entry $dup"*) ;; *) fail "v$v: check -r all: $out" ;; esac
    must "$VBD_IMG" check -f parallels d.img >/dev/null
    qcheck -f parallels d.img
    must qemu-img compare -q -f raw -F parallels before.raw d.img
    # each entry its own cluster now: a write through one leaves the others alone
    must "$VBD_IO" -f parallels -c "write -P 9 $((dup * 64))k 64k" d.img >/dev/null
    must qemu-io -f raw -c "write -P 9 $((dup * 64))k 64k" before.raw >/dev/null
    must qemu-img compare -q -f raw -F parallels before.raw d.img
    must qemu-io -f parallels -c 'read -P 1 0 64k' d.img >/dev/null
done

step "vbd-img check agrees with qemu-img check (report, exit status, repair)"
for case in clean unclean outside leak; do
    must qemu-img create -q -f parallels -o cluster_size=64k c.img 4M
    must qemu-io -f parallels -c 'write -P 1 0 64k' -c 'write -P 2 1M 100k' c.img >/dev/null
    case $case in
    unclean) python3 -c 'f=open("c.img","r+b"); f.seek(44); f.write(b"Ynot")' ;;
    outside) python3 -c 'import struct; f=open("c.img","r+b"); f.seek(64+4*5); f.write(struct.pack("<I",100))' ;;
    leak) truncate -s +100000 c.img ;;
    esac
    for fix in "" "-r all"; do
        on_copies c.img check $fix --output=json @
        [ $qrc = $vrc ] || fail "check $case [$fix]: exit $vrc, qemu-img $qrc: $(cat v.out)"
        python3 - q.out v.out <<'PY' || fail "check $case [$fix] reports differ: $(cat q.out v.out)"
import json, re, sys
def load(p):
    t = open(p).read()
    d = json.loads(t[t.index('{'):t.rindex('}') + 1]); d.pop('filename')
    return d, [l for l in t.splitlines() if l.startswith(('ERROR', 'Repairing'))]
sys.exit(load(sys.argv[1]) != load(sys.argv[2]))
PY
        if [ -n "$fix" ]; then
            qcheck -f parallels c.img.v
            must qemu-img compare -q -f parallels -F parallels c.img.q c.img.v
        fi
    done
done
step "the model-based stress test (tests/stress/vbd-stress) on parallels images, in process and over NBD"
stress_format parallels "4096 1048576" 65536 "-o cluster_size=%cs%"
echo ok
