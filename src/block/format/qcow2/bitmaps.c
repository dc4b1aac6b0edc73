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

#include "vbd/alloc.h"
#include "vbd/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BME_IN_USE 1u
#define BME_AUTO 2u
#define BME_MAX_DIR (64u << 20)
#define BME_MAX_TABLE_ENTRIES (64u << 20) / 8
#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_TABLE_RESERVED_MASK 0xff000000000001feull
#define BME_ALL_ONES 1ull

struct qcow2_bitmap {
    char *name;
    bool tracking;        /* enabled and open read-write: writes set its bits */
    bool held;            /* marked in-use by this open (enabled or not), cleared when stored */
    uint64_t dir_pos;     /* offset of its entry in the directory */
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t granularity_bits;
    uint64_t nbits;
    uint8_t *bits; /* LSB first, as on disk */
    /* A write marked bits since they were loaded (qcow2_bitmaps_dirty, the
     * only place that changes a tracked bitmap's bits): without, its
     * clusters and table still hold them and a store rewrites nothing but
     * the in-use flag (bitmap --merge beside a tracked bitmap: 2 data
     * writes and their 2 fdatasyncs fewer, qemu-img's count) */
    bool bits_changed;
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

bool qcow2_bitmap_dir_range(struct qcow2_state *s, uint64_t *start, uint64_t *end)
{
    struct qcow2_ext *x = bitmaps_ext(s);
    if (!x)
        return false;
    uint64_t size = get_be64p(x->data + 8);
    *start = get_be64p(x->data + 16);
    *end = size > UINT64_MAX - *start ? UINT64_MAX : *start + size;
    return true;
}

static int write_dir(struct qcow2_state *s)
{
    int rc = vbd_node_co_pwrite(s->n->file, s->bm_dir_offset, s->bm_dir, s->bm_dir_size, 0);
    return rc < 0 ? rc : vbd_node_co_flush(s->n->file);
}

/* A bitmap table QEMU would refuse (an entry with reserved bits, the
 * all-ones flag beside an offset, an unaligned offset), or one lying on
 * other metadata or naming it as a data cluster. Such a table is never
 * read as bits, written back or released: its "clusters" may be an L1 or
 * L2 table or guest data (a clean close writes the table and the bits in
 * place, a release drops their refcounts). */
static bool table_is_hostile(struct qcow2_state *s, uint64_t table_offset, const uint64_t *table, uint32_t size)
{
    if (qcow2_overlaps_metadata(s, table_offset, (uint64_t)size * 8))
        return true;
    for (uint32_t i = 0; i < size; i++) {
        uint64_t e = table[i], off = e & BME_TABLE_OFFSET_MASK;
        if ((e & BME_TABLE_RESERVED_MASK) ||
            (off && ((e & BME_ALL_ONES) || (off & (s->cluster_size - 1)) || qcow2_overlaps_metadata(s, off, s->cluster_size))))
            return true;
    }
    return false;
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
        if ((off & (s->cluster_size - 1)) || off >= vbd_node_size(s->n->file))
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
    uint64_t fsize = vbd_node_size(s->n->file); /* once: the main loop may refresh it (vbd_node_size) */
    if (!*nb || !*size || *size > BME_MAX_DIR || *nb > *size / 24 || (*off & (s->cluster_size - 1)) || *off >= fsize ||
        *size > fsize - *off)
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

/* A dirty-tracking entry's own fields (QEMU's check_dir_entry): 0 or -EINVAL. */
static int entry_fields(struct qcow2_state *s, const uint8_t *e, struct qcow2_bitmap *b)
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
    return 0;
}

/* A dirty-tracking entry's fields checked and its bits read into b->bits
 * (the caller's on success). */
static int load_entry(struct qcow2_state *s, const uint8_t *e, struct qcow2_bitmap *b)
{
    if (entry_fields(s, e, b) < 0)
        return -EINVAL;
    uint64_t *table = malloc((uint64_t)b->table_size * 8);
    b->bits = calloc(1, (b->nbits + 7) / 8 + 1);
    int rc = table && b->bits ? vbd_node_co_pread(s->n->file, b->table_offset, table, (uint64_t)b->table_size * 8)
                              : -ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < b->table_size; i++)
        table[i] = be64(table[i]);
    if (rc == 0 && table_is_hostile(s, b->table_offset, table, b->table_size))
        rc = -EINVAL;
    if (rc == 0)
        rc = load_bits(s, b, table);
    free(table);
    if (rc < 0) {
        free(b->bits);
        b->bits = NULL;
    }
    return rc;
}

/* At a read-write open (before any write): load enabled, consistent bitmaps.
 * Disabled ones are taken too (marked in-use, their bits held, not
 * tracked), as QEMU's qcow2_load_dirty_bitmaps takes every bitmap: its
 * close stores them anew with the others.
 * A read-only image going read-write may hold copies loaded for reading (an
 * NBD export's, x-debug-block-dirty-bitmap-sha256's: find_bitmap appends
 * them, clean): they go first, or the new array, sized for the directory,
 * was filled past its end after them. */
int qcow2_bitmaps_open(struct qcow2_state *s, struct vbd_error **err)
{
    qcow2_bitmaps_free(s);
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
        if ((flags & BME_IN_USE) || e[16] != 1 || extra)
            continue; /* inconsistent, or not a dirty-tracking bitmap we know: left as it is */
        if ((rc = load_entry(s, e, &b)) == -ENOMEM)
            return rc;
        if (rc < 0 && !(flags & BME_AUTO))
            continue; /* a disabled one that cannot be read: left as it is (never written to) */
        if (rc < 0) { /* QEMU 7.2's words */
            struct qcow2_bitmap f;
            if (entry_fields(s, e, &f) < 0)
                vbd_error_setf(err, EINVAL, "Bitmap '%.*s' doesn't satisfy the constraints", (int)name,
                               (const char *)e + 24 + extra);
            else
                vbd_error_setf(err, EINVAL, "Could not read bitmap_table table from image for bitmap '%.*s': %s",
                               (int)name, (const char *)e + 24 + extra, strerror(-rc));
            return -EINVAL;
        }
        put_be32p(e + 12, flags | BME_IN_USE); /* until a clean close stores the bits */
        b.name = strndup((const char *)e + 24 + extra, name);
        b.tracking = (flags & BME_AUTO) != 0;
        b.held = true;
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
    if (s->bitmaps_changing && len) {
        /* marked after the change (rare: only while a QMP command changes
         * the bitmaps under a job's writes) */
        vbd_bitmap_ranges_add(&s->written_in_change, off, len);
    }
    for (int i = 0; i < s->nbitmaps && len; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[i];
        if (!b->tracking)
            continue;
        b->bits_changed = true;
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
        if (!b->held)
            continue;
        tracked++;
        if (!b->bits_changed) { /* a disabled one's never change */
            uint8_t *e = s->bm_dir + b->dir_pos;
            put_be32p(e + 12, get_be32p(e + 12) & ~BME_IN_USE);
            continue;
        }
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
        /* checked at load; metadata may have moved onto it since only in a
         * corrupt image (a table cluster with refcount 0, handed out again) */
        if (rc == 0 && table_changed && qcow2_overlaps_metadata(s, b->table_offset, (uint64_t)b->table_size * 8))
            rc = qcow2_signal_corruption(s, "bitmap table", b->table_offset);
        else if (rc == 0 && table_changed)
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

/* ------------------------------------------------------------------ */
/* Managing the bitmaps (vbd-img bitmap, amend compat=0.10): the whole
 * directory is read, changed in memory and written to new clusters; the
 * header then points to it, and only after that are the clusters of the
 * old directory and of changed or removed bitmaps released. A crash
 * leaves the old or the new set, plus leaked clusters at worst. */

#define BME_MAX_NAME 1023
#define BME_MAX_BITMAPS 65535

struct dir_entry {
    uint8_t *raw;  /* the entry as on disk (name and extra data included) */
    uint64_t len;
    uint8_t *bits; /* new contents to be written, or NULL: table kept */
    uint64_t nbits;
    uint64_t old_table; /* released once the new directory is in place */
    uint32_t old_table_size;
    bool held;          /* a bitmap this open holds: its bits from memory */
};

struct dir {
    struct dir_entry *e;
    uint32_t n;
};

static uint32_t entry_name_len(const struct dir_entry *d)
{
    return ((uint32_t)d->raw[18] << 8) | d->raw[19];
}

static const char *entry_name(const struct dir_entry *d)
{
    return (const char *)d->raw + 24 + get_be32p(d->raw + 20);
}

static void dir_free(struct dir *d)
{
    for (uint32_t i = 0; i < d->n; i++) {
        free(d->e[i].raw);
        free(d->e[i].bits);
    }
    free(d->e);
    d->e = NULL;
    d->n = 0;
}

static int dir_find(const struct dir *d, const char *name)
{
    size_t l = strlen(name);
    for (uint32_t i = 0; i < d->n; i++)
        if (entry_name_len(&d->e[i]) == l && !memcmp(entry_name(&d->e[i]), name, l))
            return (int)i;
    return -1;
}

static int dir_load(struct qcow2_state *s, struct dir *d)
{
    d->e = NULL;
    d->n = 0;
    struct qcow2_ext *x = bitmaps_ext(s);
    if (!x)
        return 0;
    uint32_t nb;
    uint64_t size, off;
    if (dir_location(s, x, &nb, &size, &off) < 0)
        return -EINVAL;
    uint8_t *buf = malloc(size);
    d->e = calloc(nb, sizeof(*d->e));
    int rc = buf && d->e ? vbd_node_co_pread(s->n->file, off, buf, size) : -ENOMEM;
    uint64_t p = 0;
    for (uint32_t k = 0; rc == 0 && k < nb; k++) {
        uint64_t len = entry_len(buf + p, size - p);
        if (!len) {
            rc = -EINVAL;
            break;
        }
        struct dir_entry *e = &d->e[d->n];
        e->raw = malloc(len);
        if (!e->raw) {
            rc = -ENOMEM;
            break;
        }
        memcpy(e->raw, buf + p, len);
        e->len = len;
        d->n++;
        p += len;
    }
    free(buf);
    if (rc < 0)
        dir_free(d);
    return rc;
}

/* The data clusters a bitmap table points to, then the table's own clusters. */
static int release_table(struct qcow2_state *s, uint64_t table_offset, uint32_t table_size)
{
    if (!table_offset || !table_size || table_size > BME_MAX_TABLE_ENTRIES || (table_offset & (s->cluster_size - 1)))
        return 0; /* never a valid table: nothing of ours to release */
    uint64_t *table = malloc((uint64_t)table_size * 8);
    if (!table)
        return -ENOMEM;
    int rc = vbd_node_co_pread(s->n->file, table_offset, table, (uint64_t)table_size * 8);
    for (uint32_t i = 0; rc == 0 && i < table_size; i++)
        table[i] = be64(table[i]);
    if (rc == 0 && table_is_hostile(s, table_offset, table, table_size)) {
        free(table);
        return 0; /* its clusters may be anyone's: leaked at worst, never released */
    }
    /* the data clusters go back to the file system, as QEMU's
     * clear_bitmap_table frees them (QCOW2_DISCARD_ALWAYS); the table's
     * own clusters are kept as QEMU keeps them (QCOW2_DISCARD_OTHER). One
     * at a time, as QEMU frees them. The directory naming this table is
     * gone from the disk (the caller). */
    s->punch_freed = true;
    for (uint32_t i = 0; rc == 0 && i < table_size; i++) {
        uint64_t off = table[i] & BME_TABLE_OFFSET_MASK;
        if (off)
            rc = qcow2_update_refcount(s, off, -1);
        qcow2_punch_freed(s);
    }
    s->punch_freed = false;
    s->nto_punch = 0;
    free(table);
    uint64_t bytes = ((uint64_t)table_size * 8 + s->cluster_size - 1) & ~(s->cluster_size - 1);
    for (uint64_t c = 0; rc == 0 && c < bytes; c += s->cluster_size)
        rc = qcow2_update_refcount(s, table_offset + c, -1);
    return rc;
}

/* New table and data clusters for an entry whose bits changed (all-zero clusters stay unallocated). */
static int write_bits(struct qcow2_state *s, struct dir_entry *e)
{
    uint64_t cs = s->cluster_size, bytes = (e->nbits + 7) / 8;
    uint32_t tsize = get_be32p(e->raw + 8);
    uint64_t tbytes = ((uint64_t)tsize * 8 + cs - 1) & ~(cs - 1);
    uint64_t *table = calloc(1, tbytes);
    uint8_t *buf = vbd_alloc_aligned(4096, cs);
    int rc = table && buf ? 0 : -ENOMEM;
    for (uint32_t t = 0; rc == 0 && t < tsize && t * cs < bytes; t++) {
        uint64_t n = bytes - t * cs < cs ? bytes - t * cs : cs;
        bool zero = true;
        for (uint64_t j = 0; j < n && zero; j++)
            zero = e->bits[t * cs + j] == 0;
        if (zero)
            continue;
        int64_t at = qcow2_alloc_clusters(s, 1);
        if (at < 0) {
            rc = (int)at;
            break;
        }
        memset(buf, 0, cs);
        memcpy(buf, e->bits + t * cs, n);
        table[t] = be64((uint64_t)at);
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)at, buf, cs, 0);
    }
    int64_t at = rc == 0 ? qcow2_alloc_clusters(s, tbytes / cs) : rc;
    if (at < 0)
        rc = (int)at;
    /* its entries, not the rest of the cluster, as QEMU writes it (a
     * table at the end leaves the file as long as qemu-img's) */
    if (rc == 0)
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)at, table, (uint64_t)tsize * 8, 0);
    if (rc == 0)
        put_be64p(e->raw, (uint64_t)at);
    free(table);
    free(buf);
    return rc;
}

static int set_bitmaps_ext(struct qcow2_state *s, uint32_t nb, uint64_t size, uint64_t off)
{
    struct qcow2_ext *x = NULL;
    for (int i = 0; i < s->nexts; i++)
        if (s->exts[i].type == QCOW2_EXT_BITMAPS)
            x = &s->exts[i];
    if (!nb) {
        if (x) {
            free(x->data);
            *x = s->exts[--s->nexts];
        }
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
        return 0;
    }
    if (!x) {
        struct qcow2_ext *grown = realloc(s->exts, sizeof(*s->exts) * (size_t)(s->nexts + 1));
        if (!grown)
            return -ENOMEM;
        s->exts = grown;
        x = &s->exts[s->nexts++];
        *x = (struct qcow2_ext){.type = QCOW2_EXT_BITMAPS};
    }
    if (x->len < 24) {
        uint8_t *data = calloc(1, 24);
        if (!data)
            return -ENOMEM;
        free(x->data);
        x->data = data;
        x->len = 24;
    }
    put_be32p(x->data, nb);
    put_be32p(x->data + 4, 0);
    put_be64p(x->data + 8, size);
    put_be64p(x->data + 16, off);
    s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    return 0;
}

/* Writes d as the image's directory (changed bits first), points the header
 * to it, then releases what the old one alone referenced. Lock held. */
static int dir_store(struct qcow2_state *s, struct dir *d, struct vbd_error **err)
{
    struct qcow2_ext *x = bitmaps_ext(s);
    uint64_t old_off = 0, old_size = 0;
    if (x) {
        old_size = get_be64p(x->data + 8);
        old_off = get_be64p(x->data + 16);
    }
    int rc = 0;
    uint64_t size = 0;
    for (uint32_t i = 0; rc == 0 && i < d->n; i++) {
        size += d->e[i].len;
        if (d->e[i].bits)
            rc = write_bits(s, &d->e[i]);
    }
    uint64_t cs = s->cluster_size, at = 0;
    if (rc == 0 && d->n) {
        int64_t a = qcow2_alloc_clusters(s, (size + cs - 1) / cs);
        uint8_t *buf = a >= 0 ? calloc(1, (size + cs - 1) & ~(cs - 1)) : NULL;
        rc = a < 0 ? (int)a : buf ? 0 : -ENOMEM;
        for (uint64_t p = 0, i = 0; rc == 0 && i < d->n; p += d->e[i++].len)
            memcpy(buf + p, d->e[i].raw, d->e[i].len);
        if (rc == 0) /* its entries alone, as QEMU's bitmap_list_store */
            rc = vbd_node_co_pwrite(s->n->file, (uint64_t)a, buf, size, 0);
        free(buf);
        at = a < 0 ? 0 : (uint64_t)a;
    }
    if (rc == 0)
        rc = qcow2_flush_refcounts(s); /* everything the header will point to is on disk */
    uint64_t old_autoclear = s->autoclear;
    if (rc == 0)
        rc = set_bitmaps_ext(s, d->n, size, at);
    if (rc == 0 && (rc = qcow2_rewrite_header(s, s->n->backing_file, s->n->backing_format, err)) < 0)
        s->autoclear = old_autoclear;
    if (rc < 0)
        return rc;
    for (uint64_t c = 0; old_off && c < old_size; c += cs)
        rc = rc ? rc : qcow2_update_refcount(s, old_off + c, -1);
    for (uint32_t i = 0; rc == 0 && i < d->n; i++)
        if (d->e[i].old_table)
            rc = release_table(s, d->e[i].old_table, d->e[i].old_table_size);
    /* Written, not synced: each count went down for a cluster that only
     * the old directory or an old table named, and the header that points
     * past them was synced above. A crash that loses the counts leaks
     * those clusters, as one before them would; the next flush (the
     * caller's next step, the close) makes them durable. A cluster freed
     * here is punched only after its count of 0 is synced (release_table,
     * qcow2_punch_freed), and one handed out again is counted in use in
     * the same cached block before anything names it. */
    if (rc == 0)
        rc = qcow2_write_refcounts(s);
    return rc;
}

/* The bits of an entry, for changing: read from its clusters. */
static int entry_bits(struct qcow2_state *s, struct dir_entry *e)
{
    if (e->bits)
        return 0;
    struct qcow2_bitmap b = {0};
    int rc = load_entry(s, e->raw, &b);
    if (rc < 0)
        return rc;
    e->bits = b.bits;
    e->nbits = b.nbits;
    e->old_table = b.table_offset;
    e->old_table_size = b.table_size;
    return 0;
}

/* The bitmaps tracked in memory reach the disk (in-use cleared) before
 * the directory is changed; they are loaded again afterwards. */
static int begin_change(struct qcow2_state *s)
{
    s->bitmaps_changing = true;
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0 && s->nbitmaps)
        rc = qcow2_bitmaps_store(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    qcow2_bitmaps_free(s);
    return rc;
}

/* Also after a failure: the bitmaps were stored, so tracking must resume. */
static int end_change(struct qcow2_state *s, int rc, struct vbd_error **err)
{
    int orc = 0;
    if (!s->read_only) {
        qcow2_bitmaps_free(s);
        orc = qcow2_bitmaps_open(s, rc < 0 ? NULL : err);
    }
    /* what was written during the change, into the bitmaps that track now
     * (one added meanwhile may get a few bits more: more dirty is safe) */
    s->bitmaps_changing = false;
    struct vbd_bitmap_ranges *w = &s->written_in_change;
    for (size_t i = 0; i < w->n; i++)
        qcow2_bitmaps_dirty(s, w->r[i][0], w->r[i][1]);
    free(w->r);
    *w = (struct vbd_bitmap_ranges){0};
    return rc < 0 ? rc : orc;
}

int qcow2_bitmaps_remove_all(struct qcow2_state *s, struct vbd_error **err)
{
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    struct dir d, empty = {0};
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    qcow2_bitmaps_free(s); /* their bits are going: nothing to store */
    if (rc == 0)
        rc = dir_load(s, &d);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < d.n; i++) {
        d.e[i].old_table = get_be64p(d.e[i].raw);
        d.e[i].old_table_size = get_be32p(d.e[i].raw + 8);
    }
    rc = dir_store(s, &empty, err);
    for (uint32_t i = 0; rc == 0 && i < d.n; i++)
        rc = release_table(s, d.e[i].old_table, d.e[i].old_table_size);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    dir_free(&d);
    return rc;
}

static int op_fail(struct vbd_error **err, int rc, const struct vbd_bitmap_op *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int op_fail(struct vbd_error **err, int rc, const struct vbd_bitmap_op *op, const char *fmt, ...)
{
    (void)op;
    char msg[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vbd_error_setf(err, rc, "%s", msg);
    return -rc;
}

static int apply(struct qcow2_state *s, struct dir *d, const struct vbd_bitmap_op *op, struct vbd_error **err)
{
    const char *name = op->name;
    int i = dir_find(d, name);
    if (op->action == VBD_BITMAP_ADD) {
        /* the order of QEMU's checks, so that the same error wins */
        if (!*name)
            return op_fail(err, EINVAL, op, "Bitmap name cannot be empty");
        uint32_t g = op->granularity;
        if (!g) /* QEMU's default: the cluster size, within 4k..64k */
            g = s->cluster_size < 4096 ? 4096 : s->cluster_size > 65536 ? 65536 : (uint32_t)s->cluster_size;
        uint32_t gbits = 0;
        while ((1ull << gbits) < g)
            gbits++;
        if ((1ull << gbits) != g || gbits < 9 || gbits > 31)
            return op_fail(err, EINVAL, op, "Granularity must be power of 2 and at least 512");
        if (s->version < 3)
            return op_fail(err, ENOTSUP, op, "Can't make bitmap '%s' persistent in '%s': Cannot store dirty bitmaps in qcow2 v2 files",
                           name, s->n->node_name);
        if (d->n >= BME_MAX_BITMAPS)
            return op_fail(err, ENOSPC, op, "Can't make bitmap '%s' persistent in '%s': Too many persistent bitmaps", name,
                           s->n->node_name);
        if (strlen(name) > BME_MAX_NAME) /* the name cut short: the reason must fit in the message */
            return op_fail(err, EINVAL, op, "Can't make bitmap '%.64s...' persistent in '%s': Name length exceeds maximum (%u characters)",
                           name, s->n->node_name, BME_MAX_NAME);
        uint64_t nbits = (s->n->size + g - 1) >> gbits;
        uint64_t tsize = ((nbits + 7) / 8 + s->cluster_size - 1) / s->cluster_size;
        if (!tsize)
            tsize = 1;
        if (tsize > BME_MAX_TABLE_ENTRIES)
            return op_fail(err, EFBIG, op, "Can't make bitmap '%s' persistent in '%s': Too much space will be occupied by the bitmap. "
                           "Use larger granularity", name, s->n->node_name);
        if (i >= 0)
            return op_fail(err, EEXIST, op, "Bitmap already exists: %s", name);
        struct dir_entry *grown = realloc(d->e, sizeof(*d->e) * (d->n + 1));
        if (!grown)
            return -ENOMEM;
        d->e = grown;
        size_t nl = strlen(name);
        struct dir_entry *e = &d->e[d->n];
        *e = (struct dir_entry){.len = (24 + nl + 7) & ~7ull, .nbits = nbits};
        e->raw = calloc(1, e->len);
        e->bits = calloc(1, (nbits + 7) / 8 + 1);
        if (!e->raw || !e->bits) {
            free(e->raw);
            free(e->bits);
            return -ENOMEM;
        }
        put_be32p(e->raw + 8, (uint32_t)tsize);
        put_be32p(e->raw + 12, op->disabled ? 0 : BME_AUTO);
        e->raw[16] = 1;
        e->raw[17] = (uint8_t)gbits;
        e->raw[18] = (uint8_t)(nl >> 8);
        e->raw[19] = (uint8_t)nl;
        memcpy(e->raw + 24, name, nl);
        d->n++;
        return 0;
    }
    if (i < 0)
        return op_fail(err, ENOENT, op, "Dirty bitmap '%s' not found", name);
    struct dir_entry *e = &d->e[i];
    uint32_t flags = get_be32p(e->raw + 12);
    if (op->action == VBD_BITMAP_REMOVE) {
        /* its clusters are released by the caller once the directory without it is written */
        free(e->raw);
        free(e->bits);
        memmove(e, e + 1, sizeof(*e) * (d->n - (uint32_t)i - 1));
        d->n--;
        return 0;
    }
    if ((flags & BME_IN_USE) || e->raw[16] != 1)
        return op_fail(err, EINVAL, op, "Bitmap '%s' is inconsistent and cannot be used", name);
    switch (op->action) {
    case VBD_BITMAP_ENABLE:
        put_be32p(e->raw + 12, flags | BME_AUTO);
        return 0;
    case VBD_BITMAP_DISABLE:
        put_be32p(e->raw + 12, flags & ~BME_AUTO);
        return 0;
    case VBD_BITMAP_CLEAR:
    case VBD_BITMAP_MERGE: {
        int rc = entry_bits(s, e);
        if (rc < 0)
            return op_fail(err, -rc, op, "Could not read bitmap '%s': %s", name, strerror(-rc));
        if (op->action == VBD_BITMAP_CLEAR) {
            memset(e->bits, 0, (e->nbits + 7) / 8);
            return 0;
        }
        uint32_t g = e->raw[17];
        for (size_t r = 0; r < op->nranges; r++) {
            uint64_t off = op->ranges[r][0], len = op->ranges[r][1];
            if (!len)
                continue;
            uint64_t last = (off + len - 1) >> g;
            for (uint64_t k = off >> g; k <= last && k < e->nbits; k++)
                e->bits[k / 8] |= (uint8_t)(1u << (k % 8));
        }
        return 0;
    }
    default:
        return op_fail(err, EINVAL, op, "unknown bitmap operation");
    }
}

int qcow2_bitmap_change(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    if (n->read_only) {
        vbd_error_setf(err, EROFS, "qcow2: the image is open read-only");
        return -EROFS;
    }
    vbd_co_mutex_lock(&s->lock);
    struct dir d = {0};
    int rc = begin_change(s);
    if (rc == 0)
        rc = dir_load(s, &d);
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qcow2: could not read the bitmap directory: %s", strerror(-rc));
    /* entries removed stay released only after the new directory is written */
    uint64_t (*gone)[2] = NULL;
    uint32_t ngone = 0;
    if (rc == 0 && op->action == VBD_BITMAP_REMOVE) {
        int i = dir_find(&d, op->name);
        if (i >= 0) {
            gone = malloc(sizeof(*gone));
            if (!gone)
                rc = -ENOMEM;
            else {
                gone[0][0] = get_be64p(d.e[i].raw);
                gone[0][1] = get_be32p(d.e[i].raw + 8);
                ngone = 1;
            }
        }
    }
    if (rc == 0)
        rc = apply(s, &d, op, err);
    if (rc == 0 && (rc = dir_store(s, &d, err)) < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qcow2: could not write the bitmap directory: %s", strerror(-rc));
    for (uint32_t k = 0; rc == 0 && k < ngone; k++)
        rc = release_table(s, gone[k][0], (uint32_t)gone[k][1]);
    if (rc == 0 && ngone)
        rc = qcow2_flush_refcounts(s);
    free(gone);
    dir_free(&d);
    /* laid out by this change: the close writes the bits back in place,
     * not anew (the bitmap verb moves the bitmaps once) */
    s->bitmaps_store_anew = false;
    rc = end_change(s, rc, err);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* The entries of the bitmaps held in memory take their bits from there
 * (to be written anew), in-use cleared in the new directory unless
 * keep_in_use (they stay held); the old directory on disk keeps in-use
 * until the header leaves it, as QEMU's close leaves it. */
static int take_tracked_bits(struct qcow2_state *s, struct dir *d, bool keep_in_use)
{
    for (uint32_t i = 0; i < d->n; i++) {
        struct dir_entry *e = &d->e[i];
        uint32_t nlen = entry_name_len(e);
        struct qcow2_bitmap *b = NULL;
        for (int k = 0; k < s->nbitmaps && !b; k++)
            if (s->bitmaps[k].held && strlen(s->bitmaps[k].name) == nlen &&
                !memcmp(s->bitmaps[k].name, entry_name(e), nlen))
                b = &s->bitmaps[k];
        if (!b)
            continue;
        uint64_t bytes = (b->nbits + 7) / 8;
        if (!(e->bits = malloc(bytes + 1)))
            return -ENOMEM;
        memcpy(e->bits, b->bits, bytes);
        e->nbits = b->nbits;
        e->old_table = get_be64p(e->raw);
        e->old_table_size = get_be32p(e->raw + 8);
        e->held = true;
        if (!keep_in_use)
            put_be32p(e->raw + 12, get_be32p(e->raw + 12) & ~BME_IN_USE);
    }
    return 0;
}

/* Before a resize: every bitmap must be one that can follow it (QEMU
 * refuses with an inconsistent one). Lock held. */
int qcow2_bitmaps_check_resize(struct qcow2_state *s, struct vbd_error **err)
{
    struct dir d;
    int rc = dir_load(s, &d);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow2: could not read the bitmap directory: %s", strerror(-rc));
        return rc;
    }
    for (uint32_t i = 0; rc == 0 && i < d.n; i++) {
        bool tracked = false;
        for (int k = 0; k < s->nbitmaps && !tracked; k++)
            tracked = s->bitmaps[k].held &&
                      strlen(s->bitmaps[k].name) == entry_name_len(&d.e[i]) &&
                      !memcmp(s->bitmaps[k].name, entry_name(&d.e[i]), entry_name_len(&d.e[i]));
        if (((get_be32p(d.e[i].raw + 12) & BME_IN_USE) && !tracked) || d.e[i].raw[16] != 1) {
            vbd_error_setf(err, EINVAL, "Bitmap '%.*s' is inconsistent and cannot be used", (int)entry_name_len(&d.e[i]),
                           entry_name(&d.e[i]));
            rc = -EINVAL;
        }
    }
    dir_free(&d);
    return rc;
}

/* After a resize's dir_store: the bitmaps held go on with their resized
 * bits and their entries in the directory just written (in-use still set
 * there, as QEMU keeps it until its close): no second directory write to
 * set in-use again. */
static int keep_held(struct qcow2_state *s, struct dir *d)
{
    struct qcow2_ext *x = bitmaps_ext(s);
    if (!x || !d->n)
        return 0; /* no directory: nothing held (taken again from the disk) */
    uint64_t size = 0;
    for (uint32_t i = 0; i < d->n; i++)
        size += d->e[i].len;
    uint8_t *dir = malloc(size);
    if (!dir)
        return -ENOMEM;
    for (uint64_t p = 0, i = 0; i < d->n; p += d->e[i++].len)
        memcpy(dir + p, d->e[i].raw, d->e[i].len);
    for (int k = 0; k < s->nbitmaps; k++) {
        struct qcow2_bitmap *b = &s->bitmaps[k];
        uint64_t p = 0;
        for (uint32_t i = 0; b->held && i < d->n; p += d->e[i++].len) {
            struct dir_entry *e = &d->e[i];
            if (!e->held || strlen(b->name) != entry_name_len(e) || memcmp(b->name, entry_name(e), entry_name_len(e)))
                continue;
            free(b->bits);
            b->bits = e->bits; /* the resized bits, as written */
            e->bits = NULL;
            b->nbits = e->nbits;
            b->table_offset = get_be64p(e->raw);
            b->table_size = get_be32p(e->raw + 8);
            b->dir_pos = p;
            b->bits_changed = false;
            break;
        }
    }
    free(s->bm_dir);
    s->bm_dir = dir;
    s->bm_dir_offset = get_be64p(x->data + 16);
    s->bm_dir_size = size;
    s->bitmaps_kept = true;
    return 0;
}

/* Every bitmap made to cover `size` bytes (bits past the old end clear,
 * bits past the new end dropped), written to new clusters, those held
 * still in use and held on (keep_held); after a failure they are not
 * tracked again until qcow2_bitmaps_reload(). Lock held. */
int qcow2_bitmaps_resize(struct qcow2_state *s, uint64_t size, struct vbd_error **err)
{
    struct dir d = {0};
    /* as begin_change, but the held bits go to new clusters straight
     * from memory: the old directory keeps in-use, as QEMU's close
     * (which stores them after its resize) leaves it */
    s->bitmaps_changing = true;
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0)
        rc = dir_load(s, &d);
    if (rc == 0)
        rc = take_tracked_bits(s, &d, true);
    for (uint32_t i = 0; rc == 0 && i < d.n; i++) {
        struct dir_entry *e = &d.e[i];
        if (!e->held && ((get_be32p(e->raw + 12) & BME_IN_USE) || e->raw[16] != 1))
            continue; /* refused before (qcow2_bitmaps_check_resize) */
        if ((rc = entry_bits(s, e)) < 0)
            break;
        uint32_t g = e->raw[17];
        uint64_t nbits = (size + (1ull << g) - 1) >> g, bytes = (nbits + 7) / 8;
        uint64_t tsize = (bytes + s->cluster_size - 1) / s->cluster_size;
        if (!tsize)
            tsize = 1;
        if (tsize > BME_MAX_TABLE_ENTRIES) {
            rc = -EFBIG;
            break;
        }
        uint8_t *bits = calloc(1, bytes + 1);
        if (!bits) {
            rc = -ENOMEM;
            break;
        }
        uint64_t keep = nbits < e->nbits ? nbits : e->nbits;
        memcpy(bits, e->bits, (keep + 7) / 8);
        if (keep % 8)
            bits[keep / 8] &= (uint8_t)((1u << (keep % 8)) - 1);
        free(e->bits);
        e->bits = bits;
        e->nbits = nbits;
        put_be32p(e->raw + 8, (uint32_t)tsize);
    }
    if (rc == 0)
        rc = dir_store(s, &d, err);
    if (rc == 0)
        rc = keep_held(s, &d);
    if (!s->bitmaps_kept)
        qcow2_bitmaps_free(s); /* taken again from the disk (qcow2_bitmaps_reload) */
    dir_free(&d);
    /* stored anew here, as QEMU's close stores them after its resize: the
     * close only clears in-use (once, not a second move) */
    if (rc == 0)
        s->bitmaps_store_anew = false;
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qcow2: could not resize the persistent bitmaps: %s", strerror(-rc));
    return rc;
}

/* After qcow2_bitmaps_resize (the node's size current, rc its result):
 * the enabled bitmaps tracked again. Lock held. */
int qcow2_bitmaps_reload(struct qcow2_state *s, int rc, struct vbd_error **err)
{
    if (!s->bitmaps_kept)
        return end_change(s, rc, err);
    /* held on by the resize: only what was written meanwhile is marked */
    s->bitmaps_kept = false;
    s->bitmaps_changing = false;
    struct vbd_bitmap_ranges *w = &s->written_in_change;
    for (size_t i = 0; i < w->n; i++)
        qcow2_bitmaps_dirty(s, w->r[i][0], w->r[i][1]);
    free(w->r);
    *w = (struct vbd_bitmap_ranges){0};
    return rc;
}

/* At the close after a read-write open (vbd-img's verbs, vbd-io, a
 * daemon's node): every consistent bitmap stored anew, as QEMU 7.2's
 * qcow2_store_persistent_dirty_bitmaps stores them at every such close,
 * so that the file ends as qemu-img's verbs and qemu-io leave it: in directory order, each bitmap's data clusters (an all-zero
 * one left unallocated) then its table at new clusters, in-use cleared;
 * then a new directory and the header naming it; only then are the old
 * directory and the old tables freed (their data clusters given back to
 * the file system). The old directory keeps its bytes: in-use, as the
 * open marked it. A crash before the header names the new directory
 * leaves the bitmaps in use (inconsistent), as a crash ever does; after
 * it, leaked clusters at most. Bitmaps in use at the open stay as they
 * are. Lock held, metadata written back. */
int qcow2_bitmaps_store_anew(struct qcow2_state *s)
{
    struct dir d;
    int rc = dir_load(s, &d);
    if (rc == 0)
        rc = take_tracked_bits(s, &d, false);
    for (uint32_t i = 0; rc == 0 && i < d.n; i++) {
        struct dir_entry *e = &d.e[i];
        uint32_t flags = get_be32p(e->raw + 12);
        if (!e->bits && !(flags & BME_IN_USE) && !(flags & BME_AUTO) && e->raw[16] == 1 && !get_be32p(e->raw + 20))
            rc = entry_bits(s, e); /* a disabled one: its bits from its clusters */
    }
    /* nothing consistent (every bitmap in use since before the open):
     * nothing written, as QEMU's store finds nothing to write */
    bool any = false;
    for (uint32_t i = 0; i < d.n; i++)
        any |= d.e[i].bits != NULL;
    struct vbd_error *err = NULL;
    if (rc == 0 && any)
        rc = dir_store(s, &d, &err);
    vbd_error_free(err);
    dir_free(&d);
    if (rc == 0)
        qcow2_bitmaps_free(s); /* stored: nothing left to store at the close */
    return rc;
}
