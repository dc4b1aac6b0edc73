/* SPDX-License-Identifier: MIT */
/*
 * Control of a live node by the management layer (vbd-daemon's QMP
 * monitor): switching between read-only and read-write, the write
 * threshold, and reports of corrupt images. The block layer raises the
 * reports through handlers it is given, so drivers need no QMP code.
 */
#include "vbd/block.h"
#include "vbd/error.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

static _Atomic(const struct vbd_node_event_handlers *) handlers;

void vbd_node_set_event_handlers(const struct vbd_node_event_handlers *h)
{
    atomic_store(&handlers, h);
}

void vbd_node_report_corruption(struct vbd_node *n, const char *msg, int64_t offset, int64_t size, bool fatal)
{
    const struct vbd_node_event_handlers *h = atomic_load(&handlers);
    if (h && h->corrupted)
        h->corrupted(n, msg, offset, size, fatal);
}

void vbd_node_set_write_threshold(struct vbd_node *n, uint64_t threshold)
{
    __atomic_store_n(&n->write_threshold, threshold, __ATOMIC_RELAXED);
}

void vbd_node_write_threshold_exceeded(struct vbd_node *n, uint64_t threshold, uint64_t end)
{
    /* Writers on several loops may cross it at once: the one that disarms it reports. */
    if (!__atomic_compare_exchange_n(&n->write_threshold, &threshold, 0, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    const struct vbd_node_event_handlers *h = atomic_load(&handlers);
    if (h && h->write_threshold)
        h->write_threshold(n, threshold, end - threshold);
}

/* A running mirror's or commit's filter (mirror_top, commit_top) asks of
 * its child what its own users ask of it, as QEMU's
 * bdrv_mirror_top_child_perm: it writes the child only for a writer
 * above it (the job's copy reads the source). */
static bool passes_users_perms(const struct vbd_node *m)
{
    return !strcmp(m->drv->name, "mirror_top") || !strcmp(m->drv->name, "commit_top");
}

/* Is `child` written by an export, or through another read-write node
 * than `except`? (An overlay reads its backing only: not a writer. A
 * read-write raw, throttle or blkdebug node writes only for its own
 * writers, as QEMU's filter and raw child perms: a reopen read-only of
 * the node below it goes through while none is there.) */
static bool other_writer(struct vbd_node *child, struct vbd_node *except)
{
    const struct vbd_node_event_handlers *h = atomic_load(&handlers);
    if (h && h->written_outside && h->written_outside(child))
        return true;
    for (struct vbd_node *m = vbd_node_next(NULL); m; m = vbd_node_next(m))
        if (m != except && !m->read_only && m->file == child && m != child &&
            ((!passes_users_perms(m) && !vbd_node_passes_writes_down(m)) || other_writer(m, NULL)))
            return true;
    return false;
}

/* Does anything write n (read-write) now? A read-write node on it through
 * "file", an export; a node nothing sits on through "file" counts as
 * written (vbd keeps a node of its own locked as opened). A backing
 * parent only reads, and a quorum's or a job's writes reach the node with
 * the write lock it already holds (they need no file parent to drop it). */
static bool written_now(struct vbd_node *n)
{
    bool file_parent = false;
    for (struct vbd_node *m = vbd_node_next(NULL); m; m = vbd_node_next(m)) {
        if (m == n || m->file != n)
            continue;
        if (!m->read_only)
            return true;
        file_parent = true;
    }
    const struct vbd_node_event_handlers *h = atomic_load(&handlers);
    if (h && h->written_outside && h->written_outside(n))
        return true;
    return !file_parent;
}

int vbd_node_refresh_write_use(struct vbd_node *n, struct vbd_error **err)
{
    /* a daemon's node: its users set its locks (vbd_qmp_image_locks_follow) */
    if (n->read_only || !n->drv->write_use || (n->open_flags & VBD_OPEN_LOCK_BY_USERS))
        return 0;
    return n->drv->write_use(n, written_now(n), err);
}

/* New writes are refused (io.c checks n->read_only) before the driver
 * writes everything back; a driver going read-write is ready before the
 * first write comes. */
static int switch_node(struct vbd_node *n, bool read_only, struct vbd_error **err)
{
    if (read_only)
        n->read_only = true;
    struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver state: its home loop's */
    int rc = n->drv->reopen_rw(n, !read_only, err);
    vbd_node_co_leave_home(origin);
    if (rc < 0) {
        n->read_only = !read_only;
        return rc;
    }
    n->read_only = read_only;
    n->open_flags = read_only ? (n->open_flags & ~VBD_OPEN_RDWR) : (n->open_flags | VBD_OPEN_RDWR);
    return 0;
}

/* by_parent: n is its parent's own "file" child, switched with it */
static int set_read_only(struct vbd_node *n, bool read_only, bool by_parent, struct vbd_error **err)
{
    if (n->read_only == read_only)
        return 0;
    if (!n->drv->reopen_rw) {
        vbd_error_setf(err, ENOTSUP, "Node '%s' (driver '%s') cannot switch between read-only and read-write",
                       n->node_name, n->drv->name);
        return -ENOTSUP;
    }
    struct vbd_node *child = n->file && n->file != n ? n->file : NULL;
    if (read_only) {
        if (other_writer(n, NULL)) {
            vbd_error_setf(err, EBUSY, "Read-only block node '%s' cannot support read-write users", n->node_name);
            return -EBUSY;
        }
        int rc = vbd_node_co_flush(n);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Could not flush node '%s' before making it read-only: %s", n->node_name,
                           strerror(-rc));
            return rc;
        }
        rc = switch_node(n, true, err);
        if (rc < 0)
            return rc;
        /* a referenced child keeps its read-only option; its write lock
         * goes when nothing else writes it (dropping locks cannot fail) */
        if (child && n->file_ref) {
            vbd_node_refresh_write_use(child, NULL);
            return 0;
        }
        /* the child stays writable for its other users */
        if (child && !child->read_only && child->drv->reopen_rw && !other_writer(child, n))
            return set_read_only(child, true, true, err);
        return 0;
    }
    bool child_switched = false;
    if (child && vbd_node_check_metadata_writer(n, child, true, err) < 0)
        return -EBUSY;
    if (child && n->file_ref) {
        /* a raw, throttle or blkdebug node goes read-write over a
         * read-only node it references, as blockdev-add opens it: it
         * writes nothing of its own, and a writer that comes above it is
         * refused then (vbd_qmp_perm_check); the child stays as it is.
         * Any other parent over a node of its own that stays read-only:
         * QEMU's permission check */
        if (child->read_only && !vbd_node_passes_writes_down(n)) {
            vbd_error_setf(err, EACCES, "Block node is read-only");
            return -EACCES;
        }
        /* the write lock back before n can write (another process may hold it now) */
        if (!child->read_only && child->drv->write_use) {
            int rc = child->drv->write_use(child, true, err);
            if (rc < 0)
                return rc;
        }
    } else if (child && child->read_only) {
        int rc = set_read_only(child, false, true, err);
        if (rc < 0)
            return rc;
        child_switched = true;
    }
    int rc = switch_node(n, false, err);
    /* locked for writing by the switch: that goes again while only
     * read-only parents sit on it (not for a parent's own child, whose
     * parent is about to write) */
    if (rc == 0 && !by_parent)
        vbd_node_refresh_write_use(n, NULL);
    if (rc < 0 && child_switched)
        set_read_only(child, true, true, NULL);
    else if (rc < 0 && child && n->file_ref)
        vbd_node_refresh_write_use(child, NULL);
    return rc;
}

int vbd_node_co_set_read_only(struct vbd_node *n, bool read_only, struct vbd_error **err)
{
    return set_read_only(n, read_only, false, err);
}

int vbd_node_co_set_direct(struct vbd_node *n, bool direct, struct vbd_error **err)
{
    if (!n->drv->reopen_direct) {
        vbd_error_setf(err, ENOTSUP, "Node '%s' (driver '%s') cannot change cache.direct", n->node_name, n->drv->name);
        return -ENOTSUP;
    }
    int rc = vbd_node_co_flush(n);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Error flushing drive: %s", strerror(-rc)); /* QEMU's bdrv_reopen_prepare */
        return rc;
    }
    struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver state: its home loop's */
    rc = n->drv->reopen_direct(n, direct, err);
    vbd_node_co_leave_home(origin);
    return rc;
}

/* as QEMU's bdrv_debug_*: the first node down the file children that has
 * breakpoints */
static struct vbd_node *debug_node(struct vbd_node *n)
{
    while (n && !n->drv->debug_breakpoint)
        n = n->file;
    return n;
}

int vbd_node_debug_breakpoint(struct vbd_node *n, const char *event, const char *tag)
{
    n = debug_node(n);
    return n ? n->drv->debug_breakpoint(n, event, tag) : -ENOTSUP;
}

int vbd_node_debug_remove_breakpoint(struct vbd_node *n, const char *tag)
{
    n = debug_node(n);
    return n ? n->drv->debug_remove_breakpoint(n, tag) : -ENOTSUP;
}

int vbd_node_debug_resume(struct vbd_node *n, const char *tag)
{
    n = debug_node(n);
    return n ? n->drv->debug_resume(n, tag) : -ENOTSUP;
}

bool vbd_node_debug_is_suspended(struct vbd_node *n, const char *tag)
{
    n = debug_node(n);
    return n && n->drv->debug_is_suspended(n, tag);
}
