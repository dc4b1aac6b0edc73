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

/* buf gets what backing shows at [off, off + len): zeroes past its end or without one. */
static int read_view(struct vbd_node *backing, uint64_t off, uint64_t len, uint8_t *buf, struct vbd_error **err)
{
    memset(buf, 0, len);
    if (!backing)
        return 0;
    uint64_t size = vbd_node_size(backing);
    if (off >= size)
        return 0;
    int rc = vbd_node_co_pread(backing, off, buf, off + len > size ? size - off : len);
    return rc < 0 ? imageops_io_error(err, rc, "Could not read", backing, off) : 0;
}

/* One range that node does not allocate: as qemu-img, only the 512-byte
 * sectors where the two views differ get the old data. */
static int rebase_range(struct vbd_node *node, struct vbd_node *old_backing, struct vbd_node *new_backing, uint64_t off,
                        uint64_t len, uint8_t *old_buf, uint8_t *new_buf, uint64_t *runs,
                        const struct vbd_copy_opts *o, uint64_t *written, struct vbd_error **err)
{
    int rc = read_view(old_backing, off, len, old_buf, err);
    if (rc == 0)
        rc = read_view(new_backing, off, len, new_buf, err);
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
