#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Differential sweep of the image tools: random command lines, the same
for qemu-img / qemu-io 7.2 and vbd-img / vbd-io, their results compared.

    imgsweep.py [--seed S] [--count N | --cases I,J,...] [--keep DIR] [--only img|io] [-v]

Case i of seed S (random.Random("S:i")) is one command line: a qemu-img
verb (create with each format's -o options and subformats, -b/-F, sizes
with suffixes; convert with -O/-o/-c/-B/-F/-n/-S/-W/-m/--target-is-zero/
--bitmaps/-l; info, check, map in json and human; snapshot -c/-l/-a/-d;
resize with +/-/--shrink/--preallocation; rebase -u/-b/-F/-t/-T/-U; commit
-b/-d/-p/-t/-r; compare -s/-p/-T; amend -p/-t/--force; measure; bitmap;
dd -U; bench; convert -C/-t/-T/-r/--salvage/--target-image-opts; check
-T; --image-opts with driver options, --object, -U on every verb qemu-img
7.2's help gives them) or a qemu-io command line (-c
read/write -P/-z/-u/-c/-f/-q/-n, readv/writev and aio_read/aio_write of
several vectors, aio_flush, flush, discard, map, alloc, length, info,
truncate, open -o; --image-opts, -d/-C/-s/-n/-t/-i). About one in five is spoiled: an unknown option, a bad value, an
argument missing. Each tool runs it in its own copy of the same images
(base/: one 4 MiB image of each format with data and zeroes written by
qemu-io, a qcow2 with other data, a backing chain of three, a qcow2 with
two internal snapshots, one with persistent bitmaps, a split and a flat
vmdk, a qcow2 whose backing file is missing), side by side.
Compared: the exit code; stdout, the tool's name, disk sizes, snapshot
dates, a vmdk's random CID, timings and progress masked; the first line
of stderr (the tool's name masked); the files left; and each image either
tool wrote: qemu-img compare, qemu-img check's report (allocation figures
aside) and qemu-img info --output=json's format-defined members.

KNOWN lists the differences README explains (the exit code is still
compared), SAME_MEANING the first lines of stderr that say the same in
other words; check's "Image end offset" is compared only for the verbs
that lay out a new image (README). Each other difference is printed with
its command line (--cases I reruns case I of the seed), and kept (both
directories) under DIR with --keep.
Exit status: 0 no difference, 1 a difference, 2 the harness failed.
Binaries: $QEMU_IMG, $QEMU_IO (default from PATH); $VBD_IMG, $VBD_IO
(default $VBD_BUILD/src/tools/, else from PATH).
"""
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

FORMATS = ["raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed"]
# every image of base/ (made by setup())
IMAGES = [f"q.{f}" for f in FORMATS] + ["b.qcow2", "ov.qcow2", "ov2.qcow2", "sn.qcow2", "bm.qcow2"]
# and a split vmdk (sp.vmdk: its descriptor, two extents sp-s00N.vmdk), a
# flat one (fl.vmdk, fl-flat.vmdk), a qcow2 whose backing file is missing
# (nb.qcow2)
EXTRA_IMAGES = ["sp.vmdk", "fl.vmdk", "nb.qcow2"]
TIMEOUT = 120


def tool_paths():
    build = os.environ.get("VBD_BUILD")

    def vbd(name, var):
        if os.environ.get(var):
            return os.environ[var]
        if build and os.path.exists(os.path.join(build, "src/tools", name)):
            return os.path.join(build, "src/tools", name)
        return shutil.which(name) or name
    return {"img": (os.environ.get("QEMU_IMG", "qemu-img"), vbd("vbd-img", "VBD_IMG")),
            "io": (os.environ.get("QEMU_IO", "qemu-io"), vbd("vbd-io", "VBD_IO"))}


class HarnessError(Exception):
    pass


# the qemu-img runs of the two sides (copies, info, check) side by side: on
# a loaded host each waits for a CPU, most of a case's time (subprocess
# releases the GIL while it waits)
POOL = ThreadPoolExecutor(3)


def side_by_side(fn, *calls):
    """fn(*args) for each args tuple of calls, at once; their results in order."""
    futures = [POOL.submit(fn, *args) for args in calls]
    return [f.result() for f in futures]


def sh(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        raise HarnessError(f"{cmd}: exit {r.returncode}: {r.stdout[-500:]}")


def setup(base):
    os.makedirs(base)
    for f in FORMATS:
        sh(f"qemu-img create -q -f {f} q.{f} 4M", base)
        sh(f"qemu-io -f {f} -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' -c 'write -z 2M 64k' q.{f} >/dev/null", base)
    sh("qemu-img create -q -f qcow2 b.qcow2 4M && "
       "qemu-io -f qcow2 -c 'write -P 5 0 128k' -c 'write -P 6 3M 64k' b.qcow2 >/dev/null", base)
    sh("qemu-img create -q -f qcow2 -b q.qcow2 -F qcow2 ov.qcow2 && "
       "qemu-io -f qcow2 -c 'write -P 3 512k 64k' ov.qcow2 >/dev/null", base)
    sh("qemu-img create -q -f qcow2 -b ov.qcow2 -F qcow2 ov2.qcow2 && "
       "qemu-io -f qcow2 -c 'write -P 4 1M 4k' -c 'write -z 0 4k' ov2.qcow2 >/dev/null", base)
    sh("cp q.qcow2 sn.qcow2 && qemu-img snapshot -c s1 sn.qcow2 && "
       "qemu-io -f qcow2 -c 'write -P 7 0 4k' sn.qcow2 >/dev/null && qemu-img snapshot -c s2 sn.qcow2", base)
    sh("cp q.qcow2 bm.qcow2 && qemu-img bitmap --add bm.qcow2 b0 && "
       "qemu-img bitmap --add -g 128k --disable bm.qcow2 b1 && "
       "qemu-io -f qcow2 -c 'write -P 8 192k 64k' bm.qcow2 >/dev/null", base)
    sh("qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse sp.vmdk 4M && "
       "qemu-io -f vmdk -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' sp.vmdk >/dev/null && "
       "qemu-img create -q -f vmdk -o subformat=monolithicFlat fl.vmdk 4M && "
       "qemu-io -f vmdk -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' fl.vmdk >/dev/null && "
       "qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 nb.qcow2 4M", base)


# ---------------------------------------------------------------- choosing
class Gen:
    def __init__(self, rng):
        self.r = rng

    def pick(self, seq):
        return self.r.choice(list(seq))

    def maybe(self, p=0.5):
        return self.r.random() < p

    def fmt(self, image=None):
        """-f's value: mostly the image's own format."""
        if image and self.maybe(0.85):
            return image.rsplit(".", 1)[1]
        return self.pick(FORMATS + ["bogus", "qcow"])

    def image(self, kinds=None):
        if not kinds and self.maybe(0.12):
            return self.pick(EXTRA_IMAGES)
        return self.pick(kinds or IMAGES)

    def image_opts(self, img, extra=True):
        """--image-opts' spec of img: driver and file, some driver options"""
        fmt = img.rsplit(".", 1)[1]
        o = [f"driver={fmt}", f"file.filename={img}"]
        if extra and self.maybe(0.5):
            per = {"qcow2": ["l2-cache-size=64k", "cache-size=1M", "lazy-refcounts=on", "pass-discard-request=off",
                             "overlap-check=none", "refcount-cache-size=4k", "l2-cache-entry-size=4k"],
                   "raw": ["offset=512", "size=1M", "offset=64k,size=64k", "size=3", "offset=8M"],
                   "vpc": ["force_size_calc=chs", "force_size_calc=current_size"],
                   "qed": [], "vmdk": [], "vhdx": [], "vdi": []}.get(fmt, [])
            o.append(self.pick(per + ["read-only=on", "discard=unmap", "detect-zeroes=on", "cache.no-flush=on",
                                      "file.locking=off", "file.aio=threads", "bogus=1", "file.bogus=1",
                                      "detect-zeroes=bogus"]))
        return ",".join(o)

    def opened(self, args, img, fopt=None, p_opts=0.12):
        """args with img, as a file name (with -f fopt) or --image-opts'
        spec; -U and --object sometimes"""
        if self.maybe(0.08):
            args = args + ["--object", self.pick(["secret,id=s0,data=x", "secret,id=s0", "bogus,id=x",
                                                  "secret,id=s0,data=x,format=base64"])]
        if self.maybe(p_opts):
            args = args + ["--image-opts"]
            if fopt and self.maybe(0.1):
                args += ["-f", fopt]
            return args + [self.image_opts(img)]
        if fopt:
            args = args + ["-f", fopt]
        return args + [img]

    def cache(self):
        """-t/-T's value: the cache modes, and a bad one"""
        return self.pick(["none", "writeback", "writethrough", "directsync", "unsafe", "bogus"])

    def size(self, big=True):
        small = ["0", "512", "1k", "1.5k", "64k", "1M", "1.5M", "4M", "10M", "0x200000", "1e3", "33M"]
        bad = ["-1", "x", "8E", "1Q", "4M,", ""]
        if self.maybe(0.1):
            return self.pick(bad)
        return self.pick(small + (["1G", "64G", "1T"] if big else []))

    def fmt_options(self, fmt, prealloc_ok=True):
        """Some of a format's -o options, valid and not."""
        opts = {
            "raw": {"preallocation": ["off", "falloc", "full", "metadata"]},
            "qcow2": {"cluster_size": ["512", "4k", "64k", "2M", "1000", "3k", "4M"],
                      "compat": ["0.10", "1.1", "v3", "bogus"],
                      "lazy_refcounts": ["on", "off"],
                      "refcount_bits": ["1", "8", "16", "64", "3"],
                      "preallocation": ["off", "metadata", "falloc", "full", "bogus"],
                      "extended_l2": ["on", "off"],
                      "compression_type": ["zlib", "zstd", "lz4"]},
            "vmdk": {"subformat": ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                                   "twoGbMaxExtentFlat", "streamOptimized", "vmfs"],
                     "adapter_type": ["ide", "lsilogic", "buslogic", "legacyESX", "scsi"],
                     "hwversion": ["4", "6", "undefined"],
                     "compat6": ["on", "off"],
                     "zeroed_grain": ["on", "off"]},
            "vhdx": {"subformat": ["dynamic", "fixed", "diff"],
                     "block_size": ["1M", "8M", "0", "3M", "512M"],
                     "log_size": ["1M", "4M", "3M"],
                     "block_state_zero": ["on", "off"]},
            "vpc": {"subformat": ["dynamic", "fixed", "differencing"],
                    "force_size": ["on", "off"]},
            "vdi": {"static": ["on", "off"]},
            "qed": {"cluster_size": ["4k", "64k", "1M", "3k"],
                    "table_size": ["1", "4", "16", "3"]},
        }.get(fmt, {})
        out = []
        for k in sorted(opts):
            if self.maybe(0.3):
                v = self.pick(opts[k])
                if k == "preallocation" and not prealloc_ok and v in ("falloc", "full"):
                    v = "metadata"
                out.append(f"{k}={v}")
        if self.maybe(0.05):
            out.append(self.pick(["bogus=1", "size=8M", "cluster_size", "help"]))
        self.r.shuffle(out)
        return ",".join(out)

    # ---------- qemu-img verbs ----------
    def v_create(self):
        fmt = self.pick(FORMATS + ["qcow2", "qcow2", "raw"])
        args = ["create"]
        if self.maybe(0.95):
            args += ["-f", fmt if self.maybe(0.97) else "bogus"]
        size = self.size()
        big = size in ("1G", "64G", "1T")
        o = self.fmt_options(fmt, prealloc_ok=not big)
        if big and fmt in ("vhdx", "vpc", "vmdk", "vdi") and re.search(r"fixed|Flat|static=on", o):
            size = "4M"
        if o:
            args += ["-o", o]
        backing = fmt in ("qcow2", "vmdk", "qed", "vhdx", "vpc") and self.maybe(0.25)
        if backing and self.maybe(0.35):
            # the backing file in -o (backing_file=, backing_fmt=), -F beside it sometimes
            bo = ["backing_file=" + self.pick(["q.qcow2", "ov.qcow2", "q.raw", "missing.qcow2", "nb.qcow2"])]
            if self.maybe(0.7):
                bo.append("backing_fmt=" + self.pick(["qcow2", "raw", "bogus"]))
            args += ["-o", ",".join(([o] if o else []) + bo)] if self.maybe(0.5) or not o else ["-o", ",".join(bo)]
            if self.maybe(0.15):
                args += ["-F", self.pick(["qcow2", "raw"])]
            if self.maybe(0.2):
                args += ["-u"]
            backing = False
            args.append(f"n.{fmt}")
            if self.maybe(0.5):
                args.append(size)
            return args
        if backing:
            args += ["-b", self.pick(["q.qcow2", "ov.qcow2", "q.raw", "missing.qcow2", "q.vmdk"])]
            if self.maybe(0.85):
                args += ["-F", self.pick(["qcow2", "raw", "vmdk", "bogus"])]
            if self.maybe(0.2):
                args += ["-u"]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["--object", self.pick(["secret,id=s0,data=x", "bogus,id=x", "secret,id=s0"])]
        args.append(f"n.{fmt}")
        if not backing or self.maybe(0.5):
            args.append(size)
        return args

    def v_info(self):
        args = ["info"]
        img = self.image()
        if self.maybe(0.6):
            args += [self.pick(["--output=json", "--output=human", "--output=bogus"])]
        if self.maybe(0.3):
            args += ["--backing-chain"]
        if self.maybe(0.1):
            args += ["-U"]
        return self.opened(args, img, self.fmt(img) if self.maybe(0.4) else None)

    def v_check(self):
        args = ["check"]
        img = self.image()
        fopt = self.fmt(img) if self.maybe(0.4) else None
        if self.maybe(0.5):
            args += ["--output=json"]
        if self.maybe(0.4):
            args += ["-r", self.pick(["leaks", "all", "bogus"])]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["-U"]
        if self.maybe(0.08):
            args += ["-T", self.cache()]
        return self.opened(args, img, fopt)

    def v_map(self):
        args = ["map"]
        img = self.image()
        fopt = self.fmt(img) if self.maybe(0.4) else None
        if self.maybe(0.6):
            args += [self.pick(["--output=json", "--output=human"])]
        if self.maybe(0.3):
            args += ["--start-offset=" + self.pick(["0", "512", "1M", "2M", "4M", "5M", "-1", "x"])]
        if self.maybe(0.3):
            args += ["--max-length=" + self.pick(["0", "64k", "1M", "1", "x"])]
        if self.maybe(0.05):
            args += ["-U"]
        return self.opened(args, img, fopt)

    def v_snapshot(self):
        img = self.pick(["sn.qcow2", "sn.qcow2", "q.qcow2", "ov.qcow2", "bm.qcow2", "q.raw", "q.vmdk", "q.qed"])
        op = self.pick(["-c", "-l", "-a", "-d", "-c", "-a", "-d"])
        args = ["snapshot"]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.1):
            args += ["-U"]
        if op == "-l":
            args += ["-l"]
        else:
            args += [op, self.pick(["s1", "s2", "new", "1", "2", "nope"])]
        if self.maybe(0.05):
            args += ["-l"]
        return self.opened(args, img, p_opts=0.08)

    def v_resize(self):
        img = self.image([f"q.{f}" for f in FORMATS] + ["b.qcow2", "ov.qcow2", "sn.qcow2", "bm.qcow2"])
        args = ["resize"]
        if self.maybe(0.3):
            args += ["-f", self.fmt(img)]
        if self.maybe(0.3):
            args += ["--shrink"]
        pre = self.maybe(0.25)
        if pre:
            args += ["--preallocation=" + self.pick(["off", "metadata", "falloc", "full", "bogus"])]
        if self.maybe(0.1):
            args += ["-q"]
        size = self.pick(["+1M", "-1M", "8M", "2M", "1M", "+0", "4M", "+64k", "-4M", "3.5M", "1G", "x", "-5M",
                          "+1", "5000000"])
        if pre and size == "1G":
            size = "16M"
        args = self.opened(args, img, p_opts=0.08)
        # "--" keeps a size that starts with "-" from being an option
        if size.startswith("-"):
            args.insert(len(args) - 1, "--")
        return args + [size]

    def v_rebase(self):
        img = self.pick(["ov.qcow2", "ov2.qcow2", "b.qcow2", "ov.qcow2", "q.raw", "sn.qcow2"])
        args = ["rebase"]
        if self.maybe(0.4):
            args += ["-u"]
        if self.maybe(0.9):
            args += ["-b", self.pick(["q.qcow2", "b.qcow2", "q.raw", "", "missing.qcow2", "ov.qcow2", "q.vdi"])]
            if args[-1] and self.maybe(0.8):
                args += ["-F", self.pick(["qcow2", "raw", "vdi", "bogus"])]
        if self.maybe(0.2):
            args += ["-f", self.fmt(img)]
        if self.maybe(0.1):
            args += ["-p"]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["-U"]
        if self.maybe(0.08):
            args += ["-t", self.cache()]
        if self.maybe(0.05):
            args += ["-T", self.cache()]
        return self.opened(args, img, p_opts=0.08)

    def v_commit(self):
        img = self.pick(["ov.qcow2", "ov2.qcow2", "ov2.qcow2", "q.qcow2", "q.raw"])
        args = ["commit"]
        if self.maybe(0.3):
            args += ["-b", self.pick(["q.qcow2", "ov.qcow2", "b.qcow2", "ov2.qcow2"])]
        if self.maybe(0.3):
            args += ["-d"]
        if self.maybe(0.2):
            args += ["-p"]
        fopt = self.fmt(img) if self.maybe(0.2) else None
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.1):
            args += ["-t", self.cache()]
        if self.maybe(0.1):
            args += ["-r", self.pick(["0", "1M", "100M", "x", "-1"])]
        return self.opened(args, img, fopt, p_opts=0.08)

    def v_compare(self):
        a, b = self.image(), self.image()
        args = ["compare"]
        if self.maybe(0.3):
            args += ["-s"]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["-U"]
        if self.maybe(0.05):
            args += ["-T", self.cache()]
        if self.maybe(0.1):
            args += ["-p"]
        if self.maybe(0.1):
            return args + ["--image-opts", self.image_opts(a), self.image_opts(b)]
        if self.maybe(0.3):
            args += ["-f", self.fmt(a)]
        if self.maybe(0.3):
            args += ["-F", self.fmt(b)]
        return args + [a, b]

    def v_amend(self):
        img = self.pick(["q.qcow2", "q.qcow2", "sn.qcow2", "bm.qcow2", "ov.qcow2", "q.raw", "q.vmdk", "q.qed"])
        o = ",".join(self.r.sample(["compat=0.10", "compat=1.1", "lazy_refcounts=on", "lazy_refcounts=off",
                                    "size=8M", "size=2M", "cluster_size=4k", "refcount_bits=16", "bogus=1",
                                    "preallocation=full", "compat=bogus", "backing_fmt=qcow2"],
                                   self.r.randint(1, 2)))
        args = ["amend"]
        if self.maybe(0.9):
            args += ["-o", o]
        fopt = self.fmt(img) if self.maybe(0.5) else None
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.1):
            args += ["-p"]
        if self.maybe(0.08):
            args += ["-t", self.cache()]
        if self.maybe(0.1):
            args += ["--force"]
        return self.opened(args, img, fopt, p_opts=0.08)

    def v_measure(self):
        fmt = self.pick(["qcow2", "qcow2", "raw", "qed", "vdi", "bogus"])
        args = ["measure"]
        if self.maybe(0.95):
            args += ["-O", fmt]
        o = self.fmt_options(fmt)
        if o:
            args += ["-o", o]
        if self.maybe(0.4):
            args += ["--output=json"]
        if self.maybe(0.4):
            return args + ["--size", self.size()]
        img = self.image()
        fopt = self.fmt(img) if self.maybe(0.2) else None
        if img == "sn.qcow2" and self.maybe(0.5):
            args += ["-l", self.pick(["snapshot.name=s1", "s2", "snapshot.id=9"])]
        return self.opened(args, img, fopt, p_opts=0.08)

    def v_bitmap(self):
        img = self.pick(["bm.qcow2", "bm.qcow2", "q.qcow2", "q.raw"])
        args = ["bitmap"]
        for _ in range(self.r.randint(1, 2)):
            op = self.pick(["--add", "--remove", "--clear", "--enable", "--disable", "--merge"])
            args.append(op)
            if op == "--merge":
                args.append(self.pick(["b0", "b1", "nope"]))
                if self.maybe(0.3):
                    args += ["-b", self.pick(["bm.qcow2", "q.qcow2"])]
                    if self.maybe(0.7):
                        args += ["-F", "qcow2"]
        if "--add" in args and self.maybe(0.4):
            args += ["-g", self.pick(["64k", "512", "128k", "1000", "4G"])]
        if self.maybe(0.2):
            args += ["-f", self.fmt(img)]
        return args + [img, self.pick(["b0", "b1", "b2", "new", ""])]

    def v_dd(self):
        src = self.image()
        args = ["dd"]
        if self.maybe(0.4):
            args += ["-f", self.fmt(src)]
        if self.maybe(0.6):
            args += ["-O", self.pick(FORMATS)]
        if self.maybe(0.05):
            args += ["-U"]
        if self.maybe(0.08):
            args += ["--image-opts", f"if={self.image_opts(src)}", "of=n.img"]
        else:
            args += [f"if={src}", "of=n.img"]
        if self.maybe(0.7):
            args += ["bs=" + self.pick(["512", "4k", "64k", "1M", "0", "x", "1536"])]
        if self.maybe(0.6):
            args += ["count=" + self.pick(["1", "3", "100", "0", "-1"])]
        if self.maybe(0.4):
            args += ["skip=" + self.pick(["0", "1", "7", "9999"])]
        if self.maybe(0.05):
            args += ["bogus=1"]
        return args

    def v_bench(self):
        """qemu-img bench: a few requests (its timing line masked)"""
        img = self.image([f"q.{f}" for f in FORMATS] + ["ov.qcow2", "b.qcow2"])
        args = ["bench", "-c", self.pick(["1", "16", "100", "0", "x"])]
        if self.maybe(0.3):
            args += ["-d", self.pick(["1", "4", "64", "x"])]  # (-d 0: qemu-img 7.2 hangs)
        if self.maybe(0.3):
            args += ["-s", self.pick(["512", "4k", "64k", "3", "0"])]
        if self.maybe(0.2):
            args += ["-S", self.pick(["0", "4k", "1M"])]
        if self.maybe(0.2):
            args += ["-o", self.pick(["0", "1M", "4M", "5M", "x"])]
        if self.maybe(0.3):
            args += ["-w"]
            if self.maybe(0.5):
                args += ["--pattern=" + self.pick(["0", "5", "255", "256", "x"])]
            if self.maybe(0.3):
                args += ["--flush-interval=" + self.pick(["0", "1", "8", "x"])]
                if self.maybe(0.3):
                    args += ["--no-drain"]
        if self.maybe(0.1):
            args += ["-n"]
        if self.maybe(0.1):
            args += ["-i", self.pick(["threads", "native", "io_uring", "bogus"])]
        if self.maybe(0.1):
            args += ["-t", self.cache()]
        if self.maybe(0.2):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["-U"]
        return self.opened(args, img, self.fmt(img) if self.maybe(0.4) else None, p_opts=0.08)

    def v_convert(self):
        fmt = self.pick(FORMATS + ["qcow2", "qcow2", "raw"])
        src = self.image()
        args = ["convert"]
        if self.maybe(0.3):
            args += ["-f", self.fmt(src)]
        if self.maybe(0.95):
            args += ["-O", fmt]
        o = self.fmt_options(fmt)
        if not o and fmt in ("vmdk", "vhdx", "vdi", "qed") and self.maybe(0.4):
            o = self.fmt_options(fmt)
        if o:
            args += ["-o", o]
        if self.maybe(0.2):
            args += ["-c"]
        if self.maybe(0.05):
            args += ["-U"]
        n = self.maybe(0.15)
        if n:
            args += ["-n"]
            if self.maybe(0.4):
                args += ["--target-is-zero"]
        elif self.maybe(0.05):
            args += ["--target-is-zero"]
        if not n and self.maybe(0.15):
            args += ["-B", self.pick(["q.qcow2", "b.qcow2", "missing.qcow2"])]
            if self.maybe(0.7):
                args += ["-F", self.pick(["qcow2", "raw"])]
        if self.maybe(0.2):
            args += ["-S", self.pick(["0", "4k", "512", "3", "64k", "x"])]
        if self.maybe(0.15):
            args += ["-W"]
        if self.maybe(0.15):
            args += ["-m", self.pick(["1", "8", "16", "17", "0"])]
        if self.maybe(0.1) or src == "bm.qcow2" and self.maybe(0.5):
            args += ["--bitmaps"]
        if src == "sn.qcow2" and self.maybe(0.4):
            args += ["-l", self.pick(["snapshot.name=s1", "s2", "snapshot.id=1", "nope"])]
        if self.maybe(0.1):
            args += ["-p"]
        if self.maybe(0.1):
            args += ["-q"]
        if self.maybe(0.05):
            args += ["-C"]
        if self.maybe(0.08):
            args += ["-t", self.cache()]
        if self.maybe(0.05):
            args += ["-T", self.cache()]
        if self.maybe(0.05):
            args += ["-r", self.pick(["0", "1M", "100M", "x"])]
        if self.maybe(0.05):
            args += ["--salvage"]
        srcs = [src]
        if self.maybe(0.1):
            srcs.append(self.image())
        dst = self.pick(["b.qcow2", "q.raw", "n.img"]) if n else f"n.{fmt}"
        if self.maybe(0.05):
            # the target as an option string (qemu-img wants -n with it)
            args += ["--target-image-opts"]
            dst = self.image_opts(dst if os.path.splitext(dst)[1][1:] in FORMATS else "q.raw", extra=False)
        if self.maybe(0.08) and "-f" not in args:
            return args + ["--image-opts"] + [self.image_opts(x) for x in srcs] + [dst]
        return args + srcs + [dst]

    # ---------- qemu-io ----------
    def io_cmd(self, writable):
        off = self.pick(["0", "512", "4k", "64k", "1M", "2M", "3M", "4190208", "4M", "8M", "1", "x", "-1",
                         "0x100000", "1M", "0"])
        ln = self.pick(["512", "4k", "64k", "1M", "4k", "64k", "0", "1", "3", "x", "8M"])
        pat = self.pick(["1", "2", "0", "5", "0xab"])
        c = self.pick(["read", "read", "read", "write", "write", "write", "discard", "map", "alloc", "length",
                       "info", "truncate", "flush", "writev", "readv", "aio_read", "aio_write", "aio_flush",
                       "writev", "readv", "aio_write"])

        def lens():
            # several iovecs: mostly sector multiples, sometimes not
            return " ".join(self.pick(["512", "1k", "4k", "64k", "512", "3", "0", "1536"])
                            for _ in range(self.r.randint(1, 4)))
        if c == "read":
            return f"read{' -P ' + pat if self.maybe(0.7) else ''}{' -q' if self.maybe(0.2) else ''} {off} {ln}"
        if c == "write":
            how = self.pick(["-P " + pat, "-P " + pat, "-z", "-z -u", "-c -P " + pat, "", "-u -P 3", "-f -P " + pat,
                             "-q -P " + pat, "-c", "-z -f", "-n -P " + pat, "-c -z", "-u", "-z -u -f"])
            return f"write {how} {off} {ln}".replace("  ", " ")
        if c == "discard":
            return f"discard{' -q' if self.maybe(0.2) else ''} {off} {ln}"
        if c == "alloc":
            return f"alloc {off} {ln}" if self.maybe(0.8) else f"alloc {off}"
        if c == "truncate":
            return f"truncate {self.pick(['8M', '2M', '4M', '1M', 'x', '4194304', '3M', '0'])}"
        if c == "writev":
            how = self.pick(["-P " + pat, "-P " + pat, "-q -P " + pat, "-f -P " + pat, ""])
            return f"writev {how} {off} {lens()}".replace("  ", " ")
        if c == "readv":
            how = self.pick(["-P " + pat, "-P " + pat, "-q -P " + pat, "-q", "-C -P " + pat])
            return f"readv {how} {off} {lens()}".replace("  ", " ")
        if c == "aio_read":
            how = self.pick(["-P " + pat, "-P " + pat, "-q -P " + pat, "-q", "-i -P " + pat])
            return f"aio_read {how} {off} {lens() if self.maybe(0.5) else ln}"
        if c == "aio_write":
            how = self.pick(["-P " + pat, "-P " + pat, "-q -P " + pat, "-z", "-z -u", "-f -P " + pat, "-i -P " + pat,
                             "-u -P " + pat])
            return f"aio_write {how} {off} {lens() if self.maybe(0.5) else ln}"
        return c

    def io(self):
        img = self.pick([f"q.{f}" for f in FORMATS] * 2 + ["ov.qcow2", "ov2.qcow2", "sn.qcow2", "b.qcow2"] +
                        (EXTRA_IMAGES if self.maybe(0.3) else []))
        fmt = img.rsplit(".", 1)[1]
        args = []
        ro = self.maybe(0.15)
        if ro:
            args += ["-r"]
        if self.maybe(0.05):
            args += ["-U"]
        if self.maybe(0.05):
            args += [self.pick(["-d", "--discard=unmap", "-d ignore", "-C", "-s", "-n", "-t writeback", "-t unsafe",
                                "-t bogus", "-i threads", "-i bogus"])]
            args = " ".join(args).split()
        how = self.pick(["file"] * 8 + ["open", "image-opts"])
        if how == "file" and self.maybe(0.9):
            args += ["-f", fmt if self.maybe(0.93) else self.pick(FORMATS + ["bogus"])]
        cmds = []
        if how == "open":
            o = [f"driver={fmt}"]
            if self.maybe(0.3):
                o.append(self.pick(["read-only=on", "discard=unmap", "bogus=1", "cache.no-flush=on"]))
            cmds.append(f"open{' -r' if self.maybe(0.1) else ''} -o {','.join(o)} {img}")
        elif how == "image-opts":
            args += ["--image-opts"]
        for _ in range(self.r.randint(1, 6)):
            cmds.append(self.io_cmd(not ro))
            # qemu-io prints an aio request's completion when its main loop
            # gets to it (at the next synchronous request, the aio_flush or
            # the exit): QEMU's own order varies; an aio_flush right after
            # fixes it
            if cmds[-1].startswith(("aio_read", "aio_write")):
                cmds.append("aio_flush")
        if self.maybe(0.3):
            cmds.append("map")
        for c in cmds:
            args += ["-c", c]
        if how == "file":
            args.append(img)
        elif how == "image-opts":
            args.append(self.image_opts(img))
        return args

    # ---------- spoiling ----------
    def spoil(self, args):
        how = self.pick(["option", "drop", "value"])
        args = list(args)
        if how == "option":
            args.insert(self.r.randint(1, len(args)), self.pick(["--bogus", "-Z", "--output", "-o", "-f"]))
        elif how == "drop" and len(args) > 2:
            del args[self.r.randint(1, len(args) - 1)]
        else:
            i = self.r.randint(1, len(args) - 1) if len(args) > 1 else 0
            args[i] = self.pick(["", "x", "-", "0", "nope.qcow2"])
        return args


VERBS = ["create", "convert", "info", "check", "map", "snapshot", "resize", "rebase", "commit", "compare",
         "amend", "measure", "bitmap", "dd", "bench"]
WEIGHTS = [14, 16, 5, 5, 4, 6, 7, 5, 5, 5, 4, 4, 5, 4, 3]


def make_case(seed, index, only):
    rng = random.Random(f"{seed}:{index}")
    g = Gen(rng)
    tool = only or ("io" if rng.random() < 0.3 else "img")
    if tool == "io":
        args = g.io()
    else:
        verb = rng.choices(VERBS, WEIGHTS)[0]
        args = getattr(g, "v_" + verb)()
    # (an aio command keeps its aio_flush: not spoiled)
    if rng.random() < 0.2 and not (tool == "io" and any(a.startswith("aio_") for a in args)):
        args = g.spoil(args)
    return tool, args


# ---------------------------------------------------------------- known
# (tool, regex over the command line, why): differences README explains;
# the exit code is still compared, unless why starts "not fixed"
KNOWN = [
    ("img", r"^convert .*-O qed .*table_size=1\b",
     "not fixed: README: a qed image of one-cluster tables: QEMU cannot open one (its own create makes it), "
     "vbd can"),
    ("img", r"^create .*-f qed .*table_size=1\b", "not fixed: README: the same (create itself is the same)"),
    ("img", r"^snapshot( \S+)* -f( |$)", "README: snapshot also takes -f (qemu-img: unrecognized option)"),
    ("img", r"-[oO] (\S*,)?help(,\S*)?( |$)",
     "README: -o help lists no encrypt.* options (no encryption); exit and the rest compared in img-parity"),
    ("img", r"-[fFO] qcow( |$)", "not fixed: README: vbd has no qcow (version 1) driver"),
    ("img", r"detect-zeroes=bogus", "README: a bad enum value in an option string is refused in QMP's words"),
    ("io", r"detect-zeroes=bogus", "README: a bad enum value in an option string is refused in QMP's words"),
    ("io", r"^(?=.*write -z)(?=.*-c '?(map|alloc)\b)(?=.*\b(q|sp)\.(vmdk|vdi)\b)",
     "README: vmdk (sparse) and vdi (dynamic): write -z over an unallocated grain or block leaves it unallocated "
     "(map and alloc show it; the data read is the same)"),
    ("img", r"^measure .*-O (vmdk|vhdx|vpc|parallels)",
     "README: measure also sizes vmdk, vhdx, vpc and parallels targets"),
    ("img", r"^snapshot .*-a \S+ .*bm\.qcow2(,\S*)?$",
     "README: snapshot -a with persistent bitmaps makes the enabled ones dirty (qemu-img refuses)"),
    ("img", r"^amend .*compat=0\.10.* bm\.qcow2$",
     "qcow228: amend compat=0.10 with bitmaps: vbd removes them (deliberate)"),
    ("img", r"^amend .*cluster_size=",
     "README: changing the cluster size of an existing image is refused"),
]


# (qemu's first line of stderr, vbd's, why): the same refusal in vbd's
# words, where qemu's say less (both regexes, the tool's name masked)
SAME_MEANING = [
    # (none since round 30: a file of another format opened as vhdx or vpc
    # is refused in qemu-img's words)
]


def same_meaning(lq, lv):
    return any(re.search(q, lq) and re.search(v, lv) for q, v, _ in SAME_MEANING)


def known(tool, cmdline):
    for t, rx, why in KNOWN:
        if t == tool and re.search(rx, cmdline):
            return why
    return None


# ---------------------------------------------------------------- running
PROGRESS = re.compile(r"(?:\s*\(\d+\.\d+/100%\)\r?)+")


def normalize_out(text, tool):
    text = re.sub(r"qemu-img|vbd-img|qemu-io|vbd-io", "TOOL", text)
    if tool == "io" and text.startswith("Usage: TOOL"):
        return "USAGE (README: the usage text is vbd-io's)"
    # qemu-img's whole help (measure prints it for a bad option), vbd-img's verb's
    if tool == "img" and (text.startswith("TOOL version ") and "usage: TOOL [standard options]" in text or
                          text.startswith("Usage: TOOL ")):
        return "HELP (README: the help text is vbd-img's)"
    text = PROGRESS.sub(" (PROGRESS)", text)
    lines = []
    for ln in text.split("\n"):
        if ln.startswith("disk size:") or re.match(r'\s*"actual-size": \d+,?$', ln):
            continue
        ln = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", ln)
        ln = re.sub(r"^Run completed in [0-9.]+ seconds\.$", "Run completed in T seconds.", ln)
        ln = re.sub(r'("date-n?sec": )\d+', r"\1N", ln)
        ln = re.sub(r'((?:parent )?cid|"(?:parent-)?cid"): \d+', r"\1: N", ln)
        if tool == "io":
            ln = re.sub(r"ops; [0-9:.]+( sec)? \(.*\)$", "ops; T", ln)
            ln = re.sub(r"^([0-9]+,[0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$", r"\1,T", ln)
        lines.append(ln)
    return "\n".join(lines)


def first_err_line(text):
    for ln in text.split("\n"):
        if ln.strip():
            # QEMU numbers its nodes without a name (#blockNNN) as it makes them
            return re.sub(r"#block\d+", "#blockN", re.sub(r"qemu-img|vbd-img|qemu-io|vbd-io", "TOOL", ln))
    return ""


def run_side(binary, args, cwd):
    # argv[0] the program's name, as a tool from PATH sees it (getopt's
    # messages print it)
    return subprocess.Popen([os.path.basename(binary)] + args, executable=binary, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")


def finish(p):
    try:
        out, err = p.communicate(timeout=TIMEOUT)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return "timeout", out, err


def qi(*args, cwd=None):
    r = subprocess.run(["qemu-img"] + list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, errors="replace")
    return r.returncode, r.stdout, r.stderr


INFO_KEEP = ["format", "virtual-size", "cluster-size", "backing-filename", "backing-filename-format",
             "full-backing-filename", "dirty-flag", "encrypted", "format-specific", "snapshots"]


def info_fields(d, f):
    rc, out, err = qi("info", "-U", "--output=json", f, cwd=d)
    if rc:
        return f"<info failed: {first_err_line(err)}>"
    d = json.loads(out)
    keep = {k: d[k] for k in INFO_KEEP if k in d}
    fs = keep.get("format-specific", {}).get("data", {})
    for k in ("cid", "parent-cid"):
        fs.pop(k, None)
    for s in keep.get("snapshots", []):
        s.pop("date-sec", None)
        s.pop("date-nsec", None)
    return keep


def check_report(d, f, fmt, layout):
    rc, out, err = qi("check", "-U", "-f", fmt, f, cwd=d)
    lines = [ln for ln in (out + err).split("\n") if ln and not re.search(r" allocated, .* fragmented, ", ln)
             and (layout or not ln.startswith("Image end offset: "))]
    return "\n".join(lines) + f"\nexit {rc}"


def changed(base, q, v, f):
    b = os.path.join(base, f)
    if not os.path.exists(b):
        return True
    bt = os.stat(b).st_mtime_ns
    return any(os.path.exists(p) and os.stat(p).st_mtime_ns != bt for p in (os.path.join(q, f), os.path.join(v, f)))


def is_fixed_vhd(path):
    """the file ends with a VHD footer (its cookie)"""
    size = os.path.getsize(path)
    if size < 512:
        return False
    with open(path, "rb") as f:
        f.seek(size - 512)
        return f.read(8) == b"conectix"


def data_extents(f):
    """[(start, end)] of a file's data (SEEK_DATA/SEEK_HOLE): a hole reads
    as zeroes"""
    out, size, pos = [], os.fstat(f.fileno()).st_size, 0
    while pos < size:
        try:
            start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def same_files(a, b):
    """the same bytes, read where the files hold data only (a create of
    1T reads no terabyte of holes); data laid out otherwise counts as not
    the same (the images are then compared as images)"""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ext = data_extents(fa)
        if ext != data_extents(fb):
            return False
        for start, end in ext:
            fa.seek(start)
            fb.seek(start)
            while start < end:
                n = min(1 << 20, end - start)
                if fa.read(n) != fb.read(n):
                    return False
                start += n
        return True


def compare_images(base, q, v, layout):
    """The differences between the images either side left (the end of
    an image's clusters too when layout)."""
    diffs = []
    fq, fv = sorted(os.listdir(q)), sorted(os.listdir(v))
    if fq != fv:
        diffs.append(f"files left: qemu {' '.join(fq)}; vbd {' '.join(fv)}")
    for f in fq:
        pq, pv = os.path.join(q, f), os.path.join(v, f)
        if f not in fv or not os.path.isfile(pq) or not changed(base, q, v, f):
            continue
        if same_files(pq, pv):
            continue
        iq, iv = side_by_side(info_fields, (q, f), (v, f))
        if iq != iv:
            diffs.append(f"{f}: qemu-img info differs:\n      qemu: {json.dumps(iq)[:600]}\n"
                         f"      vbd:  {json.dumps(iv)[:600]}")
            continue
        if not isinstance(iq, dict):
            continue
        fmt = iq["format"]
        # a fixed VHD probes as raw (QEMU): compared as raw, its footer's
        # timestamp and UUID would differ
        if fmt == "raw" and is_fixed_vhd(pq):
            fmt = "vpc"
        cmp_run = POOL.submit(qi, "compare", "-U", "-q", "-f", fmt, "-F", fmt, pq, pv)
        cq, cv = side_by_side(check_report, (q, f, fmt, layout), (v, f, fmt, layout))
        rc, out, err = cmp_run.result()
        if rc:
            diffs.append(f"{f}: qemu-img compare: not the same image (exit {rc}: {first_err_line(err)})")
        if cq != cv:
            diffs.append(f"{f}: qemu-img check differs:\n      qemu: {cq!r}\n      vbd:  {cv!r}")
    return diffs


def run_case(work, base, tools, tool, args):
    """None (the same), or ("known", why), or ("diff", text)."""
    q, v = os.path.join(work, "q"), os.path.join(work, "v")
    for d in (q, v):
        shutil.rmtree(d, ignore_errors=True)
    side_by_side(sh, *((f"cp -a --sparse=always {shlex.quote(base)} {shlex.quote(d)}", work) for d in (q, v)))
    qbin, vbin = tools[tool]
    try:
        pq, pv = run_side(qbin, args, q), run_side(vbin, args, v)
    except OSError as e:
        raise HarnessError(f"cannot run the tools: {e}")
    (rq, oq, eq), (rv, ov, ev) = finish(pq), finish(pv)
    cmdline = shlex.join(args)
    if rq == "timeout" and rv != "timeout":
        return "known", "qemu's tool ran out of time: nothing to compare"
    if "Sanitizer" in ev or "runtime error" in ev or rv == "timeout" or (isinstance(rv, int) and rv < 0):
        return "diff", f"vbd crashed or hung (exit {rv}):\n{ev[-3000:]}"
    why = known(tool, cmdline)
    diffs = []
    if rq != rv and not (why and why.startswith("not fixed")):
        diffs.append(f"exit: qemu {rq}, vbd {rv}")
    if why:
        return ("diff", "\n".join(diffs + [f"(known: {why})", f"qemu err: {first_err_line(eq)}",
                                           f"vbd err:  {first_err_line(ev)}"])) if diffs else ("known", why)
    nq, nv = normalize_out(oq, tool), normalize_out(ov, tool)
    if nq != nv:
        import difflib
        d = "\n".join(difflib.unified_diff(nq.split("\n"), nv.split("\n"), "qemu", "vbd", lineterm="", n=1))
        diffs.append("stdout:\n" + d[:3000])
    lq, lv = first_err_line(eq), first_err_line(ev)
    if lq != lv and not same_meaning(lq, lv):
        diffs.append(f"stderr's first line:\n      qemu: {lq}\n      vbd:  {lv}")
    # where an image's clusters end (check's "Image end offset") is
    # compared for the verbs that lay out a new image (README: others
    # place metadata and data where vbd's allocator puts them: the
    # bitmap verb's changes written at once, commit's emptied overlay and
    # qemu-img's mirror order, a rebase refused before its copy)
    layout = tool == "img" and args[0] in ("create", "convert", "resize", "dd") and \
        not any(re.search(r"(^|=)bm\.qcow2\b", a) for a in args)
    diffs += compare_images(base, q, v, layout)
    return ("diff", "\n".join(diffs)) if diffs else None


def main(argv):
    seed, count, keep, only, verbose, cases = "1", 100, None, None, False, None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--seed", "--count", "--keep", "--only", "--cases") and i + 1 < len(argv):
            val = argv[i + 1]
            if a == "--cases":
                cases = [int(x) for x in val.split(",")]
            elif a == "--seed":
                seed = val
            elif a == "--count":
                count = int(val)
            elif a == "--only":
                only = val
            else:
                keep = val
            i += 2
        elif a == "-v":
            verbose, i = True, i + 1
        else:
            print(__doc__, file=sys.stderr)
            return 2
    tools = tool_paths()
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="imgsweep.")
    base = os.path.join(work, "base")
    ndiff = nknown = 0
    try:
        setup(base)
        for k in cases or range(count):
            tool, args = make_case(seed, k, only)
            name = {"img": "qemu-img", "io": "qemu-io"}[tool]
            res = run_case(work, base, tools, tool, args)
            if verbose:
                print(f"{seed}:{k} {name} {shlex.join(args)}: {res[0] if res else 'same'}", flush=True)
            if res and res[0] == "known":
                nknown += 1
            elif res:
                ndiff += 1
                print(f"DIFF {seed}:{k}: {name} {shlex.join(args)}\n    " + res[1].replace("\n", "\n    "),
                      flush=True)
                if keep:
                    dst = os.path.join(keep, f"{seed}-{k}")
                    shutil.rmtree(dst, ignore_errors=True)
                    os.makedirs(dst)
                    for s in ("q", "v"):
                        shutil.move(os.path.join(work, s), os.path.join(dst, s))
                    with open(os.path.join(dst, "cmdline"), "w") as f:
                        f.write(f"{name} {shlex.join(args)}\n")
    except HarnessError as e:
        print(f"imgsweep: harness: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"imgsweep seed {seed}: {len(cases) if cases else count} command lines, {ndiff} with a difference, {nknown} known (README), "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if ndiff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
