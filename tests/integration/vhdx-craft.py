#!/usr/bin/env python3
# Hand-made VHDX images, following Microsoft's VHDX spec (not QEMU's code),
# for what qemu-img cannot make.
#
# A dirty image is made dirty the way a crash in the middle of a metadata
# update leaves it: a new block's data is in the file, the log holds the entries that make it
# visible, the active header names the log, the BAT and the rest of the
# file do not have the changes yet.
#
#   vhdx-craft.py dirty IMG RAW      IMG (dynamic, made by qemu-img) gets two
#       log entries: seq N writes a BAT sector allocating block 1 at the end
#       of the file (filled with 0x5a) and overwrites a 4 KiB sector of
#       block 0 with 0xa5; seq N+1 zeroes 8 KiB of block 0. A stale entry
#       with another log GUID sits before them. RAW (the image's content
#       before) is changed to what the image reads after replaying.
#   vhdx-craft.py hostile IMG KIND   one entry writing outside the file's data:
#       KIND=past-eof (a data sector past the end of the file), zero-huge (a
#       zero descriptor of 2^50 bytes), header (over the header section).
#   vhdx-craft.py diff IMG PARENT_RAW OUT_RAW  IMG (dynamic, 1 MiB blocks,
#       block_state_zero=off, made by qemu-img) becomes a differencing image
#       whose parent locator names ./parent.vhdx (relative_path, Windows
#       style): block 0 present (0xc1), block 1 partially present (0xc2 in
#       sectors 10-19 and 1000-1499, the parent's elsewhere), block 2 zero,
#       block 3 absent, block 4 unmapped (both the parent's). OUT_RAW gets
#       what it reads as, from the parent's content PARENT_RAW.
import os
import struct
import sys
import uuid

MiB = 1 << 20
SECTOR = 4096
BAT_GUID = uuid.UUID('2dc27766-f623-4200-9d64-115e9bfd4a08').bytes_le

_tab = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _tab.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _tab[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def with_crc(buf, at):
    buf = bytearray(buf)
    buf[at:at + 4] = b'\0' * 4
    buf[at:at + 4] = struct.pack('<I', crc32c(buf))
    return bytes(buf)


class Image:
    def __init__(self, path):
        self.path = path
        self.f = open(path, 'r+b')
        hs = [self.read(o, SECTOR) for o in (64 * 1024, 128 * 1024)]
        seqs = [struct.unpack_from('<Q', h, 8)[0] for h in hs]
        self.cur = 0 if seqs[0] > seqs[1] else 1
        self.hdr = hs[self.cur]
        self.log_len, self.log_off = struct.unpack_from('<IQ', self.hdr, 68)
        rt = self.read(192 * 1024, 64 * 1024)
        for i in range(struct.unpack_from('<I', rt, 8)[0]):
            g, off, ln, _ = struct.unpack_from('<16sQII', rt, 16 + 32 * i)
            if g == BAT_GUID:
                self.bat_off = off
        self.block_size = 0
        meta_off = [struct.unpack_from('<Q', rt, 16 + 32 * i + 16)[0] for i in range(2)
                    if struct.unpack_from('<16s', rt, 16 + 32 * i)[0] != BAT_GUID][0]
        m = self.read(meta_off, 64 * 1024)
        fp = uuid.UUID('caa16737-fa36-4d43-b3b6-33f0aa44e76b').bytes_le
        for i in range(struct.unpack_from('<H', m, 10)[0]):
            g, off = struct.unpack_from('<16sI', m, 32 + 32 * i)
            if g == fp:
                self.block_size = struct.unpack_from('<I', self.read(meta_off + off, 4))[0]

    def read(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(data)

    def size(self):
        return os.fstat(self.f.fileno()).st_size

    def bat(self, i):
        return struct.unpack('<Q', self.read(self.bat_off + 8 * i, 8))[0]

    def set_log_guid(self, guid):
        # the inactive header becomes the active one, naming the log
        h = bytearray(self.hdr)
        h[8:16] = struct.pack('<Q', struct.unpack_from('<Q', self.hdr, 8)[0] + 1)
        h[48:64] = guid
        self.write((64, 128)[1 - self.cur] * 1024, with_crc(h, 4))


def entry(guid, seq, descs, flushed, last, tail=0):
    """descs: ('data', file_offset, 4096 bytes) or ('zero', file_offset, length)"""
    ndesc_sect = (len(descs) + 2 + 127) // 128
    hdr = bytearray(64)
    desc_area = bytearray()
    data_sectors = bytearray()
    for kind, off, payload in descs:
        if kind == 'data':
            desc_area += b'desc' + payload[4092:4096] + payload[0:8] + struct.pack('<QQ', off, seq)
            data_sectors += b'data' + struct.pack('<I', seq >> 32) + payload[8:4092] + struct.pack('<I', seq & 0xffffffff)
        else:
            desc_area += b'zero' + b'\0' * 4 + struct.pack('<QQQ', payload, off, seq)
    length = (ndesc_sect * SECTOR) + len(data_sectors)
    hdr[0:4] = b'loge'
    struct.pack_into('<IIQII', hdr, 8, length, tail, seq, len(descs), 0)
    hdr[32:48] = guid
    struct.pack_into('<QQ', hdr, 48, flushed, last)
    first = bytes(hdr) + bytes(desc_area)
    first += b'\0' * (ndesc_sect * SECTOR - len(first))
    return with_crc(first + bytes(data_sectors), 4)


def dirty(path, raw_path):
    img = Image(path)
    bs = img.block_size
    guid = uuid.uuid4().bytes_le
    size = img.size()
    new_block = (size + MiB - 1) // MiB * MiB
    # the crash came after the new block's data reached the file
    img.write(new_block, b'\x5a' * bs)
    e1 = img.bat(1)  # payload entry of block 1 (no bitmap entry before it)
    assert e1 & 7 in (0, 2, 3), 'block 1 must not be allocated'
    b0 = img.bat(0)
    assert b0 & 7 == 6, 'block 0 must be allocated'
    b0_off = b0 & ~(MiB - 1)
    bat_sector = bytearray(img.read(img.bat_off, SECTOR))
    struct.pack_into('<Q', bat_sector, 8, new_block | 6)
    fsize = new_block + bs
    ents = entry(guid, 1000, [('data', img.bat_off, bytes(bat_sector)),
                              ('data', b0_off + 2 * SECTOR, b'\xa5' * SECTOR)], size, fsize)
    ents += entry(guid, 1001, [('zero', b0_off + 5 * SECTOR, 2 * SECTOR)], size, fsize)
    stale = entry(uuid.uuid4().bytes_le, 2000, [('zero', b0_off, SECTOR)], size, fsize)
    log = stale + ents
    assert len(log) <= img.log_len
    img.write(img.log_off, log)
    img.set_log_guid(guid)
    img.f.close()
    raw = bytearray(open(raw_path, 'rb').read())
    raw[bs:2 * bs] = b'\x5a' * bs
    raw[2 * SECTOR:3 * SECTOR] = b'\xa5' * SECTOR
    raw[5 * SECTOR:7 * SECTOR] = b'\0' * (2 * SECTOR)
    open(raw_path, 'wb').write(raw)


def hostile(path, kind):
    img = Image(path)
    guid = uuid.uuid4().bytes_le
    size = img.size()
    if kind == 'past-eof':
        d = [('data', size + 64 * MiB * 1024, b'\x66' * SECTOR)]
    elif kind == 'zero-huge':
        d = [('zero', img.bat_off, 1 << 50)]
    else:
        d = [('data', 64 * 1024, b'\x66' * SECTOR)]
    img.write(img.log_off, entry(guid, 7, d, size, size))
    img.set_log_guid(guid)


def utf16(t):
    return t.encode('utf-16-le')


def diff(path, parent_raw, out_raw):
    img = Image(path)
    assert img.block_size == MiB
    f = img.f
    rt = img.read(192 * 1024, 64 * 1024)
    meta_off = struct.unpack_from('<Q', rt, 16 + 32 + 16)[0]
    m = bytearray(img.read(meta_off, 64 * 1024))
    n = struct.unpack_from('<H', m, 10)[0]
    assert n == 5
    # the parent locator item, after the others
    keys = [('parent_linkage', '{%s}' % uuid.uuid4()), ('relative_path', '.\\parent.vhdx'),
            ('absolute_win32_path', 'C:\\vms\\parent.vhdx')]
    loc = bytearray(uuid.UUID('b04aefb7-d19e-4a81-b789-25b8e9445913').bytes_le + struct.pack('<HH', 0, len(keys)))
    strings = bytearray()
    base = 20 + 12 * len(keys)
    for k, v in keys:
        ko = base + len(strings); strings += utf16(k)
        vo = base + len(strings); strings += utf16(v)
        loc += struct.pack('<IIHH', ko, vo, len(utf16(k)), len(utf16(v)))
    loc += strings
    item_off = 64 * 1024 + 4096
    m[32 + 32 * n:32 + 32 * n + 32] = (uuid.UUID('a8d35f2d-b30b-454d-abf7-d3d84834ab0c').bytes_le +
                                      struct.pack('<IIII', item_off, len(loc), 4, 0))
    struct.pack_into('<H', m, 10, n + 1)
    img.write(meta_off, bytes(m))
    img.write(meta_off + item_off, bytes(loc))
    fp = bytearray(img.read(meta_off + 64 * 1024, 8))
    struct.pack_into('<I', fp, 4, 2)  # has_parent
    img.write(meta_off + 64 * 1024, bytes(fp))
    size = img.size()
    at = (size + MiB - 1) // MiB * MiB
    b0, b1, sb = at, at + MiB, at + 2 * MiB
    img.write(b0, b'\xc1' * MiB)
    img.write(b1, b'\xc2' * MiB)
    bitmap = bytearray(MiB)
    sectors = list(range(10, 20)) + list(range(1000, 1500))
    for k in sectors:
        s = 2048 + k  # block 1's sectors follow block 0's in the chunk
        bitmap[s // 8] |= 1 << (s % 8)
    img.write(sb, bytes(bitmap))
    bat = bytearray(img.read(img.bat_off, 8 * 4097))
    for i, e in enumerate([b0 | 6, b1 | 7, 2, 0, 3]):
        struct.pack_into('<Q', bat, 8 * i, e)
    struct.pack_into('<Q', bat, 8 * 4096, sb | 6)  # the chunk's sector bitmap entry
    img.write(img.bat_off, bytes(bat))
    f.close()
    raw = bytearray(open(parent_raw, 'rb').read())
    raw[0:MiB] = b'\xc1' * MiB
    for k in sectors:
        raw[MiB + 512 * k:MiB + 512 * (k + 1)] = b'\xc2' * 512
    raw[2 * MiB:3 * MiB] = bytes(MiB)
    open(out_raw, 'wb').write(raw)


if __name__ == '__main__':
    if sys.argv[1] == 'dirty':
        dirty(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == 'diff':
        diff(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        hostile(sys.argv[2], sys.argv[3])
