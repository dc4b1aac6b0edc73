#!/bin/bash
# vbd-io beside qemu-io 7.2 on blkdebug without a driver for its image:
# driver=blkdebug,image.filename=FILE (--image-opts, json:) opens FILE as
# the file itself, as QEMU's blkdebug (a protocol driver whose image child
# inherits that) does: no format probed below it, no raw node, no "probing
# guessed raw" warning, a qcow2 read as its bytes. The filename syntax
# blkdebug:[CONFIG]:FILE makes the same blkdebug node, with a format probed
# above it (raw: the warning, naming the whole filename); a config file
# without rules is taken, a missing one and a missing FILE are refused in
# QEMU's words. As io-parity.sh: the same command line through both tools,
# each in its own copy of the images: the same exit code, stdout, stderr
# and images; vbd-img info as qemu-img info. vbd probed a format for the image child (the warning, a
# qcow2 opened as qcow2) and took blkdebug:... for a file name. Failed aio
# requests are worded as qemu-io's and, as there, only a bad aio command
# line fails the exit status (vbd-io said "writev failed" and exited 1).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
io_parity_base
: >base/empty.conf
printf "# no rules\n\n# none\n" >base/comments.conf
printf "  \n" >base/blanks.conf

step "driver=blkdebug,image.filename=FILE: FILE itself, no probing, no warning"
io_same --image-opts "driver=blkdebug,image.filename=a.raw" -c "read -v 0 16" -c "write -P 0x51 0 512" -c "read -P 0x51 0 512"
io_same --image-opts "driver=blkdebug,image.filename=a.qcow2" -c "read -v 0 16" -c "read -P 0xab 64k 16"
io_same -c "read -v 0 16" -c "write -P 0x52 4k 512" 'json:{"driver":"blkdebug","image":{"filename":"a.qcow2"}}'
io_same --image-opts "driver=raw,file.driver=blkdebug,file.image.filename=a.qcow2" -c "read -v 0 16"
io_same --image-opts "driver=qcow2,file.driver=blkdebug,file.image.filename=a.qcow2" -c "read -P 0xab 0 64k"
io_same -r --image-opts "driver=blkdebug,image.filename=a.raw" -c "read -P 0xab 0 64k" -c "write 0 512"

step "blkdebug:[CONFIG]:FILE: a format probed above blkdebug, as QEMU"
io_same -c "read -P 0xab 0 64k" -c "write -P 0x53 64k 4k" blkdebug:empty.conf:a.raw
io_same -c "read -P 0xab 0 64k" -c "write -P 0x53 64k 4k" blkdebug::a.qcow2
io_same -c "read -P 0xab 0 64k" blkdebug:comments.conf:a.qcow2
io_same -r -c "read -P 0xab 0 64k" blkdebug::a.raw
io_same -f raw -c "read -v 0 16" blkdebug::a.qcow2
io_same -f qcow2 -c "read -P 0xab 0 64k" -c "write -P 0x54 1k 1k" blkdebug::a.qcow2

step "refused in QEMU's words: a missing config file, no config part, a missing image"
io_same -c "read 0 512" blkdebug:missing.conf:a.raw
io_same -c "read 0 512" blkdebug:a.raw
io_same -c "read 0 512" blkdebug::missing.img
io_same -c "read 0 512" blkdebug:blanks.conf:a.raw

step "aio requests that fail: qemu-io's words (aio_write's own, aio_read's 'readv failed'), printed but not in the exit status; a bad aio command line is"
bd="driver=raw,file.driver=blkdebug,file.image.filename=a.raw,file.inject-error.0.event=write_aio,file.inject-error.0.sector=8"
bd="$bd,file.inject-error.1.event=read_aio,file.inject-error.1.sector=16"
io_same --image-opts "$bd" -c "aio_write -P 1 0 8k" -c aio_flush -c "aio_read 8k 4k" -c aio_flush -c "aio_read -P 5 0 512" -c aio_flush
io_same --image-opts "$bd" -c "aio_read -Q 0 512" -c "aio_write -P 1 4k 4k" -c aio_flush

step "formats that grow their file by truncating it, over blkdebug: the truncate goes through (QEMU's blkdebug_co_truncate)"
# vhdx and parallels extend the file for each new block; vbd's blkdebug had
# no truncate: every write to an unallocated block failed with "Operation
# not supported" (found by fmt-stress's kinds under STRESS_ALIGN=4096)
must qemu-img create -q -f vhdx -o block_size=1M base/g.vhdx 32M
must qemu-img create -q -f parallels base/g.parallels 32M
for f in g.vhdx g.parallels; do
    io_same --image-opts "driver=${f#g.},file.driver=blkdebug,file.image.filename=$f" -c "write -P 0x5a 10660435 161693" \
        -c "write -P 0x5b 20M 4k" -c "read -P 0x5a 10660435 161693" -c "read -P 0x5b 20M 4k"
    io_same --image-opts "driver=${f#g.},file.driver=blkdebug,file.align=4096,file.image.filename=$f" \
        -c "write -P 0x5c 3M 1536" -c "read -P 0x5c 3M 1536"
done

step "a vmdk descriptor over blkdebug finds its extents beside the descriptor's file, as QEMU"
# vbd looked for them beside "blkdebug::DIR/s.vmdk" (the blkdebug node's
# name): "Could not open 'blkdebug::DIR/s-s001.vmdk': No such file or directory"
must qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse base/s.vmdk 3G
io_same --image-opts "driver=vmdk,file.driver=blkdebug,file.image.filename=s.vmdk" -c "write -P 0x5d 2047M 2M" \
    -c "read -P 0x5d 2047M 2M" -c "read -P 0 3000M 4k"

step "vbd-img info beside qemu-img info: the same lines (disk size unavailable at blkdebug)"
for a in "blkdebug::a.qcow2" "blkdebug:empty.conf:a.raw" "-f raw blkdebug::a.qcow2" "--image-opts driver=blkdebug,image.filename=a.qcow2"; do
    tools_run qemu-img "$VBD_IMG" info $a
    tools_same info $a
done

step "a config file with rules: vbd reads none, so it refuses it in one line (QEMU applies them)"
printf '[inject-error]\nevent = "read_aio"\n' >rules.conf
"$VBD_IO" -c "read 0 512" blkdebug:rules.conf:base/a.raw >v.out 2>&1 && fail "rules in a config file taken: $(cat v.out)"
[ "$(cat v.out)" = "vbd-io: can't open device blkdebug:rules.conf:base/a.raw: blkdebug: config files are not supported by vbd (use inject-error)" ] ||
    fail "config file with rules: $(cat v.out)"
echo ok
