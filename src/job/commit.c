/* SPDX-License-Identifier: MIT */
/*
 * block-commit (QEMU's block/commit.c and the active commit of
 * block/mirror.c): what the layers from top down to base's overlay define
 * is written into base.
 *
 * Intermediate (top below the active layer): nothing writes to the layers
 * committed, so one pass suffices; at the end the overlay above top is
 * re-pointed to base (its header too) and the layers drop out.
 *
 * Active (top is what the exports write to): mirror.c's loop (as QEMU
 * runs it as a mirror job) copies top..above base into base, then the
 * chunks the guest dirties, until none is left (READY), and keeps doing so;
 * job-complete ends it: with the exports drained the last dirty chunks are
 * copied and the exports are switched to base, so no request is lost and
 * base holds every byte the guest wrote.
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

struct commit {
    struct vbd_node *top, *base, *overlay; /* references held; overlay NULL when active */
    bool active;
    char backing_file[4096];
    bool base_was_ro;
    bool pivoted;
    struct job_mirror *mirror; /* active */
    struct vbd_node *filter;   /* filter-node-name's commit_top / mirror_top, or NULL */
    uint8_t *buf;
    int ignored;
};


/* One pass over everything top..above base defines. */
static int commit_pass(struct vbd_job *job)
{
    struct commit *c = job->opaque;
    uint64_t len = vbd_node_size(c->top);
    for (uint64_t off = 0; off < len;) {
        if (vbd_job_is_cancelled(job))
            return -ECANCELED;
        uint64_t n = len - off < JOB_CHUNK ? len - off : JOB_CHUNK, pnum = 0;
        int st = vbd_node_co_block_status_above(c->top, c->base, true, off, n, &pnum, NULL, NULL, NULL);
        if (st >= 0 && !pnum)
            st = -EIO;
        if (st < 0) {
            enum vbd_error_action a = vbd_job_error_action(job, true, -st);
            if (a == VBD_ACTION_STOP) {
                vbd_job_pause_point(job);
                continue;
            }
            if (a == VBD_ACTION_REPORT)
                return st;
            if (!c->ignored)
                c->ignored = st;
            off += n;
            job->ctl.current += n;
            continue;
        }
        n = pnum;
        bool copy = st & VBD_BS_ALLOCATED;
        if (copy) {
            int rc = job_copy_range(job, c->top, c->base, off, n, st & VBD_BS_ZERO, c->buf, &c->ignored);
            if (rc == 1) {
                vbd_job_pause_point(job);
                continue;
            }
            if (rc < 0)
                return rc;
        }
        off += n;
        job->ctl.current += n;
        vbd_job_ratelimit(job, copy ? n : 0);
    }
    return 0;
}

static int commit_run(struct vbd_job *job, struct vbd_error **err)
{
    struct commit *c = job->opaque;
    uint64_t len = vbd_node_size(c->top);
    job->ctl.total = len;
    if (vbd_node_size(c->base) < len) {
        int rc = vbd_node_co_truncate(c->base, len, false, VBD_PREALLOC_OFF, err);
        if (rc < 0)
            return rc;
    }
    if (c->active)
        return job_mirror_run(c->mirror);
    c->buf = vbd_alloc_transfer_buffer(JOB_CHUNK);
    int rc = commit_pass(job);
    if (rc == 0 && c->ignored)
        rc = c->ignored;
    if (rc == 0)
        rc = vbd_node_co_flush(c->base);
    return rc; /* the job's error is strerror's, as QEMU's */
}

static void commit_complete(struct vbd_job *job)
{
    struct commit *c = job->opaque;
    job_mirror_complete(c->mirror);
}

static int change_backing(struct vbd_node *overlay, const char *file, struct vbd_node *base, struct vbd_error **err)
{
    if (!overlay->drv->change_backing_file)
        return 0;
    bool ro = overlay->read_only;
    if (ro && vbd_node_co_set_read_only(overlay, false, err) < 0)
        return -EACCES;
    int rc = overlay->drv->change_backing_file(overlay, file, base->drv->name, err);
    if (ro) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_read_only(overlay, true, &e) < 0) {
            vbd_log(VBD_LOG_WARN, "%s", e ? e->msg : "could not switch back to read-only");
            vbd_error_free(e);
        }
    }
    return rc;
}

static int commit_prepare(struct vbd_job *job, struct vbd_error **err)
{
    struct commit *c = job->opaque;
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(c->top, &d);
    /* the exports and the overlay back on top before they move on */
    job_filter_drop(&c->filter);
    int rc = 0;
    if (c->active) {
        /* the guest's last writes, with nothing writing any more (a
         * cancel in READY too: base is a copy of that moment, as QEMU's) */
        rc = job_mirror_sync_last(c->mirror);
        if (rc < 0)
            vbd_error_setf(err, -rc, "Could not copy the last writes into '%s': %s", c->base->node_name,
                           strerror(-rc));
        else if (!vbd_job_cancel_requested(job)) {
            rc = vbd_daemon_replace_root(c->top, c->base, err);
            if (rc >= 0) {
                c->pivoted = true;
                rc = 0;
                /* vbd-daemon --state: saved before the guest writes to base */
                struct vbd_error *e = NULL;
                if (vbd_qmp_config_changed("job-finalize", NULL, &e) < 0)
                    vbd_warn("job '%s': %s", job->id, e ? e->msg : "the daemon's state was not saved");
                vbd_error_free(e);
            }
        }
    } else {
        const char *file = c->backing_file[0] ? c->backing_file : c->base->filename;
        rc = change_backing(c->overlay, file, c->base, err);
        if (rc == 0) {
            vbd_node_ref(c->base);
            struct vbd_node *old = c->overlay->backing;
            c->overlay->backing = c->base;
            vbd_node_unref(old);
        }
    }
    vbd_daemon_drain_end(&d);
    return rc;
}

static void release_nodes(struct commit *c)
{
    if (!c->top)
        return;
    vbd_node_unref(c->top);
    vbd_node_unref(c->base);
    if (c->overlay)
        vbd_node_unref(c->overlay);
    c->top = c->base = c->overlay = NULL;
}

static void commit_clean(struct vbd_job *job)
{
    struct commit *c = job->opaque;
    job_mirror_stop_tracking(c->mirror);
    job_filter_co_remove(&c->filter);
    if (c->base_was_ro && !c->pivoted) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_read_only(c->base, true, &e) < 0) {
            vbd_log(VBD_LOG_WARN, "commit job '%s': %s", job->id, e ? e->msg : "could not switch back to read-only");
            vbd_error_free(e);
        }
    }
    /* the layers are the user's again (blockdev-del) while the job waits to be dismissed */
    release_nodes(c);
}

static void commit_free(struct vbd_job *job)
{
    struct commit *c = job->opaque;
    if (!c)
        return;
    job_mirror_free(c->mirror);
    job_filter_co_remove(&c->filter);
    release_nodes(c);
    vbd_free_transfer_buffer(c->buf, JOB_CHUNK);
    free(c);
}

static bool commit_uses(struct vbd_job *job, struct vbd_node *n)
{
    struct commit *c = job->opaque;
    if (!c->top)
        return false;
    if (n == c->base || n == c->overlay)
        return true;
    for (struct vbd_node *p = c->top; p && p != c->base; p = p->backing)
        if (p == n)
            return true;
    return false;
}

/* The layers from p down to base (not included), bottom first: QEMU adds
 * them top down and lists its job's nodes newest first. */
static void commit_intermediates(struct vbd_node *p, struct vbd_node *base, vbd_job_edge_fn *edge, void *opaque)
{
    if (!p || p == base)
        return;
    commit_intermediates(p->backing, base, edge, opaque);
    edge(opaque, NULL, "intermediate node", p, 0, 0x2 | 0x4);
}

/* QEMU 7.2's commit_start: a backend writing the base, one on the top
 * layer taking nothing; the job holds the device ("main node"), the layers
 * (written unchanged or not, never read by others) and the base. */
static void commit_graph_backends(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct commit *c = job->opaque;
    if (!c || !c->top)
        return;
    edge(opaque, NULL, "root", c->base, 0x1 | 0x2, 0x1 | 0x4);
    edge(opaque, NULL, "root", c->top, 0, 0xf);
}

static void commit_graph_edges(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct commit *c = job->opaque;
    if (!c || !c->top)
        return;
    edge(opaque, NULL, "base", c->base, 0, 0xf);
    commit_intermediates(c->top, c->base, edge, opaque);
    edge(opaque, NULL, "main node", c->overlay, 0, 0xf);
}

/* Active commit, QEMU 7.2's mirror_start_job with the base in the top's
 * chain: its backend writes the base sharing reads and writes; the job
 * holds the mirror_top filter ("main node", reading), the top ("source"),
 * the base ("target") and the layers between ("intermediate node"). */
static void active_commit_graph_backends(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct commit *c = job->opaque;
    if (c && c->top)
        edge(opaque, NULL, "root", c->base, 0x2, 0x1 | 0x2 | 0x4);
}

static void active_commit_graph_edges(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct commit *c = job->opaque;
    if (!c || !c->top)
        return;
    commit_intermediates(c->top->backing, c->base, edge, opaque);
    edge(opaque, NULL, "target", c->base, 0, 0xf);
    if (c->filter)
        edge(opaque, NULL, "source", c->top, 0, 0x1 | 0x2 | 0x4);
    edge(opaque, NULL, "main node", c->filter ? c->filter : c->top, 0x1, 0x1 | 0x2 | 0x4);
}

/* base: the layers' data (an active commit's guest writes too) goes there */
static bool commit_writes(struct vbd_job *job, struct vbd_node *n)
{
    struct commit *c = job->opaque;
    return c->top && n == c->base;
}

static const struct vbd_job_driver commit_driver = {
    .type = "commit",
    .run = commit_run,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
    .uses_node = commit_uses,
    .writes_node = commit_writes,
    .graph_edges = commit_graph_edges,
    .graph_backends = commit_graph_backends,
    .nodes_stay = true, /* QEMU's commit_start lets its BlockBackends on base and top follow no move */
};

static void active_commit_pause(struct vbd_job *job)
{
    struct commit *c = job->opaque;
    if (c->mirror)
        job_mirror_pause(c->mirror);
}

/* Active commit: QEMU runs it as a mirror job, which job-complete ends. */
static const struct vbd_job_driver active_commit_driver = {
    .type = "commit",
    .run = commit_run,
    .complete = commit_complete,
    .pause = active_commit_pause,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
    .uses_node = commit_uses,
    .writes_node = commit_writes,
    .graph_edges = active_commit_graph_edges,
    .graph_backends = active_commit_graph_backends,
};

struct vbd_job *vbd_commit_start(const char *job_id, struct vbd_node *top, struct vbd_node *base, bool active,
                                 const char *backing_file, const char *filter_node_name, int64_t speed,
                                 enum vbd_on_error on_error, bool auto_finalize, bool auto_dismiss,
                                 struct vbd_qmp_error *err)
{
    struct vbd_node *overlay = active ? NULL : job_overlay_of(top);
    if (!active && !overlay) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Could not find overlay image for %s:", top->node_name);
        return NULL;
    }
    bool was_ro = base->read_only;
    if (was_ro) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_read_only(base, false, &e) < 0) {
            vbd_qmp_error_take(err, e);
            return NULL;
        }
    }
    /* QEMU's order: the active commit (a mirror) inserts its filter before
     * it creates the job, the intermediate one after (a bad name: the job
     * goes created, then null) */
    struct vbd_node *filter = NULL;
    struct vbd_job *job = NULL;
    /* the exports over top drained from the filter to the active commit's
     * write hook: no guest write is in flight unseen by its dirty bitmap */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(top, &d);
    if (!active || job_filter_insert(JOB_FILTER_MIRROR, top, filter_node_name, NULL, &filter, err) == 0)
        job = vbd_job_create(active ? &active_commit_driver : &commit_driver, job_id, auto_finalize, auto_dismiss, 0,
                             on_error, err);
    if (job && vbd_job_set_speed(job, speed, err) < 0) {
        /* QEMU sets the speed of the job it created: created, then null */
        vbd_job_early_fail(job);
        job = NULL;
    }
    if (job && !active && job_filter_insert(JOB_FILTER_COMMIT, top, filter_node_name, NULL, &filter, err) < 0) {
        vbd_job_early_fail(job);
        job = NULL;
    }
    if (!job) {
        job_filter_co_remove(&filter);
        vbd_daemon_drain_end(&d);
        if (was_ro) {
            struct vbd_error *e = NULL;
            vbd_node_co_set_read_only(base, true, &e);
            vbd_error_free(e);
        }
        return NULL;
    }
    struct commit *c = vbd_xcalloc(1, sizeof(*c));
    vbd_node_ref(top);
    vbd_node_ref(base);
    if (overlay)
        vbd_node_ref(overlay);
    c->top = top;
    c->base = base;
    c->overlay = overlay;
    c->active = active;
    c->base_was_ro = was_ro;
    c->filter = filter;
    if (backing_file)
        snprintf(c->backing_file, sizeof(c->backing_file), "%s", backing_file);
    if (active) {
        struct job_mirror_opts o = {.src = top, .target = base, .base = base, .initial_copy = true};
        c->mirror = job_mirror_new(job, &o);
    }
    job->opaque = c;
    /* the image locks of the job's nodes (the base written) before its
     * first write, and no user of them that the job's use conflicts with
     * (QEMU's block_job_add_bdrv checks it as the job takes its nodes) */
    struct vbd_error *le = NULL;
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, &le) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", le->msg);
        vbd_error_free(le);
        vbd_job_early_fail(job); /* its nodes, mirror and filter go */
        vbd_daemon_drain_end(&d);
        if (was_ro) {
            struct vbd_error *e = NULL;
            vbd_node_co_set_read_only(base, true, &e);
            vbd_error_free(e);
        }
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        return NULL;
    }
    vbd_daemon_drain_end(&d);
    vbd_job_start(job);
    return job;
}
