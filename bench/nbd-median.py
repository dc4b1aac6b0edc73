#!/usr/bin/env python3
"""Median per cell of several bench/nbd.sh outputs, as a RESULTS.md table.

nbd.sh has no REPS: a whole table is a 7-minute hold of the bench lock, so
repeats are separate runs (each under the lock), combined here:
    bench/nbd-median.py run1.txt run2.txt run3.txt
The vbd/best column is the ratio of the medians, with each run's own ratio
in parentheses (their spread says how far to trust it). Not a test.
"""
import re
import statistics
import sys

ROW = re.compile(r'^(unix|tcp)\s+(\S+ \S+ \S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+(\d+)\s+(\d+)\s+(\d+)\s*$')
cells, order = {}, []
for path in sys.argv[1:]:
    client = None
    with open(path) as f:
        for line in f:
            if line.startswith('client:'):
                client = line.split()[1]
                continue
            m = ROW.match(line)
            if not m or not client:
                continue
            key = (client, m.group(1), m.group(2))
            if key not in cells:
                cells[key] = []
                order.append(key)
            cells[key].append([int(m.group(i)) for i in range(3, 9)])
if not order:
    sys.exit('no nbd.sh rows in ' + ' '.join(sys.argv[1:]))
print('| client | via | workload | vbd IOPS | qemu-nbd | nbdkit | vbd / best (each run) | vbd ns/r | qemu-nbd ns/r '
      '| nbdkit ns/r | best peer ns / vbd ns | runs |')
print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
for key in order:
    runs = cells[key]
    med = [statistics.median(r[i] for r in runs) for i in range(6)]
    each = sorted(r[0] / max(r[1], r[2], 1) for r in runs)
    peer_ns = min(med[4], med[5])
    print('| %s | %s | %s | %d | %d | %d | %.2f (%s) | %d | %d | %d | %.2f | %d |' % (
        key[0], key[1], key[2], med[0], med[1], med[2], med[0] / max(med[1], med[2], 1),
        ', '.join('%.2f' % x for x in each), med[3], med[4], med[5], peer_ns / max(med[3], 1), len(runs)))
