#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Differential sweep of the NBD server: random option sets and random
request sequences, the same to qemu-nbd 7.2 and to vbd-nbd, the answers
compared.

    nbdsweep.py [--seed S] [--count N | --cases I,J,...] [--steps K] [--keep DIR] [-v]

Sequence i of seed S (random.Random("S:i")) draws one command line from
what both servers take (-r, -f, -x NAME, -D TEXT, -B BITMAP, -A, -e N,
-t, --cache, --discard, --detect-zeroes; raw, or qcow2 over a backing
file with holes, zero clusters and persistent bitmaps) and starts
qemu-nbd and vbd-nbd with it (--fork, a unix socket each), each on its
own copy of the same images. Compared: --fork's status and stderr (paths
and program names masked). Then one libnbd client each, in option mode
(one connection: without -t the server ends with it): NBD_OPT_LIST,
NBD_OPT_INFO of the export or another name (size, read-only and can_*
flags, block sizes, description), NBD_OPT_LIST_META_CONTEXT with random
queries (base:allocation, qemu:dirty-bitmap:*, qemu:allocation-depth,
prefixes, unknown names), NBD_OPT_GO with random contexts requested and
structured replies or not; then K random requests with strict mode off
(so that out-of-range, unaligned, zero-length and unadvertised-flag
requests reach the server): pread, pwrite, zero, trim, cache, flush,
block_status with FUA, NO_HOLE, FAST_ZERO, DF, REQ_ONE. Each request's
success or errno is compared, the data read, and block status per byte
(the extents' lengths may differ as the protocol lets servers merge or
split them and end a reply early: the meaning of each byte both replies
cover is compared). A server that drops the connection ends the sequence:
both must have dropped it at the same request. After the servers are gone
the images are compared (qemu-img compare) and checked (qemu-img check).
Exit status: 0 no difference, 1 a difference, 2 the harness failed.
Binaries: $QEMU_NBD (default qemu-nbd), $VBD_NBD (default
$VBD_BUILD/src/tools/vbd-nbd).
"""
import argparse
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nbd

MiB = 1 << 20
SIZE = 8 * MiB
TIMEOUT = 120


class HarnessError(Exception):
    pass


def sh(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        raise HarnessError(f"{cmd}: exit {r.returncode}: {r.stdout[-500:]}")
    return r.stdout


def setup(base):
    """base/: img.raw (data, holes), base.qcow2 <- img.qcow2 (data in both,
    zero clusters, holes through to the backing file, bitmaps b0 and b1 in
    the top, bb in the backing file)."""
    os.makedirs(base)
    for c in ["qemu-img create -q -f raw img.raw 8M",
              "qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 64k' -c 'write -P 0 6M 64k' img.raw",
              "qemu-img create -q -f qcow2 base.qcow2 8M",
              "qemu-img bitmap --add base.qcow2 bb",
              "qemu-io -f qcow2 -c 'write -P 0x33 1M 1M' -c 'write -P 0x34 4M 256k' base.qcow2",
              "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2",
              "qemu-img bitmap --add img.qcow2 b0",
              "qemu-io -f qcow2 -c 'write -P 0x44 0 64k' -c 'write -z 1536k 64k' img.qcow2",
              "qemu-img bitmap --add --granularity 128k img.qcow2 b1",
              "qemu-io -f qcow2 -c 'write -z 2M 128k' -c 'write -z 4M 64k' -c 'write -P 0x55 6M 192k' "
              "-c 'write -P 0x66 7M 64k' img.qcow2"]:
        sh(c + " >/dev/null", base)


# ---- drawing a sequence -------------------------------------------------

def draw_argv(rng):
    """(argv without the socket and --fork, the image, its format)"""
    fmt = rng.choice(["raw", "qcow2", "qcow2"])
    img = f"img.{fmt}"
    a = []
    ro = rng.random() < 0.3
    if ro:
        a.append("-r")
    if rng.random() < 0.85:
        a += ["-f", fmt]
    name = ""
    if rng.random() < 0.5:
        name = rng.choice(["disk", "a b", "x" * 40, "vm1"])
        a += ["-x", name]
    if rng.random() < 0.4:
        a += ["-D", rng.choice(["a disk", "", "description with spaces", "d" * 100])]
    if rng.random() < 0.35:
        a += ["-B", rng.choice(["b0", "b0", "b1", "bb", "nope"] if fmt == "qcow2" else ["b0"])]
    if rng.random() < 0.4:
        a.append("-A")
    if rng.random() < 0.3:
        a += ["-e", str(rng.choice([1, 2, 4, 0]))]
    persistent = rng.random() < 0.5
    if persistent:
        a.append("-t")
    if rng.random() < 0.3:
        a.append("--cache=" + rng.choice(["none", "writeback", "writethrough", "directsync", "unsafe"]))
    if rng.random() < 0.4:
        a.append("--discard=" + rng.choice(["ignore", "unmap", "off", "on"]))
    if rng.random() < 0.4:
        a.append("--detect-zeroes=" + rng.choice(["off", "on", "unmap"]))
    return a, img, name


CONTEXTS = ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1",
            "qemu:dirty-bitmap:bb", "qemu:dirty-bitmap:", "qemu:", "base:", "qemu:nope", "nope:x",
            "qemu:dirty-bitmap:nope"]


def draw_handshake(rng, name):
    h = {}
    h["structured"] = rng.random() < 0.85
    h["list"] = rng.random() < 0.5
    h["info"] = [rng.choice([name, name, "", "other"]) for _ in range(rng.randint(0, 2))]
    h["metalist"] = [rng.sample(CONTEXTS, rng.randint(0, 3)) for _ in range(rng.randint(0, 2))]
    h["go_name"] = name if rng.random() < 0.93 else "other"
    h["meta"] = rng.sample(CONTEXTS[:5], rng.randint(0, 4))
    return h


FLAGS = {"FUA": nbd.CMD_FLAG_FUA, "NO_HOLE": nbd.CMD_FLAG_NO_HOLE, "FAST_ZERO": nbd.CMD_FLAG_FAST_ZERO,
         "DF": nbd.CMD_FLAG_DF, "REQ_ONE": nbd.CMD_FLAG_REQ_ONE}
USUAL_FLAGS = {"pread": ["DF"], "pwrite": ["FUA"], "zero": ["FUA", "NO_HOLE", "FAST_ZERO"], "trim": ["FUA"],
               "cache": [], "flush": [], "block_status": ["REQ_ONE"]}


def draw_range(rng):
    r = rng.random()
    if r < 0.55:    # aligned, inside
        ln = rng.choice([512, 4096, 65536, 131072, 4096 * rng.randint(1, 64)])
        off = rng.randrange(0, SIZE - ln + 1, 512)
    elif r < 0.75:  # unaligned, inside
        ln = rng.randint(1, 100000)
        off = rng.randint(0, SIZE - ln)
    elif r < 0.85:  # crossing or past the end
        ln = rng.choice([1, 512, 4096, 65536])
        off = SIZE - rng.choice([0, 1, 512, 4096]) + rng.choice([0, 0, 512, SIZE])
    elif r < 0.92:  # zero length
        ln = 0
        off = rng.choice([0, 4096, SIZE, SIZE + 512])
    else:           # long
        ln = rng.choice([SIZE, 2 * MiB + 512, 32 * MiB, 32 * MiB + 1, 0xFFFFFFFF])
        off = rng.choice([0, 512, 3])
    return off, ln


def draw_request(rng, wid):
    cmd = rng.choices(["pread", "pwrite", "zero", "trim", "cache", "flush", "block_status"],
                      [25, 20, 12, 10, 5, 5, 23])[0]
    off, ln = draw_range(rng)
    if cmd in ("pwrite", "pread") and ln > 33 * MiB:
        ln = 33 * MiB
    flags = [f for f in USUAL_FLAGS[cmd] if rng.random() < 0.3]
    if rng.random() < 0.05:
        flags.append(rng.choice(list(FLAGS)))  # one the command does not take
    if cmd == "flush":
        off, ln = 0, 0
    return {"cmd": cmd, "off": off, "len": ln, "flags": sorted(set(flags)), "wid": wid}


def draw_sequence(seed, i, steps):
    rng = random.Random(f"{seed}:{i}")
    argv, img, name = draw_argv(rng)
    hs = draw_handshake(rng, name)
    reqs = [draw_request(rng, w + 1) for w in range(steps)]
    return argv, img, hs, reqs


# ---- running one side -----------------------------------------------------

def pattern(wid, off, ln):
    unit = bytes([(wid * 37 + 1) & 0xFF]) + wid.to_bytes(3, "little") + b"nbd."
    n = (ln + len(unit) - 1) // len(unit) + 1
    s = off % len(unit)
    return (unit * n)[s:s + ln]


def err_of(e):
    if isinstance(e, nbd.Error):
        return f"errno {errno.errorcode.get(e.errno, e.errno)}" if e.errno else "error (no errno)"
    return f"{type(e).__name__}"


def start_server(binary, d, argv, img):
    sock = os.path.join(d, "s.sock")
    pidf = os.path.join(d, "pid")
    errf = os.path.join(d, "stderr")
    with open(errf, "wb") as ef:
        r = subprocess.run([binary, "--fork", "--pid-file", pidf, "-k", sock] + argv + [os.path.join(d, img)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ef, timeout=TIMEOUT)
    text = open(errf, errors="replace").read()
    masked = re.sub(r"([^ :']*/)?(qemu-nbd|vbd-nbd)", "PROG", text.replace(d, "{D}"))
    pid = None
    if os.path.exists(pidf):
        try:
            pid = int(open(pidf).read().strip())
        except ValueError:
            pass
    return r.returncode, masked, pid, sock


def run_side(sock, hs, reqs, log):
    """The client's view, as a list of comparable items (each a (what, value))."""
    out = []
    h = nbd.NBD()
    try:
        talk(h, sock, hs, reqs, out)
    finally:
        # the connection ends here, not when the handle is collected (a
        # failed NBD_OPT_GO leaves it open in option mode: a server without
        # -t would wait for it)
        try:
            if h.aio_is_negotiating():
                h.opt_abort()
            elif not (h.aio_is_dead() or h.aio_is_closed() or h.aio_is_created() or h.aio_is_connecting()):
                h.shutdown()
        except nbd.Error:
            pass
        if hasattr(h, "close"):
            h.close()
    return out


def talk(h, sock, hs, reqs, out):
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.set_request_structured_replies(hs["structured"])
    h.set_export_name(hs["go_name"])
    try:
        h.connect_unix(sock)
    except nbd.Error as e:
        out.append(("connect", err_of(e)))
        return
    out.append(("structured", h.get_structured_replies_negotiated()))
    if hs["list"]:
        names = []
        try:
            h.opt_list(lambda n, d: names.append((n, d)) or 0)
            out.append(("list", sorted(names)))
        except nbd.Error as e:
            out.append(("list", err_of(e)))
    for ml in hs["metalist"]:
        h.clear_meta_contexts()
        for c in ml:
            h.add_meta_context(c)
        got = []
        try:
            h.opt_list_meta_context(lambda c: got.append(c) or 0)
            out.append((f"list_meta_context {ml}", sorted(got)))
        except nbd.Error as e:
            out.append((f"list_meta_context {ml}", err_of(e)))
    h.clear_meta_contexts()
    for c in hs["meta"]:
        h.add_meta_context(c)
    for nm in hs["info"]:
        h.set_export_name(nm)
        try:
            h.opt_info()
            out.append((f"info {nm!r}", export_facts(h, hs)))
        except nbd.Error as e:
            out.append((f"info {nm!r}", err_of(e)))
    h.set_export_name(hs["go_name"])
    try:
        h.opt_go()
    except nbd.Error as e:
        out.append(("go", err_of(e)))
        return
    facts = export_facts(h, hs)
    out.append(("go", facts))
    size = facts["size"]
    h.set_strict_mode(0)
    for r in reqs:
        what = f"#{r['wid']} {r['cmd']} off={r['off']} len={r['len']} flags={','.join(r['flags']) or '-'}"
        try:
            val = do_request(h, r, hs, size)
        except nbd.Error as e:
            val = err_of(e)
        except Exception as e:   # noqa: BLE001: the harness's own failure is a value too
            val = f"exception {type(e).__name__}: {e}"
        out.append((what, val))
        if h.aio_is_dead() or h.aio_is_closed():
            out.append(("connection", "dropped"))
            break


def export_facts(h, hs):
    f = {}
    for k, fn in [("size", h.get_size), ("read_only", h.is_read_only), ("can_flush", h.can_flush),
                  ("can_fua", h.can_fua), ("can_trim", h.can_trim), ("can_zero", h.can_zero),
                  ("can_fast_zero", h.can_fast_zero), ("can_df", h.can_df), ("can_cache", h.can_cache),
                  ("can_multi_conn", h.can_multi_conn), ("is_rotational", h.is_rotational),
                  ("description", h.get_export_description), ("canonical_name", h.get_canonical_export_name)]:
        try:
            f[k] = fn()
        except nbd.Error as e:
            f[k] = err_of(e)
    for k, s in [("block_min", nbd.SIZE_MINIMUM), ("block_pref", nbd.SIZE_PREFERRED), ("block_max", nbd.SIZE_MAXIMUM)]:
        try:
            f[k] = h.get_block_size(s)
        except nbd.Error as e:
            f[k] = err_of(e)
    for c in hs["meta"]:
        try:
            f[f"meta {c}"] = h.can_meta_context(c)
        except nbd.Error as e:
            f[f"meta {c}"] = err_of(e)
    return f


def do_request(h, r, hs, size):
    fl = 0
    for f in r["flags"]:
        fl |= FLAGS[f]
    off, ln, cmd = r["off"], r["len"], r["cmd"]
    if cmd == "pread":
        buf = h.pread(ln, off, fl)
        return ("data", bytes(buf))
    if cmd == "pwrite":
        h.pwrite(pattern(r["wid"], off, ln), off, fl)
        return "ok"
    if cmd == "zero":
        h.zero(ln, off, fl)
        return "ok"
    if cmd == "trim":
        h.trim(ln, off, fl)
        return "ok"
    if cmd == "cache":
        h.cache(ln, off, fl)
        return "ok"
    if cmd == "flush":
        h.flush(fl)
        return "ok"
    ext = {}

    def cb(meta, o, entries, err):
        ext.setdefault(meta, []).append(list(entries))
        return 0
    h.block_status(ln, off, cb, fl)
    return ("extents", off, ln, "REQ_ONE" in r["flags"], {m: [e for reply in v for e in reply] if len(v) == 1
                                                           else ("replies", v) for m, v in ext.items()})


def same_extents(q, v):
    """Block status replies alike per byte over the bytes both cover.
    None if alike, else the reason."""
    _, off, ln, req_one, qe = q
    _, _, _, _, ve = v
    if set(qe) != set(ve):
        return f"contexts {sorted(qe)} vs {sorted(ve)}"
    for m in qe:
        a, b = qe[m], ve[m]
        if isinstance(a, tuple) or isinstance(b, tuple):
            return f"{m}: more than one reply: {a} vs {b}"
        if not a or not b:
            if a != b:
                return f"{m}: {a} vs {b}"
            continue
        # [(start, end, flags)]
        def runs(e):
            out, p = [], off
            for i in range(0, len(e) - 1, 2):
                out.append((p, p + e[i], e[i + 1]))
                p += e[i]
            return out
        ra, rb = runs(a), runs(b)
        if req_one and (len(ra) != 1 or len(rb) != 1):
            return f"{m}: REQ_ONE answered with {len(ra)} / {len(rb)} extents"
        if any(s == e for s, e, _ in ra + rb):
            return f"{m}: an extent of length 0: {a} vs {b}"
        end = min(ra[-1][1], rb[-1][1])
        points = sorted({s for s, _, _ in ra + rb if s < end})
        for p in points:
            fa = next(f for s, e, f in ra if s <= p < e)
            fb = next(f for s, e, f in rb if s <= p < e)
            if fa != fb:
                return f"{m}: at {p}: flags {fa} vs {fb} ({a} vs {b})"
    return None


def wait_gone(pid, timeout=60):
    if pid is None:
        return True
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.05)
    return False


def stop(pid):
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(pid):
        os.kill(pid, signal.SIGKILL)
        raise HarnessError(f"server {pid} still runs 60 s after SIGTERM")


# the contexts a copy-on-read does not change (the dirty bitmaps: it
# writes what the image already reads)
DATA_CONTEXTS = ("qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:bb")


def known(r, q, v, size, ro):
    """The reason README gives for a difference in a request's answer, or None."""
    past_end = r["off"] + r["len"] > size
    writes = r["cmd"] in ("pwrite", "zero", "trim")
    # qemu-nbd answers EINVAL to every request its checks refuse; vbd
    # answers as the NBD spec says and nbdkit does: EPERM for a write on a
    # read-only export, ENOSPC for a write past the end (README, vbd-nbd)
    if writes and ro and q == "errno EINVAL" and v == "errno EPERM":
        return "EPERM for a write to a read-only export"
    if r["cmd"] in ("pwrite", "zero") and past_end and q == "errno EINVAL" and v == "errno ENOSPC":
        return "ENOSPC for a write past the end"
    # qemu-nbd's cache is a copy-on-read, refused (EPERM) on a read-only
    # export where the top image does not hold the range itself (README)
    if r["cmd"] == "cache" and ro and q == "errno EPERM" and v == "ok":
        return "NBD_CMD_CACHE is no copy-on-read"
    return None


def run_case(seed, i, steps, base, work, bins, verbose):
    argv, img, hs, reqs = TABLE[-1 - i] if i < 0 else draw_sequence(seed, i, steps)
    diffs = []
    qemu_dropped = False
    nreq = 0
    d = {k: os.path.join(work, k) for k in "qv"}
    for k in "qv":
        shutil.rmtree(d[k], ignore_errors=True)
        shutil.copytree(base, d[k])
    head = f"case {i}: {' '.join(argv)} {img}"
    if verbose:
        print(head, hs, flush=True)
    st = {}
    try:
        for k in "qv":
            try:
                st[k] = start_server(bins[k], d[k], argv, img)
            except OSError as e:
                raise HarnessError(f"{bins[k]}: {e}") from e
        (qrc, qerr, qpid, qsock), (vrc, verr, vpid, vsock) = st["q"], st["v"]
        if "Sanitizer" in verr or "runtime error" in verr:
            diffs.append(f"vbd-nbd stderr: {verr}")
        if qrc != vrc:
            diffs.append(f"--fork status {qrc} (qemu-nbd) vs {vrc} (vbd-nbd): {qerr!r} vs {verr!r}")
        elif qerr != verr:
            diffs.append(f"stderr {qerr!r} vs {verr!r}")
        # --fork's status is 1 when anything was printed (the probed-raw
        # warning) though the server serves: go on while both serve
        if qpid is None or vpid is None or wait_gone(qpid, 0) or wait_gone(vpid, 0):
            return head, diffs, 0
        res = {}
        for k, sock in [("q", qsock), ("v", vsock)]:
            res[k] = run_side(sock, hs, reqs, None)
        nreq = 0
        byid = {f"#{r['wid']} ": r for r in reqs}
        gofacts = dict(res["q"]).get("go")
        size = gofacts["size"] if isinstance(gofacts, dict) else 0
        ro = isinstance(gofacts, dict) and gofacts["read_only"] is True
        rq, rv = res["q"], res["v"]
        cached = qemu_dropped = False
        for j, ((wq, q), (wv, v)) in enumerate(zip(rq, rv)):
            nreq += wq.startswith("#")
            if wq != wv:
                diffs.append(f"step {wq!r} vs {wv!r}")
                break
            r = byid.get(wq.split(" ")[0] + " ") if wq.startswith("#") else None
            dropped = all(j + 1 < len(x) and x[j + 1] == ("connection", "dropped") for x in (rq, rv))
            if r and dropped and isinstance(q, str) and isinstance(v, str):
                continue  # both dropped the connection: how the client saw the end is the socket's
            if r and q != v and known(r, q, v, size, ro):
                continue
            if (r and r["cmd"] == "cache" and v == "ok" and q == "errno ENOTCONN" and "-f" not in argv
                    and img.endswith(".raw") and j + 1 < len(rq) and rq[j + 1] == ("connection", "dropped")):
                # qemu-nbd 7.2 drops the connection on an unaligned cache
                # of a probed raw image (request alignment 512: its
                # prefetch cannot pad a read without a buffer); vbd
                # answers it. Nothing after it compares.
                qemu_dropped = True
                break
            if r and r["cmd"] == "cache" and q == "ok" and img.endswith(".qcow2"):
                # qemu-nbd's NBD_CMD_CACHE copies what the top image does not
                # hold from its backing file into it (copy-on-read), vbd's
                # leaves it to the host's page cache (README): the data
                # stays the same, the allocation may not
                cached = True
            if (cached and isinstance(q, tuple) and isinstance(v, tuple) and q[0] == v[0] == "extents"
                    and set(q[4]) == set(v[4])):
                q, v = (q[:4] + ({m: e for m, e in q[4].items() if m in DATA_CONTEXTS},),
                        v[:4] + ({m: e for m, e in v[4].items() if m in DATA_CONTEXTS},))
            if wq.startswith("info ") and isinstance(v, dict) and q == "errno ENOENT" and wq == "info ''" and \
                    "-x" in argv:
                continue  # vbd's lone export answers to "" too (README)
            if isinstance(q, tuple) and isinstance(v, tuple) and q[0] == v[0] == "extents":
                why = same_extents(q, v)
                if why:
                    diffs.append(f"{wq}: {why}")
            elif isinstance(q, tuple) and isinstance(v, tuple) and q[0] == v[0] == "data":
                if q[1] != v[1]:
                    at = next((j for j in range(min(len(q[1]), len(v[1]))) if q[1][j] != v[1][j]), None)
                    diffs.append(f"{wq}: data differs: {len(q[1])} vs {len(v[1])} bytes, first at +{at}")
            elif q != v:
                diffs.append(f"{wq}: {q!r} (qemu-nbd) vs {v!r} (vbd-nbd)")
        if len(res["q"]) != len(res["v"]) and not qemu_dropped:
            diffs.append(f"qemu-nbd ended after {res['q'][-1][0]!r}, vbd-nbd after {res['v'][-1][0]!r}")
        # without -t a server ends when its last client has gone, if
        # that client completed the handshake (qemu-nbd's rule)
        persistent = "-t" in argv or not isinstance(gofacts, dict)
        for k, pid in [("q", qpid), ("v", vpid)]:
            if persistent:
                stop(pid)
            elif not wait_gone(pid):
                diffs.append(f"{k}: the server still runs 60 s after its only client went (no -t)")
                stop(pid)
    finally:
        for k in st:
            pid = st[k][2]
            if pid is not None and not wait_gone(pid, 0):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    verr = open(os.path.join(d["v"], "stderr"), errors="replace").read()
    if "Sanitizer" in verr or "runtime error" in verr:
        diffs.append(f"vbd-nbd: {verr[-2000:]}")
    if qemu_dropped:
        return head, diffs, nreq  # vbd went on writing where qemu-nbd had gone
    fmt = img.split(".")[1]
    r = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, os.path.join(d["q"], img),
                        os.path.join(d["v"], img)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        diffs.append(f"qemu-img compare: {r.stdout.strip()}")
    if fmt == "qcow2":
        for k in "qv":
            r = subprocess.run(["qemu-img", "check", "-q", os.path.join(d[k], img)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode:
                diffs.append(f"qemu-img check of {k}'s image: {r.stdout.strip()}")
        qi = sh(f"qemu-img info --output=json {img}", d["q"]).replace(d["q"], "")
        vi = sh(f"qemu-img info --output=json {img}", d["v"]).replace(d["v"], "")
        bq = re.findall(r'"name": "[^"]*"|"flags": \[[^]]*\]', qi)
        bv = re.findall(r'"name": "[^"]*"|"flags": \[[^]]*\]', vi)
        if bq != bv:
            diffs.append(f"bitmaps after: {bq} vs {bv}")
    return head, diffs, nreq


# Fixed sequences, each once a difference (run as cases -1, -2, ... by
# --table): (argv, image, handshake, requests).
def _req(wid, cmd, off, ln, flags=()):
    return {"cmd": cmd, "off": off, "len": ln, "flags": sorted(flags), "wid": wid}


_HS = {"structured": True, "list": False, "info": [], "metalist": [], "go_name": "", "meta": ["base:allocation"]}
TABLE = [
    # a fast zero not aligned to the image's O_DIRECT alignment: ENOTSUP, nothing written
    (["-f", "raw", "-t", "--cache=none"], "img.raw", _HS,
     [_req(1, "zero", 2346699, 59740, ["FAST_ZERO"]), _req(2, "zero", 4096, 512, ["FAST_ZERO"]),
      _req(3, "zero", 8192, 700, ["FAST_ZERO"]), _req(4, "pread", 2342912, 65536)]),
    # a probed raw image: minimum block size 512 (QEMU writes its block 0 only whole)
    (["-r"], "img.raw", dict(_HS, info=[""]), [_req(1, "pread", 0, 4096)]),
    (["-t"], "img.raw", _HS, [_req(1, "pwrite", 512, 100), _req(2, "pwrite", 0, 100), _req(3, "pwrite", 0, 512),
                              _req(4, "pread", 0, 4096)]),
    # trim past the end: EINVAL (qemu-nbd, nbdkit), not ENOSPC as a write
    (["-f", "raw"], "img.raw", _HS, [_req(1, "trim", SIZE, 1, ["FUA"]), _req(2, "trim", SIZE - 512, 1024),
                                     _req(3, "trim", SIZE + 512, 0), _req(4, "pread", 0, 4096)]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", default="1")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--cases")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--keep")
    ap.add_argument("--table", action="store_true", help="the fixed sequences first")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    # a test's timeout (SIGTERM) ends the servers too: run_case's finally
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    build = os.environ.get("VBD_BUILD", "build")
    bins = {"q": os.environ.get("QEMU_NBD", "qemu-nbd"),
            "v": os.environ.get("VBD_NBD") or os.path.join(build, "src/tools/vbd-nbd")}
    cases = [int(x) for x in a.cases.split(",")] if a.cases else list(range(a.count))
    if a.table:
        cases = [-1 - t for t in range(len(TABLE))] + cases
    top = tempfile.mkdtemp(prefix="nbdsweep-")
    ndiff = nreq = nseq = 0
    try:
        base = os.path.join(top, "base")
        setup(base)
        for i in cases:
            work = os.path.join(top, f"c{i}")
            os.makedirs(work)
            head, diffs, n = run_case(a.seed, i, a.steps, base, work, bins, a.v)
            nseq += 1
            nreq += n
            if diffs:
                ndiff += 1
                print(f"DIFF {head} (--seed {a.seed} --cases {i})")
                for x in diffs:
                    print("   ", x)
                if a.keep:
                    os.makedirs(a.keep, exist_ok=True)
                    shutil.copytree(work, os.path.join(a.keep, f"seed{a.seed}-case{i}"), dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("*.sock"))
            shutil.rmtree(work, ignore_errors=True)
    except HarnessError as e:
        print(f"nbdsweep: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print(f"nbdsweep: seed {a.seed}: {nseq} sequences, {nreq} requests, {ndiff} with a difference")
    return 1 if ndiff else 0


if __name__ == "__main__":
    sys.exit(main())
