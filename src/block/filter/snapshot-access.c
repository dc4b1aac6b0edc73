/* SPDX-License-Identifier: MIT */
/*
 * Driver "snapshot-access" (QEMU 7.2's block/snapshot-access.c): the
 * point-in-time image a copy-before-write node (its file) keeps, read-only:
 * what was copied comes from the target, the rest from the source (held
 * against the guest's writes while it is read). Exported over NBD it is
 * image fleecing. Every range reports as data: the source's status may
 * already describe newer data than the image's.
 */
#include "vbd/block.h"
#include "vbd/cbw.h"
#include "vbd/error.h"

#include <errno.h>

static int sa_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    n->file = vbd_open_child(n, opts, "file", NULL, flags & ~VBD_OPEN_RDWR, err);
    if (!n->file)
        return -EINVAL;
    if (!vbd_cbw_of_node(n->file)) {
        vbd_error_setf(err, EINVAL, "snapshot-access: file '%s' is not a copy-before-write node", n->file->node_name);
        return -EINVAL;
    }
    n->read_only = true;
    n->size = vbd_node_size(n->file);
    n->bl = n->file->bl;
    return 0;
}

static int sa_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    (void)flags;
    return vbd_cbw_co_snapshot_read(vbd_cbw_of_node(n->file), off, bytes, q, qoff);
}

static int sa_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                           uint64_t *map, struct vbd_node **file)
{
    (void)n, (void)want_zero, (void)off, (void)map, (void)file;
    *pnum = bytes;
    return VBD_BS_DATA | VBD_BS_ALLOCATED;
}

static const struct vbd_driver sa_driver = {
    .name = "snapshot-access",
    .kind = VBD_DRV_FORMAT,
    .open = sa_open,
    .co_preadv = sa_preadv,
    .co_block_status = sa_block_status,
};
VBD_DRIVER_REGISTER(snapshot_access, sa_driver);
