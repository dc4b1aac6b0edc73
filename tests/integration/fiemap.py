#!/usr/bin/env python3
"""Prints each FILE's size and allocated byte ranges, FIEMAP's extents
merged (written and unwritten alike, as st_blocks counts them, without the
file system's own blocks, which st_blocks also counts). SEEK_DATA is no
use here: an unwritten extent is a hole to it unless its pages happen to
be in the page cache."""
import fcntl
import os
import struct
import sys

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_LAST = 1
EXTENTS = 256


def ranges(path):
    fd = os.open(path, os.O_RDONLY)
    out, start = [], 0
    try:
        while True:
            buf = bytearray(struct.pack('=QQIIII', start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, EXTENTS, 0))
            buf += bytes(56 * EXTENTS)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            got = struct.unpack_from('=I', buf, 20)[0]
            last = False
            for i in range(got):
                lo, _, ln, _, _, flags = struct.unpack_from('=QQQQQI', buf, 32 + 56 * i)
                if out and out[-1][1] == lo:
                    out[-1][1] = lo + ln
                else:
                    out.append([lo, lo + ln])
                last = flags & FIEMAP_EXTENT_LAST
            if not got or last:
                return out
            start = out[-1][1]
    finally:
        os.close(fd)


if __name__ == '__main__':
    for p in sys.argv[1:]:
        print(p, os.stat(p).st_size, ' '.join('%d-%d' % tuple(r) for r in ranges(p)))
