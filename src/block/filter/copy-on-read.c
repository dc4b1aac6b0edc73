/* SPDX-License-Identifier: MIT */
/*
 * Filter driver "copy-on-read" (QEMU's block/copy-on-read.c): data a read
 * finds in the backing chain of its file (down to and including `bottom`,
 * when given) is written into the file's top layer as part of the read, so
 * the next read finds it there. Whole clusters of the top layer are copied;
 * a range the backing reads as zeroes is written as zeroes. Without a
 * bottom, so is a range that no layer of the chain defines (QEMU 7.2's
 * copy-on-read copies whatever the top layer does not allocate: qemu-img
 * map then shows it as zero in the top); with one, a range no layer down
 * to the bottom defines is only read.
 *
 * Serialisation, as QEMU's serialising requests: every request through the
 * filter holds its cluster-aligned range while it runs, so a guest write
 * into a cluster being copied waits until the copy is written (and the copy
 * never overwrites newer data), and a copy waits for writes in flight. The
 * chain under it has a format with a backing file, which is single-loop:
 * the filter runs on the home loop only and coroutine queues suffice.
 */
#include "block/filter/passthrough.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COR_MAX_CHUNK (1u << 20) /* bounce buffer per copy step */

struct range {
    uint64_t start, end;
    struct range *next;
};

struct cor_state {
    struct vbd_node *base; /* data at and below it is not copied (NULL: whole chain) */
    bool bottom;           /* a bottom was given: what no layer above base defines is not copied */
    uint64_t cluster;
    struct range *ranges;  /* requests in flight */
    struct vbd_co_queue waiters;
};

static void range_lock(struct cor_state *s, struct range *r, uint64_t off, uint64_t bytes)
{
    r->start = off & ~(s->cluster - 1);
    r->end = (off + bytes + s->cluster - 1) & ~(s->cluster - 1);
    for (;;) {
        bool busy = false;
        for (struct range *o = s->ranges; o && !busy; o = o->next)
            busy = o->start < r->end && r->start < o->end;
        if (!busy)
            break;
        vbd_co_queue_wait(&s->waiters);
    }
    r->next = s->ranges;
    s->ranges = r;
}

static void range_unlock(struct cor_state *s, struct range *r)
{
    for (struct range **p = &s->ranges; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    vbd_co_queue_wake_all(&s->waiters);
}

static int cor_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct cor_state *s = n->opaque;
    char *bottom = NULL;
    if (vbd_opt_take_str(opts, "bottom", &bottom, err) < 0)
        return -EINVAL;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file) {
        free(bottom);
        return -EINVAL;
    }
    if (bottom) {
        /* QEMU 7.2 refuses a missing bottom and a filter with these words;
         * a bottom outside the chain it takes and then spins forever
         * freezing the chain (its walk never meets the bottom), so there is
         * no QEMU wording to match: vbd refuses it. */
        struct vbd_node *b = vbd_node_find(bottom), *m = vbd_node_skip_filters(n->file);
        if (!b) {
            vbd_error_setf(err, ENOENT, "Bottom node '%s' not found", bottom);
            free(bottom);
            return -ENOENT;
        }
        if (b->drv->kind == VBD_DRV_FILTER) {
            vbd_error_setf(err, EINVAL, "Bottom node '%s' is a filter", bottom);
            free(bottom);
            return -EINVAL;
        }
        while (m && m != b)
            m = m->backing ? vbd_node_skip_filters(m->backing) : NULL;
        if (!m) {
            vbd_error_setf(err, EINVAL, "Bottom node '%s' is not in the backing chain of '%s'", bottom,
                           n->file->node_name);
            free(bottom);
            return -EINVAL;
        }
        s->base = vbd_node_skip_filters(b)->backing;
        s->bottom = true;
        free(bottom);
    }
    s->cluster = 65536;
    struct vbd_image_info info = {0};
    struct vbd_node *fmt = vbd_node_skip_filters(n->file);
    if (fmt->drv->get_info && vbd_node_get_info(fmt, &info, NULL) == 0 && info.cluster_size &&
        !(info.cluster_size & (info.cluster_size - 1)))
        s->cluster = info.cluster_size;
    json_object_put(info.format_specific);
    vbd_filter_inherit(n);
    return 0;
}

/* Copy [pos, pos+len) from the chain into the top layer; the part that
 * overlaps the request [off, off+bytes) goes into q too. */
static int copy_chunk(struct vbd_node *n, uint64_t pos, uint64_t len, bool zero, uint64_t off, uint64_t bytes,
                      struct vbd_qiov *q, size_t qoff)
{
    uint64_t lo = pos > off ? pos : off, hi = pos + len < off + bytes ? pos + len : off + bytes;
    if (zero) {
        int rc = vbd_node_co_pwrite_zeroes(n->file, pos, len, 0);
        if (rc == 0 && hi > lo)
            vbd_iov_memset(q->iov, q->niov, qoff + (lo - off), 0, hi - lo);
        return rc;
    }
    void *buf = NULL;
    size_t align = n->file->bl.min_mem_alignment > 4096 ? n->file->bl.min_mem_alignment : 4096;
    if (posix_memalign(&buf, align, len))
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, pos, buf, len);
    if (rc == 0)
        rc = vbd_node_co_pwrite(n->file, pos, buf, len, 0);
    if (rc == 0 && hi > lo)
        vbd_iov_from_buf(q->iov, q->niov, qoff + (lo - off), (uint8_t *)buf + (lo - pos), hi - lo);
    free(buf);
    return rc;
}

static int cor_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct cor_state *s = n->opaque;
    if (n->read_only) /* nowhere to copy to */
        return vbd_node_co_preadv(n->file, off, bytes, q, qoff, flags);
    struct range r;
    range_lock(s, &r, off, bytes);
    uint64_t size = vbd_node_size(n->file), end = r.end < size ? r.end : size;
    int rc = 0;
    for (uint64_t pos = r.start; pos < end && rc == 0;) {
        uint64_t pnum = 0;
        int depth = 0;
        uint64_t want = end - pos < COR_MAX_CHUNK ? end - pos : COR_MAX_CHUNK;
        rc = vbd_node_co_block_status_above(n->file, s->base, true, pos, want, &pnum, NULL, NULL, &depth);
        if (rc < 0)
            break;
        if (pnum == 0 || pnum > want)
            pnum = want;
        if ((rc & VBD_BS_ALLOCATED) ? depth > 0 : !s->bottom) {
            /* from below the top, or (no bottom) from no layer: zeroes */
            rc = copy_chunk(n, pos, pnum, (rc & VBD_BS_ZERO) || !(rc & VBD_BS_ALLOCATED), off, bytes, q, qoff);
        } else {
            /* in the top layer already, or defined by no layer above the bottom: a plain read */
            uint64_t lo = pos > off ? pos : off, hi = pos + pnum < off + bytes ? pos + pnum : off + bytes;
            rc = hi > lo ? vbd_node_co_preadv(n->file, lo, hi - lo, q, qoff + (lo - off), flags) : 0;
        }
        pos += pnum;
    }
    range_unlock(s, &r);
    return rc < 0 ? rc : 0;
}

static int cor_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct cor_state *s = n->opaque;
    struct range r;
    range_lock(s, &r, off, bytes);
    int rc = vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
    range_unlock(s, &r);
    return rc;
}

static int cor_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct cor_state *s = n->opaque;
    struct range r;
    range_lock(s, &r, off, bytes);
    int rc = vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
    range_unlock(s, &r);
    return rc;
}

static int cor_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct cor_state *s = n->opaque;
    struct range r;
    range_lock(s, &r, off, bytes);
    int rc = vbd_node_co_pdiscard(n->file, off, bytes);
    range_unlock(s, &r);
    return rc;
}

static const struct vbd_driver cor_driver = {
    .name = "copy-on-read",
    .kind = VBD_DRV_FILTER,
    .state_size = sizeof(struct cor_state),
    .open = cor_open,
    .co_preadv = cor_preadv,
    .co_pwritev = cor_pwritev,
    .co_pdiscard = cor_pdiscard,
    .co_pwrite_zeroes = cor_pwrite_zeroes,
    .co_block_status = vbd_filter_co_block_status,
    .co_truncate = vbd_filter_co_truncate, /* block_resize goes through, as QEMU's cor_co_truncate */
    .refresh_size = vbd_filter_refresh_size,
    .reopen_rw = vbd_filter_reopen_rw,
};
VBD_DRIVER_REGISTER(copy_on_read, cor_driver);
