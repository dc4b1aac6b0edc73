#!/bin/bash
# A raw image whose format was probed (no -f, no driver): as QEMU 7.2, a
# write that would make its block 0 probe as another format (a qcow2
# header, or a magic) fails with EPERM, whatever its size and offset below
# 512 bytes; other writes of block 0 (data, zeroes) go through; with the
# format given (-f raw, driver=raw) nothing is restricted. vbd printed
# QEMU's warning ("write operations on block 0 will be restricted") but
# wrote the header: the next open found a qcow2, whose backing file a guest
# could point at any host file. As io-parity.sh: the same command line
# through vbd-io and qemu-io, each in its own copy of the images: the same
# exit code, stdout, stderr and images.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
io_parity_base
head -c 512 base/a.qcow2 >base/hdr.bin
printf 'QFI\373\0\0\0\3' >base/magic.bin
: >base/empty.conf

step "probed raw: a qcow2 header or magic at block 0 refused, other writes taken"
io_same -c "write -s hdr.bin 0 512" -c "write -s magic.bin 0 8" -c "write -s magic.bin 0 4" -c "read -P 0xab 0 64k" a.raw
io_same -c "write -P 0x51 0 512" -c "write -z 0 4k" -c "write -s hdr.bin 512 512" -c "write -s magic.bin 4 8" -c "write -P 0x52 100 8" -c "read -v 0 16" a.raw
io_same -c "write -z 0 512" -c "write -s hdr.bin 0 512" -c "write -s magic.bin 1k 8" -c "writev -P 0x53 0 256 256" a.raw
io_same -c "aio_write -P 0x54 0 512" -c "aio_flush" -c "write -s magic.bin 0 8" blkdebug:empty.conf:a.raw

step "the format given: no restriction"
io_same -f raw -c "write -s hdr.bin 0 512" -c "read -v 0 8" a.raw
io_same --image-opts -c "write -s magic.bin 0 8" driver=raw,file.filename=a.raw
io_same --image-opts -c "write -s magic.bin 0 8" driver=file,filename=a.raw
echo ok
