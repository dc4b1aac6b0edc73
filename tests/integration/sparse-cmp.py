#!/usr/bin/env python3
"""sparse-cmp.py A B: exit 0 if files A and B hold the same bytes, reading
only where either has space allocated (FIEMAP, as fiemap.py: a hole reads
as zeroes), so that two sparse images of terabytes compare in seconds;
prints the first difference otherwise. With --alloc, their allocated
ranges must be the same too."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fiemap import ranges  # noqa: E402

CHUNK = 1 << 20


def data_ranges(path):
    """FIEMAP's ranges, or SEEK_DATA's where the file system has no
    FIEMAP (tmpfs: it has no unwritten extents either)"""
    try:
        return ranges(path)
    except OSError:
        out, off = [], 0
        with open(path, 'rb') as f:
            fd, end = f.fileno(), os.fstat(f.fileno()).st_size
            while off < end:
                try:
                    lo = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                hi = os.lseek(fd, lo, os.SEEK_HOLE)
                out.append([lo, hi])
                off = hi
        return out


def main():
    args = sys.argv[1:]
    alloc = args and args[0] == '--alloc'
    if alloc:
        args = args[1:]
    a, b = args
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if sa != sb:
        print(f'{a}: {sa} bytes, {b}: {sb} bytes')
        return 1
    ra, rb = data_ranges(a), data_ranges(b)
    if alloc and ra != rb:
        print(f'allocated otherwise: {a} {ra[:4]}..., {b} {rb[:4]}...')
        return 1
    merged = []
    for lo, hi in sorted(ra + rb):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        for lo, hi in merged:
            hi = min(hi, sa)
            fa.seek(lo)
            fb.seek(lo)
            while lo < hi:
                n = min(CHUNK, hi - lo)
                x, y = fa.read(n), fb.read(n)
                if x != y:
                    i = next(k for k in range(n) if x[k] != y[k])
                    print(f'differ at byte {lo + i}')
                    return 1
                lo += n
    return 0


if __name__ == '__main__':
    sys.exit(main())
