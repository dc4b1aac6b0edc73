#!/bin/bash
# VMDK against qemu-img/qemu-io, every subformat both ways: images
# qemu-img makes (qemu-io writes patterns; streamOptimized converted by
# qemu-img) read the same through vbd; images vbd-img converts compare
# identical and check clean in qemu-img; vbd-io writes into qemu-made
# images land where qemu-io's land in a raw copy (streamOptimized: answer
# as qemu-io's in a copy, a grain written once and whole); info and map agree;
# create options as qemu-img's; a backing file through parentFileNameHint;
# the stress test on a monolithicSparse image; hostile images and
# descriptors give one-line errors.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T" || exit 1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}

G2=2147483648
# patterns at unaligned offsets crossing 64 KiB grains, a 32 MiB grain table, and (base $1) a 2 GiB extent boundary
pat() { # pat BASE OP: the qemu-io commands into A
    local b=$1 op=$2
    A=(-c "$op -P 0x11 $((b + 1000)) 300000" -c "$op -P 0x22 $((b + 4193000)) 5000"
       -c "$op -P 0x33 $((b + 33553000)) 70000" -c "$op -P 0x44 $((b + 9000001)) 777")
}
info_keys() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["virtual-size"], d["format"], d.get("cluster-size", 0), json.dumps(d["format-specific"], sort_keys=True))' "$1"
}
map_of() {
    python3 -c 'import json,sys; print([(e["start"],e["length"],e["data"],e["zero"]) for e in json.load(sys.stdin)])'
}
run_io() { # run_io TOOL FMT IMG 'cmd'...: fail on "fail" in the output
    local tool=$1 f=$2 img=$3 out; shift 3
    out=$("$tool" -f "$f" "$@" "$img" 2>&1) || fail "$tool $*: $out"
    case "$out" in *fail*|*error*|*Error*) fail "$tool $*: $out" ;; esac
}

for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    size=40000256; base=0
    case $sub in twoGb*) size=$((G2 + 40000256)); base=$((G2 - 20000000)) ;; esac
    pat $base write; w=("${A[@]}"); pat $base read; r=("${A[@]}")
    step "$sub: qemu-img made, vbd reads"
    if [ $sub = streamOptimized ]; then
        must qemu-img create -q -f raw src.raw $size
        must qemu-io -f raw "${w[@]}" src.raw >/dev/null
        must qemu-img convert -f raw -O vmdk -o subformat=$sub src.raw q.vmdk
    else
        must qemu-img create -q -f vmdk -o subformat=$sub q.vmdk $size
        must qemu-io -f vmdk "${w[@]}" q.vmdk >/dev/null
    fi
    must qemu-img convert -f vmdk -O raw q.vmdk q.raw
    must "$VBD_IMG" convert -f vmdk -O raw q.vmdk v.raw
    # the twoGb* images are 2 GiB of holes around 40 MB: cmp would read them all
    [ "$(stat -c %s q.raw)" = "$(stat -c %s v.raw)" ] && qemu-img compare -q -f raw -F raw q.raw v.raw ||
        fail "$sub: vbd-img convert -O raw differs from qemu-img's"
    run_io "$VBD_IO" vmdk q.vmdk "${r[@]}" -c "read -P 0 $base 1000"
    "$VBD_IO" -f vmdk -c "read -P 0x12 $((base + 1000)) 512" q.vmdk >/dev/null 2>&1 && fail "$sub: vbd-io accepted a wrong pattern"
    must qemu-img info --output=json q.vmdk >qi.json
    must "$VBD_IMG" info --output=json q.vmdk >vi.json
    [ "$(info_keys qi.json)" = "$(info_keys vi.json)" ] || fail "$sub: info differs: $(info_keys qi.json) vs $(info_keys vi.json)"
    qm=$(qemu-img map -f vmdk --output=json q.vmdk | map_of)
    vm=$("$VBD_IMG" map -f vmdk --output=json q.vmdk | map_of)
    [ "$qm" = "$vm" ] || fail "$sub: map differs: $qm vs $vm"
    out=$("$VBD_IMG" check -f vmdk q.vmdk 2>&1) || fail "$sub: vbd-img check: $out"

    step "$sub: vbd-img convert to vmdk, qemu reads"
    must "$VBD_IMG" convert -f raw -O vmdk -o subformat=$sub q.raw v.vmdk
    out=$(qemu-img compare -f raw -F vmdk q.raw v.vmdk) || fail "$sub: qemu-img compare: $out"
    qcheck -f vmdk v.vmdk
    must qemu-img info --output=json v.vmdk >qi2.json
    python3 - qi.json qi2.json <<'EOF' || fail "$sub: the vbd-made image has another layout"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
strip = lambda d: (d["virtual-size"], d.get("cluster-size"), d["format-specific"]["data"]["create-type"],
                   [(e["format"], e["virtual-size"], e.get("cluster-size"), e.get("compressed")) for e in d["format-specific"]["data"]["extents"]])
sys.exit(strip(a) != strip(b))
EOF
    run_io qemu-io vmdk v.vmdk "${r[@]}"
    # measure (qemu-img has none for vmdk): what the conversion took (an upper bound where
    # grains are compressed or a descriptor file's length is estimated), exactly for monolithicSparse
    req=$("$VBD_IMG" measure -O vmdk -o subformat=$sub --output=json q.raw | python3 -c 'import json,sys; print(json.load(sys.stdin)["required"])')
    got=0
    for f in v*.vmdk; do got=$((got + $(stat -c %s "$f"))); done # not cat | wc -c: 2 GiB of holes
    [ "$req" -ge "$got" ] || fail "$sub: measure says $req, the image takes $got"
    [ $sub != monolithicSparse ] || [ "$req" = "$got" ] || fail "$sub: measure says $req, the image takes $got"
    if [ $sub != monolithicFlat ] && [ $sub != twoGbMaxExtentFlat ]; then
        must "$VBD_IMG" convert -c -f raw -O vmdk -o subformat=$sub q.raw c.vmdk
        out=$(qemu-img compare -f raw -F vmdk q.raw c.vmdk) || fail "$sub: convert -c: qemu-img compare: $out"
    else # as qemu-img: flat extents have no clusters to compress
        must_fail_with "cluster size" "$VBD_IMG" convert -c -f raw -O vmdk -o subformat=$sub q.raw c.vmdk
    fi

    if [ $sub = streamOptimized ]; then
        # as qemu-io: a grain is written once and whole (a part: EINVAL, a grain with data: EIO)
        step "$sub: vbd-io writes into a qemu-img-made image as qemu-io does"
        cp q.vmdk qq.vmdk
        w2=(-c "write -P 0x55 $((base + 65000)) 5000" -c "write -P 0x66 $((base + 12582912)) 65536"
            -c "write -P 0x67 $((base + 12582912)) 65536" -c "write -z $((base + 300000)) 70000"
            -c "write -z $((base + 393216)) 131072" -c "write -P 0x77 $((base + 393216)) 4096" -c "write -P 0x78 0 64k")
        qemu-io -f vmdk "${w2[@]}" qq.vmdk >q.out 2>q.err; echo "exit $?" >>q.out
        "$VBD_IO" -f vmdk "${w2[@]}" q.vmdk >v.out 2>v.err; echo "exit $?" >>v.out
        sed -i -e 's/^qemu-io: //' -e 's/^vbd-io: //' -e 's/ops; .*/ops/' q.out q.err v.out v.err
        diff -u q.out v.out || fail "$sub: vbd-io's writes answer otherwise than qemu-io's (stdout, exit)"
        diff -u q.err v.err || fail "$sub: vbd-io's writes answer otherwise than qemu-io's (stderr)"
        out=$(qemu-img compare -f vmdk -F vmdk qq.vmdk q.vmdk) || fail "$sub: vbd-io's writes differ from qemu-io's: $out"
        qcheck -f vmdk q.vmdk
        rm -f ./*.vmdk ./*.raw
        continue
    fi
    step "$sub: vbd-io writes into a qemu-img-made image"
    w2=(-c "write -P 0x55 $((base + 65000)) 5000" -c "write -P 0x66 $((base + 6000000)) 1" -c "write -P 0x77 $((base + 12582912)) 65536"
        -c "write -z $((base + 300000)) 70000" -c "write -P 0x88 $((base + 4194304)) 200000")
    must "$VBD_IO" -f vmdk "${w2[@]}" -c "aio_write -P 0x81 $((base + 8388608)) 4096" -c "aio_write -P 0x82 $((base + 8392704)) 4096" \
        -c "aio_write -P 0x83 $((base + 8400000)) 1000" -c 'aio_flush' q.vmdk >/dev/null
    must qemu-io -f raw "${w2[@]}" -c "write -P 0x81 $((base + 8388608)) 4096" -c "write -P 0x82 $((base + 8392704)) 4096" \
        -c "write -P 0x83 $((base + 8400000)) 1000" q.raw >/dev/null
    out=$(qemu-img compare -f vmdk -F raw q.vmdk q.raw) || fail "$sub: vbd-io writes differ from qemu-io's: $out"
    qcheck -f vmdk q.vmdk
    rm -f ./*.vmdk ./*.raw
done

step "streamOptimized as VMware streams it (grain directory at the end, a footer): vbd reads what qemu reads"
head -c 3000000 /dev/urandom >rnd.bin
python3 - rnd.bin vm.vmdk <<'EOF'
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
cap = 16384  # sectors (8 MiB): data in the first 3 MB and a copy at 6 MiB
disk = bytearray(cap * 512); disk[0:len(data)] = data; disk[6 << 20:(6 << 20) + 500000] = data[:500000]
def hdr(gd):
    h = bytearray(512)
    h[0:4] = b'KDMV'
    struct.pack_into('<IIQQQQIQQQ', h, 4, 3, 0x30001, cap, 128, 1, 2, 512, 0, gd, 128)
    h[73:77] = b'\n \r\n'; struct.pack_into('<H', h, 77, 1)
    return h
out = bytearray(hdr(0xffffffffffffffff))
desc = b'# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType="streamOptimized"\nRW 16384 SPARSE "vm.vmdk"\n'
out += desc.ljust(1024, b'\0')
out += bytes(128 * 512 - len(out))
def marker(val, typ):
    m = bytearray(512); struct.pack_into('<QII', m, 0, val, 0, typ); return m
gts = {}
for g in range(cap // 128):
    chunk = bytes(disk[g * 65536:(g + 1) * 65536])
    if chunk == bytes(65536):
        continue
    c = zlib.compress(chunk)
    gts.setdefault(g // 512, {})[g % 512] = len(out) // 512
    rec = struct.pack('<QI', g * 128, len(c)) + c
    out += rec + bytes(-len(rec) % 512)
gd = [0] * ((cap // 128 + 511) // 512)
for t, ents in gts.items():
    out += marker(4, 1)
    gd[t] = len(out) // 512
    tab = [0] * 512
    for i, v in ents.items():
        tab[i] = v
    out += struct.pack('<512I', *tab)
out += marker(1, 2)
gd_sector = len(out) // 512
out += struct.pack('<%dI' % len(gd), *gd).ljust(512, b'\0')
out += marker(1, 3) + hdr(gd_sector) + bytes(512)
open(sys.argv[2], 'wb').write(out)
EOF
must qemu-img convert -f vmdk -O raw vm.vmdk q.raw
must "$VBD_IMG" convert -f vmdk -O raw vm.vmdk v.raw
cmp q.raw v.raw || fail "stream: vbd reads otherwise than qemu"
cmp <(head -c 3000000 v.raw) rnd.bin || fail "stream: the data differs"
run_io "$VBD_IO" vmdk vm.vmdk -c 'read -P 0 3000000 3291456' -c 'read -P 0 6791456 1597152'
must qemu-img info --output=json vm.vmdk >qi.json
must "$VBD_IMG" info --output=json vm.vmdk >vi.json
[ "$(info_keys qi.json)" = "$(info_keys vi.json)" ] || fail "stream: info differs: $(info_keys qi.json) vs $(info_keys vi.json)"
must_fail_with "Read-only" "$VBD_IO" -f vmdk -c "write 0 512" vm.vmdk
must "$VBD_IMG" convert -O qcow2 vm.vmdk c.qcow2
out=$(qemu-img compare -f vmdk -F qcow2 vm.vmdk c.qcow2) || fail "stream: convert to qcow2: $out"
rm -f ./*.vmdk ./*.raw ./*.qcow2 rnd.bin

step "create options as qemu-img's"
desc_of() { # the descriptor without its random CID
    local f=$1
    if [ "$(head -c 4 "$f")" = KDMV ]; then dd if="$f" bs=512 skip=1 count=20 2>/dev/null | tr -d '\0'; else cat "$f"; fi | grep -v '^CID='
}
for o in "adapter_type=lsilogic" "adapter_type=buslogic,hwversion=7" "adapter_type=legacyESX,toolsversion=10240" \
         "compat6=on" "zeroed_grain=on" "subformat=streamOptimized,zeroed_grain=on" "subformat=monolithicFlat,adapter_type=lsilogic"; do
    must qemu-img create -q -f vmdk -o "$o" q.vmdk 300M
    must "$VBD_IMG" create -q -f vmdk -o "$o" v.vmdk 300M
    [ "$(desc_of q.vmdk | sed 's/q\(-flat\)\?\.vmdk/X/')" = "$(desc_of v.vmdk | sed 's/v\(-flat\)\?\.vmdk/X/')" ] ||
        fail "-o $o: descriptors differ: $(desc_of q.vmdk) vs $(desc_of v.vmdk)"
    if [ "$(head -c 4 q.vmdk)" = KDMV ]; then
        cmp <(head -c 512 q.vmdk) <(head -c 512 v.vmdk) || fail "-o $o: sparse headers differ"
        [ "$(stat -c %s q.vmdk)" = "$(stat -c %s v.vmdk)" ] || fail "-o $o: file sizes differ"
    fi
    qcheck -f vmdk v.vmdk
    rm -f ./*.vmdk
done
must_fail_with "compat6 cannot be enabled with hwversion set" "$VBD_IMG" create -q -f vmdk -o compat6=on,hwversion=7 v.vmdk 1M
must_fail_with "Flat image can't enable zeroed grain" "$VBD_IMG" create -q -f vmdk -o subformat=monolithicFlat,zeroed_grain=on v.vmdk 1M
# qemu-img's words (its qapi_enum_parse), as img-parity-layout.sh checks beside it
must_fail_with "invalid parameter value: bogus" "$VBD_IMG" create -q -f vmdk -o subformat=bogus v.vmdk 1M

step "zeroed grains: write -z makes zeroed grain entries that qemu reads as zeroes"
must qemu-img create -q -f vmdk -o zeroed_grain=on z.vmdk 4M
must qemu-io -f vmdk -c 'write -P 0x5a 0 4M' z.vmdk >/dev/null
must "$VBD_IO" -f vmdk -c 'write -z 65536 131072' -c 'write -z 1000 1000' z.vmdk >/dev/null
run_io qemu-io vmdk z.vmdk -c 'read -P 0x5a 0 1000' -c 'read -P 0 1000 1000' -c 'read -P 0x5a 2000 63536' -c 'read -P 0 65536 131072' -c 'read -P 0x5a 196608 65536'
zm=$("$VBD_IMG" map --output=json z.vmdk | map_of)
qm=$(qemu-img map --output=json z.vmdk | map_of)
[ "$zm" = "$qm" ] || fail "zeroed grains: map differs: $qm vs $zm"
case "$zm" in *"(65536, 131072, False, True)"*) ;; *) fail "zeroed grains: no zeroed grain in the map: $zm" ;; esac
qcheck -f vmdk z.vmdk

step "backing file through parentFileNameHint"
must qemu-img create -q -f vmdk base.vmdk 8M
must qemu-io -f vmdk -c 'write -P 0xb1 0 8M' base.vmdk >/dev/null
must "$VBD_IMG" create -q -f vmdk -o backing_file=base.vmdk,backing_fmt=vmdk top.vmdk 8M
must qemu-img info --output=json top.vmdk >qi.json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d.get("backing-filename") != "base.vmdk")' qi.json || fail "qemu-img sees no backing file"
must "$VBD_IO" -f vmdk -c 'write -P 0xc2 100000 5000' top.vmdk >/dev/null
run_io qemu-io vmdk top.vmdk -c 'read -P 0xb1 0 100000' -c 'read -P 0xc2 100000 5000' -c 'read -P 0xb1 105000 100000'
must qemu-io -f vmdk -c 'write -P 0xd3 3000000 70000' top.vmdk >/dev/null
run_io "$VBD_IO" vmdk top.vmdk -c 'read -P 0xb1 0 100000' -c 'read -P 0xc2 100000 5000' -c 'read -P 0xd3 3000000 70000' -c 'read -P 0xb1 3070000 1000'
must qemu-img convert -O raw top.vmdk q.raw
must "$VBD_IMG" convert -O raw top.vmdk v.raw
cmp q.raw v.raw || fail "backing: the chain reads differently"
must "$VBD_IO" -f vmdk -c 'write -P 0xe4 0 512' base.vmdk >/dev/null
"$VBD_IO" -f vmdk -c 'read 0 512' top.vmdk >/dev/null 2>&1 && fail "backing: a parent with another CID was read through"
rm -f ./*.vmdk ./*.raw

step "vmfs and vmfsSparse descriptors (read)"
must qemu-img create -q -f raw data.bin 8M
must qemu-io -f raw -c 'write -P 0x61 0 1M' -c 'write -P 0x62 7M 1M' data.bin >/dev/null
printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfs"\n\nRW 16384 VMFS "data.bin"\n' >vmfs.vmdk
run_io "$VBD_IO" vmdk vmfs.vmdk -c 'read -P 0x61 0 1M' -c 'read -P 0 1M 6M' -c 'read -P 0x62 7M 1M'
must qemu-img create -q -f vmdk sp.vmdk 8M
must qemu-io -f vmdk -c 'write -P 0x63 1000 100000' sp.vmdk >/dev/null
printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfsSparse"\n\nRW 16384 VMFSSPARSE "sp.vmdk"\n' >vs.vmdk
run_io "$VBD_IO" vmdk vs.vmdk -c 'read -P 0x63 1000 100000' -c 'read -P 0 101000 1000'
# (qemu-img 7.2 lists this one-extent descriptor as two extents, 16 MiB: not compared)
must "$VBD_IMG" info --output=json vs.vmdk >vi.json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); x=d["format-specific"]["data"]; sys.exit(not (d["virtual-size"] == 8388608 and x["create-type"] == "vmfsSparse" and [(e["format"], e["virtual-size"]) for e in x["extents"]] == [("VMFSSPARSE", 8388608)]))' vi.json ||
    fail "vmfsSparse: info: $(cat vi.json)"

step "the first write's new CID in a descriptor file: the old text's tail stays out of it"
# The rewritten descriptor is shorter than the old one here (the old CID
# line has trailing blanks, which qemu-img reads past): the file was cut
# with a truncate that may leave it longer, so the old text's last 27
# bytes, a whole extent line, stayed behind the new text and the disk grew
# to two extents over one file. With text behind a NUL (which is not the
# descriptor), the longer new text ran over the NUL and took that text in
# (found by fuzz-vmdk). Both: vbd and qemu read one 64 KiB extent after
# vbd-io's write, with its data.
mkdir -p cid
must truncate -s 64K cid/a-flat.img
line='RW 128 FLAT "a-flat.img" 0'
printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe%27s\nparentCID=ffffffff\ncreateType="monolithicFlat"\n%s\n' '' "$line" >cid/blank.vmdk
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n%s\n\0\0\0\0\0\0\0%s\n' "$line" "$line" >cid/nul.vmdk
for d in blank nul; do
    run_io "$VBD_IO" vmdk cid/$d.vmdk -c "write -P 0x5a 512 4096"
    grep -aq '^CID=[0-9a-f]\{8\}$' cid/$d.vmdk || fail "$d: no new CID line: $(cat -A cid/$d.vmdk)"
    for tool in "$VBD_IMG" qemu-img; do
        "$tool" info -f vmdk --output=json cid/$d.vmdk >cid/info.json || fail "$d: $tool info"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["virtual-size"] != 65536)' cid/info.json ||
            fail "$d: $tool reads the rewritten descriptor as $(grep -o '"virtual-size": [0-9]*' cid/info.json | head -1), not 65536: $(cat -A cid/$d.vmdk)"
    done
    run_io qemu-io vmdk cid/$d.vmdk -c "read -P 0x5a 512 4096" -c "read -P 0 4608 1024"
done
[ "$(grep -ac '^RW' cid/blank.vmdk)" = 1 ] || fail "blank: not one extent line: $(cat -A cid/blank.vmdk)"

step "hostile descriptors and images: one-line errors"
mkdir -p sub out
must qemu-img create -q -f vmdk -o subformat=monolithicFlat out/x.vmdk 1M
d() { printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n%s\n' "$1" >sub/d.vmdk; }
d 'RW 2048 FLAT "../out/x-flat.vmdk" 0'
must_fail_with "outside the descriptor's directory" "$VBD_IMG" info sub/d.vmdk
d "RW 2048 FLAT \"$T/out/x-flat.vmdk\" 0"
must_fail_with "outside the descriptor's directory" "$VBD_IMG" info sub/d.vmdk
ln -sf ../out/x-flat.vmdk sub/link.vmdk
d 'RW 2048 FLAT "link.vmdk" 0'
must_fail_with "outside the descriptor's directory" "$VBD_IO" -c 'read 0 512' sub/d.vmdk
d 'RW 2048 FLAT "d.vmdk" 0'
must_fail_with "the descriptor itself" "$VBD_IMG" info sub/d.vmdk
d 'RW 2048 FLAT "missing.vmdk" 0'
must_fail_with "missing.vmdk" "$VBD_IMG" info sub/d.vmdk
d 'RW 2048 FLAT "x.bin"'
must_fail_with "Invalid extent line" "$VBD_IMG" info sub/d.vmdk
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="bogus"\n' >sub/d.vmdk
must_fail_with "Unsupported image type 'bogus'" "$VBD_IMG" info sub/d.vmdk
# a sparse extent that is itself a descriptor-only header: no nesting
python3 - sub/nest.vmdk <<'EOF'
import struct, sys
h = bytearray(1024)
h[0:4] = b'KDMV'; struct.pack_into('<IIQQQQ', h, 4, 1, 3, 0, 128, 1, 1)
h[512:] = b'# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2 SPARSE "nest.vmdk"\n'.ljust(512, b'\0')
open(sys.argv[1], 'wb').write(h)
EOF
must_fail_with "descriptor" "$VBD_IMG" info sub/nest.vmdk

must qemu-img create -q -f vmdk h.vmdk 64M
must qemu-io -f vmdk -c 'write -P 0x11 0 1M' h.vmdk >/dev/null
patch() { # patch IMG OFFSET HEXBYTES
    python3 -c 'import sys; p,o,d=sys.argv[1],int(sys.argv[2]),bytes.fromhex(sys.argv[3]); b=bytearray(open(p,"rb").read()); b[o:o+len(d)]=d; open(p,"wb").write(b)' "$@"
}
bad() { # bad WANT OFFSET HEX: both info and a read fail with WANT
    must cp h.vmdk x.vmdk
    patch x.vmdk "$2" "$3"
    must_fail_with "$1" "$VBD_IO" -f vmdk -c 'read 0 1M' x.vmdk
}
bad "Unsupported VMDK version" 4 05000000
bad "L1 entry size is invalid" 20 0000000000000000
bad "L2 table size too big" 44 00100000
bad "grain directory" 56 ffffff0000000000
bad "L1 size too big" 12 ffffffffffffff00
gd=$(python3 -c 'import struct; b=open("h.vmdk","rb").read(512); print(struct.unpack_from("<Q", b, 56)[0] * 512)')
bad "grain directory entry 0 points past the end" "$gd" ffffff00
gt=$(python3 -c 'import struct; b=open("h.vmdk","rb").read(); gd=struct.unpack_from("<Q", b, 56)[0]*512; print(struct.unpack_from("<I", b, gd)[0]*512)')
bad "Input/output error" "$gt" ffffff00
qc=$(qemu-img check -f vmdk x.vmdk 2>&1) && fail "qemu-img check passed a grain past EOF"
vc=$("$VBD_IMG" check -f vmdk x.vmdk 2>&1) && fail "vbd-img check passed a grain past EOF"
[ "$(echo "$qc" | grep ERROR)" = "$(echo "$vc" | grep ERROR)" ] || fail "check: qemu-img says $qc, vbd-img $vc"
# a grain table entry pointing into the image's own metadata (sector 1,
# the descriptor): a write there fails instead of overwriting it (found by
# fuzz-vmdk: the write succeeded and destroyed the descriptor and tables)
must cp h.vmdk m.vmdk
patch m.vmdk "$gt" 01000000
must_fail_with "Input/output error" "$VBD_IO" -f vmdk -c 'write -P 0x77 0 4k' m.vmdk
python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(); meta=b[:struct.unpack_from("<Q", b, 64)[0]*512]; sys.exit(1 if b"\x77"*512 in meta else 0)' m.vmdk \
    || fail "a guest write landed in the vmdk's metadata"
must qemu-img info -f vmdk m.vmdk >/dev/null
# the same with a grain table written after the image was made (past
# overHead): the directory's second entry cleared, a write at 32M makes vbd
# append a new table; then a first-table entry pointing at that table
must cp h.vmdk t.vmdk
read -r gd1 rgd1 < <(python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(512); print(struct.unpack_from("<Q", b, 56)[0]*512 + 4, struct.unpack_from("<Q", b, 48)[0]*512 + 4)' t.vmdk)
patch t.vmdk "$gd1" 00000000
patch t.vmdk "$rgd1" 00000000
must "$VBD_IO" -f vmdk -c 'write -P 0x55 32M 64k' t.vmdk >/dev/null
newgt=$(python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(); print(struct.unpack_from("<I", b, struct.unpack_from("<Q", b, 56)[0]*512 + 4)[0])' t.vmdk)
[ "$((newgt * 512))" -ge "$(python3 -c 'import struct,sys; print(struct.unpack_from("<Q", open(sys.argv[1],"rb").read(512), 64)[0]*512)' t.vmdk)" ] \
    || fail "the new grain table ($newgt) is not past overHead"
patch t.vmdk "$gt" "$(python3 -c "import struct; print(struct.pack('<I', $newgt).hex())")"
must_fail_with "Input/output error" "$VBD_IO" -f vmdk -c 'write -P 0x77 0 4k' t.vmdk
python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); o=int(sys.argv[2])*512; sys.exit(1 if b"\x77"*512 in b[o:o+4096] else 0)' t.vmdk "$newgt" \
    || fail "a guest write landed in a grain table appended after overHead"
must qemu-io -f vmdk -c 'read -P 0x55 32M 64k' t.vmdk >/dev/null
must cp h.vmdk x.vmdk
truncate -s 30000 x.vmdk
must_fail_with "File truncated" "$VBD_IMG" info -f vmdk x.vmdk
printf 'KDMV' >s.vmdk
must_fail_with "L1 entry size is invalid" "$VBD_IMG" info -f vmdk s.vmdk # (one zero-padded sector: qemu-img's words)
# a compressed grain that does not inflate
must qemu-img create -q -f raw r.raw 1M
must qemu-io -f raw -c 'write -P 0x42 0 1M' r.raw >/dev/null
must qemu-img convert -O vmdk -o subformat=streamOptimized r.raw so.vmdk
gr=$(python3 -c 'import struct; b=open("so.vmdk","rb").read(); print(struct.unpack_from("<Q", b, 64)[0]*512 + 12)')
patch so.vmdk "$gr" ffffffffffffffff
must_fail_with "Input/output error" "$VBD_IO" -f vmdk -c 'read 0 64k' so.vmdk
out=$("$VBD_IMG" check -f vmdk h.vmdk 2>&1) || fail "check of a good image: $out"

step "the model-based stress test (tests/stress/vbd-stress) on a monolithicSparse vmdk"
need_stress
head -c 3M /dev/urandom >init.raw && truncate -s 8M init.raw
n=0
for zg in off on; do
    for io in "" "-t none"; do
        n=$((n + 1))
        must qemu-img create -q -f vmdk -o zeroed_grain=$zg s.vmdk 8M
        must qemu-img convert -q -n -f raw -O vmdk init.raw s.vmdk
        out=$(timeout -k 10 600 "$STRESS" --seed $((100 + n)) --ops 1500 --cluster-size 65536 --init init.raw \
              --shadow-out shadow.raw $io -f vmdk s.vmdk 2>&1) || fail "vbd-stress zeroed_grain=$zg [$io] seed=$((100 + n)): $(echo "$out" | tail -5)"
        qcheck -f vmdk s.vmdk
        must qemu-img compare -q -f vmdk -F raw s.vmdk shadow.raw
    done
done
echo ok
