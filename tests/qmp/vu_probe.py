#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What a vhost-user-blk back end shows a VMM and a guest driver, one
'name: value' line each (vhost-user-parity.sh runs it against
qemu-storage-daemon and vbd-daemon with the same command line and compares):
the features and protocol features offered, the config space field by
field, GET_CONFIG and SET_CONFIG at odd offsets and sizes, and the answers
to GET_ID, reads and unknown requests.

    vu_probe.py SOCKET [IMAGE]

With IMAGE (the file under the export, fresh for each run) the probe also
writes, flushes, discards and zeroes, in range and not, aligned and not, and
reads the data back; it prints the image's allocated blocks after the
requests that may unmap."""
import struct
import sys

import os

from vhost_user import (GET_MAX_MEM_SLOTS, GET_QUEUE_NUM, SET_CONFIG, T_GET_ID, T_IN, T_OUT, Driver)

FEATURES = {0: 'BARRIER', 1: 'SIZE_MAX', 2: 'SEG_MAX', 4: 'GEOMETRY', 5: 'RO', 6: 'BLK_SIZE', 9: 'FLUSH',
            10: 'TOPOLOGY', 11: 'CONFIG_WCE', 12: 'MQ', 13: 'DISCARD', 14: 'WRITE_ZEROES', 15: 'LIFETIME',
            16: 'SECURE_ERASE', 17: 'ZONED', 26: 'LOG_ALL', 27: 'ANY_LAYOUT', 28: 'INDIRECT_DESC',
            29: 'EVENT_IDX', 30: 'PROTOCOL_FEATURES', 32: 'VERSION_1', 33: 'ACCESS_PLATFORM', 34: 'RING_PACKED',
            35: 'IN_ORDER', 36: 'ORDER_PLATFORM', 37: 'SR_IOV', 38: 'NOTIFICATION_DATA', 40: 'RING_RESET'}
PROTOCOL = {0: 'MQ', 1: 'LOG_SHMFD', 2: 'RARP', 3: 'REPLY_ACK', 4: 'NET_MTU', 5: 'BACKEND_REQ',
            6: 'CROSS_ENDIAN', 7: 'CRYPTO_SESSION', 8: 'PAGEFAULT', 9: 'CONFIG', 10: 'BACKEND_SEND_FD',
            11: 'HOST_NOTIFIER', 12: 'INFLIGHT_SHMFD', 13: 'RESET_DEVICE', 14: 'INBAND_NOTIFICATIONS',
            15: 'CONFIGURE_MEM_SLOTS', 16: 'STATUS'}
# struct virtio_blk_config up to write_zeroes_may_unmap (60 bytes with its padding)
CONFIG = [('capacity', 0, '<Q'), ('size_max', 8, '<I'), ('seg_max', 12, '<I'), ('geometry.cylinders', 16, '<H'),
          ('geometry.heads', 18, 'B'), ('geometry.sectors', 19, 'B'), ('blk_size', 20, '<I'),
          ('physical_block_exp', 24, 'B'), ('alignment_offset', 25, 'B'), ('min_io_size', 26, '<H'),
          ('opt_io_size', 28, '<I'), ('wce', 32, 'B'), ('num_queues', 34, '<H'), ('max_discard_sectors', 36, '<I'),
          ('max_discard_seg', 40, '<I'), ('discard_sector_alignment', 44, '<I'),
          ('max_write_zeroes_sectors', 48, '<I'), ('max_write_zeroes_seg', 52, '<I'),
          ('write_zeroes_may_unmap', 56, 'B')]
WCE = 32


def bits(v, names):
    return ' '.join(names.get(b, 'bit%d' % b) for b in range(64) if v >> b & 1)

T_FLUSH, T_DISCARD, T_WRITE_ZEROES = 4, 11, 13
UNMAP = 1


def seg(sector, num, flags=0):
    """One discard / write-zeroes segment (virtio 5.2.6)."""
    return struct.pack('<QII', sector, num, flags)


def io(d, say, cfg, image):
    """Writes, flushes, discards, zeroes; status bytes and the data read
    back. Sectors 0-63 of the image are this function's."""
    if image is None or not cfg:
        return
    sectors = struct.unpack_from('<Q', cfg, 0)[0]
    lbs = struct.unpack_from('<I', cfg, 20)[0] if d.features >> 6 & 1 else 512
    spb = lbs // 512  # sectors per logical block
    pattern = lambda n, k: bytes((i * 7 + k) & 0xff or 1 for i in range(n))  # no zero byte

    def readback(name, sector, n, written):
        st, _, data = d.request(T_IN, sector, n)
        what = ('zeros' if not any(data) else 'as written' if data == written else
                'the buffer untouched' if data == b'\xa5' * n else
                'all 0x%02x' % data[0] if data == data[:1] * n else 'other data')
        say(name + ', then read', 'status %d, %s' % (st, what))

    def blocks(name):
        say(name + ', image blocks', os.stat(image).st_blocks)
        st, _, _ = d.request(T_FLUSH, 0, 0)
        say(name + ', image blocks after a flush', '%d (flush status %d)' % (os.stat(image).st_blocks, st))

    def do(name, type_, sector, out=None, n=0):
        st, _, _ = d.request(type_, sector, n, out=out)
        say(name, 'status %d' % st)
        return st

    data = pattern(2 * lbs, 1)
    do('write 2 blocks at block 1', T_OUT, spb, data)
    readback('write 2 blocks at block 1', spb, 2 * lbs, data)
    do('flush', T_FLUSH, 0)
    do('flush with sector 5', T_FLUSH, 5)
    do('flush with a data buffer', T_FLUSH, 0, n=512)
    do('write 512 at sector 1', T_OUT, 1, pattern(512, 2))
    do('write 100 bytes at sector 0', T_OUT, 0, pattern(100, 3))
    do('write 0 bytes at sector 0', T_OUT, 0, b'')
    do('read 0 bytes at sector 0', T_IN, 0, n=0)
    do('read 512 at sector 1', T_IN, 1, n=512)
    do('read 100 bytes at sector 0', T_IN, 0, n=100)
    do('read 0 bytes past the end', T_IN, sectors + spb, n=0)
    do('get-id of 0 bytes', T_GET_ID, 0, n=0)
    for type_ in (2, 3, 10, 14, 15):  # legacy SCSI, its OUT, GET_LIFETIME, SECURE_ERASE, none
        do('request type %d' % type_, type_, 0, n=512)
    # the legacy barrier bit (no F_BARRIER offered by either)
    do('read with the barrier bit', 0x80000000 | T_IN, 0, n=lbs)
    data = pattern(lbs, 9)
    do('write with the barrier bit', 0x80000000 | T_OUT, spb, data)
    readback('write with the barrier bit', spb, lbs, data)
    do('request type 99 with the barrier bit', 0x80000000 | 99, 0, n=16)
    do('flush with the barrier bit', 0x80000000 | T_FLUSH, 0)
    do('write a block at the last block', T_OUT, sectors - spb, pattern(lbs, 4))
    do('write past the end', T_OUT, sectors, pattern(lbs, 5))
    do('write across the end', T_OUT, sectors - spb, pattern(2 * lbs, 6))
    do('write at sector 2^61', T_OUT, 1 << 61, pattern(lbs, 7))
    # zeroes, with and without unmap, over written data
    for flags, at in ((0, 8), (UNMAP, 16)):
        data = pattern(8 * lbs, at)
        do('write 8 blocks at block %d' % at, T_OUT, at * spb, data)
        name = 'write-zeroes flags %d of 8 blocks at block %d' % (flags, at)
        do(name, T_WRITE_ZEROES, 0, seg(at * spb, 8 * spb, flags))
        readback(name, at * spb, 8 * lbs, bytes(8 * lbs))
        blocks(name)
    data = pattern(8 * lbs, 24)
    do('write 8 blocks at block 24', T_OUT, 24 * spb, data)
    do('discard 8 blocks at block 24', T_DISCARD, 0, seg(24 * spb, 8 * spb))
    readback('discard 8 blocks at block 24', 24 * spb, 8 * lbs, data)
    blocks('discard 8 blocks at block 24')
    # zeroes written as data (detect-zeroes)
    do('write 8 blocks at block 40', T_OUT, 40 * spb, pattern(8 * lbs, 40))
    do('write 8 blocks of zeros at block 40', T_OUT, 40 * spb, bytes(8 * lbs))
    blocks('write 8 blocks of zeros at block 40')
    # whole clusters of a qcow2 image (64 KiB): 128 KiB at 256, 512, 768 KiB
    data = pattern(128 << 10, 77)
    for kib, name, type_, flags in ((256, 'discard', T_DISCARD, 0), (512, 'write-zeroes', T_WRITE_ZEROES, 0),
                                    (768, 'write-zeroes unmap', T_WRITE_ZEROES, UNMAP)):
        do('write 128 KiB at %d KiB' % kib, T_OUT, kib * 2, data)
        name = '%s of 128 KiB at %d KiB' % (name, kib)
        do(name, type_, 0, seg(kib * 2, 256, flags))
        readback(name, kib * 2, 128 << 10, data)
        blocks(name)
    do('write 128 KiB at 1024 KiB', T_OUT, 2048, data)
    do('write 128 KiB of zeros at 1024 KiB', T_OUT, 2048, bytes(128 << 10))
    blocks('write 128 KiB of zeros at 1024 KiB')
    for type_, what in ((T_DISCARD, 'discard'), (T_WRITE_ZEROES, 'write-zeroes')):
        do(what + ' with the unmap flag', type_, 0, seg(0, spb, UNMAP))
        do(what + ' with flag 2', type_, 0, seg(0, spb, 2))
        do(what + ' of 1 sector at sector 1', type_, 0, seg(1, 1))
        do(what + ' of 0 sectors', type_, 0, seg(0, 0))
        do(what + ' past the end', type_, 0, seg(sectors, spb))
        do(what + ' across the end', type_, 0, seg(sectors - spb, 2 * spb))
        do(what + ' of 2^32-1 sectors', type_, 0, seg(0, 0xffffffff))
        most = struct.unpack_from('<I', cfg, 36 if type_ == T_DISCARD else 48)[0]  # max_*_sectors
        if most and most + spb <= sectors:
            do(what + ' of its max sectors', type_, 0, seg(0, most))
            do(what + ' of a block more than its max', type_, 0, seg(0, most + spb))
        do(what + ' of 2 segments', type_, 0, seg(0, spb) + seg(spb, spb))
        do(what + ' of a short segment', type_, 0, seg(0, spb)[:8])
        do(what + ' with no segment', type_, 0, b'')
        do(what + ' with a device-writable segment', type_, 0, n=16)


def main():
    d = Driver(sys.argv[1])
    image = sys.argv[2] if len(sys.argv) > 2 else None
    out = []
    say = lambda k, v: out.append('%s: %s' % (k, v))
    say('features', bits(d.features, FEATURES))
    say('protocol-features', bits(d.protocol_features, PROTOCOL))
    if d.protocol_features & 1:
        say('queue-num', d.get_u64(GET_QUEUE_NUM))
    if d.protocol_features >> 15 & 1:
        say('max-mem-slots', d.get_u64(GET_MAX_MEM_SLOTS))
    cfg = d.get_config(0, 60)
    for name, off, fmt in CONFIG:
        say('config.' + name, struct.unpack_from(fmt, cfg, off)[0] if cfg else 'none')
    part = d.get_config(0, 8)
    say('get-config(0,8)', part.hex() if part is not None else 'refused')
    part = d.get_config(WCE, 2)
    say('get-config(32,2)', part.hex() if part is not None else 'refused')
    whole = d.get_config(0, 256)
    say('get-config(0,256)', 'refused' if whole is None else '%d bytes' % len(whole))
    if whole is None:  # the back end may have hung up on it
        d.close()
        d = Driver(sys.argv[1])
    # the guest switches its cache mode as Linux does: wce, one byte
    for wce in (0, 1):
        ack = d.send(SET_CONFIG, struct.pack('<III', WCE, 1, 0) + bytes([wce]))
        c = d.get_config(0, 60)
        say('set-config wce=%d' % wce, 'ack %s, wce now %s' % (ack, c[WCE] if c else 'none'))
    for n in (20, 64, 8):
        st, used, data = d.request(T_GET_ID, 0, n)
        # what the guest's driver reads: the string up to its NUL, if any (untouched bytes are 0xa5)
        text = data.split(b'\0')[0]
        say('get-id(%d bytes)' % n, 'status %d, %r%s' % (st, text.decode(errors='replace'),
                                                          ', NUL-terminated' if len(text) < len(data) else ''))
        say('get-id(%d bytes) used length' % n, used)
    st, used, _ = d.request(T_IN, 0, 4096)
    say('read 4096 at 0', 'status %d' % st)
    say('read 4096 at 0 used length', used)
    sectors = struct.unpack_from('<Q', cfg, 0)[0] if cfg else 0
    st, used, _ = d.request(T_IN, sectors, 512)
    say('read past the end', 'status %d' % st)
    say('read past the end used length', used)
    st, used, _ = d.request(99, 0, 16)
    say('request type 99', 'status %d' % st)
    say('request type 99 used length', used)
    io(d, say, cfg, image)
    d.close()
    print('\n'.join(out))


if __name__ == '__main__':
    main()
