#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Differential QMP test: run one script against qemu-storage-daemon and
vbd-daemon and compare the replies.

    qmpdiff.py [-v] SCRIPT [--both ARG]... [--qsd ARG]... [--vbd ARG]...

Each daemon gets its own temporary directory {DIR} (under $TMPDIR; kept when
something differs, to look at; removed on every other way out: a harness
failure, an exception, SIGTERM or SIGINT) and is started with
    --chardev socket,id=qmp0,path={DIR}/qmp.sock,server=on,wait=off --monitor chardev=qmp0
plus the --both arguments (and its own --qsd / --vbd ones), {DIR} replaced.
Binaries: $QSD (default qemu-storage-daemon) and $VBD_DAEMON (default
$VBD_BUILD/src/tools/vbd-daemon, else vbd-daemon from PATH).

Script lines ({DIR} is replaced everywhere):
    # a comment                      (whole line)
    ! shell command                  run with sh in {DIR}, once per daemon, at
                                     that point (before the daemon starts if it
                                     comes before the first request); must exit 0;
                                     $QMPDIFF_PID is the daemon's process id,
                                     $QMPDIFF_HERE this directory
    {"execute": ...}                 a request; its reply is compared
    not json at all                  sent as it is (parse-error tests)
    ?event NAME                      wait (EVENT_WAIT, 120 s) for event NAME; its data compared
    ?event NAME {"k": "v"}           the next event NAME whose data has these
                                     members; the NAME events before it are
                                     dropped (a job's transitions that one
                                     daemon makes and the other does not)
    ?events N NAME {"k": "v"}        the next N events NAME (with these members,
                                     if given; the others stay queued), in the
                                     order they came, compared as one sequence
                                     (a job's transitions: none may be missing,
                                     added or swapped)
    > {"execute": ...}               a request sent without waiting for its
                                     reply (quit: the reply comes last, ?end)
    ?sh shell command                run as '!' (the daemon started); its output
                                     is the reply, compared exactly ({DIR}
                                     as "{DIR}"): what the daemons leave
                                     outside QMP (another process's try at
                                     the image); a non-zero exit is a
                                     difference
    ?locks FILE...                   the image lock bytes each FILE (in {DIR})
                                     has in /proc/locks, one line per FILE as
                                     lockbytes.py prints them, compared
                                     exactly; read in this process (a python3
                                     started for each look took most of a
                                     locks script's time on a loaded host)
    ?end NAME... -NAME{"k":"v"}...   read until the daemon closes the
                                     connection: the replies and the events
                                     NAME, in the order they came, compared
                                     exactly (data included, timestamps not);
                                     -NAME{...}: those NAME events whose data
                                     has these members are left out (no blank
                                     in the JSON). The daemon must then exit
                                     by itself (no SIGTERM from the harness)
    ...  # differs: REASON           a trailing marker: a difference on this line
                                     is deliberate (printed, not a failure)
    ...  # only: KEY,KEY...           a list (or object) returned: each element
                                     cut down to these keys, then compared as with
                                     exact, in any order (query-named-block-nodes'
                                     node-name and drv, where the rest differs;
                                     "image.virtual-size": a member of a member)
    ...  # ordered: KEY,KEY...        as only:, and the list's order must be qsd's
                                     too (query-named-block-nodes lists the
                                     newest node first)
    ...  # exact                     values must be equal too (paths under {DIR}
                                     are compared as "{DIR}/..."); with
                                     QMPDIFF_ERROR_TEXT=1 in the environment,
                                     an error's text too
The harness sends qmp_capabilities first unless the first request of the
script is qmp_capabilities itself or a line '#! no-negotiate' is present.

Compared: the top-level key (return or error); for errors the class; for
returns the structure, recursively: the same keys with the same JSON types;
lists the same length with elements of the same structure (in any order).
Exit status 0: no difference except marked ones; 1: a difference; 2: the
harness itself failed (a daemon did not start, a '!' command failed).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# How long '?event' and '?events' wait for an event: a job's event from an
# ASan daemon on a host at load 20-30 (8 people, 2 CPUs) can take more
# than the 30 s this was; a passing run waits only until the event comes.
EVENT_WAIT = 120
HERE = os.path.dirname(os.path.abspath(__file__))  # $QMPDIFF_HERE in '!' and '?sh' lines
sys.path.insert(0, HERE)
from qmp import QMP  # noqa: E402
import lockbytes  # noqa: E402

MARK_RE = re.compile(r"\s+#\s*(differs:.*|exact|only:.*|ordered:.*)\s*$")


class Line:
    def __init__(self, no, text):
        self.no = no
        self.differs = None
        self.exact = False
        self.only = None
        self.ordered = False
        m = MARK_RE.search(text)
        if m and not text.lstrip().startswith("#"):
            mark = m.group(1)
            if mark.startswith("differs:"):
                self.differs = mark[len("differs:"):].strip() or "(no reason given)"
            elif mark.startswith("only:") or mark.startswith("ordered:"):
                self.ordered = mark.startswith("ordered:")
                # "# only: KEYS  # differs: REASON": the cut reply differs on purpose
                keys, *why = re.split(r"\s+#\s*differs:", mark, maxsplit=1)
                why = why[0] if why else None
                if why is not None:
                    self.differs = why.strip() or "(no reason given)"
                self.only = [k.strip() for k in keys.partition(":")[2].split(",") if k.strip()]
                self.exact = True
            else:
                self.exact = True
            text = text[: m.start()]
        self.text = text.strip()
        self.kind = "comment"
        if not self.text or self.text.startswith("#"):
            return
        if self.text.startswith("!"):
            self.kind = "shell"
            self.text = self.text[1:].strip()
        elif self.text.startswith("?locks "):
            self.kind = "locks"
            self.text = self.text[len("?locks"):].strip()
            self.exact = True
        elif self.text.startswith("?sh "):
            self.kind = "probe"
            self.text = self.text[len("?sh"):].strip()
            self.exact = True
        elif self.text.startswith("?events "):
            self.kind = "events"
            self.text = self.text[len("?events"):].strip()
        elif self.text.startswith("?event"):
            self.kind = "event"
            self.text = self.text[len("?event"):].strip()
        elif self.text.startswith("?end"):
            self.kind = "end"
            self.text = self.text[len("?end"):].strip()
        elif self.text.startswith(">"):
            self.kind = "send"
            self.text = self.text[1:].strip()
        else:
            self.kind = "request"


def parse_script(path):
    lines = []
    with open(path) as f:
        for no, raw in enumerate(f, 1):
            ln = Line(no, raw.rstrip("\n"))
            if ln.kind != "comment" or ln.text.startswith("#!"):
                lines.append(ln)
    return lines


def vbd_binary():
    if os.environ.get("VBD_DAEMON"):
        return os.environ["VBD_DAEMON"]
    b = os.environ.get("VBD_BUILD")
    if b and os.path.exists(os.path.join(b, "src/tools/vbd-daemon")):
        return os.path.join(b, "src/tools/vbd-daemon")
    return shutil.which("vbd-daemon") or "vbd-daemon"


class Run:
    """One daemon running the script."""

    def __init__(self, name, binary, args, lines, negotiate):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"qmpdiff-{name}-")
        self.replies = {}  # line number -> reply (dict) or a string for a harness failure
        self.proc = None
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        # a relative path is the caller's: the daemon runs in its own directory
        self.binary = os.path.abspath(binary) if os.sep in binary else binary
        self.args = [a.replace("{DIR}", self.dir) for a in args]
        self.lines = lines
        self.negotiate = negotiate
        self.ended = False  # ?end saw the connection close: the daemon exits by itself

    def sub(self, s):
        return s.replace("{DIR}", self.dir)

    def run_line(self, ln):
        """Run a shell line in the daemon's directory: (exit status, stdout, stderr)."""
        env = dict(os.environ, QMPDIFF_PID=str(self.proc.pid) if self.proc else "", QMPDIFF_HERE=HERE)
        # its own process group: a harness stopped meanwhile (SIGTERM, an
        # exception) kills what the command started too, not only its shell
        p = subprocess.Popen(self.sub(ln.text), shell=True, cwd=self.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            out, err = p.communicate()
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        return p.returncode, out, err

    def shell(self, ln):
        rc, out, err = self.run_line(ln)
        if rc != 0:
            raise HarnessError(f"{self.name}: line {ln.no}: '{ln.text}' exited {rc}:\n{out}{err}")

    def probe(self, ln):
        """A '?sh' line's output as a reply ({DIR} normalized), or why not."""
        rc, out, err = self.run_line(ln)
        if rc != 0:
            return f"<'{ln.text}' exited {rc}: {err.strip()[:200]}>"
        return {"return": self.normalize(out.strip())}

    def locks(self, ln):
        """A '?locks' line's lock bytes as a reply, or why not (a file that
        cannot be looked at is a difference of this line, not the end of
        the run)."""
        try:
            return {"return": "\n".join(lockbytes.describe(os.path.join(self.dir, f))
                                         for f in self.sub(ln.text).split())}
        except OSError as e:
            return f"<?locks {ln.text}: {e}>"

    def start(self):
        sock = os.path.join(self.dir, "qmp.sock")
        cmd = [self.binary, "--chardev", f"socket,id=qmp0,path={sock},server=on,wait=off",
               "--monitor", "chardev=qmp0"] + self.args
        try:
            # in its own directory: a relative file name in a request (a
            # sweep's spoiled drive-mirror target) makes its image there
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=open(self.stderr_path, "w"), cwd=self.dir)
        except OSError as e:
            raise HarnessError(f"cannot start {self.name}: {e}")
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited {self.proc.returncode} at startup: {' '.join(cmd)}\n"
                                   + self.stderr())
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: no monitor socket after 60 s")
            time.sleep(0.02)
        self.qmp = QMP(sock, timeout=60)
        if self.negotiate:
            r = self.qmp.cmd("qmp_capabilities")
            # qsd 7.2 sent its greeting a second time, as the reply to
            # qmp_capabilities, once in about 100 runs at load 35 (the
            # client connecting as --monitor attaches to the chardev that
            # made the socket file, it seems): a second greeting is read
            # past, for qsd only; vbd's must come once.
            if self.name == "qsd" and "QMP" in r:
                r = self.qmp.recv()
            if "return" not in r:
                raise HarnessError(f"{self.name}: qmp_capabilities failed: {r}")

    def stderr(self):
        try:
            with open(self.stderr_path) as f:
                return f.read()
        except OSError:
            return ""

    def normalize(self, v):
        if isinstance(v, str):
            return v.replace(self.dir, "{DIR}")
        if isinstance(v, list):
            return [self.normalize(x) for x in v]
        if isinstance(v, dict):
            return {k: self.normalize(x) for k, x in v.items()}
        return v

    def run(self):
        started = False
        closed = None
        for ln in self.lines:
            if ln.kind == "shell":
                self.shell(ln)
                continue
            if ln.kind == "comment":
                continue
            if not started:
                self.start()
                started = True
            if closed:
                self.replies[ln.no] = closed
                continue
            try:
                if ln.kind == "event":
                    try:
                        name, _, want = ln.text.partition(" ")
                        want = json.loads(want) if want.strip() else {}
                        deadline = time.monotonic() + EVENT_WAIT
                        while True:
                            ev = self.qmp.wait_event(name, timeout=max(0.1, deadline - time.monotonic()))
                            data = ev.get("data") or {}
                            if all(data.get(k) == v for k, v in want.items()):
                                break
                        self.replies[ln.no] = self.normalize({"event": ev["event"], "data": ev.get("data")})
                    except (TimeoutError, socket.timeout):
                        self.replies[ln.no] = f"<no {ln.text} event within {EVENT_WAIT} s>"
                    self.qmp.sock.settimeout(60)  # wait_event shortened it
                elif ln.kind == "events":
                    self.replies[ln.no] = {"sequence": self.next_events(ln.text)}
                    self.qmp.sock.settimeout(60)
                elif ln.kind == "end":
                    self.replies[ln.no] = {"sequence": self.until_end(ln.text)}
                    closed = "<connection closed at ?end>"
                elif ln.kind == "probe":
                    self.replies[ln.no] = self.probe(ln)
                elif ln.kind == "locks":
                    self.replies[ln.no] = self.locks(ln)
                elif ln.kind == "send":
                    self.qmp.send_raw(self.sub(ln.text) + "\n")
                else:
                    self.qmp.send_raw(self.sub(ln.text) + "\n")
                    self.replies[ln.no] = self.normalize(self.qmp.recv())
            except (EOFError, OSError, TimeoutError, ValueError) as e:
                closed = f"<connection failed: {e}>"
                self.replies[ln.no] = closed
        if not started:
            self.start()

    def next_events(self, spec):
        """The next N events NAME (whose data has the members given), in order."""
        count, _, rest = spec.partition(" ")
        name, _, want = rest.strip().partition(" ")
        want = json.loads(want) if want.strip() else {}
        seq = []
        deadline = time.monotonic() + EVENT_WAIT
        while len(seq) < int(count):
            for i, ev in enumerate(self.qmp.events):
                data = ev.get("data") or {}
                if ev["event"] == name and all(data.get(k) == v for k, v in want.items()):
                    del self.qmp.events[i]
                    seq.append(self.normalize({"event": name, "data": ev.get("data")}))
                    break
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    seq.append(f"<only {len(seq)} of {count} {name} events within {EVENT_WAIT} s>")
                    return seq
                self.qmp.sock.settimeout(left)
                try:
                    msg = self.qmp._read()
                except (TimeoutError, socket.timeout):
                    continue
                if "event" in msg:
                    self.qmp.events.append(msg)
        return seq

    def until_end(self, spec):
        """Replies and the kept events until the connection closes, in order."""
        keep, drop = set(), []
        for tok in spec.split():
            if tok.startswith("-"):
                name, brace, want = tok[1:].partition("{")
                drop.append((name, json.loads(brace + want) if brace else {}))
            else:
                keep.add(tok)
        self.qmp.events.clear()  # those came before the stop began
        seq = []
        deadline = time.monotonic() + 60
        while True:
            self.qmp.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = self.qmp._read()
            except (EOFError, ConnectionResetError):
                break
            except (TimeoutError, socket.timeout):
                seq.append("<connection still open after 60 s>")
                return seq
            if "event" in msg:
                name, data = msg["event"], msg.get("data") or {}
                if name not in keep or any(name == n and all(data.get(k) == v for k, v in w.items())
                                           for n, w in drop):
                    continue
                msg = {"event": name, "data": msg.get("data")}
            seq.append(self.normalize(msg))
        self.ended = True
        return seq

    def stop(self):
        if self.ended and self.proc and self.proc.poll() is None:
            try:  # it is stopping by itself: a SIGTERM now would be a second signal
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return f"{self.name} did not exit within 60 s of SIGTERM"
        return None

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class HarnessError(Exception):
    pass


def jtype(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "array"
    return "object"


def shape(v):
    """Canonical structure text: keys and types, recursively."""
    t = jtype(v)
    if t == "object":
        return "{" + ",".join(f"{k}:{shape(v[k])}" for k in sorted(v)) + "}"
    if t == "array":
        return "[" + ",".join(sorted(shape(x) for x in v)) + "]"
    return t


def compare(a, b, path, exact, out):
    """Differences between qsd's value a and vbd's value b, as lines in out."""
    ta, tb = jtype(a), jtype(b)
    if ta != tb:
        out.append(f"{path or '.'}: qsd has {ta} {json.dumps(a)[:80]}, vbd has {tb} {json.dumps(b)[:80]}")
        return
    if ta == "object":
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in b:
                out.append(f"{p}: only in qsd ({json.dumps(a[k])[:80]})")
            elif k not in a:
                out.append(f"{p}: only in vbd ({json.dumps(b[k])[:80]})")
            else:
                compare(a[k], b[k], p, exact, out)
    elif ta == "array":
        if len(a) != len(b):
            out.append(f"{path or '.'}: qsd has {len(a)} elements, vbd has {len(b)}")
        # pair elements of the same structure first (order may differ), the rest in order
        left = list(range(len(b)))
        pairs, unmatched = [], []
        for i, x in enumerate(a):
            sx = shape(x) if not exact else json.dumps(x, sort_keys=True)
            for j in left:
                sy = shape(b[j]) if not exact else json.dumps(b[j], sort_keys=True)
                if sx == sy:
                    pairs.append((i, j))
                    left.remove(j)
                    break
            else:
                unmatched.append(i)
        for i, j in zip(unmatched, left):
            compare(a[i], b[j], f"{path}[{i}]", exact, out)
    elif exact and a != b:
        out.append(f"{path or '.'}: qsd has {json.dumps(a)[:80]}, vbd has {json.dumps(b)[:80]}")


def project(reply, keys, ordered=False):
    """A reply's return cut down to keys (per element of a list); a list
    sorted, or with ordered, kept in its order as a sequence (compared
    element by element)."""
    if not isinstance(reply, dict) or "return" not in reply:
        return reply
    def cut(d):
        if not isinstance(d, dict):
            return d
        out = {}
        for k in keys:  # "image.virtual-size": that member of the object "image"
            head, _, sub = k.partition(".")
            if sub and isinstance(d.get(head), dict) and sub in d[head]:
                out.setdefault(head, {})[sub] = d[head][sub]
            elif not sub and k in d:
                out[k] = d[k]
        d = out
        if str(d.get("node-name", "")).startswith("#"):
            d["node-name"] = "#implicit"  # each daemon numbers its own
        return d

    r = reply["return"]
    if ordered and isinstance(r, list):
        return {"sequence": [cut(x) for x in r]}
    r = sorted((cut(x) for x in r), key=lambda d: json.dumps(d, sort_keys=True)) if isinstance(r, list) else cut(r)
    return dict(reply, **{"return": r})


def compare_replies(ra, rb, exact):
    out = []
    if isinstance(ra, str) or isinstance(rb, str):
        # a harness failure (no reply, no event) is reported even when both had it
        out.append(f"qsd: {ra if isinstance(ra, str) else 'replied'}; vbd: {rb if isinstance(rb, str) else 'replied'}")
        return out
    if "sequence" in ra or "sequence" in rb:  # ?end, ?events: in order, exactly
        sa, sb = ra.get("sequence", []), rb.get("sequence", [])
        for name, seq in (("qsd", sa), ("vbd", sb)):  # ?events cut short: never "the same"
            out += [f"{name}: {m}" for m in seq if isinstance(m, str) and m.startswith("<only ")]
        for i in range(max(len(sa), len(sb))):
            a = json.dumps(sa[i], sort_keys=True) if i < len(sa) else "(nothing)"
            b = json.dumps(sb[i], sort_keys=True) if i < len(sb) else "(nothing)"
            if a != b:
                out.append(f"message {i + 1}: qsd {a[:160]}, vbd {b[:160]}")
        return out
    ka = "error" if "error" in ra else "return" if "return" in ra else "event" if "event" in ra else "?"
    kb = "error" if "error" in rb else "return" if "return" in rb else "event" if "event" in rb else "?"
    if ka != kb:
        out.append(f"qsd replied with {ka}, vbd with {kb}")
        return out
    if ka == "error":
        ca, cb = ra["error"].get("class"), rb["error"].get("class")
        if ca != cb:
            out.append(f"error class: qsd {ca}, vbd {cb}")
        elif exact and os.environ.get("QMPDIFF_ERROR_TEXT") and ra["error"].get("desc") != rb["error"].get("desc"):
            out.append(f"error text: qsd '{ra['error'].get('desc')}', vbd '{rb['error'].get('desc')}'")
    else:
        compare(ra.get(ka if ka != "event" else "data"), rb.get(kb if kb != "event" else "data"),
                ka if ka != "event" else "data", exact, out)
    if ("id" in ra) != ("id" in rb):
        out.append("id: echoed by only one of them")
    elif "id" in ra:
        compare(ra["id"], rb["id"], "id", True, out)
    return out


def main(argv):
    verbose = False
    args = argv[1:]
    if args and args[0] == "-v":
        verbose = True
        args = args[1:]
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    script = args[0]
    both, qsd_args, vbd_args = [], [], []
    i = 1
    while i < len(args):
        if args[i] in ("--both", "--qsd", "--vbd") and i + 1 < len(args):
            {"--both": both, "--qsd": qsd_args, "--vbd": vbd_args}[args[i]].append(args[i + 1])
            i += 2
        else:
            print(f"qmpdiff: unexpected argument '{args[i]}'", file=sys.stderr)
            return 2
    lines = parse_script(script)
    requests = [ln for ln in lines if ln.kind == "request"]
    negotiate = not any(ln.text == "#! no-negotiate" for ln in lines)
    if requests:
        try:
            first = json.loads(requests[0].text)
            if isinstance(first, dict) and first.get("execute") == "qmp_capabilities":
                negotiate = False
        except ValueError:
            pass
    # The directories go on every way out (a harness failure, an exception,
    # SIGTERM or SIGINT from a test's timeout) except a difference, where they
    # are kept to look at; the daemons go too. SIGTERM becomes SystemExit so
    # that the finally below runs.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    runs = []
    keep = False
    try:
        runs.append(Run("qsd", os.environ.get("QSD", "qemu-storage-daemon"), both + qsd_args, lines, negotiate))
        runs.append(Run("vbd", vbd_binary(), both + vbd_args, lines, negotiate))
        keep = compare_runs(script, lines, runs, verbose) != 0
        return 1 if keep else 0
    except HarnessError as e:
        print(f"qmpdiff: {e}", file=sys.stderr)
        for r in runs:
            r.stop()
        return 2
    finally:
        for r in runs:
            if r.proc and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        for r in runs:
            if keep:
                print(f"    {r.name}'s directory kept: {r.dir}", flush=True)
            else:
                r.cleanup()


def compare_runs(script, lines, runs, verbose):
    """Runs the script on both daemons, prints the comparison; 0 or 1."""
    status = 0
    for r in runs:
        r.run()
        why = r.stop()
        if why:
            print(f"FAIL {why}")
            status = 1
    vbd = runs[1]
    err = vbd.stderr()
    if vbd.proc.returncode not in (0, None) or "Sanitizer" in err or "runtime error" in err:
        print(f"FAIL vbd-daemon exited {vbd.proc.returncode}:\n{err}")
        status = 1
    ndiff = ndeliberate = nsame = 0
    for ln in lines:
        if ln.kind not in ("request", "event", "events", "end", "probe", "locks"):
            continue
        ra, rb = runs[0].replies.get(ln.no, "<not run>"), runs[1].replies.get(ln.no, "<not run>")
        if ln.only:
            ra, rb = project(ra, ln.only, ln.ordered), project(rb, ln.only, ln.ordered)
        diffs = compare_replies(ra, rb, ln.exact)
        label = ln.text if ln.kind == "request" else f"?sh {ln.text}" if ln.kind == "probe" else f"?{ln.kind} {ln.text}"
        if not diffs:
            nsame += 1
            if ln.differs:
                print(f"note {script}:{ln.no}: marked 'differs: {ln.differs}' but the replies agree")
            if verbose:
                print(f"same {script}:{ln.no}: {label}")
                if ln.kind in ("end", "events"):
                    for m in ra["sequence"]:
                        print(f"    {json.dumps(m)[:160]}")
            continue
        if ln.differs:
            ndeliberate += 1
            head = f"deliberate {script}:{ln.no} ({ln.differs})"
        else:
            ndiff += 1
            status = 1
            head = f"DIFF {script}:{ln.no}"
        print(f"{head}: {label}")
        for d in diffs:
            print(f"    {d}")
        if verbose or not ln.differs:
            print(f"    qsd: {json.dumps(ra)[:400]}")
            print(f"    vbd: {json.dumps(rb)[:400]}")
    print(f"qmpdiff {script}: {nsame} same, {ndeliberate} deliberate differences, {ndiff} differences")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
