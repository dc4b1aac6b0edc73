/* SPDX-License-Identifier: MIT */
/* Format driver "bochs": Bochs "growing" redolog images, read-only as in
 * qemu.
 *
 * A 512-byte little-endian header (magic, type "Redolog", subtype
 * "Growing", version 1 or 2) gives the catalog (one 32-bit entry per
 * extent: the extent's slot number, 0xffffffff = not allocated), the
 * bitmap and extent sizes, and the disk size. Slot k starts at
 * header_size + 4 * catalog_entries + k * (bitmap sectors + extent
 * sectors) * 512: a bitmap (bit i set = sector i of the extent written)
 * then the extent's sectors. Unallocated extents and clear bits read as
 * zeroes. Bochs writes only the sectors it has, so the file may end inside
 * the last extent: a set bit whose sector lies past the file is an error. */
#include "all-data.h"
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BOCHS_HEADER_SIZE 512
#define BOCHS_V1 0x00010000u
#define BOCHS_V2 0x00020000u
#define BOCHS_FREE 0xffffffffu
#define BOCHS_MAX_CATALOG 0x100000u  /* qemu's bound: bximage's largest image (~8 TB) */
#define BOCHS_MAX_EXTENT 0x800000u

struct bochs_state {
    uint32_t *catalog; /* host order */
    uint32_t catalog_size;
    uint32_t extent_size;
    uint64_t data_offset;
    uint64_t bitmap_bytes; /* bitmap sectors * 512 */
    uint64_t slot_bytes;   /* bitmap + extent sectors, * 512 */
};

/* A NUL-terminated field equal to s (qemu compares with strcmp). */
static bool field_is(const uint8_t *f, size_t len, const char *s)
{
    size_t l = strlen(s);
    return l < len && !memcmp(f, s, l + 1);
}

static bool bochs_header_ok(const uint8_t *h)
{
    uint32_t v = get_le32p(h + 64);
    return field_is(h, 32, "Bochs Virtual HD Image") && field_is(h + 32, 16, "Redolog") &&
           field_is(h + 48, 16, "Growing") && (v == BOCHS_V1 || v == BOCHS_V2);
}

static int bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= BOCHS_HEADER_SIZE && bochs_header_ok(buf) ? 100 : 0;
}

static int bochs_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct bochs_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    if (flags & VBD_OPEN_RDWR) {
        vbd_error_setf(err, EACCES, "Image is read-only"); /* QEMU's words (bdrv_apply_auto_read_only) */
        return -EACCES;
    }
    uint64_t fsize = n->file->size;
    uint8_t h[BOCHS_HEADER_SIZE];
    if (fsize < BOCHS_HEADER_SIZE) {
        vbd_error_setf(err, EINVAL, "Image '%s' is not in Bochs format: smaller than its 512-byte header", name);
        return -EINVAL;
    }
    int rc = vbd_node_co_pread(n->file, 0, h, sizeof(h));
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the Bochs header of '%s': %s", name, strerror(-rc));
        return rc;
    }
    if (!bochs_header_ok(h)) {
        vbd_error_setf(err, EINVAL, "Image '%s' is not in Bochs format (no 'Bochs Virtual HD Image' growing redolog header)", name);
        return -EINVAL;
    }
    uint32_t header_size = get_le32p(h + 68);
    s->catalog_size = get_le32p(h + 72);
    uint32_t bitmap_size = get_le32p(h + 76);
    s->extent_size = get_le32p(h + 80);
    /* version 2 has a reserved word before the disk size */
    uint64_t disk = get_le32p(h + 64) == BOCHS_V1 ? get_le64p(h + 84) : get_le64p(h + 88);
    uint64_t sectors = disk / 512;
    if (s->catalog_size > BOCHS_MAX_CATALOG) {
        vbd_error_setf(err, EFBIG, "Image '%s': Bochs catalog size %u is too large (max %u)", name, s->catalog_size,
                       BOCHS_MAX_CATALOG);
        return -EFBIG;
    }
    if (s->extent_size < 512 || (s->extent_size & (s->extent_size - 1)) || s->extent_size > BOCHS_MAX_EXTENT) {
        vbd_error_setf(err, EINVAL, "Image '%s': Bochs extent size %u is not a power of two from 512 to 8 MiB", name,
                       s->extent_size);
        return -EINVAL;
    }
    uint64_t extent_sectors = s->extent_size / 512;
    if ((uint64_t)s->catalog_size < (sectors + extent_sectors - 1) / extent_sectors) {
        vbd_error_setf(err, EINVAL, "Image '%s': Bochs catalog size %u is too small for the disk size %llu", name,
                       s->catalog_size, (unsigned long long)disk);
        return -EINVAL;
    }
    uint64_t cat_bytes = (uint64_t)s->catalog_size * 4;
    if (header_size > fsize || cat_bytes > fsize - header_size) {
        vbd_error_setf(err, EINVAL, "Image '%s': Bochs catalog (at %u, %u entries) is past the end of the file", name,
                       header_size, s->catalog_size);
        return -EINVAL;
    }
    /* bitmap sectors as qemu counts them: 1 + (size - 1) / 512 (a 0 size wraps to 2^23 sectors there; we refuse it) */
    if (bitmap_size == 0 || bitmap_size < (extent_sectors + 7) / 8) {
        vbd_error_setf(err, EINVAL, "Image '%s': Bochs bitmap size %u is too small for %u-byte extents", name,
                       bitmap_size, s->extent_size);
        return -EINVAL;
    }
    s->bitmap_bytes = (1 + ((uint64_t)bitmap_size - 1) / 512) * 512;
    s->slot_bytes = s->bitmap_bytes + extent_sectors * 512;
    s->data_offset = (uint64_t)header_size + cat_bytes;
    s->catalog = malloc(cat_bytes ? cat_bytes : 4);
    if (!s->catalog) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the Bochs catalog", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, header_size, s->catalog, cat_bytes);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the Bochs catalog of '%s': %s", name, strerror(-rc));
        goto fail;
    }
    for (uint32_t i = 0; i < s->catalog_size; i++) {
        s->catalog[i] = le32toh(s->catalog[i]);
        if (s->catalog[i] == BOCHS_FREE)
            continue;
        /* the extent's bitmap must be in the file; its sectors are checked when read */
        uint64_t bitmap_end = s->data_offset + (uint64_t)s->catalog[i] * s->slot_bytes + s->bitmap_bytes;
        if (bitmap_end > fsize) {
            vbd_error_setf(err, EINVAL, "Image '%s': Bochs catalog entry %u (slot %u) points past the end of the file",
                           name, i, s->catalog[i]);
            rc = -EINVAL;
            goto fail;
        }
    }
    n->size = sectors * 512;
    n->bl.request_alignment = 512;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    return 0;
fail:
    free(s->catalog);
    s->catalog = NULL;
    return rc;
}

static void bochs_close(struct vbd_node *n)
{
    struct bochs_state *s = n->opaque;
    free(s->catalog);
}

/* Reads go extent by extent: one read of the bitmap bytes the request
 * covers, then one read per run of written sectors. */
static int bochs_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    struct bochs_state *s = n->opaque;
    (void)flags;
    uint8_t bitmap[BOCHS_MAX_EXTENT / 512 / 8 + 1];
    while (bytes) {
        uint64_t index = off / s->extent_size;
        uint64_t first = (off % s->extent_size) / 512;
        uint64_t len = s->extent_size - off % s->extent_size;
        if (len > bytes)
            len = bytes;
        uint64_t count = len / 512;
        uint32_t slot = s->catalog[index];
        if (slot == BOCHS_FREE) {
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
        } else {
            uint64_t base = s->data_offset + (uint64_t)slot * s->slot_bytes;
            uint64_t b0 = first / 8, b1 = (first + count - 1) / 8;
            int rc = vbd_node_co_pread(n->file, base + b0, bitmap, b1 - b0 + 1);
            if (rc < 0)
                return rc;
            uint64_t fsize = vbd_node_size(n->file); /* the main loop may refresh it meanwhile */
            for (uint64_t i = 0; i < count;) {
                bool set = bitmap[(first + i) / 8 - b0] >> ((first + i) % 8) & 1;
                uint64_t j = i + 1;
                while (j < count && (bool)(bitmap[(first + j) / 8 - b0] >> ((first + j) % 8) & 1) == set)
                    j++;
                uint64_t run = (j - i) * 512;
                if (set) {
                    uint64_t host = base + s->bitmap_bytes + (first + i) * 512;
                    if (host + run > fsize)
                        return -EIO; /* a written sector the file does not hold */
                    rc = vbd_node_co_preadv(n->file, host, run, q, qoff + i * 512, 0);
                    if (rc < 0)
                        return rc;
                } else {
                    vbd_iov_memset(q->iov, q->niov, qoff + i * 512, 0, run);
                }
                i = j;
            }
        }
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

static const struct vbd_driver bochs_driver = {
    .name = "bochs",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct bochs_state),
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .co_preadv = bochs_preadv,
    .co_block_status = vbd_all_data_block_status,
    .get_info = vbd_all_data_get_info,
};
VBD_DRIVER_REGISTER(bochs, bochs_driver);
