#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QMP over the daemon's stdin and stdout (--chardev stdio --monitor,
one line a message or pretty=on), qemu-storage-daemon 7.2 against
vbd-daemon: one script of requests written to each daemon's stdin, the
messages read back from its stdout, compared.

    stdio_diff.py DIR QSD VBD_DAEMON

What is checked, for pretty=off and pretty=on:
  - every message ends with "\\r\\n" and its text is exactly QEMU's layout
    of the message it holds (one line: {"k": v, "k": [1, 2]}; pretty:
    QEMU's qobject_to_json_pretty, 4 spaces a level, "\\r\\n" for each new
    line, an empty object or list on two lines). qsd's own text must pass
    this too: the layout checked is QEMU's, not vbd's idea of it.
  - the replies, in order, are equal (keys in any order; the greeting's
    version and capabilities aside), the events (BLOCK_EXPORT_DELETED)
    equal as a set (qsd sends it before block-export-del's reply, vbd
    after: a deferred callback);
  - stdin closed right after quit (a script's pipe ends with it): quit's
    reply still comes and the daemon exits 0 by itself;
  - stdin closed without quit: the daemon runs on (a second monitor on a
    socket answers, shows the stdio chardev, and its quit stops the daemon
    with status 0); there both chardevs are written with QemuOpts'
    short-form booleans (nosignal; server,nowait), and the warnings on
    stderr must be qsd's.
Exit status 0: no difference; 1: differences (printed).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

DIR, QSD, VBD = sys.argv[1], sys.argv[2], sys.argv[3]


def layout(o, level):
    """QEMU's text for o; level < 0: one line."""
    inner = -1 if level < 0 else level + 1
    sep = ", " if level < 0 else ","

    def nl(lv):
        return "" if lv < 0 else "\r\n" + "    " * lv

    if isinstance(o, dict_pairs):
        parts = [nl(inner) + json.dumps(k) + ": " + layout(v, inner) for k, v in o]
        return "{" + sep.join(parts) + nl(level) + "}"
    if isinstance(o, list):
        parts = [nl(inner) + layout(v, inner) for v in o]
        return "[" + sep.join(parts) + nl(level) + "]"
    return json.dumps(o, ensure_ascii=False)


class dict_pairs(list):
    """An object as its members in the order they came."""


def pairs_hook(p):
    return dict_pairs(p)


def plain(o):
    """dict_pairs to dicts (for comparing values, key order aside)."""
    if isinstance(o, dict_pairs):
        return {k: plain(v) for k, v in o}
    if isinstance(o, list):
        return [plain(v) for v in o]
    return o


class Session:
    def __init__(self, bin_, pretty, extra, chardev="stdio,id=m", stderr=None):
        self.name = os.path.basename(bin_) + (" pretty" if pretty else "")
        self.pretty = pretty
        self.buf = b""
        self.problems = []
        self.p = subprocess.Popen([bin_, "--chardev", chardev, "--monitor", "m,pretty=" + ("on" if pretty else "off")] + extra,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=DIR)
        self.dec = json.JSONDecoder(object_pairs_hook=pairs_hook)

    def read(self):
        """The next message (dict_pairs), its raw text checked against QEMU's layout."""
        while True:
            text = self.buf.decode("utf-8", "replace")
            start = len(text) - len(text.lstrip())
            if start:
                self.problems.append("%s: text before a message: %r" % (self.name, text[:start]))
            try:
                msg, end = self.dec.raw_decode(text, start)
                if text[end:end + 2] == "\r\n":
                    raw = text[start:end]
                    want = layout(msg, 0 if self.pretty else -1)
                    if raw != want:
                        self.problems.append("%s: layout differs from QEMU's:\n got  %r\n want %r" % (self.name, raw, want))
                    self.buf = text[end + 2:].encode()
                    return msg
            except json.JSONDecodeError:
                pass
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("%s: stdout ended (%r)" % (self.name, self.buf[-200:]))
            self.buf += chunk

    def send(self, req):
        self.p.stdin.write((json.dumps(req) + "\n").encode())
        self.p.stdin.flush()

    def reply(self, req, events):
        """Send req; its reply (events before it go to events)."""
        self.send(req)
        while True:
            m = plain(self.read())
            if "event" in m:
                events.append(m)
            else:
                return m


def script(s, sock):
    """The requests, each daemon the same; returns (replies, events)."""
    ev, out = [], []
    greeting = plain(s.read())
    greeting["QMP"]["version"] = "V"
    greeting["QMP"]["capabilities"] = "C"
    out.append(greeting)
    for req in [
        {"execute": "qmp_capabilities"},
        {"execute": "query-chardev"},
        {"execute": "qom-list", "arguments": {"path": "/chardevs/m"}},
        {"execute": "qom-get", "arguments": {"path": "/chardevs/m", "property": "type"}},
        {"execute": "chardev-remove", "arguments": {"id": "m"}},
        {"execute": "query-block-exports"},
        {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n1"}},
        {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n1"}},
        {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
        {"execute": "block-dirty-bitmap-add", "arguments": {"node": "n1", "name": "b0", "granularity": 65536}},
        {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": sock}}}},
        {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "n1", "name": "x"}},
        {"execute": "query-block-exports"},
        {"execute": "block-export-del", "arguments": {"id": "e"}},
        {"execute": "nbd-server-stop"},
        {"execute": "blockdev-del", "arguments": {"node-name": "n1"}},
        {"execute": "blockdev-del", "arguments": {"node-name": "n1"}},
        {"execute": "query-version", "arguments": {"x": 1}},
        {"execute": "block-export-del", "arguments": {"id": 7}},
    ]:
        r = s.reply(req, ev)
        if isinstance(r.get("return"), list) and all("node-name" in n for n in r["return"]):
            # qsd lists the newest node first, vbd the oldest (qmpdiff.py compares lists in any order too)
            r["return"].sort(key=lambda n: n["node-name"])
        if "error" in r and "desc" in r["error"]:
            r["error"]["desc"] = r["error"]["desc"].replace(sock, "{SOCK}")
        out.append(r)
    # the event may follow its reply (vbd): wait for it, then quit
    while not any(e.get("event") == "BLOCK_EXPORT_DELETED" for e in ev):
        m = plain(s.read())
        if "event" in m:
            ev.append(m)
    # quit, then stdin closed at once: the reply still comes, then EOF
    s.send({"execute": "quit"})
    s.p.stdin.close()
    while True:
        try:
            m = plain(s.read())
        except RuntimeError as e:
            raise RuntimeError("no reply to quit sent just before stdin's end: %s" % e)
        if "event" in m:
            ev.append(m)
        else:
            out.append(m)
            break
    rest = s.p.stdout.read()
    if rest.strip():
        s.problems.append("%s: after quit's reply: %r" % (s.name, rest))
    rc = s.p.wait(timeout=60)
    if rc != 0:
        s.problems.append("%s: exit status %d after quit" % (s.name, rc))
    for e in ev:
        e.pop("timestamp", None)
    return out, sorted(json.dumps(e, sort_keys=True) for e in ev)


def qmp_socket(path, reqs):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(1200):
        try:
            s.connect(path)
            break
        except OSError:
            time.sleep(0.05)
    f = s.makefile("rw")
    out = []
    f.readline()
    for req in [{"execute": "qmp_capabilities"}] + reqs:
        f.write(json.dumps(req) + "\n")
        f.flush()
        while True:
            m = json.loads(f.readline())
            if "event" not in m:
                out.append(m)
                break
    return out


def eof_without_quit(bin_, tag):
    """stdin closed without quit: the daemon runs on; its socket monitor answers."""
    path = os.path.join(DIR, tag + "-qmp.sock")
    # the chardevs in QemuOpts' short-form booleans (nosignal, server,
    # nowait), as old guides write them: taken, each with qsd's warning
    errpath = os.path.join(DIR, tag + "-stderr")
    s = Session(bin_, False, ["--chardev", "socket,id=s,path=%s,server,nowait" % path, "--monitor", "s"],
                chardev="stdio,id=m,nosignal", stderr=open(errpath, "w"))
    s.read()
    s.reply({"execute": "qmp_capabilities"}, [])
    s.p.stdin.close()
    out = qmp_socket(path, [{"execute": "query-chardev"}, {"execute": "quit"}])
    rc = s.p.wait(timeout=60)
    if rc != 0:
        s.problems.append("%s: exit status %d after a socket monitor's quit" % (s.name, rc))
    warnings = [re.sub(r"^[^ :]*(qemu-storage-daemon|vbd-daemon):", "PROG:", l).replace(path, "{SOCK}")
                for l in open(errpath).read().splitlines()]
    out.append({"stderr": [w for w in warnings if "Sanitizer" not in w]})
    if any("Sanitizer" in w or "runtime error" in w for w in warnings):
        s.problems.append("%s: %s" % (s.name, warnings))
    for r in out:
        if isinstance(r.get("return"), list):
            r["return"].sort(key=lambda c: c["label"])
            for c in r["return"]:
                c["filename"] = c["filename"].replace(path, "{SOCK}")
    return out, s.problems


def main():
    ndiff = 0
    for pretty in (False, True):
        res = {}
        for tag, bin_ in (("qsd", QSD), ("vbd", VBD)):
            sock = os.path.join(DIR, "%s-%d-nbd.sock" % (tag, pretty))
            s = Session(bin_, pretty, ["--blockdev", "null-co,node-name=n0"])
            try:
                res[tag] = script(s, sock)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                print("DIFF %s: %s" % (s.name, e))
                return 1
            finally:
                if s.p.poll() is None:
                    s.p.kill()
                    s.p.wait()
            for p in s.problems:
                print("DIFF", p)
                ndiff += 1
        (qr, qe), (vr, ve) = res["qsd"], res["vbd"]
        if len(qr) != len(vr):
            print("DIFF pretty=%s: %d replies from qsd, %d from vbd" % (pretty, len(qr), len(vr)))
            ndiff += 1
        for i, (a, b) in enumerate(zip(qr, vr)):
            if a != b:
                print("DIFF pretty=%s reply %d:\n qsd %s\n vbd %s" % (pretty, i, json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)))
                ndiff += 1
        if qe != ve:
            print("DIFF pretty=%s events:\n qsd %s\n vbd %s" % (pretty, qe, ve))
            ndiff += 1
        print("pretty=%s: %d replies, %d events compared" % ("on" if pretty else "off", len(qr), len(qe)))
    res = {}
    for tag, bin_ in (("qsd", QSD), ("vbd", VBD)):
        try:
            res[tag], problems = eof_without_quit(bin_, tag)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print("DIFF %s, stdin EOF without quit: %s" % (tag, e))
            return 1
        for p in problems:
            print("DIFF", p)
            ndiff += 1
    if res["qsd"] != res["vbd"]:
        print("DIFF after stdin's EOF, over the socket monitor:\n qsd %s\n vbd %s" % (res["qsd"], res["vbd"]))
        ndiff += 1
    print("stdin EOF without quit: the daemon ran on (%s); stderr %s" % (json.dumps(res["vbd"][1]), json.dumps(res["vbd"][-1])))
    return 1 if ndiff else 0


sys.exit(main())
