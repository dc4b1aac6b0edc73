/* SPDX-License-Identifier: MIT */
/*
 * The backup job (QEMU's block/backup.c): the source as it was at the
 * start, copied into the target while the guest writes. Point in time
 * through copy-before-write (vbd/cbw.h): the job hooks the source's writes
 * (QEMU inserts its backup-top filter there; the hook is the same place
 * without a graph change), and each write first saves the old data of the
 * clusters it touches. The job copies what is still to copy, several
 * chunks at once, with the rate limit and pause points between chunks.
 *
 * sync=full copies everything, top what the source's top layer defines,
 * bitmap the dirty clusters of a bitmap (incremental backup), none only
 * what the guest overwrites (fleecing: the job runs until cancelled).
 * The bitmap: its bits at the start are what is copied; from then on it
 * records the writes after the start, and on failure (or with
 * bitmap-mode=never) the bits taken are given back, as QEMU's frozen
 * bitmap and successor do. A persistent (qcow2) bitmap works the same
 * through its driver: its dirty ranges are read and it is cleared at the
 * start, and the ranges given back are merged into it, each change with
 * the node's exports drained (the driver stores and reloads its bitmaps
 * around a change: a write in flight then would be marked in neither).
 * If saving old data for a guest write fails, the write goes on and the
 * job fails with that error.
 */
#include "job-internal.h"

#include "daemon/objects.h"
#include "vbd/alloc.h"
#include "vbd/backup.h"
#include "vbd/cbw.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKUP_WORKERS 8
#define BACKUP_CHUNK (1u << 20) /* one worker's step, QEMU's block-copy task size */

struct backup {
    struct vbd_write_hook hook;
    struct vbd_job *job;
    struct vbd_node *source, *target; /* references held */
    struct vbd_cbw *cbw;
    struct vbd_backup_opts o;
    uint64_t *saved;   /* the bitmap's bits at the start (sync=bitmap/full with a bitmap) */
    uint64_t saved_gran, saved_n;
    int hook_users;
    bool unhooked;
    struct vbd_co_queue hook_wait;
    /* workers */
    int inflight;
    uint64_t done_bytes;
    int werr;
    bool werr_read;
    uint64_t werr_off;
    struct vbd_co_queue worker_wait;
    struct vbd_loop *loop;
    struct vbd_node *filter; /* filter-node-name's copy-before-write node, or NULL */
    /* a persistent bitmap instead of o.bitmap: its node (a reference), its
     * name and its dirty (offset, length) ranges at the start */
    struct vbd_node *pnode;
    char *pname;
    struct vbd_bitmap_ranges pranges;
};

/* A change of persistent bitmap `name` of n through its driver, every
 * export over n drained meanwhile (the driver stores its bitmaps, changes
 * its directory and loads them again; a block job's writes into n are not
 * drained: qcow2 keeps what they mark meanwhile and marks it after). */
static int persistent_change(struct vbd_node *n, const char *name, enum vbd_bitmap_action action,
                             const struct vbd_bitmap_ranges *rs, struct vbd_error **err)
{
    struct vbd_bitmap_op op = {.action = action, .name = name};
    if (rs) {
        if (!rs->n)
            return 0;
        op.ranges = (const uint64_t(*)[2])rs->r;
        op.nranges = rs->n;
    }
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin_quiet(n, &d); /* QEMU changes a bitmap without a drain: no job event */
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = n->drv->co_bitmap_change(n, &op, err);
    vbd_node_co_leave_home(origin);
    vbd_daemon_drain_end(&d);
    return rc;
}

/* Gives ranges back to the persistent bitmap; a failure is reported (the
 * job's end cannot fail any more): the next incremental backup would miss
 * them, so the user must know. */
static void persistent_give_back(struct backup *b, const struct vbd_bitmap_ranges *rs)
{
    struct vbd_error *e = NULL;
    if (persistent_change(b->pnode, b->pname, VBD_BITMAP_MERGE, rs, &e) < 0)
        vbd_error_report("backup job '%s': the dirty bits of bitmap '%s' could not be given back: %s", b->job->id,
                         b->pname, e ? e->msg : "failed");
    vbd_error_free(e);
}

static void hook_begin(struct vbd_write_hook *h, struct vbd_hooked_write *w)
{
    struct backup *b = (struct backup *)h;
    struct vbd_loop *here = vbd_loop_current();
    /* counted before the hop: unhook waits for a write already past the hook's load */
    __atomic_add_fetch(&b->hook_users, 1, __ATOMIC_SEQ_CST);
    vbd_co_move_to(b->loop); /* the job's state is the main loop's */
    /* a failed copy is recorded in the cbw state: the job fails with it */
    vbd_cbw_co_before_write(b->cbw, w->off, w->bytes);
    if (vbd_cbw_copy_error(b->cbw))
        vbd_job_kick(b->job);
    vbd_co_move_to(here);
}

static void hook_end(struct vbd_write_hook *h, struct vbd_hooked_write *w)
{
    struct backup *b = (struct backup *)h;
    (void)w;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(b->loop);
    if (__atomic_sub_fetch(&b->hook_users, 1, __ATOMIC_SEQ_CST) == 0 && b->unhooked)
        vbd_co_queue_wake_all(&b->hook_wait);
    vbd_co_move_to(here);
}

static void unhook(struct backup *b)
{
    if (b->unhooked || !b->cbw)
        return;
    /* drained: no write from another loop is between loading this hook
     * (the node's list, or another backup's hook above it) and counting
     * itself in hook_users */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(b->source, &d);
    vbd_node_remove_write_hook(b->source, &b->hook);
    b->unhooked = true;
    vbd_daemon_drain_end(&d);
    while (__atomic_load_n(&b->hook_users, __ATOMIC_SEQ_CST) > 0)
        vbd_co_queue_wait(&b->hook_wait);
}

struct worker {
    struct backup *b;
    uint64_t off;
};

static void worker_co(void *arg)
{
    struct worker *w = arg;
    struct backup *b = w->b;
    uint64_t copied = 0;
    int rc = vbd_cbw_co_copy(b->cbw, w->off, BACKUP_CHUNK, b->o.sync == VBD_BACKUP_TOP, &copied);
    if (rc < 0 && !b->werr) {
        b->werr = rc;
        b->werr_off = w->off;
        b->werr_read = vbd_cbw_last_error_read(b->cbw);
    }
    b->done_bytes += copied;
    struct vbd_job *job = b->job;
    uint64_t rem = vbd_cbw_remaining(b->cbw);
    job->ctl.current = job->ctl.total > rem ? job->ctl.total - rem : 0;
    b->inflight--;
    free(w);
    vbd_co_queue_wake_all(&b->worker_wait);
}

static void wait_workers(struct backup *b, int below)
{
    while (b->inflight > below)
        vbd_co_queue_wait(&b->worker_wait);
}

/* At a pause point: the workers' copies end (a paused job does no I/O). */
static void backup_pause(struct vbd_job *job)
{
    wait_workers(job->opaque, 0);
}

static int backup_run(struct vbd_job *job, struct vbd_error **err)
{
    struct backup *b = job->opaque;
    (void)err;
    uint64_t total = vbd_cbw_remaining(b->cbw), size = vbd_node_size(b->source);
    job->ctl.total = total < size ? total : size;
    if (b->o.sync == VBD_BACKUP_NONE) {
        while (!vbd_job_cancel_requested(job) && !vbd_cbw_copy_error(b->cbw)) {
            vbd_job_wait(job);
            vbd_job_pause_point(job);
        }
        return vbd_cbw_copy_error(b->cbw);
    }
    int workers = b->o.max_workers > 0 ? b->o.max_workers : BACKUP_WORKERS;
    uint64_t cursor = 0;
    int rc = 0;
    for (;;) {
        if (vbd_job_is_cancelled(job)) {
            rc = -ECANCELED;
            break;
        }
        if ((rc = vbd_cbw_copy_error(b->cbw)) < 0)
            break; /* a guest write could not save its old data: the image is incomplete */
        if (b->werr) {
            wait_workers(b, 0);
            job->on_error = b->o.on_source_error; /* reads */
            job->on_target_error = b->o.on_target_error;
            enum vbd_error_action a = vbd_job_error_action(job, b->werr_read, -b->werr);
            if (a == VBD_ACTION_REPORT) {
                rc = b->werr;
                break;
            }
            if (a == VBD_ACTION_IGNORE)
                vbd_cbw_forget(b->cbw, b->werr_off, BACKUP_CHUNK);
            b->werr = 0;
            vbd_job_pause_point(job); /* stop: until job-resume, then the chunk again */
            cursor = 0;
            continue;
        }
        uint64_t off = cursor;
        if (!vbd_cbw_next(b->cbw, &off)) {
            if (b->inflight) {
                wait_workers(b, b->inflight - 1);
                continue;
            }
            off = 0;
            if (!vbd_cbw_next(b->cbw, &off))
                break; /* all copied */
        }
        struct worker *w = vbd_xcalloc(1, sizeof(*w));
        w->b = b;
        w->off = off / BACKUP_CHUNK * BACKUP_CHUNK;
        cursor = w->off + BACKUP_CHUNK;
        /* paced by what is started, as QEMU's block-copy: the next chunk
         * waits for the time this one is due */
        uint64_t started = vbd_cbw_todo_bytes(b->cbw, w->off, BACKUP_CHUNK);
        b->inflight++;
        vbd_co_wake(vbd_co_create(worker_co, w));
        wait_workers(b, workers - 1);
        vbd_job_ratelimit(job, started);
    }
    wait_workers(b, 0);
    if (rc == 0 && (rc = vbd_cbw_copy_error(b->cbw)) == 0) {
        job->ctl.current = job->ctl.total;
        rc = vbd_node_co_flush(b->target);
    }
    return rc;
}

/* Give the bitmap back the bits taken at the start (all, or those not copied). */
static void bitmap_restore(struct backup *b, bool only_uncopied)
{
    if (b->pnode) {
        persistent_give_back(b, &b->pranges);
        return;
    }
    if (!b->saved)
        return;
    for (uint64_t i = 0; i < b->saved_n; i++)
        if (b->saved[i / 64] >> (i % 64) & 1) {
            uint64_t off = i * b->saved_gran;
            if (!only_uncopied || vbd_cbw_todo(b->cbw, off))
                vbd_dirty_bitmap_set(b->o.bitmap, off, b->saved_gran);
        }
}

static void backup_commit(struct vbd_job *job)
{
    struct backup *b = job->opaque;
    if ((b->o.bitmap || b->pnode) && b->o.bitmap_mode == VBD_BITMAP_SYNC_NEVER)
        bitmap_restore(b, false);
}

static void backup_abort(struct vbd_job *job)
{
    struct backup *b = job->opaque;
    if (!b->o.bitmap && !b->pnode)
        return;
    if (b->o.bitmap_mode != VBD_BITMAP_SYNC_ALWAYS) {
        bitmap_restore(b, false);
        return;
    }
    /* always: what was not copied is dirty, whatever the sync mode (QEMU
     * merges block-copy's bitmap in: all of it for a full backup that
     * never ran), on top of the writes recorded since the start */
    uint64_t size = vbd_node_size(b->source);
    if (b->pnode) {
        /* per copy cluster: the bitmap marks each granule one touches */
        struct vbd_bitmap_ranges rs = {0};
        uint64_t cl = vbd_cbw_cluster(b->cbw);
        for (uint64_t off = 0; off < size; off += cl) {
            uint64_t len = size - off < cl ? size - off : cl;
            if (vbd_cbw_todo_bytes(b->cbw, off, len))
                vbd_bitmap_ranges_add(&rs, off, len);
        }
        persistent_give_back(b, &rs);
        free(rs.r);
        return;
    }
    for (uint64_t off = 0; off < size; off += b->saved_gran) {
        uint64_t len = size - off < b->saved_gran ? size - off : b->saved_gran;
        if (vbd_cbw_todo_bytes(b->cbw, off, len))
            vbd_dirty_bitmap_set(b->o.bitmap, off, len);
    }
}

static void release(struct backup *b)
{
    job_filter_co_remove(&b->filter);
    unhook(b);
    vbd_cbw_free(b->cbw);
    b->cbw = NULL;
    if (b->o.bitmap)
        vbd_dirty_bitmap_set_busy(b->o.bitmap, false);
    b->o.bitmap = NULL;
    if (b->pnode)
        vbd_node_unref(b->pnode);
    b->pnode = NULL;
    free(b->pname);
    b->pname = NULL;
    free(b->pranges.r);
    b->pranges = (struct vbd_bitmap_ranges){0};
    if (b->source)
        vbd_node_unref(b->source);
    if (b->target)
        vbd_node_unref(b->target);
    b->source = b->target = NULL;
    free(b->saved);
    b->saved = NULL;
}

static void backup_clean(struct vbd_job *job) { release(job->opaque); }

static void backup_free(struct vbd_job *job)
{
    struct backup *b = job->opaque;
    if (!b)
        return;
    release(b);
    free(b);
}

static bool backup_uses(struct vbd_job *job, struct vbd_node *n)
{
    struct backup *b = job->opaque;
    return b->source && (n == b->source || n == b->target);
}

/* QEMU's backup_job_create: the job holds its copy-before-write filter
 * ("main node") and the target, taking nothing and sharing everything;
 * the filter's "target" child is written, never resized (cbw_child_perm). */
static void backup_graph_edges(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct backup *b = job->opaque;
    if (!b || !b->source)
        return;
    edge(opaque, NULL, "target", b->target, 0, 0xf);
    if (b->filter) {
        edge(opaque, NULL, "main node", b->filter, 0, 0xf);
        edge(opaque, b->filter, "target", b->target, 0x2, 0xf & ~0x8u);
    }
}

static bool backup_writes(struct vbd_job *job, struct vbd_node *n)
{
    struct backup *b = job->opaque;
    return b->source && n == b->target;
}

static const struct vbd_job_driver backup_driver = {
    .type = "backup",
    .run = backup_run,
    .pause = backup_pause,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
    .free = backup_free,
    .uses_node = backup_uses,
    .graph_edges = backup_graph_edges,
    .writes_node = backup_writes,
};

bool vbd_backup_job_reads(struct vbd_job *j, struct vbd_node *n)
{
    return j->drv == &backup_driver && j->opaque && ((struct backup *)j->opaque)->source == n;
}

bool vbd_backup_uses_persistent_bitmap(struct vbd_node *n, const char *name)
{
    for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j)) {
        struct backup *b = j->drv == &backup_driver ? j->opaque : NULL;
        if (b && b->pnode == n && !strcmp(b->pname, name))
            return true;
    }
    return false;
}

/* The persistent bitmap's dirty ranges now, then the bitmap cleared (it
 * records the writes after this point): 0, or -errno with err set. */
static int persistent_take(struct vbd_node *n, const char *name, struct vbd_bitmap_ranges *rs, struct vbd_qmp_error *err)
{
    uint64_t size = vbd_node_size(n), pnum = 0;
    int st = 0;
    /* the extents are the driver's state, read on n's home loop: one move
     * there for all of them, not one there and back per extent (each waits
     * its turn behind an iothread's rings; cf. vbd_node_co_bitmap_count) */
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    for (uint64_t off = 0; off < size; off += pnum) {
        st = vbd_node_co_persistent_bitmap_status(n, name, off, size - off, &pnum);
        if (st < 0 || !pnum)
            break;
        if (st)
            vbd_bitmap_ranges_add(rs, off, pnum);
    }
    vbd_node_co_leave_home(origin);
    struct vbd_error *e = NULL;
    if (st >= 0 && (st = persistent_change(n, name, VBD_BITMAP_CLEAR, NULL, &e)) >= 0)
        return 0;
    if (st == -EINVAL && !e)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s' is inconsistent and cannot be used", name);
    else
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s': %s", name, e ? e->msg : strerror(-st));
    vbd_error_free(e);
    free(rs->r);
    *rs = (struct vbd_bitmap_ranges){0};
    return st;
}

struct vbd_job *vbd_backup_create(const char *job_id, struct vbd_node *source, struct vbd_node *target,
                                  const struct vbd_backup_opts *o, struct vbd_qmp_error *err)
{
    /* the target's locks before anything can write it (QEMU's
     * cbw_child_perm: written, never resized); the job's own edges keep
     * them from its creation on */
    struct vbd_error *le = NULL;
    char cbw[160]; /* QEMU's conflict names the copy-before-write node it was making */
    if (o->filter_node_name)
        snprintf(cbw, sizeof(cbw), "node '%s'", o->filter_node_name);
    else
        snprintf(cbw, sizeof(cbw), "the backup's copy-before-write node");
    if (vbd_qmp_image_locks_follow_as(target, 0x2, 0xf & ~0x8u, cbw, "target", &le) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s%s", le->code == EPERM ? "Could not create node: " : "",
                           le->msg);
        vbd_error_free(le);
        return NULL;
    }
    /* a persistent bitmap's bits taken first: this is the point in time
     * (the caller drained the source); given back if the job is not made */
    struct vbd_bitmap_ranges taken = {0};
    if (o->persistent_node && persistent_take(o->persistent_node, o->persistent_name, &taken, err) < 0)
        return NULL;
    /* QEMU's order: the filter, then the job */
    struct vbd_node *filter = NULL;
    struct vbd_job *job = NULL;
    if (job_filter_insert(JOB_FILTER_BACKUP, source, o->filter_node_name, NULL, &filter, err) == 0) {
        /* QEMU's block_job_create: the job's edge on the filter, which from
         * then on shares no write below it (cbw_child_perm). A node that
         * passes writes down to what the source passes its own to (two
         * raw nodes over one file node) would write under the backup's
         * copy: refused, as qsd refuses it */
        char job_user[160];
        snprintf(job_user, sizeof(job_user), "backup job '%s'", job_id);
        struct vbd_qmp_perm_user users[] = {
            {.node = target, .perm = 0x2, .shared = 0xf & ~0x8u, .parent = filter, .child = "target"},
            {.node = filter, .perm = 0, .shared = 0xf, .user = job_user, .child = "main node"},
        };
        if (vbd_qmp_perm_check(users, 2, &le) < 0) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", le->msg);
            vbd_error_free(le);
        } else {
            /* the job core has one policy: the target's, QEMU's usual culprit */
            job = vbd_job_create(&backup_driver, job_id, o->auto_finalize, o->auto_dismiss, o->speed,
                                 o->on_target_error, err);
        }
        if (!job)
            job_filter_co_remove(&filter);
    }
    if (!job) {
        if (o->persistent_node) {
            struct vbd_error *e = NULL;
            if (persistent_change(o->persistent_node, o->persistent_name, VBD_BITMAP_MERGE, &taken, &e) < 0)
                vbd_error_report("bitmap '%s': its dirty bits could not be given back: %s", o->persistent_name,
                                 e ? e->msg : "failed");
            vbd_error_free(e);
        }
        free(taken.r);
        return NULL;
    }
    if (o->txn)
        vbd_job_txn_add(o->txn, job);
    struct backup *b = vbd_xcalloc(1, sizeof(*b));
    b->job = job;
    b->loop = vbd_loop_current();
    b->o = *o;
    b->filter = filter;
    vbd_node_ref(source);
    vbd_node_ref(target);
    b->source = source;
    b->target = target;
    struct vbd_dirty_bitmap *select = o->sync == VBD_BACKUP_BITMAP ? o->bitmap : NULL;
    b->cbw = vbd_cbw_new(source, target, vbd_cbw_default_cluster(target), select);
    vbd_cbw_set_compress(b->cbw, o->compress);
    if (o->persistent_node) {
        vbd_node_ref(o->persistent_node);
        b->pnode = o->persistent_node;
        b->pname = vbd_xstrdup(o->persistent_name);
        b->pranges = taken;
        b->o.persistent_name = b->pname;
        if (o->sync == VBD_BACKUP_BITMAP) {
            /* only the copy clusters a dirty range touches are to copy */
            uint64_t cl = vbd_cbw_cluster(b->cbw), size = vbd_node_size(source);
            size_t k = 0;
            for (uint64_t off = 0; off < size; off += cl) {
                while (k < taken.n && taken.r[k][0] + taken.r[k][1] <= off)
                    k++;
                if (k == taken.n || taken.r[k][0] >= off + cl)
                    vbd_cbw_forget(b->cbw, off, size - off < cl ? size - off : cl);
            }
        }
    }
    if (o->bitmap) {
        /* the bits taken now; the bitmap goes on recording the writes after this point */
        uint64_t size = vbd_node_size(source), pnum = 0;
        b->saved_gran = vbd_dirty_bitmap_granularity(o->bitmap);
        b->saved_n = (size + b->saved_gran - 1) / b->saved_gran;
        b->saved = vbd_xcalloc((size_t)(b->saved_n / 64 + 1), sizeof(uint64_t));
        for (uint64_t off = 0; off < size; off += pnum) {
            int st = vbd_dirty_bitmap_status(o->bitmap, off, size - off, &pnum);
            if (!pnum)
                break;
            if (st == 1)
                for (uint64_t i = off / b->saved_gran; i * b->saved_gran < off + pnum; i++)
                    b->saved[i / 64] |= 1ull << (i % 64);
        }
        vbd_dirty_bitmap_clear(o->bitmap);
        vbd_dirty_bitmap_set_busy(o->bitmap, true);
    }
    b->hook.begin = hook_begin;
    b->hook.end = hook_end;
    vbd_node_add_write_hook(source, &b->hook);
    job->opaque = b;
    return job;
}
