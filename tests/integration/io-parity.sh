#!/bin/bash
# vbd-io beside qemu-io, command by command: the same command line run by
# both tools, each in its own copy of the same images, must give the same
# exit code, the same stdout (the timing line's rates and elapsed time
# normalised) and the same stderr (the tool's name aside), and leave images
# that qemu-img compare calls identical (qcow2: with the same qemu-img map).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
io_parity_base
must qemu-io -f qcow2 -c 'write -z 128k 64k' base/a.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 base/o.qcow2
must qemu-io -f qcow2 -c 'write -P 2 32k 64k' -c 'write -z 512k 128k' base/o.qcow2 >/dev/null
# a raw image whose size is not a multiple of 512: the last sector is
# whole to both (read past the end as zeroes; a write there grows the file)
head -c 196616 /dev/urandom >base/odd.raw

# c ARGS... FILE-ARGS: each ARGS one -c command on a.raw and a.qcow2
c() {
    local cmd
    local args=()
    for cmd in "$@"; do
        args+=(-c "$cmd")
    done
    io_same -f raw "${args[@]}" a.raw
    io_same -f qcow2 "${args[@]}" a.qcow2
}

step "read: patterns, -l/-s, -v dump, -C, -q, lengths and offsets"
c 'read 0 64k' 'read -P 0xab 0 64k' 'read -P 0 64k 64k' 'read -P 1 0 4k' 'read -P 0xab 60k 8k'
c 'read -P 0xab -s 512 -l 1k 0 4k' 'read -P 5 -l 512 -s 0 0 4k' 'read -P 1 -l 8 0 4' 'read -P 0 -s 1k 0 1'
c 'read -s 0 0 1' 'read -l 1 0 1'
c 'read -v 0 40' 'read -v 1 17' 'read -qv 0 16' 'read -vq 0 16' 'read -C 0 4k' 'read -q 0 1'
c 'read 0 4k -P 0xab' 'read 0 -q 1' 'read -p 0 1'
c 'read 1.5k 1' 'read 0 1.5k' 'read 0 0x200' 'read 0 1b' 'read 0 1K' 'read 0x1k 1' 'read 0 0x10k'
c 'read 0' 'read' 'read x 1' 'read 0 x' 'read 0 1.5' 'read 0 99E' 'read 0 2G' 'read 0 1 2' 'read -1 1'
c 'read " 1" 1' 'read 1e3 1' 'read 0x 1' 'read 1.5K 1'
c 'read -P 0x100 0 1' 'read -P x 0 1' 'read -P' 'read -Q 0 1'
c 'read 1M 1' 'read 1048575 2' 'read 1 0' 'read 1M 0' 'read 2M 0'
c 'r 0 1' 'r -P 0xab 0 1'

step "readv / writev"
c 'readv 0 512 512' 'readv -P 0 0 512 512' 'readv -P 0xab 0 512 1k' 'readv -v 0 17' 'readv 0 x' 'readv -C 0 4k'
c 'writev 0 512 1k' 'writev -P 3 0 512 1k' 'readv -P 3 0 1536' 'writev -f -q 4k 4k' 'writev 1M 1' 'writev -z 0 1'

step "write: -P, -z, -u, -f, -c, -n and their combinations"
c 'write 0 1' 'write -P 0x41 0 64' 'read -v 0 64' 'write -q 4k 4k' 'write -f 8k 4k' 'write -C 0 4k'
c 'write -z 0 4k' 'write -z -u 0 4k' 'write -z -u 100 1000' 'write -z -f 0 64k' 'write -z -n 0 64k'
# qcow2: zeroes over unallocated clusters, whole and partial (zero clusters)
c 'write -z 64k 64k' 'write -z -u 128k 4k' 'write -z -f 200k 1k'
c 'write -u 0 4k' 'write -n 0 1' 'write -z -P 1 0 1' 'write -P 1 -z 0 1'
c 'write 1M 1' 'write 1048575 2' 'write 0 2G' 'write -z 1M 4k' 'write 1 0'
c 'write -c 0 4k' 'write -c 512 64k' 'write -c 1 512' 'write -c 0 1' 'write -c 64k 64k' 'write -c 1M 512'
c 'w 0 1' 'w -P 0xcd 0 1'

step "aio"
# requests in flight together may complete in any order: only one of them prints
c 'aio_write -P 1 0 4k' 'aio_write -q -P 2 4k 4k' 'aio_write -q -z 8k 4k' 'aio_flush' 'read -P 1 0 4k' 'read -P 2 4k 4k'
c 'aio_read 0 4k' 'aio_flush' 'aio_read -P 0xab 0 4k' 'aio_flush' 'aio_write -u 0 1' 'aio_flush 1'
# qemu-io 7.2 prints the clock time for aio_write -z's elapsed time: -q
c 'aio_write -q -z -u 0 4k' 'aio_flush' 'aio_read -v 0 17' 'aio_flush' 'aio_write 0 x' 'aio_read' 'aio_write -P 3 0 512 1k'

step "discard, alloc, map, info, length, truncate, flush"
c 'discard 0 4k' 'discard -q 0 4k' 'discard -C 0 4k' 'discard 1M 1' 'discard 0 x' 'discard 0' 'discard -x 0 1'
c 'alloc 0 4k' 'alloc 0' 'alloc 1M' 'alloc 0 2M' 'alloc x' 'alloc 1 1' 'alloc 0 1' 'alloc 0 128k' 'alloc 64k 128k'
c 'map' 'map 1' 'info' 'info 1' 'length' 'length 1' 'flush' 'flush 1' 'f' 'l' 'i'
for cmd in map 'alloc 0 64k' 'alloc 0 1M' 'alloc 96k 64k' 'alloc 512k 1M' 'read -P 0xab 0 32k' 'read -P 2 32k 64k'; do
    io_same -f qcow2 -c "$cmd" o.qcow2
done
io_same -f qcow2 -c 'write -z 0 64k' -c 'discard 64k 64k' -c map -c 'read -P 0 0 64k' o.qcow2
c 'truncate 2M' 'truncate' 'truncate x' 'truncate 512k' 'truncate -m x 1M' 'truncate 1 2'
io_same -f raw -c 'truncate -m falloc 2M' a.raw
io_same -f raw -c 'truncate -m full 2M' a.raw
io_same -f raw -c 'truncate -m metadata 2M' -c length a.raw
io_same -f raw -c length -c 'read -v 196608 512' -c 'read -P 0 196616 504' -c 'write -P 9 196608 512' -c length -c map odd.raw
io_same -f raw -c 'read 196608 1k' -c 'write -P 9 197120 512' -c length odd.raw

step "command lines: unknown commands, close, quit, sleep, chaining"
c 'foo' 'read 0 1' 'close' 'read 0 1' 'quit' 'write 0 1' 'sleep 1' 'sleep x' 'read 0 x' 'quit'
c 'write -P 7 0 4k' 'read -P 8 0 4k' 'read -P 7 0 4k'

io_same -f raw -d ignore -c 'discard 0 4k' -c 'write -z -u 4k 4k' a.raw
io_same -f raw -d off -c 'discard 0 4k' a.raw
io_same -f raw -d unmap -c 'discard 0 4k' a.raw
io_same -f raw -d bogus -c 'discard 0 4k' a.raw

step "opening: missing images, wrong formats, read-only, -U, cache modes, --image-opts"
io_same -c 'read 0 1' nosuch
io_same -f raw -c 'read 0 1' nosuch
io_same -f qcow2 -c 'read 0 1' a.raw
io_same -f foo -c 'read 0 1' a.raw
io_same -c 'read 0 1'
io_same -c 'read 0 1' -c 'map'
io_same -U -c 'read 0 1' a.raw
io_same -U -r -c 'read 0 1' a.qcow2
io_same -r -c 'write 0 1' -c 'read 0 1' -c 'discard 0 4k' -c 'truncate 2M' -c 'writev 0 1' a.raw
io_same -r -c 'write' a.raw
io_same -f qcow2 -n -c 'write 0 4k' a.qcow2
io_same -f raw -t none -c 'read 0 4k' a.raw
io_same -f qcow2 -t unsafe -c 'write 0 4k' a.qcow2
io_same -f raw -t writeback -i threads -c 'write 0 4k' a.raw
io_same -t bogus -c 'read 0 1' a.raw
io_same -i bogus -c 'read 0 1' a.raw
# Linux AIO is O_DIRECT only: qemu-io refuses -i native without -t none / -n
# (after the image's own open: a missing one is reported first)
io_same -f raw -i native -c 'read 0 1' a.raw
io_same -f qcow2 --aio native -t writeback -c 'read 0 1' a.qcow2
io_same -f raw -i native -c 'read 0 1' nosuch
io_same -f raw -i native -t none -c 'read 0 4k' a.raw
io_same -f qcow2 -i native -n -c 'read 0 4k' a.qcow2
io_same -f raw -k -c 'read 0 1' a.raw
io_same -f raw --native-aio -n -c 'read 0 4k' a.raw
io_same --image-opts -c 'read -P 0xab 0 1' -c 'write 1 1' driver=raw,file.filename=a.raw
io_same --image-opts -c 'read 0 1' driver=raw,file.filename=nosuch
io_same --image-opts -c 'read 0 1' driver=qcow2,file.filename=a.raw
io_same --image-opts -c 'read 0 1' driver=foo,file.filename=a.raw
io_same --image-opts -c 'read 0 1' driver=file
io_same --image-opts -c 'read 0 1' driver=qcow2,file.driver=file
io_same -f raw --image-opts -c 'read 0 1' driver=raw,file.filename=a.raw
# qemu-io's --image-opts is QemuOpts without an implied name: every bare
# word is a flag (deprecated), the first one too
io_same --image-opts -c 'read 0 1' a.raw
io_same --image-opts -c 'read 0 1' on,driver=raw
io_same --image-opts -c 'read 0 1' 'a,,b'
io_same --image-opts -c 'read 0 1' file=a.raw
io_same --image-opts -c 'read 0 1' driver=raw,file.filename=a.raw,foo
io_same --image-opts -c 'read 0 1' driver=raw,file.filename=a.raw,nofoo
io_same --image-opts -c 'read 0 1' ''
io_same -c 'write 0 1' a.raw

step "a locked image: qemu-nbd serves it"
need qemu-nbd
must qemu-img create -q -f qcow2 "$T/l.qcow2" 1M
qemu-nbd -f qcow2 -k "$T/nbd.sock" "$T/l.qcow2" &
holder=$!
for i in $(seq 1 600); do
    [ -S "$T/nbd.sock" ] && break
    sleep 0.1
done
# qemu-io refuses a reader beside a writer unless -U (vbd-io does not: README)
for args in "-f qcow2 -c 'read 0 1'" "-f raw -c 'write 0 1'" "-r -U -c 'read 0 1'"; do
    eval "qemu-io $args \"\$T/l.qcow2\"" >q.out 2>q.err </dev/null; echo "exit $?" >>q.out
    eval "\"\$VBD_IO\" $args \"\$T/l.qcow2\"" >v.out 2>v.err </dev/null; echo "exit $?" >>v.out
    sed -i -e 's/qemu-io/TOOL/g' -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' q.out q.err
    sed -i -e 's/vbd-io/TOOL/g' -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' v.out v.err
    diff -u q.out v.out || { kill $holder; fail "locked: stdout/exit differ: $args"; }
    diff -u q.err v.err || { kill $holder; fail "locked: stderr differs: $args"; }
done
kill $holder
wait $holder
echo PASS
