#!/bin/bash
# vbd-img check --output=json on every format qemu-img can check besides
# qcow2 (qcow2-check.sh): vmdk (every subformat), vhdx, vdi, qed, parallels,
# clean images qemu-img made and written by qemu-io, and images with a table
# entry past the end of the file or with fragmented clusters. The exit code
# and the whole JSON (keys qemu-img leaves out when zero included) must be
# qemu-img check's.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
agree() { # FMT FILE EXPECTED-EXIT
    "$VBD_IMG" check -f "$1" --output=json "$2" >v.json 2>v.err; vr=$?
    qemu-img check -f "$1" --output=json "$2" >q.json 2>q.err; qr=$?
    [ $vr = $qr ] || fail "exit codes differ on $2: vbd $vr ($(cat v.err)), qemu $qr ($(cat q.err))"
    [ $vr = "$3" ] || fail "check of $2 exited $vr, expected $3"
    diff -u q.json v.json || fail "check JSON differs on $2"
}
pokeval() { # FILE OFFSET STRUCT-FORMAT VALUE
    python3 -c 'import struct,sys; p,o,f,v=sys.argv[1],int(sys.argv[2]),sys.argv[3],int(sys.argv[4],0); b=bytearray(open(p,"rb").read()); struct.pack_into(f,b,o,v); open(p,"wb").write(b)' "$@"
}
peek() { # FILE OFFSET STRUCT-FORMAT
    python3 -c 'import struct,sys; print(struct.unpack_from(sys.argv[3], open(sys.argv[1],"rb").read(), int(sys.argv[2], 0))[0])' "$@"
}
io() { must qemu-io -f "$1" "${@:3}" "$2" >/dev/null; }
pats=(-c 'write -P 0x11 0 3M' -c 'write -P 0x22 40M 100k' -c 'write -P 0x33 5555555 77777')

step "clean images of every subformat"
for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    rm -f s*.vmdk
    must qemu-img create -q -f vmdk -o subformat=$sub s.vmdk 64M
    [ $sub = streamOptimized ] || io vmdk s.vmdk "${pats[@]}"
    agree vmdk s.vmdk 0
done
for o in subformat=dynamic subformat=fixed block_size=1M; do
    must qemu-img create -q -f vhdx -o $o s.vhdx 64M
    io vhdx s.vhdx "${pats[@]}"
    agree vhdx s.vhdx 0
done
for o in static=off static=on; do
    must qemu-img create -q -f vdi -o $o s.vdi 64M
    io vdi s.vdi "${pats[@]}"
    agree vdi s.vdi 0
done
must qemu-img create -q -f qed s.qed 64M
io qed s.qed "${pats[@]}"
agree qed s.qed 0
must qemu-img create -q -f parallels s.parallels 64M
io parallels s.parallels "${pats[@]}"
agree parallels s.parallels 0

step "-r leaks/-r all: vdi and vmdk repair nothing, qemu-img says so (exit 63); the others as qemu-img"
repair() { # FMT FILE: the same exit code and stderr as qemu-img's, each on its own copy
    for r in leaks all; do
        cp "$2" v.img && cp "$2" q.img
        "$VBD_IMG" check -f "$1" -r $r v.img >v.out 2>v.err; vr=$?
        qemu-img check -f "$1" -r $r q.img >q.out 2>q.err; qr=$?
        sed -i 's/^qemu-img: /TOOL: /' q.err
        sed -i 's/^vbd-img: /TOOL: /' v.err
        [ $vr = $qr ] || fail "check -r $r of $2: vbd exit $vr ($(cat v.err)), qemu $qr ($(cat q.err))"
        diff -u q.err v.err || fail "check -r $r of $2: messages differ"
        diff -u q.out v.out || fail "check -r $r of $2: output differs"
    done
}
repair vdi s.vdi
repair vmdk s.vmdk
repair vhdx s.vhdx
repair qed s.qed
repair parallels s.parallels

step "fragmented parallels clusters (neighbour entries not neighbours in the file)"
must qemu-img create -q -f parallels f.parallels 64M
io parallels f.parallels -c 'write -P 1 1M 1M' -c 'write -P 2 0 1M' -c 'write -P 3 10M 1M' -c 'write -P 4 8M 1M' \
    -c 'write -P 5 9M 1M'
agree parallels f.parallels 0

step "a table entry past the end of the file: corruption (exit 2)"
cp s.parallels c.parallels
pokeval c.parallels 64 '<I' 0x7ffffff
agree parallels c.parallels 2
cp s.vdi c.vdi
pokeval c.vdi "$(peek c.vdi 0x154 '<I')" '<I' 0x7fff
agree vdi c.vdi 2
cp s.qed c.qed
pokeval c.qed "$(peek c.qed "$(peek c.qed 40 '<Q')" '<Q')" '<Q' 0x7fff0000
agree qed c.qed 2
must qemu-img create -q -f vmdk c.vmdk 64M
io vmdk c.vmdk "${pats[@]}"
gd=$(( $(peek c.vmdk 56 '<Q') * 512 ))
pokeval c.vmdk $(( $(peek c.vmdk $gd '<I') * 512 )) '<I' 0xffffff00
# qemu-img's vmdk check fails there (exit 1, no result printed)
agree vmdk c.vmdk 1
grep -q "Check failed: Invalid argument" v.err || fail "vbd-img check of c.vmdk: $(cat v.err)"
grep -q "points after EOF" v.err || fail "vbd-img check of c.vmdk names no grain: $(cat v.err)"
echo ok
