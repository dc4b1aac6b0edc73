/* SPDX-License-Identifier: MIT */
/*
 * imageops: commit the layers of a backing chain into its base.
 */
#include "imageops-internal.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* One range [off, off + *step) of the top: the topmost layer that allocates
 * it decides; *step shrinks to what has the same status in every layer
 * looked at. */
static int commit_extent(struct vbd_node *const *layers, int nlayers, struct vbd_node *base, uint64_t off,
                         uint64_t *step, uint8_t *buf, uint64_t *runs, const struct vbd_copy_opts *o,
                         struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    for (int i = 0; i < nlayers; i++) {
        struct vbd_node *l = layers[i];
        uint64_t lsize = vbd_node_size(l);
        if (off >= lsize)
            continue;
        uint64_t pnum = 0;
        int st = vbd_node_co_block_status(l, false, off, *step < lsize - off ? *step : lsize - off, &pnum, NULL, NULL);
        if (st < 0 || pnum == 0)
            return imageops_io_error(err, st < 0 ? st : -EIO, "Could not read the allocation status of", l, off);
        if (pnum < *step)
            *step = pnum;
        if (!(st & VBD_BS_ALLOCATED))
            continue;
        if (!(st & VBD_BS_ZERO))
            return imageops_copy(l, base, off, *step, buf, runs, o, ctl, err);
        int rc = imageops_write_zeroes(base, off, *step, o, err);
        return rc < 0 ? rc : imageops_advance(ctl, base, off, *step, *step, err);
    }
    /* no layer above base defines it: base's own content stays */
    return imageops_advance(ctl, base, off, *step, 0, err);
}

int vbd_co_commit_layers(struct vbd_node *const *layers, int nlayers, struct vbd_node *base,
                         const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    struct vbd_copy_opts o;
    int rc = imageops_opts(opts, &o, err);
    if (rc < 0)
        return rc;
    if (nlayers < 1) {
        vbd_error_setf(err, EINVAL, "Nothing to commit into '%s'", imageops_node_label(base));
        return -EINVAL;
    }
    uint64_t size = vbd_node_size(layers[0]);
    if (vbd_node_size(base) < size && (rc = vbd_node_co_truncate(base, size, false, VBD_PREALLOC_OFF, err)) < 0)
        return rc;
    imageops_add_total(ctl, size);
    uint8_t *buf = vbd_alloc_aligned(4096, o.chunk_size);
    uint64_t *runs = imageops_runs_new(&o);
    for (uint64_t off = 0; off < size && rc == 0;) {
        uint64_t step = size - off;
        rc = imageops_check_cancel(ctl, base, off, err);
        if (rc == 0)
            rc = commit_extent(layers, nlayers, base, off, &step, buf, runs, &o, ctl, err);
        off += step;
    }
    free(runs);
    free(buf);
    return rc;
}

int vbd_co_commit(struct vbd_node *top, struct vbd_node *base, const struct vbd_copy_opts *opts,
                  struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    int nlayers = 0;
    for (struct vbd_node *n = top; n != base; n = n->backing) {
        if (!n) {
            vbd_error_setf(err, EINVAL, "'%s' is not in the backing chain of '%s'", imageops_node_label(base),
                           imageops_node_label(top));
            return -EINVAL;
        }
        nlayers++;
    }
    struct vbd_node **layers = vbd_xcalloc(nlayers ? nlayers : 1, sizeof(*layers));
    int i = 0;
    for (struct vbd_node *n = top; n != base; n = n->backing)
        layers[i++] = n;
    int rc = vbd_co_commit_layers(layers, nlayers, base, opts, ctl, err);
    free(layers);
    return rc;
}
