#!/bin/bash
# vbd-io beside qemu-io 7.2 for the commands io-parity.sh leaves out: help,
# open/close/reopen, the blkdebug breakpoints (break, wait_break, resume,
# remove_break; on read_aio, write_aio, flush_to_disk, pwritev, pwritev_zero
# and pwritev_done), sigraise, abort, write -s FILE, aio_read/aio_write -i, write -c over
# an allocated cluster and writes into a streamOptimized vmdk.
# As there: the same command line run by both tools, each in its own copy
# of the same images, must give the same exit code, stdout (timing lines
# normalised) and stderr (the tool's name aside), and leave images that
# qemu-img compare calls identical.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
io_parity_base
# the data only, not qemu-img map: QEMU fills the untouched tail of a new
# qcow2 cluster with write-zeroes (an unwritten extent in the file, which
# map shows as zero), vbd with written zeroes (--misalign case below)
io_map=no
printf 'abc' >base/pat
: >base/empty

# c FILE-ARGS -- CMD...: each CMD one -c command
c() {
    local args=() files=()
    while [ "$1" != -- ]; do
        files+=("$1")
        shift
    done
    shift
    local cmd
    for cmd in "$@"; do
        args+=(-c "$cmd")
    done
    io_same "${args[@]}" "${files[@]}"
}

step "help: all commands, one command, aliases, unknown"
c -- help
c -- 'help read' 'help r' 'help write' 'help aio_read' 'help aio_write' 'help open' 'help reopen' 'help sigraise'
c -- 'help discard' 'help map' 'help abort' 'help quit' 'help x' 'help 1 2' '?' 'help ?' 'help o' 'help h'
c -f raw a.raw -- 'help readv' 'help writev' 'read 0 1'

step "open, close: options, errors, a second open"
c -- 'open nosuch' 'read 0 1'
c -- 'open -r -o driver=raw a.raw' 'write 0 1' 'read -P 0xab 0 1'
c -- 'open -o driver=raw a.raw' 'write -P 3 0 1' 'open a.raw' 'close' 'read 0 1' 'close' 'open -n -o driver=raw a.raw' 'read -P 3 0 1'
c -- 'open -o driver=raw,file.filename=a.raw' 'read 0 1' 'write -P 4 0 1' 'o -o driver=qcow2 a.qcow2'
c -- 'open -o driver=qcow2 a.raw' 'read 0 1'
c -- 'open -x a.raw' 'open a.raw b.raw' 'open -t bogus a.raw' 'open -d bogus a.raw' 'open -i bogus a.raw' 'open -o' 'o -f' 'open'
c -- 'open -U -o driver=raw a.raw' 'open -U -r -o driver=raw a.raw' 'read 0 1'
c -- 'open -i native -o driver=raw a.raw' 'open -k -o driver=raw a.raw' 'open -i native -n -o driver=raw a.raw' 'read 0 4k'
c -- 'open -o foo=bar,driver=raw a.raw' 'open -o driver=raw -o foo=bar a.raw' 'open -t none -o driver=raw -d ignore a.raw' 'discard 0 4k'
c -- 'open -o driver=qcow2 a.qcow2' 'write -P 5 64k 64k' 'close' 'close' 'open -U a.qcow2' 'open -r -U a.qcow2' 'read -P 5 64k 64k' 'info'
c -f raw a.raw -- 'close' 'read 0 1' 'open -o driver=raw a.raw' 'write -P 6 0 4k' 'read -P 6 0 4k'

step "reopen: -r/-w, -c, -o"
c -f raw a.raw -- 'reopen -r' 'write 0 1' 'read 0 1' 'reopen -w' 'write -P 7 0 1'
c -r -f raw a.raw -- 'write 0 1' 'reopen -w' 'write -P 8 0 1' 'reopen' 'write -P 9 1 1'
c -f raw a.raw -- 'reopen -r -w' 'reopen -c none' 'read 0 4k' 'reopen -c bogus' 'reopen -o driver=qcow2' 'reopen -o foo=bar'
c -f raw a.raw -- 'reopen -o cache.direct=on' 'read 0 4k' 'reopen -x' 'reopen 1' 'reopen -o'
c -f raw a.raw -- 'reopen -r -o read-only=off' 'reopen -c none -o cache.direct=off' 'reopen -o file.filename=b.raw'
c -f raw a.raw -- 'reopen -o discard=unmap' 'reopen -o file.locking=off' 'write -P 5 0 1'
c -f raw a.raw -- 'reopen -o cache.direct=maybe' 'reopen -o cache.foo=1' 'reopen -o read-only=x' 'reopen -o discard=x' \
    'reopen -o cache.no-flush=2' 'reopen -c none -r' 'write 0 1' 'reopen -w -o read-only=on' \
    'reopen -o discard=ignore,cache.no-flush=on' 'write -P 2 0 1' 'read -P 2 0 1'
c -f qcow2 a.qcow2 -- 'reopen -o lazy-refcounts=on' 'write -P 1 0 64k' 'reopen -o l2-cache-size=1M' 'reopen -r' 'write 0 1' 'read -P 1 0 64k'

step "break, wait_break, resume, remove_break (blkdebug)"
bd='json:{"driver":"raw","file":{"driver":"blkdebug","image":{"driver":"file","filename":"a.raw"}}}'
c "$bd" -- 'break write_aio A' 'aio_write -P 1 0 4k' 'aio_write -q -P 2 4k 4k' 'wait_break A' 'read 8k 1' 'resume A' 'aio_flush' 'resume A' 'read -P 1 0 4k'
c "$bd" -- 'break write_aio A' 'break write_aio B' 'aio_write 0 4k' 'wait_break A' 'wait_break B' 'resume B' 'resume A' 'aio_flush'
c "$bd" -- 'break read_aio A' 'break read_aio B' 'aio_read 0 4k' 'wait_break B' 'resume A' 'resume B' 'aio_flush'
c "$bd" -- 'break write_aio A' 'aio_write 0 4k' 'wait_break A' 'remove_break A' 'aio_flush' 'break read_aio B' 'remove_break B' 'aio_read 0 1'
c "$bd" -- 'break write_aio A' 'aio_write 0 4k' 'wait_break A' 'break write_aio A' 'aio_write -q -P 3 4k 4k' 'wait_break A' 'resume A' 'resume A' 'aio_flush'
c "$bd" -- 'break foo B' 'resume Z' 'remove_break Z' 'break a' 'break a b c' 'wait_break' 'remove_break' 'resume a b'
# the generic write path's events: before the write, before write-zeroes, after either
c "$bd" -- 'break pwritev A' 'aio_write -P 1 0 4k' 'wait_break A' 'read -P 0xab 0 4k' 'resume A' 'aio_flush' 'read -P 1 0 4k'
c "$bd" -- 'break pwritev_done A' 'aio_write -P 2 0 4k' 'wait_break A' 'read -P 2 0 4k' 'resume A' 'aio_flush'
c "$bd" -- 'break pwritev_zero A' 'break pwritev_done B' 'aio_write -z 0 4k' 'wait_break A' 'read -P 0xab 0 4k' \
    'resume A' 'wait_break B' 'read -P 0 0 4k' 'resume B' 'aio_flush'
c "$bd" -- 'break write_aio A' 'break pwritev B' 'aio_write 0 4k' 'wait_break A' 'resume A' 'wait_break B' 'resume B' 'aio_flush'
c -f raw a.raw -- 'break read_aio A' 'resume A' 'remove_break A' 'read 0 1'
c -- 'break read_aio A' 'resume A' 'wait_break A' 'remove_break A'

step "sigraise, abort"
c -f raw a.raw -- 'sigraise x' 'sigraise 0' 'sigraise 99' 'sigraise -1' 'sigraise 65' 'read 0 1'
c -f raw a.raw -- 'write -P 1 0 1' 'sigraise 15' 'read 0 1'
c -- 'sigraise 0' 'sigraise 1k' 'read 0 1'
c -f raw a.raw -- 'abort' 'read 0 1'
c -- 'abort 1' 'abort'

step "write -s FILE, aio_read/aio_write -i"
c -f raw a.raw -- 'write -s pat 0 7' 'read -v 0 8' 'write -s nosuch 0 1' 'write -s empty 0 1' 'write -s pat x 1'
c -f raw a.raw -- 'write -s pat -P 1 0 1' 'write -s pat -z 0 1' 'write -s pat 0 2G' 'write -s pat 1M 1' 'write -s . 0 1'
c -f raw a.raw -- 'write -s pat 0 0' 'write -s pat 5 100k' 'read -v 0 16' 'write -s pat -q 200k 1k' 'write -C -s pat 300k 3'
c -f qcow2 a.qcow2 -- 'write -s pat 0 64k' 'write -c -s pat 64k 64k' 'read -v 64k 8' 'w -s'
c -f raw a.raw -- 'aio_read -i 0 1' 'aio_read -i' 'aio_read -i 0 x' 'aio_write -i -P 1 0 1' 'aio_write -q -i 0 1' 'aio_flush'
step "write -c over a cluster with a host cluster: refused as qemu-io refuses it (EIO), the image unchanged"
# a.qcow2 holds data at 0; a compressed, a plain, a zeroed-but-allocated
# cluster are refused, an unmapped zero cluster (write -z -u) is not
c -f qcow2 a.qcow2 -- 'write -c -P 2 0 64k' 'read -P 0xab 0 64k' 'write -c -P 3 64k 64k' 'write -c -P 4 64k 64k' \
    'read -P 3 64k 64k' 'write -P 5 128k 64k' 'write -z 128k 64k' 'write -c -P 6 128k 64k' 'read -P 0 128k 64k' \
    'write -z -u 192k 64k' 'write -c -P 7 192k 64k' 'read -P 7 192k 64k' 'write -c -P 8 256k 128k' 'map'
must qemu-img check -q v/a.qcow2
step "streamOptimized vmdk: a grain is written once and whole, as qemu-io writes it (EIO with QEMU's line, EINVAL)"
# s.vmdk holds 0xab in its first grain; z.vmdk has zeroed grains and ends
# 40 KiB into its last grain (written whole up to the end)
must qemu-img convert -f raw -O vmdk -o subformat=streamOptimized base/a.raw base/s.vmdk
must qemu-img create -q -f vmdk -o subformat=streamOptimized,zeroed_grain=on base/z.vmdk 1000k
c -f vmdk s.vmdk -- 'write -P 1 64k 64k' 'write -P 2 64k 64k' 'read -P 1 64k 64k' 'write -P 3 0 64k' 'write -P 4 128k 4k' \
    'write -P 5 200k 64k' 'write -z 256k 64k' 'write -P 6 256k 64k' 'write -z 320k 4k' 'write -z 0 64k' \
    'write -P 7 384k 128k' 'aio_write -P 9 640k 64k' 'aio_flush' 'write -P 8 576k 128k' 'read -P 8 576k 64k' 'map'
c -f vmdk z.vmdk -- 'write -z 0 64k' 'write -z 0 64k' 'write -P 1 0 64k' 'write -z 0 64k' 'write -z 64k 4k' \
    'write -P 2 960k 40k' 'write -P 3 960k 40k' 'write -z 128k 128k' 'write -P 4 128k 64k' 'read -P 4 128k 64k' 'map'
rm base/s.vmdk base/z.vmdk
step "command line: -m (buffers 16 bytes off their alignment), with and without O_DIRECT"
io_same -m -f raw -c 'write -P 1 512 4k' -c 'read -P 1 512 4k' -c 'readv -P 1 512 1k 3k' -c 'writev -P 2 0 512 512' \
    -c 'read -v 0 16' a.raw
io_same -m -n -f raw -c 'write -P 1 512 4k' -c 'read -P 1 512 4k' -c 'aio_write -P 3 8k 4k' -c aio_flush \
    -c 'read -P 3 8k 4k' -c 'write -s pat 64k 4k' -c 'read -v 64k 8' a.raw
io_same --misalign -n -f qcow2 -c 'write -P 4 1k 70k' -c 'read -P 4 1k 70k' -c 'write -z 4k 4k' -c map a.qcow2
echo PASS
