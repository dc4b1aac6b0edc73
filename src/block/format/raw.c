/* SPDX-License-Identifier: MIT */
/* Format driver "raw": the file as the disk, optionally a window of it
 * (offset/size; ACRN's range= maps onto this). */
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct raw_state {
    uint64_t offset;
    bool has_size;
    bool probed; /* VBD_OPEN_PROBED_RAW: block 0 stays raw */
};

/* QEMU's BLOCK_PROBE_BUF_SIZE: what the restriction of a probed image looks at */
#define PROBED_BLOCK 512u

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1; /* the fallback: anything is a raw image */
}

/* The window (offset, size) on the file: QEMU 7.2's raw_apply_options,
 * at open and at a reopen. */
struct raw_window {
    uint64_t offset, size;
    bool has_size;
};

static int parse_window(struct json_object *opts, struct raw_window *w, struct vbd_error **err)
{
    int has_size;
    w->offset = w->size = 0;
    if (vbd_opt_take_size(opts, "offset", &w->offset, err) < 0 ||
        (has_size = vbd_opt_take_size(opts, "size", &w->size, err)) < 0)
        return -EINVAL;
    w->has_size = has_size > 0;
    return 0;
}

static int check_window(struct raw_window *w, uint64_t fsize, struct vbd_error **err)
{
    if (w->offset > fsize) {
        vbd_error_setf(err, EINVAL, "Offset (%llu) cannot be greater than size of the containing file (%llu)",
                       (unsigned long long)w->offset, (unsigned long long)fsize);
        return -EINVAL;
    }
    if (w->has_size) {
        if (w->size > fsize - w->offset) {
            vbd_error_setf(err, EINVAL,
                           "The sum of offset (%llu) and size (%llu) has to be smaller or equal to the  actual size "
                           "of the containing file (%llu)", /* QEMU 7.2's two spaces */
                           (unsigned long long)w->offset, (unsigned long long)w->size, (unsigned long long)fsize);
            return -EINVAL;
        }
        /* an unaligned offset QEMU takes (the file node does the RMW) */
        if (w->size % 512) {
            vbd_error_setf(err, EINVAL, "Specified size is not multiple of 512");
            return -EINVAL;
        }
    } else {
        w->size = fsize - w->offset;
    }
    return 0;
}

static void apply_window(struct vbd_node *n, const struct raw_window *w)
{
    struct raw_state *s = n->opaque;
    s->offset = w->offset;
    s->has_size = w->has_size;
    vbd_node_set_size(n, w->size);
    n->bl.request_alignment = n->file->bl.request_alignment;
    if (s->offset & (n->bl.request_alignment - 1))
        n->bl.request_alignment = 1; /* the file node does the read-modify-write */
    /* a probed image's block 0 is written whole (the generic layer
     * completes a smaller write), so raw_pwritev sees all it will hold */
    if (s->probed && n->bl.request_alignment < PROBED_BLOCK)
        n->bl.request_alignment = PROBED_BLOCK;
}

static int raw_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct raw_state *s = n->opaque;
    struct raw_window w;
    if (parse_window(opts, &w, err) < 0)
        return -EINVAL;
    s->probed = (flags & VBD_OPEN_PROBED_RAW) != 0;
    n->file = vbd_open_child(n, opts, "file", NULL, flags & ~VBD_OPEN_PROBED_RAW, err);
    if (!n->file || check_window(&w, n->file->size, err) < 0)
        return -EINVAL;
    n->bl = n->file->bl;
    apply_window(n, &w);
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->supported_write_flags = n->file->supported_write_flags;
    n->supported_zero_flags = n->file->supported_zero_flags;
    return 0;
}

static int raw_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct raw_state *s = n->opaque;
    return vbd_node_co_preadv(n->file, off + s->offset, bytes, q, qoff, flags);
}

/* QEMU's raw_co_pwritev on a probed image: block 0 written so that it
 * would probe as another format is refused with EPERM. */
static bool makes_block0_another_format(struct vbd_node *n, struct vbd_qiov *q, size_t qoff)
{
    uint8_t block0[PROBED_BLOCK];
    vbd_iov_to_buf(q->iov, q->niov, qoff, block0, sizeof(block0));
    return vbd_probe_buffer(block0, sizeof(block0), NULL) != n->drv; /* QEMU: no name, no dmg by its suffix */
}

static int raw_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct raw_state *s = n->opaque;
    if (s->probed && off < PROBED_BLOCK && bytes) {
        /* request_alignment >= PROBED_BLOCK: the write starts at 0 and covers the block */
        if (off != 0 || bytes < PROBED_BLOCK || makes_block0_another_format(n, q, qoff))
            return -EPERM;
    }
    return vbd_node_co_pwritev(n->file, off + s->offset, bytes, q, qoff, flags);
}

static int raw_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct raw_state *s = n->opaque;
    return vbd_node_co_pdiscard(n->file, off + s->offset, bytes);
}

static int raw_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct raw_state *s = n->opaque;
    return vbd_node_co_pwrite_zeroes(n->file, off + s->offset, bytes, flags);
}

static int raw_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                            uint64_t *map, struct vbd_node **file)
{
    struct raw_state *s = n->opaque;
    int rc = vbd_node_co_block_status(n->file, want_zero, off + s->offset, bytes, pnum, map, file);
    if (rc < 0)
        return rc;
    if (*pnum == 0) { /* beyond the file's end */
        *pnum = bytes;
        *map = off + s->offset;
        *file = n->file;
        return VBD_BS_ZERO | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    }
    return (rc & ~VBD_BS_EOF) | VBD_BS_ALLOCATED;
}

static int raw_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                        struct vbd_error **err)
{
    struct raw_state *s = n->opaque;
    if (s->has_size || s->offset) {
        vbd_error_setf(err, ENOTSUP, "Cannot resize a raw image with the 'offset' or 'size' option");
        return -ENOTSUP;
    }
    return vbd_node_co_truncate(n->file, size, exact, prealloc, err);
}

/* As QEMU's raw_get_info: what the protocol says (rbd: its object size
 * and image details), a plain file says nothing. */
static int raw_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct vbd_node *f = n->file;
    if (!f || f->drv->kind != VBD_DRV_PROTOCOL || !f->drv->get_info)
        return 0;
    struct vbd_image_info fi;
    int rc = vbd_node_get_info(f, &fi, err);
    if (rc < 0)
        return rc;
    info->cluster_size = fi.cluster_size;
    info->format_specific = fi.format_specific;
    return 0;
}

static const struct vbd_opt_desc raw_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"preallocation", VBD_OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)", "off"},
    {NULL, 0, NULL, NULL},
};

/* preallocation=MODE, refused in QEMU's words (its enum parse's) */
static int take_prealloc(struct json_object *opts, int *prealloc, struct vbd_error **err)
{
    char *s = NULL;
    int rc = vbd_opt_take_str(opts, "preallocation", &s, err);
    for (int i = 0; rc > 0 && vbd_prealloc_names[i]; i++)
        if (!strcmp(s, vbd_prealloc_names[i]))
            *prealloc = i;
    if (rc > 0 && strcmp(s, vbd_prealloc_names[*prealloc])) {
        vbd_error_setf(err, EINVAL, "invalid parameter value: %s", s);
        rc = -EINVAL;
    }
    free(s);
    return rc;
}

static int raw_create(const char *filename, struct vbd_node *file, struct json_object *opts,
                      struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0;
    int prealloc = 0;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || take_prealloc(opts, &prealloc, err) < 0)
        return -EINVAL;
    /* the protocol's own creation options (rbd's cluster_size), as QEMU's
     * raw create passes its options down to the protocol */
    struct json_object *cs = vbd_opt_take_obj(opts, "cluster_size");
    if (vbd_opts_check_empty(opts, "Block format 'raw'", err) < 0) {
        json_object_put(cs);
        return -EINVAL;
    }
    /* preallocation=metadata is the protocol's to refuse, as in QEMU's raw
     * create: the file protocol makes the file, leaves it empty and says
     * "Unsupported preallocation mode: metadata" */
    struct json_object *extra = NULL;
    if (cs) {
        extra = json_object_new_object();
        json_object_object_add(extra, "cluster_size", cs);
    }
    int rc = vbd_create_protocol_opts(filename, size, prealloc, file_hints, extra, err);
    json_object_put(extra);
    return rc;
}

static int raw_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                       struct vbd_error **err)
{
    uint64_t size = 0;
    char *prealloc = NULL;
    /* QEMU's raw measure does not look at the preallocation mode (any value is taken) */
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "preallocation", &prealloc, err) < 0)
        return -EINVAL;
    free(prealloc);
    /* unallocated sectors count towards the file size of a raw image */
    if (in)
        size = in->size;
    size = (size + 511) & ~511ull;
    *required = size;
    *fully_allocated = size;
    return 0;
}

static int raw_refresh_size(struct vbd_node *n)
{
    struct raw_state *s = n->opaque;
    if (!s->has_size) {
        uint64_t fsize = vbd_node_size(n->file);
        vbd_node_set_size(n, fsize > s->offset ? fsize - s->offset : 0);
    }
    return 0;
}

/* blockdev-reopen: raw keeps no state of its own; its file follows (vbd_node_co_set_read_only). */
static int raw_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    (void)n;
    (void)rw;
    (void)err;
    return 0;
}

/* blockdev-reopen: offset and size change (QEMU 7.2's raw mutable_opts),
 * left out they go back to the whole file. Checked at prepare, made with
 * every request drained. */
static int raw_reopen_prepare(struct vbd_node *n, struct json_object *opts, void **staged, struct vbd_error **err)
{
    struct raw_window *w = vbd_xcalloc(1, sizeof(*w));
    if (parse_window(opts, w, err) < 0 || check_window(w, vbd_node_size(n->file), err) < 0) {
        free(w);
        return -EINVAL;
    }
    *staged = w;
    return 0;
}

static void raw_reopen_commit(struct vbd_node *n, void *staged)
{
    apply_window(n, staged);
    free(staged);
}

static void raw_reopen_abort(struct vbd_node *n, void *staged)
{
    (void)n;
    free(staged);
}

static const struct vbd_driver raw_driver = {
    .name = "raw",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct raw_state),
    .refresh_size = raw_refresh_size,
    .caps = VBD_DRV_CAP_MULTI_LOOP | VBD_DRV_CAP_FILE_WINDOW | VBD_DRV_CAP_PROBE_FALLBACK,
    .probe = raw_probe,
    .open = raw_open,
    .co_preadv = raw_preadv,
    .co_pwritev = raw_pwritev,
    .co_pdiscard = raw_pdiscard,
    .co_pwrite_zeroes = raw_pwrite_zeroes,
    .co_block_status = raw_block_status,
    .co_truncate = raw_truncate,
    .get_info = raw_get_info,
    .create_opts = raw_create_opts,
    .co_create = raw_create,
    .measure = raw_measure,
    .reopen_rw = raw_reopen_rw,
    .reopen_prepare = raw_reopen_prepare,
    .reopen_commit = raw_reopen_commit,
    .reopen_abort = raw_reopen_abort,
};
VBD_DRIVER_REGISTER(raw, raw_driver);
