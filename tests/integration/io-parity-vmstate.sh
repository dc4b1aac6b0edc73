#!/bin/bash
# vbd-io beside qemu-io 7.2 for what io-parity-cmds.sh leaves out: open -s
# and -s on the command line (writes go to a temporary qcow2 overlay in
# $TMPDIR, gone at close), open -C / -C (copy-on-read into the image's top
# layer) and read -b / write -b (the VM state area of qcow2; raw has none).
# As there: the same command line through both tools, each in its own copy
# of the same images: the same exit code, stdout (timing lines
# normalised), stderr and images (qemu-img compare); besides, the VM state
# each tool wrote reads back the same through qemu-io, the images' top
# layers are allocated alike (qemu-img map) and both pass qemu-img check.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
mkdir base tmp
export TMPDIR=$T/tmp # where -s puts its overlay (QEMU: $TMPDIR, else /var/tmp)
must qemu-img create -q -f raw base/a.raw 1M
must qemu-img create -q -f qcow2 base/a.qcow2 1M
must qemu-io -f raw -c 'write -P 0xab 0 64k' base/a.raw >/dev/null
must qemu-io -f qcow2 -c 'write -P 0xab 0 64k' -c 'write -P 0xcd 192k 64k' base/a.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -F qcow2 -b a.qcow2 base/b.qcow2
must qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k base/x.qcow2 3M

same() {
    tools_run qemu-io "$VBD_IO" "$@"
    sed -i -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' \
        -e 's/^([0-9]+,[0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$/\1,T/' q.out v.out
    tools_same "$@"
    [ -z "$(ls -A tmp)" ] || fail "temporary files left in \$TMPDIR: $(ls -A tmp | xargs): $*"
    local f fmt
    for f in a.raw a.qcow2 b.qcow2 x.qcow2; do
        case $f in *.qcow2) fmt=qcow2 ;; *) fmt=raw ;; esac
        qemu-img compare -q -f $fmt -F $fmt "q/$f" "v/$f" || fail "$f differs: $*"
        [ $fmt = raw ] && continue
        diff <(qemu-img map --output=json "q/$f" | sed 's/"offset": [0-9]*/"offset": X/') \
             <(qemu-img map --output=json "v/$f" | sed 's/"offset": [0-9]*/"offset": X/') ||
            fail "$f: allocation differs: $*"
        qcheck "v/$f"
        # the VM state area, read by qemu-io in both
        [ "$(qemu-io -r -c 'read -b -v 0 512' -c 'read -b -v 1M 512' -c 'read -b -v 63M 512' "q/$f" | grep -v ops)" = \
          "$(qemu-io -r -c 'read -b -v 0 512' -c 'read -b -v 1M 512' -c 'read -b -v 63M 512' "v/$f" | grep -v ops)" ] ||
            fail "$f: VM state differs: $*"
    done
}
c() { # FILE-ARGS -- CMD...: each CMD one -c command
    local args=() files=() cmd
    while [ "$1" != -- ]; do
        files+=("$1")
        shift
    done
    shift
    for cmd in "$@"; do args+=(-c "$cmd"); done
    same "${args[@]}" "${files[@]}"
}

step "read -b / write -b: qcow2's VM state area"
c -f qcow2 a.qcow2 -- 'write -b -P 7 0 64k' 'read -b -P 7 0 64k' 'read -b -P 0 64k 512' 'read -P 0xab 0 64k' \
    'read -P 0 64k 64k' 'write -b -P 8 1M 4k' 'read -b -v 1M 16' 'info' 'map'
c -f qcow2 a.qcow2 -- 'write -b -P 9 63M 128k' 'read -b -P 9 63M 128k' 'write -b -C -P 1 512 512' 'read -b -C 0 1k'
c -f qcow2 x.qcow2 -- 'write -b -P 4 0 512' 'read -b -P 4 0 512' 'write -b -P 5 100k 100k' 'read -b -v 100k 16' 'info'
c -f qcow2 b.qcow2 -- 'read -b -P 0 0 64k' 'write -b -P 6 0 4k' 'read -b -P 6 0 4k' 'read -P 0xab 0 64k'
c -f qcow2 a.qcow2 -- 'read -b 1 512' 'read -b 0 1' 'write -b 512 100' 'write -b -z 0 512' 'write -b -f 0 512' \
    'write -c -f 0 64k' 'write -b -q 0 512' 'read -b -q -P 0xcd 0 512' 'read -b -l 1 -s 1 -P 0xcd 0 512'
c -r -f qcow2 a.qcow2 -- 'write -b 0 512' 'read -b -P 0 0 512'
c -f raw a.raw -- 'read -b 0 512' 'write -b 0 512' 'read -b 1 1' 'read -P 0xab 0 512'
c -- 'open -o driver=qcow2 a.qcow2' 'write -b -P 3 0 512' 'close' 'open -r a.qcow2' 'read -b -P 3 0 512'

step "-s: a temporary overlay"
c -s -f qcow2 a.qcow2 -- 'write -P 9 0 4k' 'read -P 9 0 4k' 'read -P 0xab 4k 60k' 'alloc 0 64k' 'map' 'info'
c -s -f raw a.raw -- 'write -P 9 0 4k' 'read -P 9 0 4k' 'write -z 8k 4k' 'discard 16k 4k' 'read -P 0xab 4k 4k' 'info'
c -s -r -f raw a.raw -- 'write -P 9 0 4k' 'read -P 0xab 0 4k'
c -s -f qcow2 a.qcow2 -- 'write -b -P 2 0 512' 'read -b -P 2 0 512' 'truncate 2M' 'length' 'read -P 0 1M 1M'
c -- 'open -s -o driver=raw a.raw' 'write -P 1 0 64k' 'read -P 1 0 64k' 'close' 'open -o driver=raw a.raw' 'read -P 0xab 0 64k'
c -- 'open -s -r a.qcow2' 'write 0 512' 'open -s nosuch.qcow2' 'open -s -C b.qcow2' 'read -P 0xab 0 4k' 'alloc 0 64k'
c -- 'open -s -U a.qcow2' 'open -s -r -U a.qcow2' 'read -P 0xab 0 4k'

step "-C: copy-on-read into the top layer"
c -C -f qcow2 b.qcow2 -- 'alloc 0 64k' 'read -P 0xab 4k 4k' 'alloc 0 64k' 'alloc 64k 64k' 'read -P 0 64k 4k' \
    'alloc 64k 64k' 'read -P 0xcd 200k 4k' 'alloc 192k 64k' 'map' 'info'
c -C -f qcow2 b.qcow2 -- 'write -P 5 0 512' 'read -P 5 0 512' 'read -P 0xab 512 63k' 'alloc 0 64k'
c -C -f qcow2 a.qcow2 -- 'read -P 0xab 0 64k' 'read -P 0 512k 4k' 'alloc 512k 4k'
c -C -r -f qcow2 b.qcow2 -- 'read 0 4k'
c -- 'open -C -r b.qcow2' 'open -C b.qcow2' 'read -P 0xcd 192k 64k' 'alloc 192k 64k' 'close' 'open -r b.qcow2' 'alloc 192k 64k'
c -C -f raw a.raw -- 'read -P 0xab 0 4k' 'info'
echo PASS
