/* SPDX-License-Identifier: MIT */
/*
 * What a block job knows of the guest's writes to a node: the writes in
 * flight (so that a job's copy into the same node never lands after, and
 * over, a newer guest write: stream), and a dirty bitmap (what changed
 * since it was copied: active commit). Installed as the node's write hook
 * (vbd/block.h). The bookkeeping lives on the main loop: a write from
 * another loop hops there for begin and end and goes back for the I/O.
 */
#include "job-internal.h"

#include "daemon/objects.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct vbd_job_tracker {
    struct vbd_write_hook hook;
    struct vbd_node *n;
    struct vbd_loop *loop;            /* the main loop, where the lists live */
    struct vbd_hooked_write *inflight; /* guest writes past begin */
    struct vbd_co_queue write_waiters; /* writes waiting for the locked range */
    struct vbd_co_queue lock_waiters;  /* the job waiting for writes in flight */
    bool locked;
    uint64_t lock_off, lock_bytes;
    struct vbd_co *lock_owner;
    uint64_t gran;     /* 0: no bitmap */
    uint64_t nbits, ndirty;
    uint64_t *bits;
    struct vbd_job *job;
    void (*before_write)(void *opaque, struct vbd_hooked_write *w);
    void (*after_write)(void *opaque, struct vbd_hooked_write *w);
    void *copy_opaque;
    int users;                  /* writes between begin and end (or waiting in begin) */
    bool closing;
    struct vbd_co_queue close_wait; /* tracker_free waiting for them */
};

static bool overlaps(uint64_t a, uint64_t al, uint64_t b, uint64_t bl)
{
    return a < b + bl && b < a + al;
}

static void mark(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes)
{
    if (!t->gran || !bytes)
        return;
    uint64_t first = off / t->gran, last = (off + bytes - 1) / t->gran;
    if (last >= t->nbits)
        last = t->nbits - 1;
    for (uint64_t i = first; i <= last && i < t->nbits; i++)
        if (!(t->bits[i / 64] & (1ull << (i % 64)))) {
            t->bits[i / 64] |= 1ull << (i % 64);
            t->ndirty++;
        }
    if (t->job)
        vbd_job_kick(t->job);
}

static void hook_begin(struct vbd_write_hook *h, struct vbd_hooked_write *w)
{
    struct vbd_job_tracker *t = (struct vbd_job_tracker *)h;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(t->loop);
    t->users++;
    while (!t->closing && t->locked && t->lock_owner != w->co && overlaps(t->lock_off, t->lock_bytes, w->off, w->bytes))
        vbd_co_queue_wait(&t->write_waiters);
    if (t->before_write && !t->closing)
        t->before_write(t->copy_opaque, w);
    w->next = t->inflight;
    t->inflight = w;
    /* marked before too: a copy that starts while this write runs copies again */
    if (w->co != t->lock_owner && !w->job_copies)
        mark(t, w->off, w->bytes);
    vbd_co_move_to(here);
}

static void hook_end(struct vbd_write_hook *h, struct vbd_hooked_write *w)
{
    struct vbd_job_tracker *t = (struct vbd_job_tracker *)h;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(t->loop);
    for (struct vbd_hooked_write **pp = &t->inflight; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    if (w->co != t->lock_owner && !w->job_copies)
        mark(t, w->off, w->bytes);
    vbd_co_queue_wake_all(&t->lock_waiters);
    /* before the write completes: mirror's write-blocking copies it to its target
     * (when closing too: a write registered in begin is let go there) */
    if (t->after_write)
        t->after_write(t->copy_opaque, w);
    if (--t->users == 0 && t->closing)
        vbd_co_queue_wake_all(&t->close_wait);
    vbd_co_move_to(here);
}

struct vbd_job_tracker *vbd_job_tracker_new(struct vbd_node *n, uint64_t granularity)
{
    struct vbd_job_tracker *t = vbd_xcalloc(1, sizeof(*t));
    t->hook.begin = hook_begin;
    t->hook.end = hook_end;
    t->n = n;
    t->loop = vbd_loop_current();
    t->gran = granularity;
    if (granularity) {
        t->nbits = (vbd_node_size(n) + granularity - 1) / granularity;
        t->bits = vbd_xcalloc((size_t)(t->nbits / 64 + 1), sizeof(uint64_t));
    }
    vbd_node_add_write_hook(n, &t->hook);
    return t;
}

void vbd_job_tracker_free(struct vbd_job_tracker *t)
{
    if (!t)
        return;
    /* the writes waiting in begin go on, neither locked out nor copied */
    t->closing = true;
    vbd_co_queue_wake_all(&t->write_waiters);
    /* Taken off in a drain of the node's exports: a write on an iothread
     * (the node's home loop) loads the hook there and counts itself in
     * `users` only after its hop to this loop, so without the drain it
     * could arrive here after the free (a mirror cancelled in READY or a
     * stream's end, with the guest writing on: ASan's heap-use-after-free
     * in hook_begin). The drain waits for such writes; new ones find no
     * hook. The ones inside begin..end finish first. */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin_quiet(t->n, &d); /* QEMU drops its dirty bitmap without a drain */
    vbd_node_remove_write_hook(t->n, &t->hook);
    vbd_daemon_drain_end(&d);
    while (t->users > 0)
        vbd_co_queue_wait(&t->close_wait);
    free(t->bits);
    free(t);
}

void vbd_job_tracker_set_job(struct vbd_job_tracker *t, struct vbd_job *job) { t->job = job; }

void vbd_job_tracker_lock(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes)
{
    for (;;) {
        bool busy = false;
        for (struct vbd_hooked_write *w = t->inflight; w && !busy; w = w->next)
            busy = overlaps(off, bytes, w->off, w->bytes);
        if (!busy)
            break;
        vbd_co_queue_wait(&t->lock_waiters);
    }
    t->locked = true;
    t->lock_off = off;
    t->lock_bytes = bytes;
    t->lock_owner = vbd_co_self();
}

void vbd_job_tracker_unlock(struct vbd_job_tracker *t)
{
    t->locked = false;
    t->lock_owner = NULL;
    vbd_co_queue_wake_all(&t->write_waiters);
}

void vbd_job_tracker_set_dirty(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes)
{
    struct vbd_job *j = t->job;
    t->job = NULL; /* no kick: the job itself asks */
    mark(t, off, bytes);
    t->job = j;
}

void vbd_job_tracker_set_write_copy(struct vbd_job_tracker *t, void (*before)(void *opaque, struct vbd_hooked_write *w),
                                    void (*after)(void *opaque, struct vbd_hooked_write *w), void *opaque)
{
    t->before_write = before;
    t->after_write = after;
    t->copy_opaque = opaque;
}

bool vbd_job_tracker_is_dirty(struct vbd_job_tracker *t, uint64_t off)
{
    uint64_t i = t->gran ? off / t->gran : t->nbits;
    return i < t->nbits && (t->bits[i / 64] >> (i % 64) & 1);
}

bool vbd_job_tracker_writes_overlap(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes)
{
    for (struct vbd_hooked_write *w = t->inflight; w; w = w->next)
        if (overlaps(off, bytes, w->off, w->bytes))
            return true;
    return false;
}

void vbd_job_tracker_clear_dirty(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes)
{
    if (!t->gran || !bytes)
        return;
    for (uint64_t i = off / t->gran, last = (off + bytes - 1) / t->gran; i <= last && i < t->nbits; i++)
        if (t->bits[i / 64] & (1ull << (i % 64))) {
            t->bits[i / 64] &= ~(1ull << (i % 64));
            t->ndirty--;
        }
}

uint64_t vbd_job_tracker_dirty_count(struct vbd_job_tracker *t) { return t->ndirty; }

bool vbd_job_tracker_take_dirty(struct vbd_job_tracker *t, uint64_t *off, uint64_t *bytes, uint64_t max)
{
    if (!t->ndirty)
        return false;
    uint64_t i = *off / t->gran;
    for (uint64_t k = 0; k < t->nbits; k++, i++) {
        if (i >= t->nbits)
            i = 0;
        if (!t->bits[i / 64]) {
            i = i / 64 * 64 + 63;
            continue;
        }
        if (!(t->bits[i / 64] & (1ull << (i % 64))))
            continue;
        /* a run of dirty bits from i, at most max bytes */
        uint64_t start = i, size = vbd_node_size(t->n);
        while (i < t->nbits && (t->bits[i / 64] & (1ull << (i % 64))) && (i - start + 1) * t->gran <= max) {
            t->bits[i / 64] &= ~(1ull << (i % 64));
            t->ndirty--;
            i++;
        }
        if (i == start) { /* max below the granularity */
            t->bits[i / 64] &= ~(1ull << (i % 64));
            t->ndirty--;
            i++;
        }
        *off = start * t->gran;
        uint64_t end = i * t->gran < size ? i * t->gran : size;
        *bytes = end - *off;
        return true;
    }
    return false;
}

struct vbd_node *job_overlay_of(struct vbd_node *n)
{
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p))
        if (p->backing == n)
            return p;
    return NULL;
}

int job_copy_range(struct vbd_job *job, struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes,
                   bool zero, void *buf, int *ignored)
{
    {
        bool is_read = false;
        int rc;
        if (zero) {
            rc = vbd_node_co_pwrite_zeroes(dst, off, bytes, 0);
        } else {
            rc = vbd_node_co_pread(src, off, buf, bytes);
            is_read = rc < 0;
            if (rc >= 0)
                rc = vbd_node_co_pwrite(dst, off, buf, bytes, 0);
        }
        if (rc >= 0)
            return 0;
        enum vbd_error_action a = vbd_job_error_action(job, is_read, -rc);
        if (a == VBD_ACTION_IGNORE) {
            if (!*ignored)
                *ignored = rc;
            return 0;
        }
        if (a == VBD_ACTION_REPORT)
            return rc;
        return 1; /* stopped: the caller lets go of its range, pauses, tries again */
    }
}
