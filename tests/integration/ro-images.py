#!/usr/bin/env python3
# Hand-built bochs and dmg images for fmt-ro.sh (Debian has no tool that
# writes them), following the layouts qemu's block/bochs.c and block/dmg.c
# read. Each writes IMAGE and EXPECTED (the raw disk content it encodes).
#   ro-images.py bochs IMAGE EXPECTED [v1|v2] [extent_size]
#   ro-images.py dmg IMAGE EXPECTED rsrc|xml [lzfse] [nobz2]
import base64, bz2, random, struct, sys, zlib

rnd = random.Random(1234)


def pattern(n, seed):
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def bochs(path, expected, version='v2', extent=32768):
    disk = 3 * 1024 * 1024 + 7 * 512  # not a whole number of extents
    sectors = disk // 512
    per = extent // 512
    catalog_n = (sectors + per - 1) // per
    bitmap = max(512, (per + 7) // 8)
    bitmap_blocks = (bitmap + 511) // 512
    content = bytearray(disk)
    written = {}  # sector -> data
    # scattered runs, crossing extent boundaries, and the last sector
    for start, count in [(1, 3), (per - 2, 5), (3 * per + 7, 1), (10 * per, 2 * per + 3), (sectors - 1, 1)]:
        for s in range(start, min(start + count, sectors)):
            written[s] = pattern(512, s)
    slots, order = {}, []
    for s in sorted(written, key=lambda x: rnd.random()):  # slots in a shuffled order
        e = s // per
        if e not in slots:
            slots[e] = len(order)
            order.append(e)
    hdr = bytearray(512)
    hdr[0:32] = b'Bochs Virtual HD Image'.ljust(32, b'\0')
    hdr[32:48] = b'Redolog'.ljust(16, b'\0')
    hdr[48:64] = b'Growing'.ljust(16, b'\0')
    struct.pack_into('<IIIII', hdr, 64, 0x10000 if version == 'v1' else 0x20000, 512, catalog_n, bitmap, extent)
    if version == 'v1':
        struct.pack_into('<Q', hdr, 84, disk)
    else:
        struct.pack_into('<IQ', hdr, 84, 0, disk)
    cat = [0xffffffff] * catalog_n
    for e, k in slots.items():
        cat[e] = k
    data_off = 512 + 4 * catalog_n
    slot_bytes = (bitmap_blocks + per) * 512
    img = bytearray(hdr + struct.pack('<%dI' % catalog_n, *cat))
    img += bytes(len(order) * slot_bytes)
    for e, k in slots.items():
        base = data_off + k * slot_bytes
        bm = bytearray(bitmap_blocks * 512)
        for i in range(per):
            s = e * per + i
            host = base + bitmap_blocks * 512 + i * 512
            if s in written:
                bm[i // 8] |= 1 << (i % 8)
                img[host:host + 512] = written[s]
                content[s * 512:s * 512 + 512] = written[s]
            elif s < sectors:
                img[host:host + 512] = b'\xee' * 512  # stale bytes behind a clear bit read as zeroes
        img[base:base + len(bm)] = bm
    # bochs writes only the sectors it has: end the file after the last written one
    last = max(data_off + slots[s // per] * slot_bytes + (bitmap_blocks + s % per + 1) * 512 for s in written)
    open(path, 'wb').write(img[:last])
    open(expected, 'wb').write(content)


UDZE, UDRW, UDIG, UDZO, UDBZ, ULFO, UDCM, UDLE = 0, 1, 2, 0x80000005, 0x80000006, 0x80000007, 0x7ffffffe, 0xffffffff


def dmg(path, expected, kind, lzfse=False, bzip2=True):
    # two partitions (mish blocks) of chunks: (type, sectors)
    bz = UDBZ if bzip2 else UDZO  # Debian's qemu-img has no dmg-bz2 module
    parts = [[(UDRW, 40), (UDZO, 128), (UDZE, 300), (bz, 64), (UDCM, 0), (UDZO, 9)],
             [(UDIG, 16), (UDZO, 2048), (ULFO if lzfse else UDRW, 8), (bz, 200), (UDZE, 1)]]
    data = bytearray()
    content = bytearray()
    mishes = []
    sector = 0
    for p, chunks in enumerate(parts):
        first = sector
        entries = []
        part_data_start = len(data)
        rel = 0
        for i, (t, n) in enumerate(chunks):
            raw = pattern(n * 512, p * 100 + i)
            if t in (UDZO, UDBZ, ULFO):
                raw = raw[:n * 256] + bytes(n * 256)  # compressible
            if t in (UDZE, UDIG, UDCM):
                raw = bytes(n * 512)
            if t == UDRW:
                blob = raw
            elif t == UDZO:
                blob = zlib.compress(raw)
            elif t == UDBZ:
                blob = bz2.compress(raw)
            elif t == ULFO:
                blob = b'bvx2' + raw[:64]  # never decompressed
            else:
                blob = b''
            off = len(data) - part_data_start
            data += blob
            entries.append(struct.pack('>IIQQQQ', t, 0, rel, n, off, len(blob)))
            rel += n
            content += raw
        entries.append(struct.pack('>IIQQQQ', UDLE, 0, rel, 0, len(data) - part_data_start, 0))
        mish = bytearray(204)
        struct.pack_into('>4sIQQQII', mish, 0, b'mish', 1, first, rel, part_data_start, 0, p)
        struct.pack_into('>I', mish, 200, len(entries))
        mishes.append(bytes(mish) + b''.join(entries))
        sector += rel
    img = bytearray(data)
    koly = bytearray(512)
    struct.pack_into('>4sIII', koly, 0, b'koly', 4, 512, 1)
    struct.pack_into('>QQQ', koly, 0x10, 0, 0, len(data))
    if kind == 'rsrc':
        body = b''.join(struct.pack('>I', len(m)) + m for m in mishes)
        rsrc = struct.pack('>IIII', 256, 256 + len(body), len(body), 0).ljust(256, b'\0') + body
        struct.pack_into('>QQ', koly, 0x28, len(img), len(rsrc))
        img += rsrc
    else:
        items = ''.join('\t\t\t<dict>\n\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n%s\n\t\t\t\t</data>\n\t\t\t</dict>\n' %
                        '\n'.join('\t\t\t\t' + base64.b64encode(m).decode()[i:i + 52]
                                  for i in range(0, len(base64.b64encode(m)), 52)) for m in mishes)
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n'
               '\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n%s\t\t</array>\n\t</dict>\n</dict>\n</plist>\n' % items).encode()
        struct.pack_into('>QQ', koly, 0xd8, len(img), len(xml))
        img += xml
    struct.pack_into('>Q', koly, 0x1ec, sector)
    img += koly
    open(path, 'wb').write(img)
    open(expected, 'wb').write(content)


if sys.argv[1] == 'bochs':
    bochs(sys.argv[2], sys.argv[3], *(sys.argv[4:5] or ['v2']), *[int(x) for x in sys.argv[5:6]])
else:
    dmg(sys.argv[2], sys.argv[3], sys.argv[4], 'lzfse' in sys.argv[5:], 'nobz2' not in sys.argv[5:])
