#!/bin/bash
# test-timeout: 2400 (run.sh: 120 cases (the 2 preallocation=metadata ones past 4M clusters: ~60 s each at load 35), each tool started per case: 46 s at load 4, 641-687 s at load 30, 1125 s at load 45; 1200 s is too close)
# vbd-img beside qemu-img 7.2, table-driven: every case below is one line,
# the command line after the tool's name. Both tools run it, each in its
# own fresh copy of base/ (lib.sh tools_run), and must give the same exit
# code, stdout and stderr (the tool's name aside; disk sizes and timings
# masked), leave the same files, and every image either wrote must be the
# same image to qemu-img compare, with the same qemu-img check verdict.
# base/ holds one image of each format vbd writes (raw, qcow2, vmdk, vhdx,
# vpc, vdi, qed, parallels) made by qemu-img (q-FMT.FMT) and the same made
# by vbd-img (v-FMT.FMT), data and zeroes written by qemu-io, and an
# overlay; beside it an image a qemu-nbd holds (its lock).
#
# A case line: [@GLOB] ARGS... (shell words). %i in ARGS stands for each
# image of base/ whose name matches GLOB (default: every q-* and v-* image),
# one case per image, %f for its format; %F stands for each format in turn.
# "(no arguments)": the tool alone. A line "!REASON | CASE" is a known,
# intended difference: both run (vbd-img may not crash), the output is not
# compared (the exit status is, unless REASON starts "not fixed"), REASON
# is printed. Every case runs; the test fails at the end
# if any differed (each difference printed as diff -u, qemu-img's first).
# DIFF_TABLE_FILTER=REGEX (bash extended regex): only the case lines
# matching it run (to loop a few cases: the whole table is long).
# Runtime (ASan): 6 s at load 2, 25-70 s at load 10-22, up to 5 min at load 35.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-difftable.sh"
need qemu-img qemu-io qemu-nbd python3
cd "$T"
make_base_images
must qemu-img create -q -f qcow2 -b q-qcow2.qcow2 -F qcow2 base/ov.qcow2
must qemu-io -f qcow2 -c 'write -P 3 512k 64k' base/ov.qcow2 >/dev/null
# for resize --shrink: data past the new ends amid the file (written
# first), compressed, past an L1 table's boundary (512 MiB)
must qemu-img create -q -f qcow2 base/sh.qcow2 2G
must qemu-io -c 'write -P 1 1500M 1M' -c 'write -c -P 2 700M 64k' -c 'write -P 3 0 1M' -c 'write -P 4 600M 64k' \
    base/sh.qcow2 >/dev/null
# for resize --shrink: a table wholly past the new end that the active L1
# names without COPIED though its refcount is 1 (as an old snapshot
# deletion left it; check calls that an error), the last table of the image
must qemu-img create -q -f qcow2 -o cluster_size=4k base/nc.qcow2 4M
must qemu-io -c 'write -P 2 2M 2M' -c 'write -P 1 0 1M' base/nc.qcow2 >/dev/null
python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(40)
    l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1 + 8)
    e = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1 + 8)
    f.write(struct.pack(">Q", e & ~(1 << 63)))
' base/nc.qcow2 || fail "could not clear COPIED in nc.qcow2"
# for convert -l: a qcow2 with an internal snapshot s1 (0x01 at 0) and
# other data since (0x07)
must qemu-img create -q -f qcow2 base/sn.qcow2 4M
must qemu-io -f qcow2 -c 'write -P 1 0 64k' base/sn.qcow2 >/dev/null
must qemu-img snapshot -c s1 base/sn.qcow2
must qemu-io -f qcow2 -c 'write -P 7 0 4k' base/sn.qcow2 >/dev/null
# a dynamic vdi copied sparsely: holes of the file amid its blocks
cp --sparse=always base/q-vdi.vdi base/sp.vdi || fail "cp --sparse=always"
# files of no format: empty, and shorter than a sector
: >base/empty
printf 'short' >base/short
# outside base/ (named ../NAME by the cases, from q/ and v/): one a
# qemu-nbd holds open for writing (its lock)
must qemu-img create -q -f qcow2 locked.qcow2 4M
must qemu-nbd --fork --pid-file "$T/nbd.pid" -k "$T/nbd.sock" -f qcow2 "$T/locked.qcow2"
on_exit "kill \$(cat '$T/nbd.pid' 2>/dev/null) 2>/dev/null"

run_cases img_case <<'CASES'
# the command line itself (qemu-img's options before the command)
(no arguments)
bogus
-x
-T
help
!qemu-img prints its help text; vbd-img's lists its own verbs and formats | --help
!the version and copyright lines name each program's own | --version
!vbd has no trace events: -T is taken and ignored, with vbd's warning (qemu-img warns of each event it lacks) | -T foo info q-raw.raw

# the images vbd-img made, through both tools; qemu-img's where the verb
# depends on the format (QEMU 7.2's parallels driver has no get_info:
# no dirty-flag)
@v-* info --output=json %i
@v-* check --output=json %i
info --output=json q-parallels.parallels
@q-[pv]* resize %i +1M
@q-v* bitmap --add %i b1
@q-[pv]* amend -o size=8M %i
# convert into every format: the images compared and checked
@q-raw.raw convert -O %F %i n.img
convert -O qcow2 v-vhdx.vhdx n.qcow2
dd -O raw if=v-vpc.vpc of=n.raw bs=64k count=3

# commit: a probed raw image's warning once; a backing chain
commit q-raw.raw
commit ov.qcow2
info --backing-chain --output=json ov.qcow2
rebase -b q-raw.raw -F raw ov.qcow2
!README: qemu-img prints the probing warning twice on snapshot -a, vbd-img once | snapshot -a s q-raw.raw

# an image a qemu-nbd holds open for writing (its lock)
info ../locked.qcow2
info -U ../locked.qcow2
check ../locked.qcow2
resize ../locked.qcow2 8M
convert -U -O raw ../locked.qcow2 n.raw

# read-only=on in --image-opts and a verb that writes: refused at the open
snapshot -c s --image-opts driver=qcow2,file.filename=q-qcow2.qcow2,read-only=on
resize --image-opts driver=vpc,file.filename=q-vpc.vpc,read-only=on 8M
info --image-opts driver=vpc,file.filename=q-vpc.vpc,read-only=on

# sizes as qemu-img reads them, --object
create -f raw n.raw 1.5k
create -f raw n.raw 1e3
create -f qcow2 n.qcow2 0.5M
info --object secret,id=s0,data=x q-qcow2.qcow2
info --object bogus,id=x q-qcow2.qcow2
!--object help lists the types vbd makes (qemu-img: every type QEMU has), exit 0 both | info --object help
# formats without a preallocation option of their own hand it to the file
# they are made in, which qemu-img 7.2 creates empty with it: off, falloc
# and full allocate nothing, metadata and a bad value are the file's
# refusals (vbd-img refused the option); with the format's own fixed kinds
create -f vdi -o preallocation=off n.vdi 1M
create -f vdi -o preallocation=metadata n.vdi 1M
create -f vdi -o preallocation=falloc n.vdi 1M
create -f vdi -o preallocation=full n.vdi 1M
create -f vdi -o preallocation=bogus n.vdi 1M
create -f vpc -o preallocation=off n.vpc 1M
create -f vpc -o preallocation=metadata n.vpc 1M
create -f vpc -o preallocation=falloc n.vpc 1M
create -f vpc -o preallocation=full n.vpc 1M
create -f vpc -o preallocation=bogus n.vpc 1M
create -f vhdx -o preallocation=off n.vhdx 1M
create -f vhdx -o preallocation=metadata n.vhdx 1M
create -f vhdx -o preallocation=falloc n.vhdx 1M
create -f vhdx -o preallocation=full n.vhdx 1M
create -f vhdx -o preallocation=bogus n.vhdx 1M
create -f vmdk -o preallocation=off n.vmdk 1M
create -f vmdk -o preallocation=metadata n.vmdk 1M
create -f vmdk -o preallocation=falloc n.vmdk 1M
create -f vmdk -o preallocation=full n.vmdk 1M
create -f vmdk -o preallocation=bogus n.vmdk 1M
create -f qed -o preallocation=off n.qed 1M
create -f qed -o preallocation=metadata n.qed 1M
create -f qed -o preallocation=falloc n.qed 1M
create -f qed -o preallocation=full n.qed 1M
create -f qed -o preallocation=bogus n.qed 1M
create -f parallels -o preallocation=off n.parallels 1M
create -f parallels -o preallocation=metadata n.parallels 1M
create -f parallels -o preallocation=falloc n.parallels 1M
create -f parallels -o preallocation=full n.parallels 1M
create -f parallels -o preallocation=bogus n.parallels 1M
create -f vdi -o static=on,preallocation=full n.vdi 1M
create -f vdi -o static=on,preallocation=metadata n.vdi 1M
create -f vpc -o subformat=fixed,preallocation=metadata n.vpc 1M
create -f vhdx -o subformat=fixed,preallocation=full n.vhdx 1M
create -f vmdk -o subformat=monolithicFlat,preallocation=full n.vmdk 1M
create -f vmdk -o subformat=twoGbMaxExtentFlat,preallocation=metadata n.vmdk 1M
create -f qed -o preallocation=full,cluster_size=4k n.qed 1M
# qcow2 laid out as qemu-img lays it out (byte for byte): refcount blocks
# past the first one's reach (the L1 table of a large image with small
# clusters), preallocation=falloc/full (refcount structure, then the data
# clusters, then the L2 tables), a v2 image (no feature name table), an
# L1 table grown by resize (written to its entries' end)
create -f qcow2 -o cluster_size=512 n.qcow2 1G
create -f qcow2 -o cluster_size=512 n.qcow2 33G
create -f qcow2 -o cluster_size=512,refcount_bits=1 n.qcow2 64G
create -f qcow2 -o cluster_size=512,preallocation=falloc n.qcow2 1M
create -f qcow2 -o cluster_size=4k,preallocation=full n.qcow2 1M
create -f qcow2 -o preallocation=falloc n.qcow2 1G
create -f qcow2 -o compat=0.10 n.qcow2 1M
# preallocation=metadata past the first refcount table's reach: the L2
# tables and their clusters amid the refcount blocks and the tables grown
# on the way (1, 2 and 3 growths: 2, 4 and 7 table clusters), as QEMU's
# allocator places them (vbd-img placed blocks and tables at the end);
# 64-bit refcounts reach the growths soonest (fewer tables to write)
create -f qcow2 -o cluster_size=512,preallocation=metadata n.qcow2 12M
create -f qcow2 -o cluster_size=512,preallocation=metadata n.qcow2 24M
create -f qcow2 -o cluster_size=512,refcount_bits=1,preallocation=metadata n.qcow2 140M
create -f qcow2 -o cluster_size=512,refcount_bits=64,preallocation=metadata n.qcow2 3M
create -f qcow2 -o cluster_size=512,refcount_bits=64,preallocation=metadata n.qcow2 6M
create -f qcow2 -o cluster_size=512,refcount_bits=64,preallocation=metadata n.qcow2 12M
create -f qcow2 -o cluster_size=1k,refcount_bits=64,preallocation=metadata n.qcow2 24M
create -f qcow2 -o cluster_size=1k,refcount_bits=64,preallocation=metadata n.qcow2 96M
create -f qcow2 -o cluster_size=2k,refcount_bits=64,preallocation=metadata n.qcow2 200M
create -f qcow2 -o cluster_size=2k,refcount_bits=64,preallocation=metadata n.qcow2 400M
create -f qcow2 -o cluster_size=4k,refcount_bits=64,preallocation=metadata n.qcow2 1200M
create -f qcow2 -o cluster_size=1k,preallocation=metadata n.qcow2 12345k
# preallocation=metadata past 4M clusters in the file (vbd-img mapped
# those through its runtime allocator, 140-180 MiB of memory: a valid
# image, with extended L2 entries not qemu-img's bytes; the layout replay
# now streams into the file in bounded memory): 2M clusters, extended L2
# entries over a backing file (qemu-img: 5-12 s each at load 35; 64k
# clusters past 4M are 256G and up: 22 s and more, in bench/RESULTS.md)
create -f qcow2 -o cluster_size=2M,preallocation=metadata n.qcow2 9T
create -f qcow2 -o cluster_size=1M,extended_l2=on,preallocation=metadata -b q-qcow2.qcow2 -F qcow2 n.qcow2 5T
create -f qcow2 -o cluster_size=512,refcount_bits=64,preallocation=falloc n.qcow2 12M
create -f qcow2 -o cluster_size=512,preallocation=full n.qcow2 12M
@q-qcow2.qcow2 resize %i 64G
@q-qcow2.qcow2 resize --preallocation=falloc %i 100M
@q-qcow2.qcow2 resize --preallocation=full %i +1M
# resize --shrink: the same bytes and the same allocation (FIEMAP): what
# QEMU frees it discards (vbd-img kept the clusters amid the file, and
# ended the file at the L1 table's entries after a shrink to an L1 table's
# boundary, qemu-img at a cluster's end)
resize --shrink sh.qcow2 100M
resize --shrink sh.qcow2 650M
resize --shrink sh.qcow2 1G
# the old table of nc.qcow2 gives way to a copy, which goes; the old one's
# cluster keeps its bytes and space as QEMU leaves it (vbd punched it)
resize --shrink nc.qcow2 2M
# found by tests/integration/imgsweep.py (round 29): resize takes its last
# word as the size before reading options (qemu-img's argv handling), a
# size of 0 is not positive; commit -b on an image without a backing
# file, commit -p's 0% before an error; rebase -F checked as a driver
# name, rebase -u without -b removes the backing file; snapshot -U with a
# verb that writes; qed's options checked once its file is made; convert
# -l snapshot.* loads the snapshot in the first source only
resize q-raw.raw -f
resize -f raw q-raw.raw +1M -q
resize --shrink q-raw.raw
resize -f raw q-raw.raw 0
resize --shrink -f raw -- q-raw.raw -4M
commit -b ov.qcow2 q-qcow2.qcow2
commit -p q-qcow2.qcow2
rebase -b q-raw.raw -F bogus ov.qcow2
rebase -u ov.qcow2
snapshot -U -c s q-qcow2.qcow2
snapshot -U -a s q-vmdk.vmdk
create -f qed -o cluster_size=3k n.qed 1M
create -f qed -o table_size=3 n.qed 1M
create -f qed -o backing_fmt=raw n.qed 1M
convert -O qed -o cluster_size=3k q-raw.raw n.qed
convert -O raw -l snapshot.name=s1 sn.qcow2 q-raw.raw n.raw
convert -O raw -l s1 sn.qcow2 q-raw.raw n.raw
# check -q prints nothing, in json too; raw's preallocation=metadata is
# the file's to refuse (made, left empty); -o's options freed when a
# later option is refused (ASan's leak check)
check -q --output=json q-qcow2.qcow2
create -f raw -o preallocation=metadata n.raw 512
convert -O raw -o preallocation=metadata q-qcow2.qcow2 n.raw
convert -O qcow2 -o lazy_refcounts=on -m 17 q-raw.raw n.qcow2
convert -O vdi -o static=off -S x q-raw.raw n.vdi
amend -o size=8M -f vmdk q-vmdk.vmdk -f
measure -O qcow2 -o extended_l2=on --size x
# a dynamic vdi's blocks are data throughout, holes of the file too (QEMU
# asks the file of a static image only); an empty file name is none; -g
# checked after the open, before whether the image stores bitmaps;
# measure's bad option: getopt's message, the help, exit 0
map sp.vdi
map --output=json sp.vdi
info ''
convert -O raw '' n.raw
bitmap --add -g 1000 q-raw.raw b0
bitmap --add -g 4G q-raw.raw b0
resize --preallocation=falloc -f raw q-raw.raw +0
create -f vhdx -o block_size=3M n.vhdx 4M
create -f vhdx n.vhdx 65T
create -f vpc n.vpc 3T
convert -O vhdx -o block_size=3M q-raw.raw n.vhdx
create -f vpc -o subformat=x n.vpc 4M
create -f qcow2 -o compression_type=lz4,preallocation=bogus n.qcow2 1M
convert -O qcow2 -o compat=0.10,compression_type=lz4 q-raw.raw n.qcow2
create -f qcow2 -o cluster_size=3k,preallocation=bogus n.qcow2 1M
resize --preallocation=metadata -f qcow2 q-qcow2.qcow2 1M
check -f qed -r bogus q-qed.qed --bogus
bitmap --remove -f raw q-qcow2.qcow2 b0
bitmap --merge b1 -f raw q-qcow2.qcow2 b0
measure -O qcow2 -o compat=bogus --size 1M
measure -O qcow2 -o compat=v3 q-raw.raw
measure -O qcow2 -o compat=0.10,refcount_bits=8 --size 1M
measure -O qcow2 -o preallocation=bogus --size 1M
measure -O qcow2 -o cluster_size=3k,compat=bogus --size 1M
bitmap --add -g 1000 q-qcow2.qcow2 ''
bitmap --add q-raw.raw ''
info --output=bogus
check --output=bogus q-raw.raw q-qcow2.qcow2
map --output=bogus -f raw
create -f vhdx -o subformat=diff n.vhdx 4M
# round 30 (imgsweep.py widened): a file of another format opened as vhdx
# or vpc is refused in qemu-img's words (vbd's said what was missing);
# rebase onto an image already in the chain takes the chain's node
# whatever -F says (vbd-img opened the file with -F: refused it, or read
# a qcow2 as raw and copied its bytes), and writes -F as given; --object
# is made where the verb's options meet it (an option's value is not an
# --object; an option refused before it is refused first)
info -f vhdx q-raw.raw
info -f vpc q-qcow2.qcow2
check -f vhdx q-vdi.vdi
info -f vhdx empty
info -f vpc empty
info -f vhdx short
info -f vpc short
convert -f vpc -O raw short n.raw
rebase -b q-qcow2.qcow2 -F raw ov.qcow2
rebase -b ./q-qcow2.qcow2 -F raw ov.qcow2
rebase -b q-qcow2.qcow2 -F qcow2 ov.qcow2
check --output --object secret,id=s0 q-qcow2.qcow2
info --bogus --object bogus,id=x q-qcow2.qcow2
map --object secret,id=s0,data=x --output json q-qcow2.qcow2
# measure: the format's creation options parsed before whether it
# measures, a format that creates nothing refused first; base64 secrets
# taken as QEMU takes them (its alphabet, decoded leniently); an unknown
# option of the file protocol worded as QEMU's ("doesn't support")
measure -O qed -o --output=json --size 1M
measure -O dmg --size 1M
info --object secret,id=s0,data=x,format=base64 q-raw.raw
info --object secret,id=s0,data=a*b,format=base64 q-raw.raw
info --image-opts driver=raw,file.filename=q-raw.raw,file.bogus=1
# -f '' names no driver (vbd-img took it for no -f and probed)
info -f '' q-raw.raw
resize -f '' -- q-raw.raw -1M
compare -F '' q-raw.raw q-qcow2.qcow2
# round 31 (seed 32): check --output=json names the image as given on the
# command line, --image-opts' option string too (vbd-img named the file);
# bitmap -f '' and -F '' name no driver (vbd-img probed); dd's skip past
# the input's end is reported after the output's open, whose error comes
# first (a vmdk of size 0 is one QEMU cannot open)
check --output=json --image-opts driver=qcow2,file.filename=q-qcow2.qcow2
check --output=json --image-opts file.filename=q-qcow2.qcow2,driver=qcow2,lazy-refcounts=on
check --output=json ./q-qcow2.qcow2
bitmap --add -f '' q-qcow2.qcow2 b0
bitmap --merge b0 -b q-qcow2.qcow2 -F '' q-qcow2.qcow2 b1
dd -O vmdk if=q-raw.raw of=n.vmdk skip=9999
dd -O vmdk if=q-raw.raw of=n.vmdk bs=1M skip=5
dd -O qcow2 if=q-raw.raw of=n.qcow2 bs=1M count=2 skip=3
# round 31 (the sweep widened to bench and amend -p, seed 34): bench's
# values checked as qemu-img 7.2 checks them (counts without suffixes, 0
# taken; sizes in cvtnum's words; --pattern with reads taken; the flush
# interval against the depth; -q quiets nothing: qemu-img 7.2 prints its
# two lines all the same), -n is native AIO (not cache=none), a
# request past the end fails with EIO (vbd-img refused a buffer larger
# than the image, wrapped a request that ran past the end); amend -p
# prints qemu-img's progress, and its end after errors too
bench -c 0 -f qcow2 q-qcow2.qcow2
bench -c 4k -f raw q-raw.raw
bench -c 0x10 -s 0 -f raw q-raw.raw
bench -c 1 -s 3 -d 5000 -f raw q-raw.raw
bench -c 1 -s x -f raw q-raw.raw
bench -c 1 -S x -f raw q-raw.raw
bench -c 1 -o x -f raw q-raw.raw
bench -c 1 -o 5M -f raw q-raw.raw
bench -c 1 -s 8M -f raw q-raw.raw
bench -c 1 --pattern=5 -f raw q-raw.raw
bench -c 1 --pattern=256 -f raw q-raw.raw
bench -c 1 -w --flush-interval=1 -f raw q-raw.raw
bench -c 1 -t bogus -f raw q-raw.raw
bench -c 1 -n -f raw q-raw.raw
bench -q -c 1 -w -f raw q-raw.raw
bench -c 0 -s 4k -o 5M -w --pattern=5 -q -f qed q-qed.qed
bench -w -c 2 -d 1 -s 2M -S 3M --pattern=5 -f raw q-raw.raw
bench -w -c 3 -d 1 -s 1M -S 3M --pattern=5 -f raw q-raw.raw
amend -p -o compat=1.1 q-qcow2.qcow2
amend -p -o size=8M q-qcow2.qcow2
amend -p -o bogus=1 q-qcow2.qcow2
amend -p -o compat=1.1 nosuch
amend -p -o compat=1.1
amend -p -q -o compat=1.1 q-qcow2.qcow2
# (amend writes the whole header cluster once past its option checks, even
# to refuse the backing file or lazy refcounts after: the files' allocation
# compared)
amend -o size=4M q-qcow2.qcow2
amend -o backing_file=x q-qcow2.qcow2
amend -o lazy_refcounts=on,compat=0.10 q-qcow2.qcow2
amend -o lazy_refcounts=on q-qcow2.qcow2
# qcow2's creation options checked in qemu-img 7.2's order (seed 33):
# extended L2 entries against the version, the cluster size, lazy
# refcounts against the version, the refcount width, then against the
# version, the compression type (vbd-img checked the refcount width with
# the cluster size, and the version's limits together)
create -f qcow2 -o refcount_bits=3,extended_l2=on,cluster_size=4k n.qcow2 2M
create -f qcow2 -o compat=0.10,extended_l2=on,lazy_refcounts=on n.qcow2 1M
create -f qcow2 -o compat=0.10,lazy_refcounts=on,refcount_bits=3 n.qcow2 1M
create -f qcow2 -o compat=0.10,extended_l2=on,refcount_bits=8 n.qcow2 1M
create -f qcow2 -o compat=0.10,compression_type=zstd,extended_l2=on n.qcow2 1M
# create -u with a backing format no driver has: qed makes its file first
# and leaves it empty, vmdk names no backing format and refuses the
# backing file itself (vbd-img refused the format name first for both;
# README's round-30 list)
create -f qed -u -b q-qcow2.qcow2 -F bogus n.qed 1M
create -f qed -u -b q-qcow2.qcow2 -F bogus -o cluster_size=3k n.qed 1M
create -f vmdk -u -b q-qcow2.qcow2 -F bogus n.vmdk 1M
create -f qcow2 -u -b q-qcow2.qcow2 -F bogus n.qcow2 1M
# rebase (seed 35): a format without backing files is refused once the
# new backing file is open and -F checked (vbd-img refused it first), its
# removal named '(null)' as qemu-img's printf names it, 100% printed once
# the change was tried; bench takes no --object (qemu-img 7.2's has none)
rebase -b missing.qcow2 -f raw q-raw.raw
rebase -u -f raw q-raw.raw
rebase -p -u -f raw q-raw.raw
rebase -p -b q-qcow2.qcow2 -f raw q-raw.raw
rebase -p -b q-qcow2.qcow2 ov.qcow2
bench -c 1 --object secret,id=s0,data=x -f raw q-raw.raw
# seed 36: check and compare check -T in qemu-img's words (check ignored
# it); convert --target-image-opts with -O refused at the target's open; a
# compressed convert into a format that cannot compress refused before the
# target's size is
check -T bogus q-qcow2.qcow2
check --output=json -r leaks -q -T bogus q-qcow2.qcow2
compare -s -T bogus -p q-qcow2.qcow2 q-raw.raw
convert -O raw -n --target-image-opts q-vhdx.vhdx driver=qcow2,file.filename=ov.qcow2
convert -O raw -c -n q-qcow2.qcow2 empty
!qemu-img prints its whole help text after getopt's message, vbd-img measure's own (exit 0 both) | measure -O qcow2 -Z
!the same, for a missing value | measure --size
CASES
