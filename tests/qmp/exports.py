#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Helpers for the export hot add/remove tests (qmp-export.sh,
qmp-guest-hotplug.sh): a qemu-io client fed command by command over NBD,
and the deletion of an export while a client is connected to it (over NBD
a qemu-io, over vhost-user-blk a vbd-bench): refused by the default mode
and mode=safe, done by mode=hard, which cuts the client off."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP  # noqa: E402,F401  (the tests import it from here too)


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def step(msg):
    print("--- " + msg, flush=True)


def expect_error(reply, cls, words):
    if "error" not in reply:
        fail("expected an error (%s), got %s" % (words, reply))
    if reply["error"]["class"] != cls or words not in reply["error"]["desc"]:
        fail("expected %s '%s', got %s" % (cls, words, reply["error"]))


def wait_for(what, cond, timeout=60, interval=0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            fail("timed out waiting for " + what)
        time.sleep(interval)


def nbd_uri(sock, name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def log_count(path, words):
    with open(path) as f:
        return f.read().count(words)


class QemuIo:
    """One qemu-io process on one NBD connection, fed command by command."""

    def __init__(self, sock, name):
        self.p = subprocess.Popen(["qemu-io", "-f", "raw", nbd_uri(sock, name)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def run(self, cmd):
        """The command's output lines; the prompt comes back after each command."""
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                return out + ["<qemu-io exited>"]
            line = line.replace("qemu-io> ", "").strip()
            if line:
                out.append(line)
            # a command ends with its statistics line, or with its error
            if "ops/sec" in line or "failed" in line or "error" in line.lower():
                return out

    def close(self):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        self.p.wait()


def refuse_then_hard_delete(m, eid, timeout, refused=None):
    """block-export-del of eid, which has a client: the default mode and
    mode=safe are refused (GenericError, as qsd), then refused() runs, then
    mode=hard deletes it and BLOCK_EXPORT_DELETED arrives."""
    expect_error(m.cmd("block-export-del", {"id": eid}), "GenericError", "still in use")
    expect_error(m.cmd("block-export-del", {"id": eid, "mode": "safe"}), "GenericError", "still in use")
    if refused:
        refused()
    m.execute("block-export-del", id=eid, mode="hard")
    ev = m.wait_event("BLOCK_EXPORT_DELETED", timeout=timeout)
    if ev["data"] != {"id": eid}:
        fail("BLOCK_EXPORT_DELETED for %s: %s" % (eid, ev))


def delete_nbd_export_in_use(m, eid, client, read_cmd, timeout=60, refused=None):
    """Deletes the NBD export eid under client (a QemuIo on it): after the
    refused deletions read_cmd still succeeds (and refused() runs); after
    mode=hard the client's next read fails. The client is closed."""
    def still_reads():
        out = client.run(read_cmd)
        if not any("bytes at offset" in line for line in out):
            fail("%s's client after the refused delete: %s" % (eid, out))
        if refused:
            refused()
    refuse_then_hard_delete(m, eid, timeout, still_reads)
    out = client.run("read 0 4k")
    if not any("failed" in line or "exited" in line for line in out):
        fail("%s's client still reads after the hard delete: %s" % (eid, out))
    client.close()


def delete_vhost_user_export_in_use(m, eid, vu, bench, log, connected=None, timeout=60, wait=60, before=None,
                                    mode=None):
    """Deletes the vhost-user-blk export eid (socket vu) while a vbd-bench
    (the binary bench) reads it, with block-export-del in mode (None: the
    default, safe): as qsd 7.2 in every mode, the command succeeds,
    BLOCK_EXPORT_DELETED arrives, the daemon's log (log) says the front end
    was disconnected and the socket is gone. connected(): called once
    vbd-bench is connected.
    before: the (connected, disconnected) counts in the log before this
    vbd-bench where the caller knows them (a front end that just left may
    not be logged yet); else they are read from the log."""
    c0, d0 = before or (log_count(log, "front end connected"), log_count(log, "front end disconnected"))
    b = subprocess.Popen([bench, "--vhost-user", vu, "-w", "randread", "-t", "900", "-d", "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for("vbd-bench to connect to " + eid, lambda: log_count(log, "front end connected") > c0, wait)
    if connected:
        connected()
    m.execute("block-export-del", id=eid, **({"mode": mode} if mode else {}))
    ev = m.wait_event("BLOCK_EXPORT_DELETED", timeout=timeout)
    if ev["data"] != {"id": eid}:
        fail("BLOCK_EXPORT_DELETED for %s: %s" % (eid, ev))
    # vbd-bench does not watch the socket while it runs: the daemon's log says it was cut off
    wait_for("the daemon to disconnect vbd-bench", lambda: log_count(log, "front end disconnected") > d0, wait)
    b.kill()
    b.wait()
    if os.path.exists(vu):
        fail("%s's vhost-user socket is left behind" % eid)
