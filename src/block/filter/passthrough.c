/* SPDX-License-Identifier: MIT */
/* Forwarding methods shared by the filters (passthrough.h). */
#include "block/filter/passthrough.h"

void vbd_filter_inherit(struct vbd_node *n)
{
    n->size = vbd_node_size(n->file);
    n->bl = n->file->bl;
    n->supported_write_flags = n->file->supported_write_flags;
    n->supported_zero_flags = n->file->supported_zero_flags;
}

int vbd_filter_co_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                         unsigned flags)
{
    return vbd_node_co_preadv(n->file, off, bytes, q, qoff, flags);
}

int vbd_filter_co_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                          unsigned flags)
{
    return vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
}

int vbd_filter_co_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    return vbd_node_co_pdiscard(n->file, off, bytes);
}

int vbd_filter_co_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    return vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
}

int vbd_filter_co_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                               uint64_t *map, struct vbd_node **file)
{
    int rc = vbd_node_co_block_status(n->file, want_zero, off, bytes, pnum, map, file);
    if (rc >= 0 && *pnum == 0) {
        *pnum = bytes;
        return VBD_BS_ZERO;
    }
    return rc < 0 ? rc : (int)((unsigned)rc & ~VBD_BS_EOF);
}

int vbd_filter_co_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                           struct vbd_error **err)
{
    int rc = vbd_node_co_truncate(n->file, size, exact, prealloc, err);
    if (rc == 0)
        vbd_node_set_size(n, vbd_node_size(n->file));
    return rc;
}

int vbd_filter_refresh_size(struct vbd_node *n)
{
    /* as file_refresh_size: a write on another loop that grew the file
     * raises this size too (io.c, filter_grown) while the refresh runs on
     * the caller's loop; a plain store could put an older size back */
    uint64_t cur = vbd_node_size(n), now;
    while ((now = vbd_node_size(n->file)) != cur &&
           !__atomic_compare_exchange_n(&n->size, &cur, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    return 0;
}

int vbd_filter_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    (void)n, (void)rw, (void)err;
    return 0;
}
