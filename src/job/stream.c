/* SPDX-License-Identifier: MIT */
/*
 * block-stream (QEMU's block/stream.c): copy into the top what the chain
 * between it and the base provides, while the guest runs on the top, then
 * drop those layers: the top's backing becomes the base (or nothing) and
 * its header says so. A chunk is copied with its range locked against the
 * guest's writes to the top (vbd_job_tracker), and its allocation looked
 * at again under the lock, so a guest write is never overwritten by the
 * older data from below.
 */
#include "job-internal.h"

#include "daemon/objects.h"
#include "vbd/alloc.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct stream {
    struct vbd_node *top, *base; /* references held */
    char backing_file[4096];
    bool top_was_ro;
    struct vbd_job_tracker *tracker;
    struct vbd_node *filter; /* filter-node-name's copy-on-read node, or NULL */
};

static int stream_run(struct vbd_job *job, struct vbd_error **err)
{
    struct stream *s = job->opaque;
    struct vbd_node *top = s->top;
    uint64_t len = vbd_node_size(top);
    job->ctl.total = len;
    if (top->backing == s->base)
        return 0;
    uint8_t *buf = vbd_alloc_transfer_buffer(JOB_CHUNK);
    int rc = 0, ignored = 0;
    for (uint64_t off = 0; off < len;) {
        if (vbd_job_is_cancelled(job)) {
            rc = -ECANCELED;
            break;
        }
        uint64_t n = len - off < JOB_CHUNK ? len - off : JOB_CHUNK, pnum = 0;
        vbd_job_tracker_lock(s->tracker, off, n);
        bool copy = false, zero = false;
        int st = vbd_node_co_block_status(top, false, off, n, &pnum, NULL, NULL);
        if (st >= 0 && pnum) {
            n = pnum;
            if (!(st & VBD_BS_ALLOCATED)) {
                st = vbd_node_co_block_status_above(top->backing, s->base, true, off, n, &pnum, NULL, NULL, NULL);
                if (st >= 0 && pnum) {
                    n = pnum;
                    copy = st & VBD_BS_ALLOCATED;
                    zero = st & VBD_BS_ZERO;
                } else if (st >= 0) {
                    /* past the end of a backing file shorter than top (an
                     * overlay grown after its snapshot): the rest reads as
                     * zeroes through top, nothing to copy (QEMU's stream
                     * finishes early there too) */
                    n = len - off;
                    pnum = n;
                }
            }
        }
        if (st >= 0 && !pnum)
            st = -EIO;
        if (st < 0) {
            /* a read error of the chain (the NBD server went away): the
             * job's error policy, as for the copy itself */
            vbd_job_tracker_unlock(s->tracker);
            enum vbd_error_action a = vbd_job_error_action(job, true, -st);
            if (a == VBD_ACTION_STOP) {
                vbd_job_pause_point(job);
                continue;
            }
            if (a == VBD_ACTION_REPORT) {
                rc = st;
                break;
            }
            if (!ignored)
                ignored = st;
            n = len - off < JOB_CHUNK ? len - off : JOB_CHUNK;
            off += n;
            job->ctl.current += n;
            continue;
        }
        if (copy) {
            rc = job_copy_range(job, top, top, off, n, zero, buf, &ignored);
            vbd_job_tracker_unlock(s->tracker);
            if (rc == 1) {
                rc = 0;
                vbd_job_pause_point(job);
                continue; /* the same range again */
            }
            if (rc < 0)
                break;
        } else {
            vbd_job_tracker_unlock(s->tracker);
        }
        off += n;
        job->ctl.current += n;
        vbd_job_ratelimit(job, copy ? n : 0);
    }
    vbd_free_transfer_buffer(buf, JOB_CHUNK);
    if (rc == 0 && ignored)
        rc = ignored;
    if (rc == 0)
        rc = vbd_node_co_flush(top);
    /* the job's error is strerror's, as QEMU's */
    (void)err;
    return rc;
}

/* The chain's change, with every export that reaches the top drained. */
static int stream_prepare(struct vbd_job *job, struct vbd_error **err)
{
    struct stream *s = job->opaque;
    struct vbd_node *top = s->top, *base = s->base;
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(top, &d);
    /* its bottom is about to leave the chain */
    job_filter_drop(&s->filter);
    int rc = 0;
    if (top->drv->change_backing_file) {
        const char *file = base ? (s->backing_file[0] ? s->backing_file : base->filename) : NULL;
        rc = top->drv->change_backing_file(top, file, base ? base->drv->name : NULL, err);
    }
    if (rc == 0) {
        if (base)
            vbd_node_ref(base);
        struct vbd_node *old = top->backing;
        top->backing = base;
        if (old)
            vbd_node_unref(old);
    }
    vbd_daemon_drain_end(&d);
    return rc;
}

static void release_nodes(struct stream *s)
{
    if (s->top)
        vbd_node_unref(s->top);
    if (s->base)
        vbd_node_unref(s->base);
    s->top = s->base = NULL;
}

static void stream_clean(struct vbd_job *job)
{
    struct stream *s = job->opaque;
    vbd_job_tracker_free(s->tracker);
    s->tracker = NULL;
    job_filter_co_remove(&s->filter);
    if (s->top_was_ro) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_read_only(s->top, true, &e) < 0) {
            vbd_log(VBD_LOG_WARN, "stream job '%s': %s", job->id, e ? e->msg : "could not switch back to read-only");
            vbd_error_free(e);
        }
    }
    release_nodes(s);
}

static void stream_free(struct vbd_job *job)
{
    struct stream *s = job->opaque;
    if (!s)
        return;
    vbd_job_tracker_free(s->tracker);
    job_filter_co_remove(&s->filter);
    release_nodes(s);
    free(s);
}

/* QEMU 7.2's stream_start: a backend reading through the copy-on-read
 * filter; the job holds the filter ("main node"), the top ("active node")
 * and every layer between it and the base ("intermediate node"), taking
 * nothing. Listed newest first: the bottom layer first. */
static void stream_graph_backends(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct stream *s = job->opaque;
    if (s && s->top)
        edge(opaque, NULL, "root", s->filter ? s->filter : s->top, 0x1, 0x1 | 0x2 | 0x4);
}

static void stream_intermediates(struct vbd_node *p, struct vbd_node *base, vbd_job_edge_fn *edge, void *opaque)
{
    if (!p || p == base)
        return;
    stream_intermediates(p->backing, base, edge, opaque);
    edge(opaque, NULL, "intermediate node", p, 0, 0x1 | 0x4);
}

static void stream_graph_edges(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct stream *s = job->opaque;
    if (!s || !s->top)
        return;
    stream_intermediates(s->top->backing, s->base, edge, opaque);
    if (s->filter)
        edge(opaque, NULL, "active node", s->top, 0, 0x1 | 0x2 | 0x4);
    edge(opaque, NULL, "main node", s->filter ? s->filter : s->top, 0, 0xf);
}

static bool stream_uses(struct vbd_job *job, struct vbd_node *n)
{
    struct stream *s = job->opaque;
    if (!s->top)
        return false;
    for (struct vbd_node *p = s->top; p && p != s->base; p = p->backing)
        if (p == n)
            return true;
    return false;
}

static bool stream_writes(struct vbd_job *job, struct vbd_node *n)
{
    struct stream *s = job->opaque;
    return s->top && n == s->top;
}

static const struct vbd_job_driver stream_driver = {
    .type = "stream",
    .run = stream_run,
    .prepare = stream_prepare,
    .clean = stream_clean,
    .free = stream_free,
    .uses_node = stream_uses,
    .graph_edges = stream_graph_edges,
    .graph_backends = stream_graph_backends,
    .writes_node = stream_writes,
};

struct vbd_job *vbd_stream_start(const char *job_id, struct vbd_node *top, struct vbd_node *base,
                                 const char *backing_file, const char *filter_node_name, uint64_t speed,
                                 enum vbd_on_error on_error, bool auto_finalize, bool auto_dismiss,
                                 struct vbd_qmp_error *err)
{
    /* a filter over a chain: vbd streams into the format node below it
     * (the filter's own allocation is its child's); refused before
     * anything changes */
    struct vbd_node *below = vbd_node_skip_filters(top);
    if (below != top && below->backing != base) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Node '%s' is a filter over a backing chain: name the node below it ('%s') as the device",
                           top->node_name, below->node_name);
        return NULL;
    }
    bool was_ro = top->read_only;
    if (was_ro) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_read_only(top, false, &e) < 0) {
            vbd_qmp_error_take(err, e);
            return NULL;
        }
    }
    /* QEMU's copy-on-read copies down to base's overlay (the whole chain
     * without a base), found below the filters on top (bdrv_find_overlay):
     * a filter over a format without a backing streams nothing, as in qsd.
     * A filter over a chain vbd does not stream through: refused. */
    struct vbd_node *bottom = vbd_node_skip_filters(top);
    while (bottom->backing && bottom->backing != base)
        bottom = bottom->backing;
    struct vbd_node *filter = NULL;
    struct vbd_job *job = NULL;
    /* the exports over top drained from the filter to the write hook: no
     * guest write is in flight unseen by the tracker when the job starts */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(top, &d);
    /* the filter first, then the job (QEMU's order: a bad name makes no job) */
    if (job_filter_insert(JOB_FILTER_STREAM, top, filter_node_name, bottom->node_name, &filter, err) == 0)
        job = vbd_job_create(&stream_driver, job_id, auto_finalize, auto_dismiss, speed, on_error, err);
    if (!job) {
        job_filter_co_remove(&filter);
        vbd_daemon_drain_end(&d);
        if (was_ro) {
            struct vbd_error *e = NULL;
            vbd_node_co_set_read_only(top, true, &e);
            vbd_error_free(e);
        }
        return NULL;
    }
    struct stream *s = vbd_xcalloc(1, sizeof(*s));
    vbd_node_ref(top);
    s->top = top;
    if (base)
        vbd_node_ref(base);
    s->base = base;
    s->top_was_ro = was_ro;
    if (backing_file)
        snprintf(s->backing_file, sizeof(s->backing_file), "%s", backing_file);
    s->tracker = vbd_job_tracker_new(top, 0);
    s->filter = filter;
    job->opaque = s;
    /* the image locks of the job's nodes (the top written) before its
     * first write, and no user of them that the job's use conflicts with
     * (QEMU's block_job_add_bdrv checks it as the job takes its nodes) */
    struct vbd_error *le = NULL;
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, &le) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", le->msg);
        vbd_error_free(le);
        vbd_job_early_fail(job); /* its nodes, tracker and filter go */
        vbd_daemon_drain_end(&d);
        if (was_ro) {
            struct vbd_error *e = NULL;
            vbd_node_co_set_read_only(top, true, &e);
            vbd_error_free(e);
        }
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        return NULL;
    }
    vbd_daemon_drain_end(&d);
    vbd_job_start(job);
    return job;
}
