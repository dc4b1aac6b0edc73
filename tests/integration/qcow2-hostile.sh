#!/bin/bash
# Hostile qcow2 images: each header field out of range, and metadata that
# points where it must not. Every case gets a clear one-line error and a
# non-zero exit, never a crash (the ASan build reports any bad access).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
must qemu-img create -q -f qcow2 good.qcow2 64M
must qemu-io -f qcow2 -c "write -P 0x5a 0 256k" good.qcow2 >/dev/null
poke() { # FILE OFFSET STRUCT-FORMAT VALUE
    python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); f.write(struct.pack(sys.argv[3], int(sys.argv[4], 0)))" "$@"
}
case_() { # WHAT EXPECTED-SUBSTRING OFFSET FORMAT VALUE
    cp good.qcow2 bad.qcow2
    poke bad.qcow2 "$3" "$4" "$5"
    must_fail_with "$2" "$VBD_IMG" info bad.qcow2
    must_fail_with "$2" "$VBD_IO" -r -c "read 0 64k" bad.qcow2
}
step "header fields out of range"
case_ "version 4"              "Unsupported qcow2 version 4"   4  '>I' 4
case_ "cluster_bits 30"        "Unsupported cluster size"      20 '>I' 30
case_ "cluster_bits 8"         "Unsupported cluster size"      20 '>I' 8
case_ "huge l1_size"           "L1 table too large"            36 '>I' 0x7fffffff
case_ "l1 too small"           "L1 table is too small"         36 '>I' 0
case_ "l1 offset unaligned"    "L1 table offset"               40 '>Q' 0x10001
case_ "l1 offset past EOF"     "L1 table offset"               40 '>Q' 0x100000000
case_ "reftable past EOF"      "Reference count table"         48 '>Q' 0x100000000
case_ "reftable huge"          "Reference count table"         56 '>I' 0xffffff
case_ "snapshot count"         "Snapshot table"                60 '>I' 100000
case_ "encryption"             "encrypted images"              32 '>I' 1
case_ "unknown incompat bit"   "Unsupported qcow2 feature(s)"  72 '>Q' 0x20
case_ "refcount order 7"       "Reference count entry width"   96 '>I' 7
case_ "header length"          "header too short"              100 '>I' 50
cp good.qcow2 bad.qcow2; poke bad.qcow2 8 '>Q' 65000; poke bad.qcow2 16 '>I' 1000   # name crosses the header cluster
must_fail_with "Backing file name too long" "$VBD_IMG" info bad.qcow2
cp good.qcow2 bad.qcow2; poke bad.qcow2 8 '>Q' 512; poke bad.qcow2 16 '>I' 5000      # name longer than 1023
must_fail_with "Backing file name too long" "$VBD_IMG" info bad.qcow2
step "a magic that is not qcow2 is refused as qcow2"
cp good.qcow2 bad.qcow2; poke bad.qcow2 0 '>I' 0x12345678
must_fail_with "not in qcow2 format" "$VBD_IO" -f qcow2 -r -c "read 0 4k" bad.qcow2

step "metadata pointing where it must not"
l1=$(python3 -c "import struct; d=open('good.qcow2','rb').read(48); print(struct.unpack('>Q', d[40:48])[0])")
l2=$(python3 -c "import struct,sys; f=open('good.qcow2','rb'); f.seek($l1); print(struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00)")
cp good.qcow2 bad.qcow2; poke bad.qcow2 "$l1" '>Q' 0x8000000000010200      # L1 entry unaligned
must_fail_with "" "$VBD_IO" -r -c "read 0 64k" bad.qcow2
cp good.qcow2 bad.qcow2; poke bad.qcow2 "$l2" '>Q' 0x8000000000000000      # L2 entry -> offset 0 (the header)... as "unallocated"
must "$VBD_IO" -r -c "read -P 0 0 64k" bad.qcow2 >/dev/null
cp good.qcow2 bad.qcow2; poke bad.qcow2 "$l2" '>Q' 0x8000000000000200      # unaligned data cluster
must_fail_with "" "$VBD_IO" -r -c "read 0 64k" bad.qcow2
cp good.qcow2 bad.qcow2; poke bad.qcow2 "$l2" '>Q' 0xc0000000000fffff      # compressed, absurd size
must_fail_with "" "$VBD_IO" -r -c "read 0 64k" bad.qcow2
step "a write into a cluster whose L2 entry points at the header: refused, image marked corrupt"
cp good.qcow2 bad.qcow2
python3 -c "
import struct; f=open('bad.qcow2','r+b'); f.seek($l2); f.write(struct.pack('>Q', 0x8000000000000000 | $l1))"   # data cluster == the L1 table
out=$("$VBD_IO" -c "write -P 1 0 4k" bad.qcow2 2>&1) && fail "a write over the L1 table succeeded"
echo "$out" | grep -q "corrupt" || fail "no corruption message: $out"
must_fail_with "corrupt" "$VBD_IO" -c "write -P 1 0 4k" bad.qcow2
qemu-img info bad.qcow2 | grep -q "corrupt: true" || fail "qemu-img does not see the corrupt bit"
must "$VBD_IO" -r -c "read 64k 64k" bad.qcow2 >/dev/null   # still readable read-only
for target in l2 refblock snaptable snapl1; do
    step "a write into a cluster whose L2 entry points at the $target: refused, image marked corrupt"
    cp good.qcow2 bad.qcow2
    case $target in snap*) must qemu-img snapshot -c s1 bad.qcow2; must qemu-io -c "write -P 2 0 256k" bad.qcow2 >/dev/null ;; esac
    l1b=$(python3 -c "import struct; d=open('bad.qcow2','rb').read(72); print(struct.unpack('>Q', d[40:48])[0])")
    l2b=$(python3 -c "import struct,sys; f=open('bad.qcow2','rb'); f.seek($l1b); print(struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00)")
    case $target in
    l2) at=$l2b ;;
    refblock) at=$(python3 -c "import struct; f=open('bad.qcow2','rb'); d=f.read(72); f.seek(struct.unpack('>Q', d[48:56])[0]); print(struct.unpack('>Q', f.read(8))[0])") ;;
    snaptable) at=$(python3 -c "import struct; d=open('bad.qcow2','rb').read(72); print(struct.unpack('>Q', d[64:72])[0])") ;;
    snapl1) at=$(python3 -c "import struct; f=open('bad.qcow2','rb'); d=f.read(72); f.seek(struct.unpack('>Q', d[64:72])[0]); print(struct.unpack('>Q', f.read(8))[0])") ;;
    esac
    python3 -c "
import struct; f=open('bad.qcow2','r+b'); f.seek($l2b + 8); f.write(struct.pack('>Q', 0x8000000000000000 | $at))"   # cluster 1 -> metadata
    cp bad.qcow2 before.qcow2
    out=$("$VBD_IO" -c "write -P 1 64k 4k" bad.qcow2 2>&1) && fail "a write over the $target succeeded"
    echo "$out" | grep -q "corrupt" || fail "no corruption message for the $target: $out"
    qemu-img info bad.qcow2 | grep -q "corrupt: true" || fail "qemu-img does not see the corrupt bit ($target)"
    cmp -s -i "$at:$at" -n 65536 bad.qcow2 before.qcow2 || fail "the $target was overwritten"
done
step "a write through an L2 entry whose offset is not a cluster's start: refused, the image marked corrupt, the next cluster intact"
# (iotest 060's scenario, qemu-io refuses it alike) guest 0's entry points
# 0xfe00 into its cluster: a 64 KiB write there would cover the first
# 0xfe00 bytes of the next host cluster, guest 64k's data (vbd-io wrote it)
cp good.qcow2 bad.qcow2
d0=$(python3 -c "import struct; f=open('bad.qcow2','rb'); f.seek($l2); print(struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00)")
python3 -c "
import struct; f=open('bad.qcow2','r+b'); f.seek($l2); f.write(struct.pack('>Q', 0x8000000000000000 | ($d0 + 0xfe00)))"
out=$("$VBD_IO" -f qcow2 -c "write -P 1 0 64k" bad.qcow2 2>&1) && fail "a write through an unaligned entry succeeded: $out"
echo "$out" | grep -q "corrupt" || fail "no corruption message: $out"
qemu-img info bad.qcow2 | grep -q "corrupt: true" || fail "qemu-img does not see the corrupt bit"
out=$(qemu-io -r -f qcow2 -c "read -P 0x5a 64k 64k" bad.qcow2 2>&1)
echo "$out" | grep -q "verification failed" && fail "guest 64k's data was overwritten: $out"
step "clusters past the end of the file that are still counted are not handed out again"
# the file lost its last two data clusters (guest 128k-256k): their L2
# entries and refcounts remain. A new cluster must not be one of them, or
# guest 128k and the new data share a host cluster (fuzz-qcow2 found it)
cp good.qcow2 cut.qcow2
truncate -s $(($(stat -c %s cut.qcow2) - 131072)) cut.qcow2
cp cut.qcow2 cut-qemu.qcow2
for img in cut.qcow2 cut-qemu.qcow2; do
    io=$VBD_IO; [ $img = cut.qcow2 ] || io=qemu-io
    must "$io" -f qcow2 -c "write -P 0x77 1M 64k" $img >/dev/null
    out=$("$io" -f qcow2 -c "read -P 0x77 1M 64k" -c "read -P 0 128k 128k" -c "read -P 0x5a 0 128k" $img 2>&1)
    echo "$out" | grep -q "verification failed" && fail "$io: a write to 1M changed another guest cluster: $out"
done
echo OK
