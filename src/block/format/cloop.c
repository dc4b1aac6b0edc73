/* SPDX-License-Identifier: MIT */
/* Format driver "cloop": compressed loopback images (cloop V2.0, what
 * create_compressed_fs writes), read-only as in qemu.
 *
 * A 128-byte shell preamble, then big-endian block_size and n_blocks at
 * 128, then n_blocks + 1 big-endian 64-bit file offsets: block i is the
 * zlib stream in [offsets[i], offsets[i+1]) and inflates to exactly
 * block_size bytes. The disk is n_blocks * block_size bytes.
 *
 * Hostile images: block_size at most 64 MiB, the offset table at most
 * 512 MiB and within the file, offsets increase and
 * end within the file, each compressed block is at most 128 MiB (qemu's
 * bounds), and inflate writes into a block_size buffer and must produce
 * exactly block_size bytes. */
#include "all-data.h"
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define CLOOP_HEADER 128
#define CLOOP_MAX_BLOCK_SIZE (64u << 20)
#define CLOOP_MAX_COMPRESSED (2ull * CLOOP_MAX_BLOCK_SIZE)
#define CLOOP_MAX_TABLE (512ull << 20) /* qemu's: 16 TB at 256 KiB blocks */

static const char cloop_magic[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

struct cloop_state {
    uint32_t block_size;
    uint32_t n_blocks;
    uint64_t *offsets;          /* n_blocks + 1, host order */
    uint8_t *compressed;        /* max compressed block */
    uint8_t *block;             /* the last inflated block (cache) */
    uint32_t cached;            /* its number, n_blocks = none */
    z_stream zs;
    bool zs_ready;
    struct vbd_co_mutex lock;   /* the cache and zs */
};

static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    size_t l = sizeof(cloop_magic) - 1;
    if (l > len)
        l = len;
    return !memcmp(buf, cloop_magic, l) ? 2 : 0; /* qemu's score: the preamble is a weak signature */
}

static void cloop_free(struct cloop_state *s)
{
    free(s->offsets);
    free(s->compressed);
    free(s->block);
    s->offsets = NULL;
    s->compressed = s->block = NULL;
    if (s->zs_ready)
        inflateEnd(&s->zs);
    s->zs_ready = false;
}

static int cloop_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct cloop_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    if (flags & VBD_OPEN_RDWR) {
        vbd_error_setf(err, EACCES, "Image is read-only"); /* QEMU's words (bdrv_apply_auto_read_only) */
        return -EACCES;
    }
    uint64_t fsize = n->file->size;
    uint8_t h[8];
    if (fsize < CLOOP_HEADER + 8) {
        vbd_error_setf(err, EINVAL, "Image '%s' is not a cloop image: smaller than its 136-byte header", name);
        return -EINVAL;
    }
    int rc = vbd_node_co_pread(n->file, CLOOP_HEADER, h, sizeof(h));
    if (rc < 0)
        goto io_error;
    s->block_size = get_be32p(h);
    s->n_blocks = get_be32p(h + 4);
    if (s->block_size == 0 || s->block_size % 512) {
        vbd_error_setf(err, EINVAL, "Image '%s': cloop block_size %u must be a non-zero multiple of 512", name,
                       s->block_size);
        return -EINVAL;
    }
    if (s->block_size > CLOOP_MAX_BLOCK_SIZE) {
        vbd_error_setf(err, EINVAL, "Image '%s': cloop block_size %u must be 64 MiB or less", name, s->block_size);
        return -EINVAL;
    }
    uint64_t table_bytes = ((uint64_t)s->n_blocks + 1) * 8;
    if (table_bytes > CLOOP_MAX_TABLE) {
        vbd_error_setf(err, EINVAL, "Image '%s': cloop image requires too many offsets (%u blocks), try increasing block size",
                       name, s->n_blocks);
        return -EINVAL;
    }
    if (table_bytes > fsize - (CLOOP_HEADER + 8)) {
        vbd_error_setf(err, EINVAL, "Image '%s': cloop offset table (%u blocks) is past the end of the file", name,
                       s->n_blocks);
        return -EINVAL;
    }
    s->offsets = malloc(table_bytes);
    if (!s->offsets) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the cloop offset table", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, CLOOP_HEADER + 8, s->offsets, table_bytes);
    if (rc < 0)
        goto io_error;
    uint64_t max_compressed = 1;
    for (uint64_t i = 0; i <= s->n_blocks; i++) {
        s->offsets[i] = be64toh(s->offsets[i]);
        if (i == 0)
            continue;
        if (s->offsets[i] < s->offsets[i - 1]) {
            vbd_error_setf(err, EINVAL, "Image '%s': cloop offsets not monotonically increasing at index %llu", name,
                           (unsigned long long)i);
            rc = -EINVAL;
            goto fail;
        }
        uint64_t len = s->offsets[i] - s->offsets[i - 1];
        if (len > CLOOP_MAX_COMPRESSED) {
            vbd_error_setf(err, EINVAL, "Image '%s': invalid cloop compressed block size %llu at index %llu", name,
                           (unsigned long long)len, (unsigned long long)i);
            rc = -EINVAL;
            goto fail;
        }
        if (len > max_compressed)
            max_compressed = len;
    }
    if (s->offsets[s->n_blocks] > fsize) {
        vbd_error_setf(err, EINVAL, "Image '%s': cloop block data ends at %llu, past the end of the file (%llu)", name,
                       (unsigned long long)s->offsets[s->n_blocks], (unsigned long long)fsize);
        rc = -EINVAL;
        goto fail;
    }
    s->compressed = malloc(max_compressed);
    s->block = malloc(s->block_size);
    if (!s->compressed || !s->block) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate cloop block buffers", name);
        rc = -ENOMEM;
        goto fail;
    }
    if (inflateInit(&s->zs) != Z_OK) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot initialise zlib", name);
        rc = -ENOMEM;
        goto fail;
    }
    s->zs_ready = true;
    s->cached = s->n_blocks;
    n->size = (uint64_t)s->n_blocks * s->block_size;
    n->bl.request_alignment = 512;
    return 0;

io_error:
    vbd_error_setf(err, -rc, "Could not read the cloop image '%s': %s", name, strerror(-rc));
fail:
    cloop_free(s);
    return rc;
}

static void cloop_close(struct vbd_node *n)
{
    cloop_free(n->opaque);
}

/* Inflate block i into s->block (under s->lock). */
static int cloop_load(struct vbd_node *n, uint32_t i)
{
    struct cloop_state *s = n->opaque;
    if (s->cached == i)
        return 0;
    s->cached = s->n_blocks;
    uint64_t len = s->offsets[i + 1] - s->offsets[i];
    if (len) {
        int rc = vbd_node_co_pread(n->file, s->offsets[i], s->compressed, len);
        if (rc < 0)
            return rc;
    }
    if (inflateReset(&s->zs) != Z_OK)
        return -EIO;
    s->zs.next_in = s->compressed;
    s->zs.avail_in = (uInt)len;
    s->zs.next_out = s->block;
    s->zs.avail_out = s->block_size;
    int zr = inflate(&s->zs, Z_FINISH);
    if (zr != Z_STREAM_END || s->zs.total_out != s->block_size) {
        vbd_error_report("cloop image '%s': block %u does not inflate to %u bytes", n->file->filename, i,
                         s->block_size);
        return -EIO;
    }
    s->cached = i;
    return 0;
}

static int cloop_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    struct cloop_state *s = n->opaque;
    (void)flags;
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    while (bytes) {
        uint32_t i = (uint32_t)(off / s->block_size);
        uint64_t in = off % s->block_size;
        uint64_t len = s->block_size - in < bytes ? s->block_size - in : bytes;
        rc = cloop_load(n, i);
        if (rc < 0)
            break;
        vbd_iov_from_buf(q->iov, q->niov, qoff, s->block + in, len);
        off += len;
        qoff += len;
        bytes -= len;
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static const struct vbd_driver cloop_driver = {
    .name = "cloop",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct cloop_state),
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .co_preadv = cloop_preadv,
    .co_block_status = vbd_all_data_block_status,
    .get_info = vbd_all_data_get_info,
};
VBD_DRIVER_REGISTER(cloop, cloop_driver);
