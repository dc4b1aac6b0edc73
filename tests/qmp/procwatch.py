"""What the QMP resource tests (qmp-hostile.sh, qmp-cycles.sh; daemon
started by lib.sh's start_watched_daemon) watch of vbd-daemon: its RSS and
open fds in /proc. check() ends the test with one FAIL line."""
import os
import sys


def check(cond, what):
    if not cond:
        print("FAIL: " + what)
        sys.exit(1)


class Daemon:
    def __init__(self, pid):
        self.pid = int(pid)

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        check(False, f"no VmRSS in /proc/{self.pid}/status")

    def fds(self):
        """what each open fd names, sorted: a changed set shows which leaked"""
        d = f"/proc/{self.pid}/fd"
        return sorted(os.readlink(f"{d}/{f}") for f in os.listdir(d))

    def nfds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))
