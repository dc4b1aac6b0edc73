/* SPDX-License-Identifier: MIT */
/*
 * imageops: the data part of a safe rebase.
 */
#include "imageops-internal.h"

#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Do a and b differ in their first 512-byte sector; *run: how far that stays so, in whole sectors. */
static bool sector_run(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t *run)
{
    uint64_t i = len < 512 ? len : 512;
    bool differ = memcmp(a, b, i) != 0;
    while (i < len) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if ((memcmp(a + i, b + i, l) != 0) != differ)
            break;
        i += l;
    }
    *run = i;
    return differ;
}

/* buf gets what backing shows at [off, off + len): zeroes past its end or
 * without one. flags: the read's (vbd_copy_opts.read_flags). */
static int read_view(struct vbd_node *backing, uint64_t off, uint64_t len, uint8_t *buf, unsigned flags,
                     struct vbd_error **err)
{
    uint64_t size = backing ? vbd_node_size(backing) : 0, got = off >= size ? 0 : size - off < len ? size - off : len;
    /* only what is not read is cleared: a 2 MiB memset per view and chunk
     * was a sixth of a tmpfs rebase's CPU time */
    memset(buf + got, 0, len - got);
    if (!got)
        return 0;
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, got);
    int rc = vbd_node_co_preadv(backing, off, got, &q, 0, flags & VBD_REQ_INLINE);
    return rc < 0 ? imageops_io_error(err, rc, "Could not read", backing, off) : 0;
}

/* Does the view of backing read as zeroes at off (known from its block
 * status, without reading)? *pnum: how far that answer holds, at most len. */
static int view_zero(struct vbd_node *backing, uint64_t off, uint64_t len, uint64_t *pnum, struct vbd_error **err)
{
    *pnum = len;
    if (!backing || off >= vbd_node_size(backing))
        return 1;
    int st = vbd_node_co_block_status_above(backing, NULL, true, off, len, pnum, NULL, NULL, NULL);
    if (st < 0)
        return imageops_io_error(err, st, "Could not read the allocation status of", backing, off);
    if (*pnum == 0 || *pnum > len)
        *pnum = len;
    return (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED) ? 1 : 0;
}

/* Do both views read as zeroes at off? *pnum: how far that answer holds. */
static int both_zero(struct vbd_node *old_backing, struct vbd_node *new_backing, uint64_t off, uint64_t len,
                     uint64_t *pnum, struct vbd_error **err)
{
    uint64_t po, pn;
    int zo = view_zero(old_backing, off, len, &po, err);
    if (zo < 0)
        return zo;
    int zn = view_zero(new_backing, off, len, &pn, err);
    if (zn < 0)
        return zn;
    if (zo && zn) {
        *pnum = po < pn ? po : pn;
        return 1;
    }
    /* not both zero as far as the one that is not zero says so */
    *pnum = !zo && !zn ? (po < pn ? po : pn) : !zo ? po : pn;
    return 0;
}

/* The sectors of [off, off + len) where the two views (read into the
 * buffers) differ get the old data. */
static int rebase_compare_write(struct vbd_node *node, struct vbd_node *old_backing, struct vbd_node *new_backing,
                                uint64_t off, uint64_t len, uint8_t *old_buf, uint8_t *new_buf, uint64_t *runs,
                                const struct vbd_copy_opts *o, uint64_t *written, struct vbd_error **err)
{
    int rc = read_view(old_backing, off, len, old_buf, o->read_flags, err);
    if (rc == 0)
        rc = read_view(new_backing, off, len, new_buf, o->read_flags, err);
    for (uint64_t pos = 0; pos < len && rc == 0;) {
        uint64_t run;
        if (sector_run(old_buf + pos, new_buf + pos, len - pos, &run)) {
            rc = imageops_write(node, off + pos, run, old_buf + pos, runs, o, err);
            *written += run;
        }
        pos += run;
    }
    return rc;
}

/* One range that node does not allocate: as qemu-img, only the 512-byte
 * sectors where the two views differ get the old data. Where both views
 * read as zeroes by their block status (holes of both backing chains,
 * zero clusters, past their ends) nothing can differ: not read. */
static int rebase_range(struct vbd_node *node, struct vbd_node *old_backing, struct vbd_node *new_backing, uint64_t off,
                        uint64_t len, uint8_t *old_buf, uint8_t *new_buf, uint64_t *runs,
                        const struct vbd_copy_opts *o, uint64_t *written, struct vbd_error **err)
{
    uint64_t pos = 0;
    while (pos < len) {
        uint64_t n;
        int z = both_zero(old_backing, new_backing, off + pos, len - pos, &n, err);
        if (z < 0)
            return z;
        if (z) {
            pos += n;
            continue;
        }
        /* the ranges up to the next one both read as zeroes are read as one */
        uint64_t end = pos + n, zn = 0;
        while (end < len) {
            z = both_zero(old_backing, new_backing, off + end, len - end, &zn, err);
            if (z < 0)
                return z;
            if (z)
                break;
            end += zn;
            zn = 0;
        }
        int rc = rebase_compare_write(node, old_backing, new_backing, off + pos, end - pos, old_buf + pos,
                                      new_buf + pos, runs, o, written, err);
        if (rc < 0)
            return rc;
        pos = end + zn; /* the zero range found after it is skipped too */
    }
    return 0;
}

int vbd_co_rebase_safe(struct vbd_node *node, struct vbd_node *old_backing, struct vbd_node *new_backing,
                       const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    struct vbd_copy_opts o;
    int rc = imageops_opts(opts, &o, err);
    if (rc < 0)
        return rc;
    uint64_t size = vbd_node_size(node);
    imageops_add_total(ctl, size);
    uint8_t *old_buf = vbd_alloc_aligned(4096, o.chunk_size);
    uint8_t *new_buf = vbd_alloc_aligned(4096, o.chunk_size);
    uint64_t *runs = imageops_runs_new(&o);
    for (uint64_t off = 0; off < size && rc == 0;) {
        uint64_t pnum = 0, written = 0;
        if ((rc = imageops_check_cancel(ctl, node, off, err)) < 0)
            break;
        int st = vbd_node_co_block_status(node, false, off, size - off, &pnum, NULL, NULL);
        if (st < 0 || pnum == 0) {
            rc = imageops_io_error(err, st < 0 ? st : -EIO, "Could not read the allocation status of", node, off);
            break;
        }
        if (pnum > o.chunk_size)
            pnum = o.chunk_size;
        if (!(st & VBD_BS_ALLOCATED))
            rc = rebase_range(node, old_backing, new_backing, off, pnum, old_buf, new_buf, runs, &o, &written, err);
        if (rc == 0)
            rc = imageops_advance(ctl, node, off, o.progress_data_only && (st & VBD_BS_ALLOCATED) ? 0 : pnum, written,
                                  err);
        off += pnum;
    }
    free(runs);
    free(old_buf);
    free(new_buf);
    return rc;
}
