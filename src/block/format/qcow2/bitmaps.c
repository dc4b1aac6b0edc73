/* SPDX-License-Identifier: MIT */
/*
 * Persistent dirty bitmaps (qcow2 "bitmaps" extension), kept up to date the
 * way QEMU keeps them: at a read-write open every enabled ("auto") bitmap is
 * loaded into memory and marked in-use on disk; guest writes, zeroes and
 * discards set its bits; a clean close writes the bits back and clears
 * in-use. A crash leaves in-use set, which every reader (QEMU too) takes as
 * "inconsistent": never a bitmap that silently misses writes.
 */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BME_IN_USE 1u
#define BME_AUTO 2u
#define BME_MAX_DIR (64u << 20)
#define BME_MAX_TABLE_ENTRIES (64u << 20) / 8
#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_ALL_ONES 1ull

struct qcow2_bitmap {
    char *name;
    bool tracking;        /* enabled and open read-write: writes set its bits */
    uint64_t dir_pos;     /* offset of its entry in the directory */
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t granularity_bits;
    uint64_t nbits;
    uint8_t *bits; /* LSB first, as on disk */
};

static struct qcow2_ext *bitmaps_ext(struct qcow2_state *s)
{
    if (s->version < 3 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return NULL;
    for (int i = 0; i < s->nexts; i++)
        if (s->exts[i].type == QCOW2_EXT_BITMAPS && s->exts[i].len >= 24)
            return &s->exts[i];
    return NULL;
}

static int write_dir(struct qcow2_state *s)
{
    int rc = vbd_node_co_pwrite(s->n->file, s->bm_dir_offset, s->bm_dir, s->bm_dir_size, 0);
    return rc < 0 ? rc : vbd_node_co_flush(s->n->file);
}

/* Reads the bitmap's data clusters into b->bits. */
static int load_bits(struct qcow2_state *s, struct qcow2_bitmap *b, uint64_t *table)
{
    uint64_t bytes = (b->nbits + 7) / 8, per_cluster = s->cluster_size;
    for (uint32_t i = 0; i < b->table_size && i * per_cluster < bytes; i++) {
        uint64_t e = table[i], off = e & BME_TABLE_OFFSET_MASK;
        uint64_t n = bytes - i * per_cluster < per_cluster ? bytes - i * per_cluster : per_cluster;
        if (!off) {
            memset(b->bits + i * per_cluster, (e & BME_ALL_ONES) ? 0xff : 0, n);
            continue;
        }
        if ((off & (s->cluster_size - 1)) || off >= s->n->file->size)
            return -EINVAL;
        int rc = vbd_node_co_pread(s->n->file, off, b->bits + i * per_cluster, n);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Where the header's bitmaps extension says the directory is, checked against the file. */
static int dir_location(struct qcow2_state *s, const struct qcow2_ext *x, uint32_t *nb, uint64_t *size, uint64_t *off)
{
    *nb = get_be32p(x->data);
    *size = get_be64p(x->data + 8);
    *off = get_be64p(x->data + 16);
    if (!*nb || !*size || *size > BME_MAX_DIR || (*off & (s->cluster_size - 1)) || *off >= s->n->file->size ||
        *size > s->n->file->size - *off)
        return -EINVAL;
    return 0;
}

/* Bytes of the directory entry at e, or 0 if it does not fit in the avail bytes left. */
static uint64_t entry_len(const uint8_t *e, uint64_t avail)
{
    if (avail < 24)
        return 0;
    uint32_t name = ((uint32_t)e[18] << 8) | e[19], extra = get_be32p(e + 20);
    uint64_t len = (24ull + extra + name + 7) & ~7ull;
    return len > avail ? 0 : len;
}

/* A dirty-tracking entry's fields checked and its bits read into b->bits
 * (the caller's on success). */
static int load_entry(struct qcow2_state *s, const uint8_t *e, struct qcow2_bitmap *b)
{
    b->table_offset = get_be64p(e);
    b->table_size = get_be32p(e + 8);
    b->granularity_bits = e[17];
    if (e[16] != 1 || b->granularity_bits < 9 || b->granularity_bits > 31 || !b->table_size ||
        b->table_size > BME_MAX_TABLE_ENTRIES || (b->table_offset & (s->cluster_size - 1)))
        return -EINVAL;
    b->nbits = (s->n->size + (1ull << b->granularity_bits) - 1) >> b->granularity_bits;
    if ((b->nbits + 7) / 8 > (uint64_t)b->table_size * s->cluster_size)
        return -EINVAL;
    uint64_t *table = malloc((uint64_t)b->table_size * 8);
    b->bits = calloc(1, (b->nbits + 7) / 8 + 1);
    int rc = table && b->bits ? vbd_node_co_pread(s->n->file, b->table_offset, table, (uint64_t)b->table_size * 8)
                              : -ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < b->table_size; i++)
        table[i] = be64(table[i]);
    if (rc == 0)
        rc = load_bits(s, b, table);
    free(table);
    if (rc < 0) {
        free(b->bits);
        b->bits = NULL;
    }
    return rc;
}

/* At a read-write open (before any write): load enabled, consistent bitmaps. */
int qcow2_bitmaps_open(struct qcow2_state *s, struct vbd_error **err)
{
    struct qcow2_ext *x = bitmaps_ext(s);
    if (!x)
        return 0;
    uint32_t nb;
    uint64_t size, off;
    if (dir_location(s, x, &nb, &size, &off) < 0) {
        vbd_error_setf(err, EINVAL, "qcow2 bitmap directory (%llu bytes at 0x%llx) is invalid", (unsigned long long)size,
                       (unsigned long long)off);
        return -EINVAL;
    }
    s->bm_dir = malloc(size);
    s->bitmaps = calloc(nb, sizeof(*s->bitmaps));
    if (!s->bm_dir || !s->bitmaps)
        return -ENOMEM;
    s->bm_dir_offset = off;
    s->bm_dir_size = size;
    int rc = vbd_node_co_pread(s->n->file, off, s->bm_dir, size);
    if (rc < 0)
        return rc;
    bool changed = false;
    uint64_t p = 0;
    for (uint32_t k = 0; k < nb; k++) {
        uint8_t *e = s->bm_dir + p;
        uint64_t len = entry_len(e, size - p);
        if (!len)
            goto bad;
        uint32_t flags = get_be32p(e + 12), name = ((uint32_t)e[18] << 8) | e[19], extra = get_be32p(e + 20);
        struct qcow2_bitmap b = {.dir_pos = p};
        p += len;
        if ((flags & BME_IN_USE) || !(flags & BME_AUTO) || e[16] != 1 || extra)
            continue; /* inconsistent, disabled, or not a dirty-tracking bitmap we know: left as it is */
        if ((rc = load_entry(s, e, &b)) == -ENOMEM)
            return rc;
        if (rc < 0)
            goto bad;
        put_be32p(e + 12, flags | BME_IN_USE); /* until a clean close stores the bits */
        b.name = strndup((const char *)e + 24 + extra, name);
        b.tracking = true;
        s->bitmaps[s->nbitmaps++] = b;
        changed = true;
    }
    if (changed && (rc = write_dir(s)) < 0) {
        vbd_error_setf(err, -rc, "qcow2: could not mark the persistent bitmaps in use: %s", strerror(-rc));
        return rc;
    }
    return 0;
bad:
    vbd_error_setf(err, EINVAL, "qcow2 bitmap directory entry at 0x%llx is invalid",
                   (unsigned long long)(s->bm_dir_offset + p));
    return -EINVAL;
}

/* A guest write, zeroing or discard of [off, off+len): every tracked bitmap
 * marks the granules it touches. */
void qcow2_bitmaps_dirty(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (int i = 0; i < s->nbitmaps && len; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        if (!b->tracking)
            continue;
        uint64_t first = off >> b->granularity_bits, last = (off + len - 1) >> b->granularity_bits;
        if (last >= b->nbits)
            last = b->nbits - 1;
        for (uint64_t k = first; k <= last; k++)
            b->bits[k / 8] |= (uint8_t)(1u << (k % 8));
    }
}

/* Clean close (lock held, metadata written back): the bits reach their
 * clusters (new ones where the table said "all zero"), then in-use goes. */
int qcow2_bitmaps_store(struct qcow2_state *s)
{
    int rc = 0;
    int tracked = 0;
    for (int i = 0; i < s->nbitmaps && rc == 0; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        if (!b->tracking)
            continue;
        tracked++;
        uint64_t bytes = (b->nbits + 7) / 8, cs = s->cluster_size;
        uint64_t *table = malloc((uint64_t)b->table_size * 8);
        uint8_t *buf = vbd_alloc_aligned(4096, cs);
        if (!table || !buf) {
            free(table);
            free(buf);
            return -ENOMEM;
        }
        rc = vbd_node_co_pread(s->n->file, b->table_offset, table, (uint64_t)b->table_size * 8);
        bool table_changed = false;
        for (uint32_t t = 0; rc == 0 && t < b->table_size && t * cs < bytes; t++) {
            uint64_t n = bytes - t * cs < cs ? bytes - t * cs : cs, e = be64(table[t]);
            uint64_t off = e & BME_TABLE_OFFSET_MASK;
            bool zero = true;
            for (uint64_t j = 0; j < n && zero; j++)
                zero = b->bits[t * cs + j] == 0;
            if (zero && !off && !(e & BME_ALL_ONES))
                continue; /* still all zero */
            if (!off) {
                int64_t at = qcow2_alloc_clusters(s, 1);
                if (at < 0) {
                    rc = (int)at;
                    break;
                }
                off = (uint64_t)at;
                table[t] = be64(off);
                table_changed = true;
            }
            memset(buf, 0, cs);
            memcpy(buf, b->bits + t * cs, n);
            if (qcow2_overlaps_metadata(s, off, cs))
                rc = qcow2_signal_corruption(s, "bitmap data cluster", off);
            else
                rc = vbd_node_co_pwrite(s->n->file, off, buf, cs, 0);
        }
        if (rc == 0)
            rc = qcow2_flush_refcounts(s); /* data and new clusters' refcounts before the table */
        if (rc == 0 && table_changed)
            rc = vbd_node_co_pwrite(s->n->file, b->table_offset, table, (uint64_t)b->table_size * 8, 0);
        free(table);
        free(buf);
        if (rc == 0) {
            uint8_t *e = s->bm_dir + b->dir_pos;
            put_be32p(e + 12, get_be32p(e + 12) & ~BME_IN_USE);
        }
    }
    if (rc == 0 && tracked)
        rc = vbd_node_co_flush(s->n->file);
    if (rc == 0 && tracked)
        rc = write_dir(s);
    return rc;
}

/* A bitmap for reading (an NBD export of it): the tracked one, or loaded
 * from the image once. Lock held. */
static int find_bitmap(struct qcow2_state *s, const char *name, struct qcow2_bitmap **out)
{
    for (int i = 0; i < s->nbitmaps; i++)
        if (s->bitmaps[i].name && !strcmp(s->bitmaps[i].name, name)) {
            *out = &s->bitmaps[i];
            return 0;
        }
    struct qcow2_ext *x = bitmaps_ext(s);
    uint32_t nb;
    uint64_t size, off;
    if (!x)
        return -ENOENT;
    if (dir_location(s, x, &nb, &size, &off) < 0)
        return -EINVAL;
    uint8_t *dir = malloc(size);
    if (!dir)
        return -ENOMEM;
    int rc = vbd_node_co_pread(s->n->file, off, dir, size);
    uint64_t p = 0;
    for (uint32_t k = 0; rc == 0 && k < nb; k++) {
        uint8_t *e = dir + p;
        if (size - p < 24)
            break; /* the directory ends early: the bitmap is not there */
        uint64_t len = entry_len(e, size - p);
        if (!len) {
            rc = -EINVAL;
            break;
        }
        p += len;
        uint32_t flags = get_be32p(e + 12), nlen = ((uint32_t)e[18] << 8) | e[19], extra = get_be32p(e + 20);
        if (nlen != strlen(name) || memcmp(e + 24 + extra, name, nlen))
            continue;
        if (flags & BME_IN_USE) {
            rc = -EINVAL; /* inconsistent: QEMU would not export it either */
            break;
        }
        struct qcow2_bitmap b = {0};
        struct qcow2_bitmap *grown = realloc(s->bitmaps, sizeof(*s->bitmaps) * (size_t)(s->nbitmaps + 1));
        if (!grown) {
            rc = -ENOMEM;
            break;
        }
        s->bitmaps = grown;
        if ((rc = load_entry(s, e, &b)) < 0)
            break;
        b.name = strdup(name);
        s->bitmaps[s->nbitmaps] = b;
        *out = &s->bitmaps[s->nbitmaps++];
        free(dir);
        return 0;
    }
    free(dir);
    return rc < 0 ? rc : -ENOENT;
}

int qcow2_bitmap_status(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
    struct qcow2_state *s = n->opaque;
    struct qcow2_bitmap *b;
    vbd_co_mutex_lock(&s->lock);
    int rc = find_bitmap(s, name, &b);
    vbd_co_mutex_unlock(&s->lock);
    if (rc < 0)
        return rc;
    uint64_t g = b->granularity_bits, k = off >> g, end = off + bytes;
    bool dirty = k < b->nbits && ((b->bits[k / 8] >> (k % 8)) & 1);
    uint64_t pos = (k + 1) << g;
    for (k++; pos < end && k < b->nbits && (bool)((b->bits[k / 8] >> (k % 8)) & 1) == dirty; k++)
        pos += 1ull << g;
    *pnum = (pos < end ? pos : end) - off;
    return dirty;
}

void qcow2_bitmaps_free(struct qcow2_state *s)
{
    for (int i = 0; i < s->nbitmaps; i++) {
        free(s->bitmaps[i].bits);
        free(s->bitmaps[i].name);
    }
    free(s->bitmaps);
    free(s->bm_dir);
    s->bitmaps = NULL;
    s->bm_dir = NULL;
    s->nbitmaps = 0;
}
