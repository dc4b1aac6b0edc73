/* SPDX-License-Identifier: MIT */
/*
 * What a filter does where it has nothing to add (QEMU's filters use
 * bdrv_co_*(bs->file) the same way): a filter's driver table takes these
 * for the methods it does not intercept, and its own methods call the
 * forwarding ones after their work. Every filter over one child n->file
 * (throttle, blkdebug, copy-on-read, copy-before-write, quorum's no-op
 * reopen, the jobs' commit_top/mirror_top) uses them. Flush needs none:
 * vbd_node_co_flush flushes n->file after the driver's co_flush, if any.
 */
#ifndef VBD_BLOCK_FILTER_PASSTHROUGH_H
#define VBD_BLOCK_FILTER_PASSTHROUGH_H

#include "vbd/block.h"

/* At open, once n->file is set: the filter is its file to its parents
 * (size, limits, the request flags it can pass down). */
void vbd_filter_inherit(struct vbd_node *n);

int vbd_filter_co_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                         unsigned flags);
int vbd_filter_co_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                          unsigned flags);
int vbd_filter_co_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes);
int vbd_filter_co_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags);
/* The file's status; past the file's end (it shrank under the filter)
 * zeroes. Its EOF is dropped: the generic layer sets the filter's own. */
int vbd_filter_co_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                               uint64_t *map, struct vbd_node **file);
/* Resizes the file; the filter takes its new size. */
int vbd_filter_co_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                           struct vbd_error **err);
int vbd_filter_refresh_size(struct vbd_node *n);
/* A filter has no state of its own that depends on the mode: switching it
 * is switching its file (done by the caller). */
int vbd_filter_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err);

#endif
