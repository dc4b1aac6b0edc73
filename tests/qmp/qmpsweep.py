#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Differential QMP sweep: random command sequences, the same for
qemu-storage-daemon and vbd-daemon, their answers compared.

    qmpsweep.py [--seed S] [--count N] [--steps K] [--keep DIR] [--error-text] [-v]

Sequence i of seed S (random.Random("S:i")) starts both daemons
(qmpdiff's Run: a directory each, images a.qcow2, b.qcow2, c.qcow2 and
r.raw in it) and sends K commands over what both support: blockdev-add of
file, raw, qcow2, null-co, throttle, copy-on-read and blkdebug nodes,
blockdev-del, throttle-group objects, the NBD server and its exports,
the dirty bitmap commands, the snapshots (external, internal), block_resize,
the block jobs on the small images (stream, commit, mirror, backup, and
drive-mirror and drive-backup into a new or an existing image; with a
speed, error policies, a filter-node-name, auto-finalize or auto-dismiss
off: each driven to its end, job-finalize and job-dismiss sent when it
waits for them), blockdev-reopen of the nodes added (their options with
read-only switched, a throttle group changed), iothread objects, NBD
exports with their options and vhost-user-blk exports (num-queues,
logical-block-size, writable, writethrough, an iothread), the queries. About a third of the requests are
spoiled: a member dropped, a member added, a value of the wrong type, a
number out of its range. The commands are chosen from what qsd has
(its replies keep the model of nodes, exports, bitmaps), then sent to
both; each pair of replies is compared as qmpdiff compares them
(normalized: the daemon's directory as {DIR}; the error class, and with
--error-text its words; a return's structure), and every few commands
query-named-block-nodes (node-name, drv, ro) and query-block-exports
(id, node-name) are compared exactly. The first difference ends its
sequence (what follows would differ because of it); it is printed with a
reproducer, a qmpdiff script (DIR/seed-S-i.jsonl, with --keep) that
qmpdiff.py runs as it is:

    qmpdiff.py DIR/seed-S-i.jsonl

Exit status: 0 no difference, 1 a difference, 2 the harness failed.
Binaries as qmpdiff's: $QSD, $VBD_DAEMON or $VBD_BUILD.
"""
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import qmpdiff  # noqa: E402

IMAGES = ["a.qcow2", "b.qcow2", "c.qcow2", "r.raw"]
SETUP = ["! qemu-img create -q -f qcow2 a.qcow2 4M",
         "! qemu-img create -q -f qcow2 b.qcow2 4M",
         "! qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 c.qcow2 4M",
         "! qemu-img create -q -f raw r.raw 4M",
         "! qemu-io -f qcow2 -c 'write -P 0x11 0 1M' a.qcow2 >/dev/null"]
NODES_ONLY = ["node-name", "drv", "ro"]
EXPORTS_ONLY = ["id", "node-name"]
# how long a job may take to end (small images, a loaded host, ASan)
JOB_WAIT = 120
JOBS = ("block-stream", "block-commit", "blockdev-mirror", "blockdev-backup", "drive-mirror", "drive-backup")



def wait_event(qmp, match, deadline):
    """The first event match() takes, queued or read until deadline
    (time.monotonic()), popped from qmp.events; None if none came."""
    while True:
        for i, e in enumerate(qmp.events):
            if match(e):
                qmp.sock.settimeout(60)
                return qmp.events.pop(i)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        qmp.sock.settimeout(left)
        try:
            msg = qmp._read()
        except (TimeoutError, OSError):
            continue
        except (EOFError, ValueError):
            break
        if "event" in msg:
            qmp.events.append(msg)
    qmp.sock.settimeout(60)
    return None

class Differs(Exception):
    pass


class Deliberate(Exception):
    """A difference README's "Differences" explains: the sequence ends
    there (the daemons' states part), not a failure."""


# (command, words in vbd's error where qsd succeeded, why): README says why
DELIBERATE = [
    ("blockdev-snapshot-sync", "is busy: node is used as file of",
     "an external snapshot of a node another node uses as its file: qsd moves that parent onto the overlay "
     "too, vbd moves exports only and refuses"),
    ("blockdev-snapshot", "is busy: node is used as file of", "the same, with an overlay added beforehand"),
    ("transaction", "is busy: node is used as file of", "the same, in a transaction"),
    ("object-del", "is the home of", "an iothread block nodes run in (an export's iothread): qsd deletes it, and "
     "their requests wait for a thread that is gone; vbd refuses"),
    ("object-del", "is in use by", "an iothread an export's rings run in: the same"),
]


class Model:
    """What qsd's replies say exists."""

    def __init__(self):
        self.nodes = {}  # name -> drv (query-named-block-nodes of qsd)
        self.ro = {}
        self.exports = {}  # id -> node
        self.objects = set()
        self.bitmaps = set()  # (node, name)
        self.added = {}  # node-name -> the blockdev-add arguments it was added with
        self.iothreads = set()
        self.snaps = set()  # (node, name) internal snapshots
        self.nbd = False
        self.files = list(IMAGES)
        self.serial = 0

    def fresh(self, prefix):
        self.serial += 1
        return f"{prefix}{self.serial}"


class Sweep:
    def __init__(self, seed, index, steps, error_text, verbose):
        self.rng = random.Random(f"{seed}:{index}")
        self.label = f"seed {seed}:{index}"
        self.steps = steps
        self.error_text = error_text
        self.verbose = verbose
        self.m = Model()
        self.script = [f"# qmpsweep.py --seed {seed}: sequence {index}"] + SETUP
        self.runs = []
        self.deliberate = None

    # ---------- talking to both ----------
    def start(self):
        lines = [qmpdiff.Line(i, t) for i, t in enumerate(SETUP, 1)]
        self.runs = [qmpdiff.Run("qsd", os.environ.get("QSD", "qemu-storage-daemon"), [], lines, True),
                     qmpdiff.Run("vbd", qmpdiff.vbd_binary(), [], lines, True)]
        for r in self.runs:
            for ln in lines:
                r.shell(ln)
            r.start()

    def stop(self, keep):
        out = []
        for r in self.runs:
            why = r.stop()
            if why:
                out.append(why)
        vbd = self.runs[1] if len(self.runs) > 1 else None
        if vbd and vbd.proc:
            err = vbd.stderr()
            if vbd.proc.returncode not in (0, None) or "Sanitizer" in err or "runtime error" in err:
                out.append(f"vbd-daemon exited {vbd.proc.returncode}:\n{err[-3000:]}")
        for r in self.runs:
            if not keep:
                r.cleanup()
        return out

    def send(self, cmd, args, exact=False, only=None):
        """Both replies (qsd's first); raises Differs when they differ."""
        req = {"execute": cmd}
        if args is not None:
            req["arguments"] = args
        text = json.dumps(req)
        mark = ""
        if only:
            mark = "  # only: " + ",".join(only)
        elif exact:
            mark = "  # exact"
        self.script.append(text + mark)
        replies = []
        for r in self.runs:
            try:
                r.qmp.send_raw(r.sub(text) + "\n")
                replies.append(r.normalize(r.qmp.recv()))
            except (EOFError, OSError, TimeoutError, ValueError) as e:
                replies.append(f"<connection failed: {e}>")
        ra, rb = replies
        ca, cb = ra, rb
        if only:
            ca, cb = qmpdiff.project(ra, only), qmpdiff.project(rb, only)
        diffs = qmpdiff.compare_replies(ca, cb, exact or bool(only))
        if not diffs and self.error_text and isinstance(ra, dict) and isinstance(rb, dict) and \
                "error" in ra and "error" in rb and ra["error"].get("desc") != rb["error"].get("desc"):
            diffs = [f"error text: qsd '{ra['error'].get('desc')}', vbd '{rb['error'].get('desc')}'"]
        if self.verbose:
            print(f"  {text[:150]}\n    qsd {json.dumps(ra)[:150]}\n    vbd {json.dumps(rb)[:150]}")
        if isinstance(ra, str) and isinstance(rb, dict):
            # qsd 7.2 itself went away (block-dirty-bitmap-merge with no
            # sources on a node resized to 0 bytes aborts it): vbd's answer stands
            raise Deliberate(f"{text}: qsd closed the connection ({ra}); vbd replied {json.dumps(rb)[:200]}")
        if diffs and isinstance(ra, dict) and isinstance(rb, dict) and "return" in ra and "error" in rb:
            for c, words, why in DELIBERATE:
                if c == cmd and words in rb["error"].get("desc", ""):
                    raise Deliberate(f"{text}: {why}")
        if diffs:
            raise Differs("\n".join([f"{text}"] + [f"    {d}" for d in diffs] +
                                    [f"    qsd: {json.dumps(ca)[:400]}", f"    vbd: {json.dumps(cb)[:400]}"]))
        return ra

    def wait_events(self, names, want):
        """The first event of names whose data has the members want, on
        both; their names and data structures compared."""
        got = []
        for r in self.runs:
            deadline = time.monotonic() + JOB_WAIT
            ev = wait_event(r.qmp, lambda e: e["event"] in names and
                            all((e.get("data") or {}).get(k) == v for k, v in want.items()), deadline)
            got.append(r.normalize({"event": ev["event"], "data": ev.get("data")}) if ev else
                       f"<no {'/'.join(names)} {json.dumps(want)} within {JOB_WAIT} s>")
        ea, eb = got
        if isinstance(ea, dict):
            self.script.append(f"?event {ea['event']} {json.dumps(want)}")
        diffs = qmpdiff.compare_replies(ea, eb, False)
        if not diffs and isinstance(ea, dict) and ea["event"] != eb["event"]:
            diffs = [f"event: qsd {ea['event']}, vbd {eb['event']}"]
        if diffs:
            raise Differs("\n".join([f"waiting for {names} {want}"] + [f"    {d}" for d in diffs] +
                                    [f"    qsd: {json.dumps(ea)[:400]}", f"    vbd: {json.dumps(eb)[:400]}"]))
        return ea

    def refresh(self):
        """The model from qsd's queries, compared with vbd's answers."""
        r = self.send("query-named-block-nodes", {"flat": True}, only=NODES_ONLY)
        self.m.nodes = {n["node-name"]: n["drv"] for n in r["return"]}
        self.m.ro = {n["node-name"]: n["ro"] for n in r["return"]}
        self.m.bitmaps = {(nd, b) for nd, b in self.m.bitmaps if nd in self.m.nodes}
        self.m.added = {nd: a for nd, a in self.m.added.items() if nd in self.m.nodes}
        self.m.snaps = {(nd, s) for nd, s in self.m.snaps if nd in self.m.nodes}
        r = self.send("query-block-exports", None, only=EXPORTS_ONLY)
        self.m.exports = {e["id"]: e["node-name"] for e in r["return"]}

    # ---------- choosing ----------
    def pick(self, seq):
        seq = list(seq)
        return self.rng.choice(seq) if seq else None

    def node(self, new=False):
        """A node name: mostly one that exists (user-named), sometimes a
        new or a bad one."""
        named = sorted(n for n in self.m.nodes if not n.startswith("#"))
        x = self.rng.random()
        if new or not named or x < 0.08:
            return self.m.fresh("n") if new or x < 0.05 else self.pick(["nope", "", "#block1", "a b", "x" * 40])
        return self.pick(named)

    def child(self):
        """A child: an existing node by name, or a file inline."""
        if self.rng.random() < 0.35:
            return {"driver": "file", "filename": "{DIR}/" + self.pick(self.m.files)}
        return self.node()

    def size(self):
        return self.pick([0, 512, 1 << 20, 4 << 20, 8 << 20, 3, -1, 1 << 63, 1 << 62])

    # ---------- the commands: (name, args, follow-up) ----------
    def c_add(self):
        name = self.node(new=True)
        drv = self.pick(["file", "raw", "qcow2", "null-co", "throttle", "copy-on-read", "blkdebug", "qcow2", "raw"])
        a = {"driver": drv, "node-name": name}
        if drv == "file":
            a["filename"] = "{DIR}/" + self.pick(self.m.files + ["missing.img"])
            if self.rng.random() < 0.3:
                a["read-only"] = True
        elif drv == "null-co":
            a["size"] = self.pick([1 << 20, 4 << 20, 0, 512])
            if self.rng.random() < 0.5:
                a["read-zeroes"] = True
        elif drv == "throttle":
            a["file"] = self.node()
            a["throttle-group"] = self.pick(sorted(self.m.objects) + ["nope"])
        elif drv == "blkdebug":
            a["image"] = self.child()
        else:
            a["file"] = self.child()
        if drv == "qcow2" and self.rng.random() < 0.5:
            a["backing"] = self.pick([None, self.node()])
        if drv in ("raw", "qcow2") and self.rng.random() < 0.15:
            a["read-only"] = True
        return "blockdev-add", a

    def c_del(self):
        return "blockdev-del", {"node-name": self.node()}

    def c_object(self):
        if self.m.objects and self.rng.random() < 0.3:
            return "object-del", {"id": self.pick(sorted(self.m.objects))}
        if self.rng.random() < 0.25:
            return "object-add", {"qom-type": "iothread", "id": self.m.fresh("io")}
        return "object-add", {"qom-type": "throttle-group", "id": self.m.fresh("tg"),
                              "limits": {"iops-total": self.pick([100, 1000, 0])}}

    def c_nbd(self):
        if self.m.nbd and self.rng.random() < 0.3:
            return "nbd-server-stop", None
        return "nbd-server-start", {"addr": {"type": "unix", "data": {"path": "{DIR}/nbd.sock"}}}

    def c_export(self):
        if self.m.exports and self.rng.random() < 0.4:
            a = {"id": self.pick(sorted(self.m.exports))}
            if self.rng.random() < 0.5:
                a["mode"] = self.pick(["safe", "hard"])
            return "block-export-del", a
        eid = self.m.fresh("e")
        vhost = self.rng.random() < 0.3
        a = {"type": "vhost-user-blk" if vhost else "nbd", "id": eid, "node-name": self.node()}
        if self.rng.random() < 0.6:
            a["writable"] = self.rng.random() < 0.7
        if self.rng.random() < 0.2:
            a["writethrough"] = self.rng.random() < 0.5
        if self.rng.random() < 0.15:
            iot = sorted(o for o in self.m.objects if o.startswith("io"))
            a["iothread"] = self.pick(iot + ["nope"])
            if self.rng.random() < 0.3:
                a["fixed-iothread"] = self.rng.random() < 0.5
        if vhost:
            a["addr"] = {"type": "unix", "path": "{DIR}/" + eid + ".sock"}
            if self.rng.random() < 0.4:
                # (vbd serves 64 rings at most, qsd takes up to 65535: README)
                a["num-queues"] = self.pick([1, 2, 4, 0, 64])
            if self.rng.random() < 0.3:
                # (vbd serves 512 and 4096 only, qsd powers of two up to 2 MiB: README)
                a["logical-block-size"] = self.pick([512, 4096, 1000, 256])
            return "block-export-add", a
        if self.rng.random() < 0.2:
            a["name"] = self.pick(["disk", "", "x" * 10])
        if self.rng.random() < 0.1:
            a["description"] = self.pick(["d", ""])
        if self.rng.random() < 0.1:
            a["allocation-depth"] = self.rng.random() < 0.5
        if self.rng.random() < 0.15 and self.m.bitmaps:
            a["bitmaps"] = [self.pick(sorted(self.m.bitmaps))[1]]
        return "block-export-add", a

    def c_bitmap(self):
        op = self.pick(["add", "add", "remove", "clear", "enable", "disable", "merge"])
        have = sorted(self.m.bitmaps)
        if op != "add" and have and self.rng.random() < 0.8:
            nd, b = self.pick(have)
        else:
            nd, b = self.node(), self.m.fresh("b")
        if op == "add":
            a = {"node": nd, "name": b}
            if self.rng.random() < 0.3:
                a["granularity"] = self.pick([512, 65536, 1 << 20, 1000, 256, 1 << 31])
            if self.rng.random() < 0.3:
                a["persistent"] = self.rng.random() < 0.5
            if self.rng.random() < 0.3:
                a["disabled"] = self.rng.random() < 0.5
            return "block-dirty-bitmap-add", a
        if op == "merge":
            src = [self.pick(have)[1] if have else "nope" for _ in range(self.rng.randint(0, 2))]
            return "block-dirty-bitmap-merge", {"node": nd, "target": b, "bitmaps": src}
        return f"block-dirty-bitmap-{op}", {"node": nd, "name": b}

    def c_snapshot(self):
        op = self.pick(["sync", "sync", "sync", "overlay", "internal", "internal-del"])
        if op == "sync":
            f = self.m.fresh("s")
            a = {"node-name": self.node(), "snapshot-file": "{DIR}/" + f + ".qcow2"}
            if self.rng.random() < 0.8:
                a["snapshot-node-name"] = f
            if self.rng.random() < 0.7:
                a["format"] = "qcow2"
            self.m.files.append(f + ".qcow2")
            return "blockdev-snapshot-sync", a
        if op == "overlay":
            return "blockdev-snapshot", {"node": self.node(), "overlay": self.node()}
        if op == "internal":
            return "blockdev-snapshot-internal-sync", {"device": self.node(), "name": self.m.fresh("i")}
        have = sorted(self.m.snaps)
        nd, nm = self.pick(have) if have and self.rng.random() < 0.8 else (self.node(), "nope")
        return "blockdev-snapshot-delete-internal-sync", {"device": nd, "name": nm}

    def c_reopen(self):
        """blockdev-reopen of one or two nodes added by name: their
        options as added (an inline child left out: it stays), read-only
        switched or kept, a throttle node's group changed."""
        names = sorted(self.m.added)
        if not names:
            return "blockdev-reopen", {"options": [{"driver": "raw", "node-name": self.node()}]}
        opts = []
        for nd in [self.pick(names) for _ in range(1 if self.rng.random() < 0.8 else 2)]:
            o = {k: v for k, v in self.m.added[nd].items() if not isinstance(v, dict)}
            x = self.rng.random()
            if x < 0.7:
                o["read-only"] = self.rng.random() < 0.5
            elif x < 0.8:
                o.pop("read-only", None)
            if o["driver"] == "throttle" and self.rng.random() < 0.3:
                o["throttle-group"] = self.pick(sorted(self.m.objects) + ["nope"])
            if self.rng.random() < 0.05:
                o["driver"] = self.pick(["raw", "qcow2", "file"])
            opts.append(o)
        return "blockdev-reopen", {"options": opts}

    def c_resize(self):
        return "block_resize", {"node-name": self.node(), "size": self.size()}

    def c_job(self):
        kind = self.pick(["block-stream", "block-commit", "blockdev-mirror", "blockdev-backup", "drive-mirror",
                          "drive-backup"])
        a = {"job-id": self.m.fresh("j"), "device": self.node()}
        if kind in ("blockdev-mirror", "blockdev-backup"):
            a["target"] = self.node()
            a["sync"] = self.pick(["full", "full", "top", "none"])
        elif kind in ("drive-mirror", "drive-backup"):
            # a new image (the source's format and size) or an existing one
            # of the images made, which then must fit
            if self.rng.random() < 0.25:
                a["target"] = "{DIR}/" + self.pick(self.m.files)
                a["mode"] = "existing"
            else:
                f = self.m.fresh("t") + ".img"
                a["target"] = "{DIR}/" + f
                self.m.files.append(f)
            if self.rng.random() < 0.7:
                a["format"] = self.pick(["qcow2", "qcow2", "raw"])
            if kind == "drive-mirror" and self.rng.random() < 0.5:
                a["node-name"] = self.node(new=True)
            a["sync"] = self.pick(["full", "full", "top", "none"])
        if self.rng.random() < 0.15:
            a["speed"] = self.pick([1 << 20, 64 << 20, 0, -1])
        if self.rng.random() < 0.1:
            a["auto-finalize"] = False
        if self.rng.random() < 0.1:
            a["auto-dismiss"] = False
        if self.rng.random() < 0.1:
            a["on-source-error" if kind != "block-stream" and kind != "block-commit" else "on-error"] = \
                self.pick(["report", "ignore", "stop", "enospc"])
        if kind in ("blockdev-mirror", "drive-mirror", "blockdev-backup", "drive-backup") and self.rng.random() < 0.1:
            a["on-target-error"] = self.pick(["report", "ignore", "stop", "enospc"])
        if kind != "drive-backup" and self.rng.random() < 0.1:
            a["filter-node-name"] = self.node(new=True)
        return kind, a

    def c_query(self):
        return self.pick(["query-named-block-nodes", "query-block-exports", "query-jobs", "query-block",
                          "query-version"]), None  # qsd 7.2 has no query-iothreads

    # ---------- spoiling ----------
    def spoil(self, cmd, args):
        """The request made invalid in one of a few ways."""
        args = dict(args or {})
        how = self.pick(["drop", "extra", "type", "type", "range"])
        keys = sorted(args)
        if how == "drop" and keys:
            del args[self.pick(keys)]
        elif how == "extra" or not keys:
            args[self.pick(["bogus", "node_name", "Node-name"])] = self.pick([1, "x", None, True])
        elif how == "type":
            k = self.pick(keys)
            v = args[k]
            args[k] = self.pick([x for x in (7, "7", True, None, [], {}, 1.5) if type(x) is not type(v)])
        else:
            ints = [k for k in keys if isinstance(args[k], int) and not isinstance(args[k], bool)]
            if ints:
                args[self.pick(ints)] = self.pick([-1, 1 << 64, -(1 << 63) - 1, 1 << 63])
            else:
                args[self.pick(keys)] = self.pick(["", "x" * 200, "\u00e9"])
        return cmd, args

    # ---------- after a command ----------
    def after(self, cmd, args, reply):
        ok = "return" in reply
        a = args or {}
        if cmd == "block-export-del" and ok:
            self.wait_events(["BLOCK_EXPORT_DELETED"], {"id": a["id"]})
        elif cmd == "nbd-server-start" and ok:
            self.m.nbd = True
        elif cmd == "nbd-server-stop" and ok:
            self.m.nbd = False
        elif cmd == "object-add" and ok:
            self.m.objects.add(a["id"])
        elif cmd == "object-del" and ok:
            self.m.objects.discard(a["id"])
        elif cmd == "block-dirty-bitmap-add" and ok:
            self.m.bitmaps.add((a["node"], a["name"]))
        elif cmd == "block-dirty-bitmap-remove" and ok:
            self.m.bitmaps.discard((a["node"], a["name"]))
        elif cmd == "blockdev-snapshot-internal-sync" and ok:
            self.m.snaps.add((a["device"], a["name"]))
        elif cmd == "blockdev-snapshot-delete-internal-sync" and ok:
            self.m.snaps.discard((a["device"], a["name"]))
        elif cmd == "blockdev-add" and ok and isinstance(a.get("node-name"), str):
            self.m.added[a["node-name"]] = a
        elif cmd in JOBS and ok:
            jid = a["job-id"]
            if cmd in ("blockdev-backup", "drive-backup") and a.get("sync") == "none":
                self.send("block-job-cancel", {"device": jid})  # a fleecing backup runs until cancelled
            self.drive_job(jid, a.get("auto-finalize") is False, a.get("auto-dismiss") is False)

    # the steps of a job's end a sweep waits for, and what it sends at each
    JOB_STEPS = ("pending", "concluded", "null")

    def drive_job(self, jid, finalize, dismiss):
        """The job's READY, COMPLETED or CANCELLED events and its pending,
        concluded and null states, in the order they come, compared; at
        READY job-complete or block-job-cancel, at pending (auto-finalize
        off) job-finalize, at concluded (auto-dismiss off) job-dismiss
        (query-jobs before each: the job waits there on both), until it is
        gone."""
        while True:
            ev = self.wait_job_step(jid)
            d = ev.get("data") or {}
            if ev["event"] == "BLOCK_JOB_READY":
                if self.rng.random() < 0.5:
                    self.send("job-complete", {"id": jid})
                else:
                    self.send("block-job-cancel", {"device": jid})
            elif ev["event"] == "JOB_STATUS_CHANGE" and d.get("status") == "pending" and finalize:
                self.send("query-jobs", None, only=["id", "status"])
                self.send("job-finalize", {"id": jid})
            elif ev["event"] == "JOB_STATUS_CHANGE" and d.get("status") == "concluded" and dismiss:
                self.send("query-jobs", None, only=["id", "status"])
                self.send("job-dismiss", {"id": jid})
            elif ev["event"] == "JOB_STATUS_CHANGE" and d.get("status") == "null":
                return

    def wait_job_step(self, jid):
        """The next of the job's events wait_job_step knows, on both (the
        others, its running/paused/ready transitions, stay queued);
        their names, statuses and data structures compared."""
        def step(e):
            d = e.get("data") or {}
            if e["event"] in ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                return d.get("device") == jid
            return e["event"] == "JOB_STATUS_CHANGE" and d.get("id") == jid and d.get("status") in self.JOB_STEPS
        got = []
        for r in self.runs:
            deadline = time.monotonic() + JOB_WAIT
            ev = wait_event(r.qmp, step, deadline)
            got.append(r.normalize({"event": ev["event"], "data": ev.get("data")}) if ev else
                       f"<no step of job {jid} within {JOB_WAIT} s>")
        ea, eb = got
        if isinstance(ea, dict):
            want = {"id": jid, "status": ea["data"]["status"]} if ea["event"] == "JOB_STATUS_CHANGE" else \
                {"device": jid}
            self.script.append(f"?event {ea['event']} {json.dumps(want)}")
        diffs = qmpdiff.compare_replies(ea, eb, False)
        if not diffs and isinstance(ea, dict) and (ea["event"] != eb["event"] or
                                                   ea["data"].get("status") != eb["data"].get("status")):
            diffs = [f"event: qsd {ea['event']} {ea['data'].get('status', '')}, "
                     f"vbd {eb['event']} {eb['data'].get('status', '')}"]
        if diffs:
            raise Differs("\n".join([f"waiting for job {jid}'s next step"] + [f"    {d}" for d in diffs] +
                                    [f"    qsd: {json.dumps(ea)[:400]}", f"    vbd: {json.dumps(eb)[:400]}"]))
        if not isinstance(ea, dict):
            raise Differs(f"job {jid}: qsd: {ea}")
        return ea

    def one(self):
        gen = self.rng.choices(
            [self.c_add, self.c_del, self.c_object, self.c_nbd, self.c_export, self.c_bitmap, self.c_snapshot,
             self.c_resize, self.c_job, self.c_query, self.c_reopen],
            weights=[22, 7, 4, 4, 12, 14, 12, 5, 8, 3, 6])[0]
        cmd, args = gen()
        if self.rng.random() < 0.3:
            cmd, args = self.spoil(cmd, args)
        reply = self.send(cmd, args)
        self.after(cmd, args, reply)

    def run(self, keep_dir):
        """None, or the difference (printed)."""
        self.start()
        failed = None
        try:
            self.refresh()
            for step in range(self.steps):
                self.one()
                if step % 4 == 3:
                    self.refresh()
            self.refresh()
        except Differs as e:
            failed = str(e)
        except Deliberate as e:
            self.deliberate = str(e)
            print(f"deliberate {self.label}: {e} (the sequence ends here)")
        except qmpdiff.HarnessError as e:
            failed = f"harness: {e}"
        problems = self.stop(keep=bool(failed and keep_dir))
        if problems:
            failed = (failed + "\n" if failed else "") + "\n".join(problems)
        if failed:
            print(f"DIFF {self.label}: {failed}")
            if keep_dir:
                os.makedirs(keep_dir, exist_ok=True)
                path = os.path.join(keep_dir, f"{self.label.split()[1].replace(':', '-')}.jsonl")
                with open(path, "w") as f:
                    f.write("\n".join(self.script) + "\n")
                print(f"    reproducer: qmpdiff.py {path}   (daemons' directories: "
                      f"{' '.join(r.dir for r in self.runs)})")
        return failed


def main(argv):
    seed, count, steps, keep, error_text, verbose = "1", 10, 40, None, False, False
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--seed", "--count", "--steps", "--keep") and i + 1 < len(argv):
            val = argv[i + 1]
            if a == "--seed":
                seed = val
            elif a == "--count":
                count = int(val)
            elif a == "--steps":
                steps = int(val)
            else:
                keep = val
            i += 2
        elif a == "--error-text":
            error_text, i = True, i + 1
        elif a == "-v":
            verbose, i = True, i + 1
        else:
            print(__doc__, file=sys.stderr)
            return 2
    t0 = time.monotonic()
    bad = cut = 0
    for k in range(count):
        sw = Sweep(seed, k, steps, error_text, verbose)
        try:
            if sw.run(keep):
                bad += 1
            cut += sw.deliberate is not None
        except qmpdiff.HarnessError as e:
            print(f"qmpsweep: {sw.label}: {e}", file=sys.stderr)
            sw.stop(keep=False)
            return 2
    print(f"qmpsweep seed {seed}: {count} sequences of {steps} commands, {bad} with a difference, "
          f"{cut} ended at a deliberate one, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
