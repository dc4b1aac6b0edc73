# SPDX-License-Identifier: MIT
"""vbd-stress (tests/stress/vbd-stress) run by a Python harness that changes
the graph under it over QMP (snapshot-stress.sh, snapshot-internal-stress.sh,
export-readd-stress.sh, reopen-stress.sh, throttle-toggle-stress.sh,
bitmap-incr-stress.sh, job-chain-stress.sh): its
start, the checks that it still runs, its end by SIGUSR1 or by the daemon's
SIGKILL (crash mode), the summary of its --points, and the requests the
daemon has completed (to wait until some went through a change)."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jobs import fail  # noqa: E402


class Stress:
    def __init__(self, cmd, show_seed=False):
        """vbd-stress with the arguments cmd (its binary first), stdout and
        stderr read at its end; returns once it printed its first line (its
        seed: it runs, SIGUSR1 is handled), which show_seed prints."""
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = self.p.stdout.readline()
        if show_seed:
            print(first.strip())

    def alive(self, what):
        """fails the test if vbd-stress has ended (what: when, for the message)"""
        if self.p.poll() is not None:
            fail(f"vbd-stress ended {what}: {self.p.communicate()[0][-3000:]}")

    def finish(self, timeout=300):
        """SIGUSR1: the requests in flight complete, its checks run; it must
        end within timeout seconds (else a request hung) and pass. Prints its
        last line, returns its output."""
        self.p.send_signal(signal.SIGUSR1)
        try:
            out = self.p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.p.kill()
            fail(f"vbd-stress did not end within {timeout} s of its SIGUSR1: requests hung "
                 f"({self.p.communicate()[0][-2000:]})")
        if self.p.returncode:
            fail(f"vbd-stress: {out[-4000:]}")
        print(out.strip().splitlines()[-1])
        return out

    def crash(self, ready, dpid):
        """crash mode (--crash-ready READY): once vbd-stress made the file
        ready (past --crash-after: a failed request is the crash, not an
        error), SIGKILL of the daemon dpid; vbd-stress must then end well,
        having seen the server go."""
        while not os.path.exists(ready):
            self.alive("before its ready file")
            time.sleep(0.02)  # polling for the file
        os.kill(int(dpid), signal.SIGKILL)
        out = self.p.communicate()[0]
        if self.p.returncode or "server is gone" not in out:
            fail(f"vbd-stress in crash mode: {out[-3000:]}")


def points(out, across):
    """the summary of a run's --points (its output out): each checked point
    of its points file printed a line; across names what the points were
    (the snapshots, the deletes...)"""
    pts = [l for l in out.splitlines() if l.startswith("vbd-stress: point ")]
    if not pts:
        fail(f"vbd-stress checked no point: {out[-2000:]}")
    n = [int(l.split(" across")[0].split()[-1]) for l in pts]
    print(f"{len(pts)} points ok, {sum(n)} requests in flight across {across} (at most {max(n)} at once)")


def completed(s, kinds=("rd", "wr", "unmap", "flush")):
    """the requests of those kinds the daemon of QMP session s (jobs.Session)
    has completed on all its nodes (query-blockstats; writes count
    write-zeroes too)"""
    return sum(b["stats"][k + "_operations"] for b in s.run("query-blockstats") for k in kinds)


def after_some(s, n, stress, what, kinds=("rd", "wr", "unmap", "flush")):
    """waits until n more requests of those kinds have completed (e.g. some
    went through the change just made), vbd-stress still running"""
    c0 = completed(s, kinds)
    while completed(s, kinds) < c0 + n:
        stress.alive(what)
        time.sleep(0.005)  # polling the counters
