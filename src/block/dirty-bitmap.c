/* SPDX-License-Identifier: MIT */
/*
 * In-memory dirty bitmaps (vbd/dirty-bitmap.h): a flat array of bits per
 * bitmap, a list per node. One mutex for all of them: marking is a few
 * word operations and never waits for I/O while holding it.
 */
#include "vbd/dirty-bitmap.h"

#include "vbd/alloc.h"
#include "vbd/error.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vbd_dirty_bitmap {
    char *name;
    struct vbd_node *n;
    uint64_t gran, nbits;
    uint64_t *bits;
    bool disabled, busy;
    struct vbd_dirty_bitmap *next;
};

static pthread_mutex_t bm_lock = PTHREAD_MUTEX_INITIALIZER;

static bool bit(const struct vbd_dirty_bitmap *bm, uint64_t i) { return bm->bits[i / 64] >> (i % 64) & 1; }

struct vbd_dirty_bitmap *vbd_dirty_bitmap_find(struct vbd_node *n, const char *name)
{
    for (struct vbd_dirty_bitmap *b = n->dirty_bitmaps; b; b = b->next)
        if (!strcmp(b->name, name))
            return b;
    return NULL;
}

struct vbd_dirty_bitmap *vbd_dirty_bitmap_find_below(struct vbd_node *n, const char *name, struct vbd_node **owner)
{
    if (!n)
        return NULL;
    struct vbd_dirty_bitmap *b = vbd_dirty_bitmap_find(n, name);
    if (b) {
        if (owner)
            *owner = n;
        return b;
    }
    /* QEMU's bdrv_filter_or_cow_bs: a format's file node counts host
     * offsets, its bitmaps are no map of the guest's writes */
    return vbd_dirty_bitmap_find_below(n->drv->kind == VBD_DRV_FILTER ? n->file : n->backing, name, owner);
}

struct vbd_dirty_bitmap *vbd_dirty_bitmap_create(struct vbd_node *n, const char *name, uint32_t granularity, bool disabled)
{
    assert(pthread_equal(n->home_thread, pthread_self())); /* find and next walk the list unlocked there */
    if (!granularity) {
        struct vbd_image_info info = {0};
        struct vbd_node *img = vbd_node_skip_filters(n);
        granularity = 65536;
        if (img && img->drv->get_info && vbd_node_get_info(img, &info, NULL) == 0 && info.cluster_size &&
            !(info.cluster_size & (info.cluster_size - 1)))
            granularity = info.cluster_size < 4096 ? 4096 : info.cluster_size;
        json_object_put(info.format_specific);
    }
    struct vbd_dirty_bitmap *b = vbd_xcalloc(1, sizeof(*b));
    b->name = vbd_xstrdup(name);
    b->n = n;
    b->gran = granularity;
    b->nbits = (vbd_node_size(n) + granularity - 1) / granularity;
    b->bits = vbd_xcalloc((size_t)(b->nbits / 64 + 1), sizeof(uint64_t));
    b->disabled = disabled;
    pthread_mutex_lock(&bm_lock);
    b->next = n->dirty_bitmaps;
    __atomic_store_n(&n->dirty_bitmaps, b, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&bm_lock);
    return b;
}

static void bitmap_free(struct vbd_dirty_bitmap *b)
{
    free(b->name);
    free(b->bits);
    free(b);
}

void vbd_dirty_bitmap_remove(struct vbd_node *n, struct vbd_dirty_bitmap *bm)
{
    assert(pthread_equal(n->home_thread, pthread_self())); /* find and next walk the list unlocked there */
    pthread_mutex_lock(&bm_lock);
    for (struct vbd_dirty_bitmap **pp = &n->dirty_bitmaps; *pp; pp = &(*pp)->next)
        if (*pp == bm) {
            __atomic_store_n(pp, bm->next, __ATOMIC_RELEASE);
            break;
        }
    pthread_mutex_unlock(&bm_lock);
    bitmap_free(bm);
}

void vbd_dirty_bitmaps_release(struct vbd_node *n)
{
    while (n->dirty_bitmaps)
        vbd_dirty_bitmap_remove(n, n->dirty_bitmaps);
}

struct vbd_dirty_bitmap *vbd_dirty_bitmap_next(struct vbd_node *n, struct vbd_dirty_bitmap *prev)
{
    return prev ? prev->next : n->dirty_bitmaps;
}

const char *vbd_dirty_bitmap_name(const struct vbd_dirty_bitmap *bm) { return bm->name; }
uint32_t vbd_dirty_bitmap_granularity(const struct vbd_dirty_bitmap *bm) { return (uint32_t)bm->gran; }
bool vbd_dirty_bitmap_enabled(const struct vbd_dirty_bitmap *bm) { return !bm->disabled; }
bool vbd_dirty_bitmap_busy(const struct vbd_dirty_bitmap *bm) { return bm->busy; }
void vbd_dirty_bitmap_set_busy(struct vbd_dirty_bitmap *bm, bool busy) { bm->busy = busy; }

void vbd_dirty_bitmap_set_enabled(struct vbd_dirty_bitmap *bm, bool enabled)
{
    pthread_mutex_lock(&bm_lock);
    bm->disabled = !enabled;
    pthread_mutex_unlock(&bm_lock);
}

static void set_range(struct vbd_dirty_bitmap *b, uint64_t off, uint64_t bytes, bool v)
{
    if (!bytes || !b->nbits)
        return;
    uint64_t first = off / b->gran, last = (off + bytes - 1) / b->gran;
    if (last >= b->nbits)
        last = b->nbits - 1;
    for (uint64_t i = first; i <= last; i++) {
        if (!(i % 64) && i + 63 <= last) {
            b->bits[i / 64] = v ? ~0ull : 0;
            i += 63;
            continue;
        }
        if (v)
            b->bits[i / 64] |= 1ull << (i % 64);
        else
            b->bits[i / 64] &= ~(1ull << (i % 64));
    }
}

void vbd_dirty_bitmap_set(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes)
{
    pthread_mutex_lock(&bm_lock);
    set_range(bm, off, bytes, true);
    pthread_mutex_unlock(&bm_lock);
}

/* Only whole granules become clean (QEMU's bdrv_reset_dirty_bitmap asks
 * for aligned ranges; the end of the image counts as aligned). */
void vbd_dirty_bitmap_reset(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes)
{
    uint64_t start = (off + bm->gran - 1) / bm->gran * bm->gran, end = off + bytes;
    if (end < bm->nbits * bm->gran && end < vbd_node_size(bm->n))
        end = end / bm->gran * bm->gran;
    if (end <= start)
        return;
    pthread_mutex_lock(&bm_lock);
    set_range(bm, start, end - start, false);
    pthread_mutex_unlock(&bm_lock);
}

void vbd_dirty_bitmap_clear(struct vbd_dirty_bitmap *bm)
{
    pthread_mutex_lock(&bm_lock);
    memset(bm->bits, 0, (size_t)(bm->nbits / 64 + 1) * sizeof(uint64_t));
    pthread_mutex_unlock(&bm_lock);
}

uint64_t vbd_dirty_bitmap_count(struct vbd_dirty_bitmap *bm)
{
    uint64_t c = 0;
    pthread_mutex_lock(&bm_lock);
    for (uint64_t i = 0; i < bm->nbits / 64 + 1; i++)
        c += (uint64_t)__builtin_popcountll(bm->bits[i]);
    pthread_mutex_unlock(&bm_lock);
    uint64_t bytes = c * bm->gran, size = vbd_node_size(bm->n);
    if (c && bm->nbits && bit(bm, bm->nbits - 1))
        bytes -= bm->nbits * bm->gran - size; /* the last granule is partial */
    return bytes;
}

int vbd_dirty_bitmap_status(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
    uint64_t size = vbd_node_size(bm->n);
    if (off >= size || !bytes) {
        *pnum = bytes;
        return 0;
    }
    if (bytes > size - off)
        bytes = size - off;
    pthread_mutex_lock(&bm_lock);
    uint64_t i = off / bm->gran;
    bool v = i < bm->nbits && bit(bm, i);
    uint64_t end = (i + 1) * bm->gran;
    while (end < off + bytes && end / bm->gran < bm->nbits && bit(bm, end / bm->gran) == v)
        end += bm->gran;
    pthread_mutex_unlock(&bm_lock);
    *pnum = (end < off + bytes ? end : off + bytes) - off;
    return v;
}

/* n's size became `size`: each bitmap covers it, as QEMU's
 * bdrv_dirty_bitmap_truncate: the granules past the old end start clean,
 * those past the new end go. Without it a write past the old end of a grown
 * node marked nothing and an incremental backup missed it. */
void vbd_dirty_bitmaps_truncate(struct vbd_node *n, uint64_t size)
{
    if (!vbd_node_has_dirty_bitmaps(n))
        return;
    pthread_mutex_lock(&bm_lock);
    for (struct vbd_dirty_bitmap *b = n->dirty_bitmaps; b; b = b->next) {
        uint64_t nbits = (size + b->gran - 1) / b->gran, keep = nbits < b->nbits ? nbits : b->nbits;
        size_t old_words = (size_t)(b->nbits / 64 + 1), words = (size_t)(nbits / 64 + 1);
        if (words != old_words) {
            b->bits = vbd_xrealloc(b->bits, words * sizeof(uint64_t));
            if (words > old_words)
                memset(b->bits + old_words, 0, (words - old_words) * sizeof(uint64_t));
        }
        /* the words past `keep` are clear whatever they held */
        if (keep % 64)
            b->bits[keep / 64] &= (1ull << (keep % 64)) - 1;
        else
            b->bits[keep / 64] = 0;
        for (size_t w = (size_t)(keep / 64 + 1); w < words; w++)
            b->bits[w] = 0;
        b->nbits = nbits;
    }
    pthread_mutex_unlock(&bm_lock);
}

void vbd_dirty_bitmaps_mark(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    pthread_mutex_lock(&bm_lock);
    for (struct vbd_dirty_bitmap *b = n->dirty_bitmaps; b; b = b->next)
        if (!b->disabled)
            set_range(b, off, bytes, true);
    pthread_mutex_unlock(&bm_lock);
}

int vbd_dirty_bitmap_change(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_error **err)
{
    struct vbd_dirty_bitmap *b = vbd_dirty_bitmap_find(n, op->name);
    if (op->action == VBD_BITMAP_ADD) {
        if (b) {
            vbd_error_setf(err, EEXIST, "Bitmap already exists: %s", op->name);
            return -EEXIST;
        }
        vbd_dirty_bitmap_create(n, op->name, op->granularity, op->disabled);
        return 0;
    }
    if (!b) {
        vbd_error_setf(err, ENOENT, "Dirty bitmap '%s' not found", op->name);
        return -ENOENT;
    }
    switch (op->action) {
    case VBD_BITMAP_REMOVE:
        vbd_dirty_bitmap_remove(n, b);
        break;
    case VBD_BITMAP_CLEAR:
        vbd_dirty_bitmap_clear(b);
        break;
    case VBD_BITMAP_ENABLE:
    case VBD_BITMAP_DISABLE:
        vbd_dirty_bitmap_set_enabled(b, op->action == VBD_BITMAP_ENABLE);
        break;
    case VBD_BITMAP_MERGE:
        for (size_t i = 0; i < op->nranges; i++)
            vbd_dirty_bitmap_set(b, op->ranges[i][0], op->ranges[i][1]);
        break;
    default:
        break;
    }
    return 0;
}

void vbd_bitmap_ranges_add(struct vbd_bitmap_ranges *rs, uint64_t off, uint64_t len)
{
    if (rs->n && rs->r[rs->n - 1][0] + rs->r[rs->n - 1][1] == off) {
        rs->r[rs->n - 1][1] += len;
        return;
    }
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? 2 * rs->cap : 16;
        rs->r = vbd_xrealloc(rs->r, rs->cap * sizeof(*rs->r));
    }
    rs->r[rs->n][0] = off;
    rs->r[rs->n++][1] = len;
}
