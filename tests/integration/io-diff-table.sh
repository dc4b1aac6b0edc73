#!/bin/bash
# vbd-io beside qemu-io 7.2, table-driven: every case below is one line,
# qemu-io's command line (shell words). Both tools run it, each in its own
# fresh copy of base/ (lib.sh tools_run), and must give the same exit
# code, stdout (timing lines masked) and stderr (the tool's name aside),
# and leave images that qemu-img compare calls the same.
# base/ holds one image of each format (raw, qcow2, vmdk, vhdx, vpc, vdi,
# qed, parallels) made by qemu-img (q-FMT.FMT) and by vbd-img (v-FMT.FMT),
# 0x01 in their first 64 KiB, 0x02 in the 512 bytes at 1 MiB, zeroes
# written at 2 MiB.
#
# A case line: [@GLOB] ARGS...; %i in ARGS stands for each image of base/
# whose name matches GLOB (default every q-* and v-* image), one case per
# image, %f for its format. "!REASON | CASE": a known, intended
# difference (run; only the exit status compared, unless REASON starts
# "not fixed"; REASON printed).
# Runtime (ASan): 16-50 s at load 10-22, up to 4.5 min at load 35.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-difftable.sh"
need qemu-img qemu-io
cd "$T"
make_base_images
printf 'abc' >base/pat
# a qcow2 whose L2 table two snapshots share (a write copies it)
must qemu-img create -q -f qcow2 base/sn.qcow2 4M
must qemu-io -f qcow2 -c 'write -P 2 1M 512' base/sn.qcow2 >/dev/null
must qemu-img snapshot -c s1 base/sn.qcow2

run_cases io_case <<'CASES'
# what each format reports, on the images vbd-img made, through both tools
@v-* -f %f -c map -c 'alloc 0 4M' -c 'alloc 2M 64k' -c length -c info %i
# reads, writes, zeroes, vectors, aio, truncate, flush on every format
@q-* -f %f -c 'read -P 1 0 64k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' -c 'write -P 5 4k 4k' -c 'read -P 5 4k 4k' -c 'writev -P 6 64k 512 1k' -c 'readv -P 6 64k 512 1k' -c 'aio_write -P 7 128k 4k' -c aio_flush -c 'read -P 7 128k 4k' -c 'write -z 0 64k' -c 'read -P 0 0 64k' -c 'truncate 8M' -c length -c flush %i
@q-* -f %f -c 'discard 0 64k' -c 'read -P 0 0 64k' -c 'alloc 0 64k' %i
!README: vmdk (sparse) and vdi (dynamic): write -z over an unallocated grain or block leaves it unallocated (qemu-io writes zeroes into a new one) | -f vmdk -c 'write -z -u 64k 64k' -c map q-vmdk.vmdk

# the command line's options
-r -f qcow2 -c 'write 0 1' -c 'read -P 1 0 1' v-qcow2.qcow2
-n -f raw -c 'read -P 1 0 4k' -c 'write -P 3 4k 4k' q-raw.raw
-t none -i native -f qcow2 -c 'write -P 4 0 4k' -c 'read -P 4 0 4k' q-qcow2.qcow2
-U -r -f vpc -c 'read -P 1 0 1' q-vpc.vpc
--image-opts -c 'read -P 1 0 1' -c 'write -P 9 0 1' driver=vhdx,file.filename=v-vhdx.vhdx
-c 'open -o driver=qed v-qed.qed' -c 'read -P 1 0 1' -c close -c 'read 0 1'
# read-only=on without -r: refused at the open
--image-opts -c 'read 0 1' driver=qcow2,file.filename=q-qcow2.qcow2,read-only=on
-c 'open -o read-only=on,driver=vdi q-vdi.vdi' -c 'read 0 1'

# errors: the command line's, the commands'
-f raw -c 'read 0 1' nosuch
-f qcow2 -c 'read 0 1' q-raw.raw
-f bogus -c 'read 0 1' q-raw.raw
-t bogus -c 'read 0 1' q-raw.raw
!README: the usage text (printed for two file names, exit 1 both) is vbd-io's | -c length q-qcow2.qcow2 q-raw.raw
-f raw -c 'truncate x' -c 'discard' -c 'discard x 1' -c 'alloc' -c 'alloc x' -c 'map 1' -c 'aio_read x 1' -c 'writev 0' -c 'flush 1' q-raw.raw
# an image the commands open (no file on the command line) and do not
# close is closed at the end all the same: the L2 table the discard
# copied and the refcounts written back (vbd-io left the copy unwritten
# and the shared table's count one too high; tests/integration/imgsweep.py)
-c 'open -o driver=qcow2 sn.qcow2' -c 'discard 1M 64k'
-c 'open -o driver=qcow2 sn.qcow2' -c 'write -P 9 1M 4k'
# a file of another format opened as vhdx or vpc: qemu-io's words (round 30)
-f vhdx -c 'read 0 1' q-raw.raw
-f vpc -c 'read 0 1' q-qcow2.qcow2
-c 'open -o driver=vpc q-vdi.vdi' -c 'read 0 1'
--image-opts -c 'read 0 1' driver=vhdx,file.filename=q-vpc.vpc
# found by the widened sweep (round 30): aio_write -z takes one length
# (and -P beside it is no error in 7.2); a compressed write to a sparse
# or flat vmdk is a plain one, anywhere (streamOptimized: whole grains);
# -f with --image-opts and a bad -t refused with no image named too; an
# unknown option of the file protocol in QEMU's words
-f raw -c 'aio_write -z 0 512 512' -c aio_flush -c 'aio_write -z -P 1 0 512' -c aio_flush -c 'read -P 0 0 512' q-raw.raw
-f vmdk -c 'write -c -P 7 1M 512' -c 'read -P 7 1M 512' -c 'write -c -P 8 4190208 4k' q-vmdk.vmdk
--image-opts -f raw -c 'read 0 1'
-t bogus -c 'read 0 1'
--image-opts -c 'read 0 1' driver=qcow2,file.filename=q-qcow2.qcow2,file.bogus=1
# file.* options beside the file name open that file (vbd-io found no
# file name for the file child)
-c 'open -o driver=raw,file.locking=off q-raw.raw' -c 'read -P 1 0 1'
-c 'open -o driver=qcow2,file.bogus=1 q-qcow2.qcow2' -c 'read 0 1'
# an empty file name is none
-c 'read 0 1' ''
-f raw -c 'read 0 1' ''
# -C over a node opened read-only by its options: QEMU's open refuses
# copy-on-read there, before the permission check (round 31, seed 32)
-C --image-opts -c 'read 0 1' driver=qcow2,file.filename=q-qcow2.qcow2,read-only=on
-C -f qcow2 -c 'open -C -o read-only=on q-qcow2.qcow2' -c 'read 0 1'
-c 'open -C -o driver=qcow2,read-only=on q-qcow2.qcow2' -c 'read 0 1'
-C -r -f qcow2 -c 'read -P 1 0 1' q-qcow2.qcow2
# -r -C on a file of another format: the copy-on-read refusal comes
# before the format's (once the file is open), as QEMU's (seed 36)
-r -C -f qcow2 -c 'read 0 1' q-vdi.vdi
-r -C -f qcow2 -c 'read 0 1' nosuch
-r -C --image-opts -c 'read 0 1' driver=qcow2,file.filename=q-vdi.vdi
# -i and -t checked as they are met, before a later bad option (seed 37)
-i bogus -f raw -c 'read 0 1' --bogus q-raw.raw
-t bogus --bogus -c 'read 0 1' q-raw.raw
CASES
