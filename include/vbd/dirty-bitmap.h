/* SPDX-License-Identifier: MIT */
#ifndef VBD_DIRTY_BITMAP_H
#define VBD_DIRTY_BITMAP_H

/*
 * Dirty bitmaps that live only in memory (QEMU's block-dirty-bitmap-add
 * with persistent=false): one bit per `granularity` bytes of a node, set
 * by every write, zeroing and discard that enters the node (io.c) while
 * the bitmap is enabled. They go away with the node or the daemon. A
 * persistent (qcow2) bitmap is the driver's; QMP treats both alike through
 * vbd_node_co_bitmap_status and the change operations below.
 *
 * The bits are guarded by one mutex: writes mark from any loop; QMP and
 * the jobs read and change them on the main loop. A node's list is walked
 * without the lock (find, next) on the node's graph thread, so bitmaps are
 * created and removed only there (asserted).
 */
#include <stdbool.h>
#include <stdint.h>

#include "vbd/block.h"

struct vbd_dirty_bitmap;

struct vbd_dirty_bitmap *vbd_dirty_bitmap_find(struct vbd_node *n, const char *name);
/* The bitmap `name` on n or below it (a filter's child, a format's backing
 * file: QEMU's bdrv_filter_or_cow_bs), as an NBD export looks it up;
 * *owner gets its node. */
struct vbd_dirty_bitmap *vbd_dirty_bitmap_find_below(struct vbd_node *n, const char *name, struct vbd_node **owner);
/* granularity 0: QEMU's default (the image's cluster size, at least 4 KiB; else 64 KiB). */
struct vbd_dirty_bitmap *vbd_dirty_bitmap_create(struct vbd_node *n, const char *name, uint32_t granularity, bool disabled);
void vbd_dirty_bitmap_remove(struct vbd_node *n, struct vbd_dirty_bitmap *bm);
/* A node going away: all of its bitmaps. */
void vbd_dirty_bitmaps_release(struct vbd_node *n);

/* n's bitmaps, newest first: pass NULL first (main loop). */
struct vbd_dirty_bitmap *vbd_dirty_bitmap_next(struct vbd_node *n, struct vbd_dirty_bitmap *prev);
const char *vbd_dirty_bitmap_name(const struct vbd_dirty_bitmap *bm);
uint32_t vbd_dirty_bitmap_granularity(const struct vbd_dirty_bitmap *bm);
bool vbd_dirty_bitmap_enabled(const struct vbd_dirty_bitmap *bm);
void vbd_dirty_bitmap_set_enabled(struct vbd_dirty_bitmap *bm, bool enabled);
/* A job uses it (backup sync=bitmap): QMP refuses to change it. */
bool vbd_dirty_bitmap_busy(const struct vbd_dirty_bitmap *bm);
void vbd_dirty_bitmap_set_busy(struct vbd_dirty_bitmap *bm, bool busy);
uint64_t vbd_dirty_bitmap_count(struct vbd_dirty_bitmap *bm); /* dirty bytes */

void vbd_dirty_bitmap_set(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes);
void vbd_dirty_bitmap_reset(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes);
void vbd_dirty_bitmap_clear(struct vbd_dirty_bitmap *bm);
/* 1 if [off, ..) starts dirty, 0 if clean; *pnum bytes alike (<= bytes). */
int vbd_dirty_bitmap_status(struct vbd_dirty_bitmap *bm, uint64_t off, uint64_t bytes, uint64_t *pnum);

/* Dirty (offset, length) ranges in the order they were added: a bitmap's
 * contents as QMP merges, undoes and backs them up (vbd_bitmap_op's MERGE
 * ranges), or writes remembered to be marked later. Free r when done. */
struct vbd_bitmap_ranges {
    uint64_t (*r)[2];
    size_t n, cap;
};
/* Appends [off, off + len); one starting where the last ends extends it. */
void vbd_bitmap_ranges_add(struct vbd_bitmap_ranges *rs, uint64_t off, uint64_t len);

/* The persistent-bitmap operations (vbd_bitmap_op) on n's in-memory bitmaps. */
int vbd_dirty_bitmap_change(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_error **err);

/* io.c: n's size changed (truncate, or a refresh after its child's). */
void vbd_dirty_bitmaps_truncate(struct vbd_node *n, uint64_t size);
/* io.c: a write, zeroing or discard of [off, off + bytes) entered n. */
void vbd_dirty_bitmaps_mark(struct vbd_node *n, uint64_t off, uint64_t bytes);
static inline bool vbd_node_has_dirty_bitmaps(struct vbd_node *n)
{
    return __atomic_load_n(&n->dirty_bitmaps, __ATOMIC_ACQUIRE) != NULL;
}

#endif
