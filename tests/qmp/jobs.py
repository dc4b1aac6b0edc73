#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Helpers for the block job tests (tests/integration/job-*.sh): one QMP
session that starts a job, runs writers while it runs and checks its
events, for vbd-daemon and qemu-storage-daemon alike."""
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


class Session:
    def __init__(self, sock, who):
        self.who = who
        self.m = QMP(sock, negotiate=True)

    def run(self, cmd, **args):
        r = self.m.cmd(cmd, args)
        if "error" in r:
            fail(f"{self.who}: {cmd} {json.dumps(args)}: {r['error']}")
        return r["return"]

    def error(self, cmd, **args):
        r = self.m.cmd(cmd, args)
        if "error" not in r:
            fail(f"{self.who}: {cmd} {json.dumps(args)} succeeded, an error was expected")
        return r["error"]

    def job(self, jid):
        for j in self.run("query-jobs"):
            if j["id"] == jid:
                return j
        return None

    def status(self, jid, want):
        """The next JOB_STATUS_CHANGE of jid must be `want` (QEMU's drained
        sections pause and resume a job on the way: those pairs are skipped,
        and so are a ready job's standby and ready again, as a drained
        blockdev-reopen makes them)."""
        standby = getattr(self, "_standby", set())
        self._standby = standby
        while True:
            ev = self.m.wait_event("JOB_STATUS_CHANGE", timeout=300)["data"]
            if ev["id"] != jid:
                continue
            if ev["status"] == want:
                standby.discard(jid)
                return
            if ev["status"] in ("paused", "running") and want not in ("paused", "running"):
                continue
            if ev["status"] == "standby":
                standby.add(jid)
                continue
            if ev["status"] == "ready" and jid in standby:
                standby.discard(jid)
                continue
            fail(f"{self.who}: job {jid} went to '{ev['status']}', expected '{want}'")

    def completed(self, jid, ready=False):
        """A job run to its end with auto-finalize and auto-dismiss: its
        events in order and BLOCK_JOB_COMPLETED without an error."""
        if ready:
            self.status(jid, "ready")
        for s in ("waiting", "pending"):
            self.status(jid, s)
        ev = self.m.wait_event("BLOCK_JOB_COMPLETED", timeout=300)["data"]
        if ev["device"] != jid or "error" in ev:
            fail(f"{self.who}: BLOCK_JOB_COMPLETED {ev}")
        if ev["offset"] != ev["len"]:
            fail(f"{self.who}: job {jid} completed at {ev['offset']} of {ev['len']}")
        for s in ("concluded", "null"):
            self.status(jid, s)
        if self.job(jid):
            fail(f"{self.who}: job {jid} still listed after auto-dismiss")

    def gone(self, node, timeout=300):
        """Waits until node is no longer listed: blockdev-snapshot-sync's
        overlay closes with its last user (an export moved off it by an
        active commit or a mirror, a stream that dropped it from the
        chain), as in qsd; blockdev-del could not find it then."""
        import time
        deadline = time.monotonic() + timeout
        while any(n["node-name"] == node for n in self.run("query-named-block-nodes")):
            if time.monotonic() > deadline:
                fail(f"{self.who}: node {node} still listed {timeout} s after its last user went")
            time.sleep(0.05)
        r = self.m.cmd("blockdev-del", {"node-name": node})
        if r.get("error", {}).get("desc") != f"Failed to find node with node-name='{node}'":
            fail(f"{self.who}: blockdev-del of the closed overlay {node}: {r}")

    def job_end(self, jid, timeout=300):
        """Waits for job jid to go away (auto-dismiss), whatever events came
        between: True if BLOCK_JOB_COMPLETED came for it, False if
        BLOCK_JOB_CANCELLED; fails on a job error."""
        import time
        done, deadline = None, time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.m.events):
                d = ev.get("data", {})
                if ev["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and d.get("device") == jid:
                    if "error" in d:
                        fail(f"{self.who}: {ev}")
                    done = ev["event"] == "BLOCK_JOB_COMPLETED"
                if ev["event"] == "JOB_STATUS_CHANGE" and d["id"] == jid and d["status"] == "null":
                    self.m.events = [e for e in self.m.events[:i] if jid not in (e.get("data", {}).get("id"),
                                     e.get("data", {}).get("device"))] + self.m.events[i + 1:]
                    self.m.sock.settimeout(60)
                    if done is None:
                        fail(f"{self.who}: job {jid} ended without BLOCK_JOB_COMPLETED or _CANCELLED")
                    return done
            if time.monotonic() > deadline:
                fail(f"{self.who}: job {jid} still there after {timeout} s: {self.job(jid)}")
            self.m.sock.settimeout(max(1.0, deadline - time.monotonic()))
            msg = self.m._read()  # the next event, queued in order
            if "event" not in msg:
                fail(f"{self.who}: a reply to no request: {msg}")
            self.m.events.append(msg)

    def on_job(self, jid, cmd, **args):
        """cmd on job jid, unless the job has ended meanwhile (a short one
        may): True if it was done."""
        r = self.m.cmd(cmd, args)
        if "error" in r and self.job(jid):
            fail(f"{self.who}: {cmd} {json.dumps(args)}: {r['error']}")
        return "error" not in r

    def complete_across(self, jid, writers):
        """job-complete on READY job jid while `writers` (a Popen of
        vbd-stress, its pid vbd-stress's own, running until SIGUSR1: no
        --seconds to outlast the job) run: once their writes reach the job
        (its total grows with the dirty chunks it copies); they must still
        be running when the job has ended (else the pivot was not tested
        under them), then SIGUSR1 ends them and their checks must pass."""
        import time
        t0 = self.job(jid)["total-progress"]
        while self.job(jid)["total-progress"] == t0:
            if writers.poll() is not None:
                fail(f"vbd-stress ended before its writes reached the job: {writers.stdout.read()[-2000:]}")
            time.sleep(0.02)  # polling the job's progress
        self.run("job-complete", id=jid)
        self.completed(jid)
        if writers.poll() is not None:
            fail(f"the writers were done before job-complete: not tested across it: {writers.stdout.read()[-2000:]}")
        stress_stop(writers)


    def under_writers(self, jid, writers, progress):
        """Job jid copies under `writers` (a Popen of vbd-stress running
        until SIGUSR1, started before the job and seen running by
        stress_running): waits until the job has copied `progress` bytes,
        is READY or has ended (all of it then ran under them), then ends
        the writers with SIGUSR1 and their checks must pass. The writers
        end only when told: that the job ran while they wrote follows from
        the order of events, not from how fast the host is (a fixed
        --seconds run beside a rate-limited job was a race: a starved
        writer could outlast the job's whole run)."""
        import time
        while True:
            j = self.job(jid)
            if not j or j["status"] != "running" or j["current-progress"] >= progress:
                break
            if writers.poll() is not None:
                fail(f"vbd-stress ended before it was told to: {writers.stdout.read()[-2000:]}")
            time.sleep(0.02)  # polling the job's progress
        stress_stop(writers)
        return j


def stress_running(p):
    """Waits for vbd-stress (a Popen of stress_writes(wait=False)) to be
    writing: its first line (seed and target) comes once its connections
    are open, right before its requests start."""
    line = p.stdout.readline()
    if not line.startswith("vbd-stress: seed="):
        fail(f"vbd-stress did not start: {line}{p.stdout.read()[-2000:] if p.poll() is not None else ''}")
    return p


def stress_stop(p):
    """Ends vbd-stress started until SIGUSR1 (stress_writes(secs=None,
    wait=False)): its requests in flight complete, its checks follow and
    must pass."""
    import signal
    if p.poll() is not None:
        fail(f"vbd-stress ended before its SIGUSR1: {p.stdout.read()[-2000:]}")
    p.send_signal(signal.SIGUSR1)
    try:
        out = p.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        fail(f"vbd-stress did not end within 300 s of its SIGUSR1: {p.communicate()[0][-2000:]}")
    if p.returncode:
        fail(f"vbd-stress: {out[-3000:]}")
    return out


def sh(cmd, what):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode:
        fail(f"{what}: exit {r.returncode}: {(r.stdout + r.stderr)[-2000:]}")
    return r.stdout


# The writers of the job tests that write through the daemon's NBD export
# (job_daemon_start: "disk" on nbd.sock in the current directory) while a
# job runs (job-commit.sh, job-mirror.sh). Each takes the content before
# it (a raw file, init) and leaves what the export must read after it (out).
NBD_DISK = "nbd+unix:///disk?socket=nbd.sock"


def qemu_io_writes(seed, init, out):
    """40 fixed qemu-io writes (a fifth of them zeroes) through the export,
    and the same on a raw copy of init."""
    r = random.Random(seed)
    cmds = []
    for _ in range(40):
        off, ln = r.randrange(0, 32 << 20, 512), r.choice([512, 4096, 65536, 200000, 1 << 20])
        ln = min(ln, (32 << 20) - off)
        cmds.append(f"-c 'write -z {off} {ln}'" if r.random() < 0.2 else f"-c 'write -P {r.randrange(1, 256)} {off} {ln}'")
    cmds = " ".join(cmds)
    sh(f"cp {init} {out} && qemu-io -f raw {cmds} {out}", "the model of the writes")
    sh(f"qemu-io -f raw {cmds} '{NBD_DISK}'", "qemu-io writes")


def stress_writes(stress_bin, seed, secs, init, out, wait=True):
    """vbd-stress over 2 connections (4 requests in flight, no discards,
    every read checked against its model) for secs seconds; secs None: until
    SIGUSR1 (Session.complete_across). wait False: its Popen."""
    cmd = (f"{stress_bin} --seed {seed} --ops 100000000 --qd 4 --init {init} --no-discard "
           f"--shadow-out {out} --nbd '{NBD_DISK}' --conns 2" + (f" --seconds {secs}" if secs else ""))
    if wait:
        sh(cmd, f"vbd-stress (seed {seed})")
        return None
    return subprocess.Popen("exec " + cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def writers(who, stress_bin, seed, secs, init, out):
    """vbd-stress against vbd-daemon, fixed qemu-io writes against
    qemu-storage-daemon 7.2: under vbd-stress, reads through qsd's export
    during its intermediate commit return wrong data (in 5 of 12 runs, 1 of
    them with one NBD connection; never without a job in 6 runs, never
    against vbd-daemon): mostly zeroes the guest wrote to top read back as
    mid's data. It looks like qsd's, but is not settled."""
    if who == "vbd":
        stress_writes(stress_bin, seed, secs, init, out)
    else:
        qemu_io_writes(seed, init, out)
