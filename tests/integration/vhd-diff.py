#!/usr/bin/env python3
# Build a differencing VHD over an existing VHD (qemu-img cannot create
# one), following the VHD specification: footer type 4, a dynamic header
# naming the parent (its UUID, timestamp, UTF-16BE name) with parent
# locator entries, and blocks whose sector bitmaps (most significant bit
# first) say which sectors the child holds; the others read from the
# parent.
#   vhd-diff.py PARENT CHILD PARENT_RAW EXPECTED LOCATORS [CLAIMED]
# PARENT is recorded as given (relative to CHILD's directory for W2ru);
# LOCATORS is a comma-separated list of W2ru, W2ku, MacX, none. EXPECTED
# gets the disk the child encodes (PARENT_RAW overlaid with its sectors),
# CLAIMED the numbers of the sectors the child holds, one a line.
import os, random, struct, sys, uuid

parent, child, parent_raw, expected, locators = sys.argv[1:6]
BLOCK = 0x200000
SPB = BLOCK // 512
BITMAP = 512  # one sector holds SPB bits


def checksum(b, at):
    b = bytearray(b)
    b[at:at + 4] = bytes(4)
    return (~sum(b)) & 0xffffffff


pf = open(os.path.join(os.path.dirname(child) or '.', parent), 'rb').read()
pfoot = pf[-512:] if pf[:8] != b'conectix' else pf[:512]
size = struct.unpack_from('>Q', pfoot, 48)[0]
disk = bytearray(open(parent_raw, 'rb').read())
assert len(disk) >= size
nblocks = (size + BLOCK - 1) // BLOCK

r = random.Random(7)
# block -> list of (first sector, count) the child holds
plan = {0: [(1, 3), (100, 1)], 2: [(0, SPB)], 3: [(SPB - 5, 5)], 5: [(r.randrange(SPB - 300), 257)]}
plan = {b: v for b, v in plan.items() if b < nblocks}

footer = bytearray(pfoot)
struct.pack_into('>Q', footer, 16, 512)  # dynamic header right after
struct.pack_into('>I', footer, 60, 4)  # differencing
footer[68:84] = uuid.uuid4().bytes
footer[84] = 0
struct.pack_into('>I', footer, 64, checksum(footer, 64))

name_abs = os.path.abspath(os.path.join(os.path.dirname(child) or '.', parent))
win_rel = '.\\' + parent.replace('/', '\\')
loc_data = {
    'W2ru': win_rel.encode('utf-16-le'),
    'W2ku': ('C:\\vms\\' + os.path.basename(parent)).encode('utf-16-le'),  # a Windows absolute path
    'MacX': ('file://' + name_abs).encode('utf-8'),
}
locs = [l for l in locators.split(',') if l in loc_data]

bat_off = 512 + 1024
bat_bytes = (nblocks * 4 + 511) // 512 * 512
off = bat_off + bat_bytes
loc_entries = []
loc_blobs = bytearray()
for l in locs:
    d = loc_data[l]
    space = (len(d) + 511) // 512 * 512
    loc_entries.append((l, space, len(d), off + len(loc_blobs)))
    loc_blobs += d.ljust(space, b'\0')
off += len(loc_blobs)

dyn = bytearray(1024)
dyn[0:8] = b'cxsparse'
struct.pack_into('>QQIII', dyn, 8, 0xffffffffffffffff, bat_off, 0x10000, nblocks, BLOCK)
dyn[40:56] = pfoot[68:84]  # parent UUID
dyn[56:60] = pfoot[24:28]  # parent timestamp
dyn[64:64 + 512] = os.path.basename(parent).encode('utf-16-be')[:512].ljust(512, b'\0')
for i, (code, space, length, where) in enumerate(loc_entries):
    # platform data space in sectors as Virtual PC writes it
    struct.pack_into('>4sIIIQ', dyn, 576 + 24 * i, code.encode(), space // 512, length, 0, where)
struct.pack_into('>I', dyn, 36, checksum(dyn, 36))

bat = [0xffffffff] * nblocks
blocks = bytearray()
claimed = []
for b in sorted(plan, key=lambda x: -x):  # file order differs from disk order
    bat[b] = (off + len(blocks)) // 512
    bm = bytearray(BITMAP)
    data = bytearray(b'\xcc' * BLOCK)  # sectors the bitmap does not claim must not be read
    for first, count in plan[b]:
        for s in range(first, first + count):
            bm[s // 8] |= 0x80 >> (s % 8)
            sec = bytes(r.getrandbits(8) for _ in range(16)) * 32
            data[s * 512:(s + 1) * 512] = sec
            pos = b * BLOCK + s * 512
            claimed.append(pos // 512)
            if pos < size:
                disk[pos:pos + 512] = sec
    blocks += bm + data

img = footer + dyn + struct.pack('>%dI' % nblocks, *bat).ljust(bat_bytes, b'\xff') + loc_blobs + blocks + footer
open(child, 'wb').write(img)
open(expected, 'wb').write(bytes(disk[:size]))
if len(sys.argv) > 6:
    open(sys.argv[6], 'w').write(''.join('%d\n' % c for c in sorted(claimed) if c * 512 < size))
