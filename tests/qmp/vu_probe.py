#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What a vhost-user-blk back end shows a VMM and a guest driver, one
'name: value' line each (vhost-user-parity.sh runs it against
qemu-storage-daemon and vbd-daemon with the same command line and compares):
the features and protocol features offered, the config space field by
field, GET_CONFIG and SET_CONFIG at odd offsets and sizes, and the answers
to GET_ID, reads and unknown requests.

    vu_probe.py SOCKET"""
import struct
import sys

from vhost_user import (GET_MAX_MEM_SLOTS, GET_QUEUE_NUM, SET_CONFIG, T_GET_ID, T_IN, Driver)

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


def main():
    d = Driver(sys.argv[1])
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
    d.close()
    print('\n'.join(out))


if __name__ == '__main__':
    main()
