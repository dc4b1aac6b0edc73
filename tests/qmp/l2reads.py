#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""l2reads.py LOG IMAGE STATE: how many reads of IMAGE's L2 tables the
nbdkit log filter's LOG holds since the last call (STATE keeps the count
seen). qmpdiff.py's '?sh' lines compare the daemons' L2 cache misses with
it: the qcow2 node reads its file through nbdkit (file plugin, log filter).
The L2 tables are the active L1 table's entries, read from IMAGE."""
import re
import struct
import sys


def l2_tables(path):
    with open(path, "rb") as f:
        hdr = f.read(48)
        l1_size = struct.unpack(">I", hdr[36:40])[0]
        l1_off = struct.unpack(">Q", hdr[40:48])[0]
        f.seek(l1_off)
        ents = struct.unpack(f">{l1_size}Q", f.read(8 * l1_size))
    return {e & 0x00fffffffffffe00 for e in ents if e & 0x00fffffffffffe00}


def main(log, image, state):
    tables = l2_tables(image)
    n = 0
    with open(log, errors="replace") as f:
        for line in f:
            m = re.search(r"\bRead id=\d+ offset=(0x[0-9a-fA-F]+) count=(0x[0-9a-fA-F]+)", line)
            if not m:
                continue
            off, cnt = int(m.group(1), 16), int(m.group(2), 16)
            n += any(off <= t < off + cnt for t in tables)
    try:
        with open(state) as f:
            seen = int(f.read() or 0)
    except FileNotFoundError:
        seen = 0
    with open(state, "w") as f:
        f.write(str(n))
    print(n - seen)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
