#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""lockbytes.py FILE...: the bytes of each FILE that an open file
description holds an image lock on (QEMU's 100+perm and 200+perm bytes),
from /proc/locks: "FILE: 100 101 103 201 203" ("FILE: -" for none), one
line per FILE. qmpdiff.py's '?locks' lines compare the daemons with it
(describe(), in its own process)."""
import os
import sys


def held_bytes(key, text):
    held = set()
    for line in text.splitlines():
        parts = line.split()
        if "->" in parts or len(parts) < 3 or parts[-3] != key:
            continue  # another file's, or a waiter's (not held)
        start, end = int(parts[-2]), parts[-1]
        end = start if end == "EOF" else int(end)
        held.update(range(start, end + 1))
    return held


def lock_bytes(path):
    """The bytes of path locked now. /proc/locks is read a page at a time
    and the kernel lists the locks afresh for each page: a lock another
    process drops between two pages shifts the list and one entry is
    skipped (bytes missing at random on a host where many processes take
    locks; a daemon's own locks do not change while it is looked at). So:
    the union of whole reads, until three reads in a row add nothing."""
    st = os.stat(path)
    key = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    held, same = set(), 0
    for _ in range(50):
        with open("/proc/locks") as f:
            now = held_bytes(key, f.read())
        same = same + 1 if now <= held else 0
        held |= now
        if same >= 3:
            break
    return sorted(held)


def describe(path):
    """path's line: "NAME: 100 101 103 201 203" or "NAME: -" for none."""
    b = lock_bytes(path)
    return f"{os.path.basename(path)}: {' '.join(map(str, b)) if b else '-'}"


def main(argv):
    for path in argv[1:]:
        print(describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
