#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A small QMP client for the tests (standard library only).

    from qmp import QMP
    m = QMP("/path/to/socket")          # or QMP(("127.0.0.1", 4444))
    m.greeting                           # {"QMP": {...}}
    m.cmd("qmp_capabilities")            # the whole reply: {"return": ...} or {"error": ...}
    m.execute("query-version")           # the "return" value; raises QMPError on an error reply
    m.wait_event("BLOCK_EXPORT_DELETED", timeout=30)
    m.ok("block-job-pause", device="j0")  # the "return"; an error reply fails the test
    m.wait_job("j0", ("paused",))        # query-jobs until the job's status is one of these
    alive(pid)                           # a client the test started still runs

A test's QMP session from bash: lib.sh's qmp_py SOCK <<'PY' ... PY.

As a program: `qmp.py SOCKET [FILE]` sends each JSON line of FILE (default
stdin) as one request and prints each reply on one line (events are
printed as they come, prefixed with "event: ").
"""
import json
import socket
import sys
import time


def alive(pid):
    """The process runs: not gone, not a zombie waiting for its parent."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class QMPError(Exception):
    def __init__(self, reply):
        self.reply = reply
        err = reply.get("error", {})
        self.cls = err.get("class")
        self.desc = err.get("desc")
        super().__init__(f"{self.cls}: {self.desc}")


class QMP:
    def __init__(self, addr, timeout=60, negotiate=False):
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:  # the daemon may still be starting: wait for it to listen
            try:
                self.sock.connect(addr)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.buf = b""
        self.events = []
        self.greeting = self._read()
        if negotiate:
            self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QMP connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def recv(self):
        """The next reply (events are queued in self.events)."""
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd(self, name, args=None, id=None):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        if id is not None:
            req["id"] = id
        self.send_raw(json.dumps(req) + "\n")
        return self.recv()

    def execute(self, command, /, **args):
        """Arguments as keywords, '_' standing for '-' (node_name=...)."""
        reply = self.cmd(command, {k.replace("_", "-"): v for k, v in args.items()} or None)
        if "error" in reply:
            raise QMPError(reply)
        return reply["return"]

    def ok(self, command, **args):
        """The command's "return"; an error reply fails the test with an
        AssertionError naming the command, its arguments and the reply.
        Names with '-' as given: ok("blockdev-del", **{"node-name": "d0"})."""
        reply = self.cmd(command, args)
        assert "return" in reply, (command, args, reply)
        return reply["return"]

    def job_status(self, job_id):
        """The job's status in query-jobs, None once it is gone."""
        jobs = [j for j in self.ok("query-jobs") if j["id"] == job_id]
        return jobs[0]["status"] if jobs else None

    def wait_job(self, job_id, want, timeout=300):
        """Polls query-jobs until the job's status is in want (a tuple;
        None in it: the job gone); returns that status. Generous: a job
        under load on a shared host may take minutes."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.job_status(job_id)
            if status in want:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached {want} in {timeout} s: {status}")
            time.sleep(0.05)

    def wait_event(self, name, timeout=60):
        # the socket's own timeout is put back at the end: left as the time
        # to the deadline at the last read, it bounded the next command's
        # reply by whatever was left (a second or less when the event came
        # near the deadline: a timed-out reply on a loaded host)
        own = self.sock.gettimeout()
        deadline = time.monotonic() + timeout
        try:
            while True:
                for i, ev in enumerate(self.events):
                    if ev["event"] == name:
                        return self.events.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {name} event within {timeout}s")
                self.sock.settimeout(left)
                msg = self._read()
                if "event" in msg:
                    self.events.append(msg)
        finally:
            self.sock.settimeout(own)

    def close(self):
        self.sock.close()


def main():
    m = QMP(sys.argv[1])
    print(json.dumps(m.greeting))
    src = open(sys.argv[2]) if len(sys.argv) > 2 else sys.stdin
    for line in src:
        if not line.strip():
            continue
        m.send_raw(line.rstrip("\n") + "\n")
        reply = m.recv()
        for ev in m.events:
            print("event: " + json.dumps(ev))
        m.events.clear()
        print(json.dumps(reply))


if __name__ == "__main__":
    main()
