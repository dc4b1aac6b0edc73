/* SPDX-License-Identifier: MIT */
/* Format driver "qcow": QEMU's original copy-on-write format (version 1),
 * read-only, for old images users bring.
 *
 * Header (big-endian, 48 bytes): magic "QFI\xfb", version 1, backing file
 * name offset (u64) and size (u32), mtime (u32), size (u64), cluster_bits
 * (u8), l2_bits (u8), 2 bytes padding, crypt_method (u32), l1_table_offset
 * (u64). Two levels: L1 entries point at L2 tables of 2^l2_bits entries;
 * an L2 entry is a cluster's file offset, 0 = unallocated (the backing
 * file, or zeroes), bit 63 = compressed: raw deflate of the cluster at the
 * offset in the low 63 - cluster_bits bits, its byte count in the bits
 * above. No refcounts, so nothing to check beyond bounds.
 *
 * Hostile images: cluster_bits 9..16 and l2_bits 6..13 (QEMU's bounds),
 * the L1 table sized without overflow and within the file, every L2
 * table and cluster read checked against the file's end, inflate writes
 * into a cluster buffer and must fill it. AES-encrypted images are
 * refused (vbd has no key handling; QEMU dropped them from emulators). */
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define QCOW_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW_VERSION 1
#define QCOW_HEADER_BYTES 48
#define QCOW_COMPRESSED (1ull << 63)
#define QCOW_MAX_BACKING_NAME 1023 /* QEMU's */

struct qcow_state {
    uint32_t cluster_bits, l2_bits;
    uint32_t cluster_size, l2_entries;
    uint64_t offset_mask;       /* of a compressed entry's offset */
    uint64_t l1_entries;
    uint64_t *l1;               /* host order */
    uint64_t *l2;               /* the last L2 table read (cache), big-endian */
    uint64_t l2_offset;         /* its offset, 0 = none */
    uint8_t *compressed;        /* one compressed cluster */
    uint8_t *cluster;           /* the last inflated cluster (cache) */
    uint64_t cluster_offset;    /* its entry's offset, 0 = none */
    struct vbd_co_mutex lock;   /* the caches */
};

static int qcow_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8)
        return 0;
    return get_be32p(buf) == QCOW_MAGIC && get_be32p(buf + 4) == QCOW_VERSION ? 100 : 0;
}

static void qcow_free(struct qcow_state *s)
{
    free(s->l1);
    free(s->l2);
    free(s->compressed);
    free(s->cluster);
    s->l1 = s->l2 = NULL;
    s->compressed = s->cluster = NULL;
}

static int bad_header(struct vbd_node *n, struct vbd_error **err, const char *what)
{
    vbd_error_setf(err, EINVAL, "qcow image '%s': %s", n->file->filename, what);
    return -EINVAL;
}

static int qcow_open_inner(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct qcow_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    uint64_t fsize = vbd_node_size(n->file);
    uint8_t h[QCOW_HEADER_BYTES];
    if (fsize < sizeof(h))
        return bad_header(n, err, "file smaller than the 48-byte qcow header");
    int rc = vbd_node_co_pread(n->file, 0, h, sizeof(h));
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow image '%s': cannot read the header: %s", name, strerror(-rc));
        return rc;
    }
    uint32_t magic = get_be32p(h), version = get_be32p(h + 4);
    uint64_t backing_off = get_be64p(h + 8);
    uint32_t backing_len = get_be32p(h + 16);
    uint64_t size = get_be64p(h + 24);
    uint32_t cluster_bits = h[32], l2_bits = h[33];
    uint32_t crypt_method = get_be32p(h + 36);
    uint64_t l1_offset = get_be64p(h + 40);
    /* QEMU's checks, in its order, with its words after the field's name */
    if (magic != QCOW_MAGIC)
        return bad_header(n, err, "magic: Image not in qcow format");
    if (version != QCOW_VERSION) {
        vbd_error_setf(err, ENOTSUP, "qcow image '%s': version: QCOW version %u is not supported", name, version);
        return -ENOTSUP;
    }
    if (size <= 1)
        return bad_header(n, err, "size: Image size is too small (must be at least 2 bytes)");
    if (cluster_bits < 9 || cluster_bits > 16)
        return bad_header(n, err, "cluster_bits: Cluster size must be between 512 and 64k");
    if (l2_bits < 9 - 3 || l2_bits > 16 - 3)
        return bad_header(n, err, "l2_bits: L2 table size must be between 512 and 64k");
    if (crypt_method > 1)
        return bad_header(n, err, "crypt_method: invalid encryption method in qcow header");
    if (crypt_method) {
        vbd_error_setf(err, ENOTSUP,
                       "qcow image '%s': crypt_method: Use of AES-CBC encrypted qcow images is no longer supported; "
                       "convert it with qemu-img to an unencrypted format", name);
        return -ENOTSUP;
    }
    uint32_t shift = cluster_bits + l2_bits;
    if (size > UINT64_MAX - (1ull << shift) || size > VBD_MAX_REQUEST_END)
        return bad_header(n, err, "size: Image too large");
    s->l1_entries = (size + (1ull << shift) - 1) >> shift;
    if (s->l1_entries > INT_MAX / sizeof(uint64_t))
        return bad_header(n, err, "size: Image too large");
    uint64_t l1_bytes = s->l1_entries * 8;
    if (l1_offset > fsize || l1_bytes > fsize - l1_offset) {
        vbd_error_setf(err, EINVAL, "qcow image '%s': l1_table_offset: the L1 table (%llu bytes at %llu) is past the "
                       "end of the file (%llu)", name, (unsigned long long)l1_bytes, (unsigned long long)l1_offset,
                       (unsigned long long)fsize);
        return -EINVAL;
    }
    s->cluster_bits = cluster_bits;
    s->l2_bits = l2_bits;
    s->cluster_size = 1u << cluster_bits;
    s->l2_entries = 1u << l2_bits;
    s->offset_mask = (1ull << (63 - cluster_bits)) - 1;
    s->l1 = malloc(l1_bytes ? l1_bytes : 1);
    s->l2 = malloc((size_t)s->l2_entries * 8);
    s->compressed = malloc(s->cluster_size);
    s->cluster = malloc(s->cluster_size);
    if (!s->l1 || !s->l2 || !s->compressed || !s->cluster) {
        vbd_error_setf(err, ENOMEM, "qcow image '%s': cannot allocate the tables", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, l1_offset, s->l1, l1_bytes);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow image '%s': cannot read the L1 table: %s", name, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < s->l1_entries; i++)
        s->l1[i] = be64toh(s->l1[i]);
    if (backing_off) {
        if (backing_len > QCOW_MAX_BACKING_NAME)
            return bad_header(n, err, "backing_file_size: Backing file name too long");
        if (backing_off > fsize || backing_len > fsize - backing_off)
            return bad_header(n, err, "backing_file_offset: the backing file name is past the end of the file");
        rc = vbd_node_co_pread(n->file, backing_off, n->backing_file, backing_len);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "qcow image '%s': cannot read the backing file name: %s", name, strerror(-rc));
            return rc;
        }
        n->backing_file[backing_len] = 0;
    }
    /* after the header checks, so a broken image says what is wrong with it */
    if (flags & VBD_OPEN_RDWR) {
        vbd_error_setf(err, EACCES, "qcow image '%s': the qcow format is read-only in vbd (open it read-only, or "
                       "convert it)", name);
        return -EACCES;
    }
    n->size = size;
    n->bl.request_alignment = 1;
    n->bl.opt_transfer = s->cluster_size;
    return vbd_open_backing(n, opts, flags, err);
}

static int qcow_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    int rc = qcow_open_inner(n, opts, flags, err);
    if (rc < 0)
        qcow_free(n->opaque);
    return rc;
}

static void qcow_close(struct vbd_node *n)
{
    qcow_free(n->opaque);
}

/* The L2 entry of the cluster at guest offset off (under s->lock): 0 if
 * unallocated. */
static int lookup(struct vbd_node *n, uint64_t off, uint64_t *entry)
{
    struct qcow_state *s = n->opaque;
    uint64_t l1_index = off >> (s->cluster_bits + s->l2_bits);
    uint64_t l2_offset = s->l1[l1_index];
    *entry = 0;
    if (!l2_offset)
        return 0;
    uint64_t l2_bytes = (uint64_t)s->l2_entries * 8;
    if (s->l2_offset != l2_offset) {
        uint64_t fsize = vbd_node_size(n->file);
        if (l2_offset > fsize || l2_bytes > fsize - l2_offset) {
            vbd_error_report("qcow image '%s': L2 table %llu at %llu is past the end of the file", n->file->filename,
                             (unsigned long long)l1_index, (unsigned long long)l2_offset);
            return -EIO;
        }
        s->l2_offset = 0;
        int rc = vbd_node_co_pread(n->file, l2_offset, s->l2, l2_bytes);
        if (rc < 0)
            return rc;
        s->l2_offset = l2_offset;
    }
    *entry = be64toh(s->l2[(off >> s->cluster_bits) & (s->l2_entries - 1)]);
    return 0;
}

/* Inflate the compressed cluster of entry e into s->cluster (under s->lock). */
static int inflate_cluster(struct vbd_node *n, uint64_t e)
{
    struct qcow_state *s = n->opaque;
    if (s->cluster_offset == e)
        return 0;
    s->cluster_offset = 0;
    uint64_t at = e & s->offset_mask;
    uint64_t len = (e >> (63 - s->cluster_bits)) & (s->cluster_size - 1);
    uint64_t fsize = vbd_node_size(n->file);
    if (at > fsize || len > fsize - at) {
        vbd_error_report("qcow image '%s': compressed cluster at %llu (%llu bytes) is past the end of the file",
                         n->file->filename, (unsigned long long)at, (unsigned long long)len);
        return -EIO;
    }
    int rc = len ? vbd_node_co_pread(n->file, at, s->compressed, len) : 0;
    if (rc < 0)
        return rc;
    z_stream zs = {.next_in = s->compressed, .avail_in = (uInt)len, .next_out = s->cluster,
                   .avail_out = s->cluster_size};
    if (inflateInit2(&zs, -12) != Z_OK)
        return -ENOMEM;
    int zr = inflate(&zs, Z_FINISH);
    bool full = zs.avail_out == 0;
    inflateEnd(&zs);
    /* a stream that fills the cluster is enough (QEMU takes Z_BUF_ERROR then too) */
    if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || !full) {
        vbd_error_report("qcow image '%s': compressed cluster at %llu does not inflate to %u bytes",
                         n->file->filename, (unsigned long long)at, s->cluster_size);
        return -EIO;
    }
    s->cluster_offset = e;
    return 0;
}

static int qcow_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct qcow_state *s = n->opaque;
    (void)flags;
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    while (bytes) {
        uint64_t in = off & (s->cluster_size - 1);
        uint64_t len = s->cluster_size - in < bytes ? s->cluster_size - in : bytes;
        uint64_t e;
        rc = lookup(n, off, &e);
        if (rc < 0)
            break;
        if (!e) {
            rc = vbd_node_co_read_backing(n, off, len, q, qoff, 0);
        } else if (e & QCOW_COMPRESSED) {
            rc = inflate_cluster(n, e);
            if (rc == 0)
                vbd_iov_from_buf(q->iov, q->niov, qoff, s->cluster + in, len);
        } else {
            uint64_t fsize = vbd_node_size(n->file);
            if ((e & 511) || e > fsize || s->cluster_size > fsize - e) {
                vbd_error_report("qcow image '%s': cluster at %llu is misaligned or past the end of the file",
                                 n->file->filename, (unsigned long long)e);
                rc = -EIO;
            } else {
                rc = vbd_node_co_preadv(n->file, e + in, len, q, qoff, 0);
            }
        }
        if (rc < 0)
            break;
        off += len;
        qoff += len;
        bytes -= len;
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* One cluster at a time, as QEMU's qcow: compressed clusters are data
 * without a host offset, unallocated ones read from the backing file. */
static int qcow_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct qcow_state *s = n->opaque;
    (void)want_zero;
    uint64_t in = off & (s->cluster_size - 1);
    *pnum = s->cluster_size - in < bytes ? s->cluster_size - in : bytes;
    uint64_t e;
    vbd_co_mutex_lock(&s->lock);
    int rc = lookup(n, off, &e);
    vbd_co_mutex_unlock(&s->lock);
    if (rc < 0)
        return rc;
    if (!e)
        return !n->backing || off >= vbd_node_size(n->backing) ? VBD_BS_ZERO : 0;
    if (e & QCOW_COMPRESSED)
        return VBD_BS_DATA | VBD_BS_COMPRESSED | VBD_BS_ALLOCATED;
    *map = e + in;
    *file = n->file;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
}

static int qcow_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct qcow_state *s = n->opaque;
    (void)err;
    info->virtual_size = n->size;
    info->cluster_size = s->cluster_size;
    return 0;
}

static const struct vbd_driver qcow_driver = {
    .name = "qcow",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct qcow_state),
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .co_preadv = qcow_preadv,
    .co_block_status = qcow_block_status,
    .get_info = qcow_get_info,
};
VBD_DRIVER_REGISTER(qcow, qcow_driver);
