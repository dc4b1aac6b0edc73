"""The QMP side the mirror benchmarks share (bench/job-mirror*.sh): a
session on qmp.sock in the current directory, a mirror job's READY, and
its end by a cancel in READY (no pivot) with the target node removed."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "qmp"))
from qmp import QMP  # noqa: E402


def connect():
    return QMP("qmp.sock", negotiate=True)


def ok(r):
    if "error" in r:
        sys.exit(f"QMP: {r['error']}")
    return r["return"]


def wait_ready(m, job):
    while True:
        ev = m.wait_event("BLOCK_JOB_READY", timeout=600)
        if ev["data"]["device"] == job:
            return


def cancel_in_ready(m, job, target):
    ok(m.cmd("block-job-cancel", {"device": job}))
    m.wait_event("BLOCK_JOB_COMPLETED", timeout=600)
    while ok(m.cmd("query-jobs", {})):
        time.sleep(0.05)
    ok(m.cmd("blockdev-del", {"node-name": target}))
