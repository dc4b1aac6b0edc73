/* SPDX-License-Identifier: MIT */
/*
 * blockdev-mirror and drive-mirror (QEMU's block/mirror.c): the source's
 * content is copied to the target while the guest writes to the source;
 * every guest write marks its chunks in a dirty bitmap (vbd_job_tracker),
 * and the job copies dirty chunks until none is left (READY), and keeps
 * doing so until job-complete: then, with every export on the source
 * drained, the last dirty chunks are copied, the target is flushed and
 * the exports (and the nodes whose backing the source was) switch to the
 * target. No request is lost: the drain lets the ones in flight finish,
 * holds new ones back, and they run on the target once it ends.
 *
 * The copy: sync=full and top start with every chunk dirty; a chunk is
 * looked at with block status (above the source's backing for top and
 * none: what the backing provides the target's backing provides too), a
 * hole or zero range becomes write-zeroes unless the target already reads
 * zeroes there, data is read and written. Up to buf-size bytes are in
 * flight, in several chunks copied by their own coroutines, of which at
 * most MIRROR_MAX_WRITES write to the target at a time; two copies of
 * the same chunk never overlap (the later waits), so an older read never
 * lands after a newer one. A chunk's dirty bit is cleared before it is
 * read: a guest write during the copy marks it again.
 */
#include "job-internal.h"

#include "daemon/objects.h"
#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIRROR_MAX_CHUNK (1024 * 1024)
#define MIRROR_MAX_INFLIGHT 16
/*
 * Target writes of the background copy in flight at once; the reads run
 * ahead in the other slots. Measured on a virtio disk (ext4, O_DIRECT,
 * 1 GiB read while 1 GiB is written to a new file, fio, 1 MiB requests):
 * with 16 writes in flight the writes took 2.3-3.0 s, with 4 1.35-1.7 s,
 * in the same minutes; the mirror to READY (with the buffers below):
 * 2.1-2.5 s with 16, 1.15-1.36 s with 4 (bench/RESULTS.md, 2026-12-03).
 */
#define MIRROR_MAX_WRITES 4

/* A guest write that the job copies to the target before it completes
 * (write-blocking), from its begin to the end of that copy. */
struct active_write {
    uint64_t off, bytes; /* its granules: nothing else copies or writes them meanwhile */
    struct vbd_hooked_write *w;
    bool head_dirty, tail_dirty; /* its partial granules at either end were dirty at its begin */
    struct active_write *next;
};

struct slot {
    struct job_mirror *m;
    bool used;
    uint64_t off, bytes;
    uint8_t *buf;
};

/* The copy engine (job-internal.h), shared with active commit. */
struct job_mirror {
    struct vbd_job *job;
    struct vbd_node *src, *target, *base; /* borrowed from the job; base: where block status stops (NULL: whole chain) */
    bool unmap;
    bool initial_copy;
    bool target_new;
    bool top_unbacked;
    bool complete;
    struct vbd_job_tracker *tracker;
    uint64_t gran, chunk;
    int nslots, inflight;
    uint64_t inflight_bytes;
    struct slot *slots;
    uint8_t *bufs;     /* the slots' buffers, one region (bufs_len) */
    int writes;                    /* background copy writes in flight */
    struct vbd_co_queue write_wait; /* copies waiting for a write turn */
    bool write_blocking;
    bool closing;                  /* tracking stops: writes are no longer copied */
    struct active_write *active;   /* write-blocking copies in flight */
    struct active_write *spare;    /* finished ones, reused (a write allocates nothing) */
    struct vbd_co_queue slot_wait; /* the job waiting for a slot or for the copies to end */
    bool stopped;                  /* an error policy stopped the job: copies end, then the pause */
    int ret;
};

/* blockdev-mirror / drive-mirror: the engine and the graph change. */
struct mirror {
    struct job_mirror *m;
    struct vbd_node *src, *target, *base; /* references held */
    struct vbd_node *replaces;            /* whose exports and parents move to the target (a reference) */
    bool target_owned;  /* drive-mirror's: its users hold it after the pivot, it closes otherwise */
    struct vbd_node *filter; /* filter-node-name's mirror_top, or NULL */
};

static void update_total(struct job_mirror *m)
{
    /* QEMU's: what is done plus what is left (grows with the guest's writes) */
    m->job->ctl.total = m->job->ctl.current + m->inflight_bytes + vbd_job_tracker_dirty_count(m->tracker) * m->gran;
}

/* After an error, the policy's answer: 1 copy the range again later
 * (ignore: at once, as QEMU's mirror; stop: after job-resume), -errno fail. */
static int on_error(struct job_mirror *m, bool is_read, int rc)
{
    /* each failed copy reports (as QEMU: one BLOCK_JOB_ERROR per request);
     * the job pauses once */
    enum vbd_error_action a = vbd_job_error_action(m->job, is_read, -rc);
    if (a == VBD_ACTION_REPORT)
        return rc;
    if (a == VBD_ACTION_STOP)
        m->stopped = true;
    return 1;
}

/* Copy [off, off + bytes): 0 done, 1 to be copied again (error policy), -errno. */
static int copy_range(struct job_mirror *m, uint64_t off, uint64_t bytes, uint8_t *buf)
{
    for (uint64_t pos = off, end = off + bytes; pos < end;) {
        uint64_t pnum = 0;
        int st = vbd_node_co_block_status_above(m->src, m->base, true, pos, end - pos, &pnum, NULL, NULL, NULL);
        if (st >= 0 && !pnum)
            st = -EIO;
        if (st < 0) {
            return on_error(m, true, st);
        }
        uint64_t n = pnum;
        int rc = 0;
        bool is_read = false;
        if (m->base && !(st & VBD_BS_ALLOCATED)) {
            /* provided by the backing the target shares */
        } else if (!(st & VBD_BS_ALLOCATED) || (st & VBD_BS_ZERO)) {
            uint64_t tn = 0;
            int tst = vbd_node_co_block_status_above(m->target, NULL, true, pos, n, &tn, NULL, NULL, NULL);
            if (tst < 0 || !(tst & VBD_BS_ZERO) || tn < n)
                rc = vbd_node_co_pwrite_zeroes(m->target, pos, n, m->unmap ? VBD_REQ_MAY_UNMAP : 0);
        } else {
            rc = vbd_node_co_pread(m->src, pos, buf, n);
            is_read = rc < 0;
            if (rc >= 0) {
                while (m->writes >= MIRROR_MAX_WRITES)
                    vbd_co_queue_wait(&m->write_wait);
                m->writes++;
                rc = vbd_node_co_pwrite(m->target, pos, buf, n, 0);
                m->writes--;
                vbd_co_queue_wake_one(&m->write_wait);
            }
        }
        if (rc < 0)
            return on_error(m, is_read, rc);
        pos += n;
    }
    return 0;
}

static void slot_co(void *arg)
{
    struct slot *s = arg;
    struct job_mirror *m = s->m;
    int rc = copy_range(m, s->off, s->bytes, s->buf);
    if (rc)
        vbd_job_tracker_set_dirty(m->tracker, s->off, s->bytes); /* again (after job-resume if stopped) */
    if (rc < 0 && !m->ret)
        m->ret = rc;
    if (rc == 0)
        m->job->ctl.current += s->bytes;
    s->used = false;
    m->inflight--;
    m->inflight_bytes -= s->bytes;
    update_total(m);
    vbd_co_queue_wake_all(&m->slot_wait);
}

static bool overlaps_active(struct job_mirror *m, uint64_t off, uint64_t bytes)
{
    for (struct active_write *a = m->active; a; a = a->next)
        if (off < a->off + a->bytes && a->off < off + bytes)
            return true;
    return false;
}

static bool overlaps_inflight(struct job_mirror *m, uint64_t off, uint64_t bytes)
{
    for (int i = 0; i < m->nslots; i++)
        if (m->slots[i].used && off < m->slots[i].off + m->slots[i].bytes && m->slots[i].off < off + bytes)
            return true;
    return overlaps_active(m, off, bytes);
}

/*
 * copy-mode=write-blocking (QEMU's active mirror, do_sync_target_write):
 * a guest write, once it is on the source, is written to the target from
 * the guest's own buffers before it completes, so the job converges
 * however fast the guest writes, and nothing is read back. From the
 * write's begin to the end of its copy its granules are its own: it waits
 * at begin for the background copies, the other guest writes and the
 * write-blocking copies touching them, and no background copy starts
 * there meanwhile; so overlapping writes reach the source and the target
 * in the same order. The whole granules it covers are clean afterwards; a
 * partial granule at either end that was dirty is left to the background
 * copy (it is not written: its other bytes are not on the target yet); one
 * that was clean is written and stays clean. A discard, a failed source
 * write, a paused or stopped job leave the range to the dirty bitmap.
 */
static bool job_idle(struct job_mirror *m)
{
    return m->closing || m->stopped || m->ret || vbd_job_should_pause(m->job) || vbd_job_is_cancelled(m->job);
}

static void active_begin(void *opaque, struct vbd_hooked_write *w)
{
    struct job_mirror *m = opaque;
    uint64_t size = vbd_node_size(m->src);
    if (!w->bytes || w->off >= size)
        return;
    uint64_t start = w->off / m->gran * m->gran, end = (w->off + w->bytes + m->gran - 1) / m->gran * m->gran;
    if (end > size)
        end = size;
    if (w->discard) {
        /* Left to the dirty bitmap, but not beside a write-blocking copy
         * of the same granules: that write, ending after the discard,
         * would clear the discard's dirty marks with its copy and leave
         * its data on the target where the source reads the discard (a
         * qcow2 write over two clusters lets a discard of the first in
         * while it writes the second; the discard reaches the source
         * through an export of the source node itself, the job's filter
         * drops it). Writes that begin later wait for the discard: it is
         * in the tracker's list once begin returns. */
        while (!job_idle(m) && overlaps_active(m, start, end - start))
            vbd_co_queue_wait(&m->slot_wait);
        return;
    }
    while (!job_idle(m) && (overlaps_inflight(m, start, end - start) ||
                            vbd_job_tracker_writes_overlap(m->tracker, start, end - start)))
        vbd_co_queue_wait(&m->slot_wait);
    if (job_idle(m))
        return;
    struct active_write *a = m->spare;
    if (a)
        m->spare = a->next;
    else
        a = vbd_xcalloc(1, sizeof(*a));
    *a = (struct active_write){.off = start, .bytes = end - start, .w = w, .next = m->active};
    uint64_t wend = w->off + w->bytes < size ? w->off + w->bytes : size;
    a->head_dirty = w->off % m->gran && vbd_job_tracker_is_dirty(m->tracker, w->off);
    a->tail_dirty = wend % m->gran && wend < size && vbd_job_tracker_is_dirty(m->tracker, wend - 1);
    m->active = a;
    w->job_copies = true;
}

/* The write to the target of what w wrote to the source: 0, or the error policy's answer (on_error). */
static int active_copy(struct job_mirror *m, struct active_write *a)
{
    struct vbd_hooked_write *w = a->w;
    uint64_t off = w->off, end = w->off + w->bytes, size = vbd_node_size(m->src);
    size_t qoff = w->qoff;
    if (end > size)
        end = size;
    if (off % m->gran && a->head_dirty) {
        uint64_t up = (off / m->gran + 1) * m->gran;
        qoff += (size_t)((up < end ? up : end) - off);
        off = up < end ? up : end;
    }
    if (a->tail_dirty && end > off)
        end = end / m->gran * m->gran > off ? end / m->gran * m->gran : off;
    if (end <= off)
        return 0;
    /* the whole granules written (the image's last one ends with the image) */
    uint64_t cstart = (off + m->gran - 1) / m->gran * m->gran;
    uint64_t cend = end == size ? (size + m->gran - 1) / m->gran * m->gran : end / m->gran * m->gran;
    if (cstart < cend)
        vbd_job_tracker_clear_dirty(m->tracker, cstart, cend - cstart);
    int rc;
    unsigned fua = w->flags & VBD_REQ_FUA;
    if (w->qiov)
        rc = vbd_node_co_pwritev(m->target, off, end - off, w->qiov, qoff, fua);
    else
        rc = vbd_node_co_pwrite_zeroes(m->target, off, end - off, fua | (w->flags & VBD_REQ_MAY_UNMAP));
    if (rc < 0)
        return on_error(m, false, rc);
    m->job->ctl.current += end - off;
    return 0;
}

static void active_end(void *opaque, struct vbd_hooked_write *w)
{
    struct job_mirror *m = opaque;
    struct active_write *a = m->active;
    while (a && a->w != w)
        a = a->next;
    if (a && !m->closing) {
        int rc = 0;
        if (job_idle(m) || w->ret < 0)
            rc = 1; /* not copied: the background copy reads it */
        else if ((rc = active_copy(m, a)) < 0 && !m->ret)
            m->ret = rc;
        if (rc && !m->closing) {
            vbd_job_tracker_set_dirty(m->tracker, a->off, a->bytes);
            vbd_job_kick(m->job);
        }
        update_total(m);
    }
    if (a) {
        /* looked up again: the list changed while the copy yielded */
        struct active_write **pp = &m->active;
        while (*pp != a)
            pp = &(*pp)->next;
        *pp = a->next;
        a->next = m->spare;
        m->spare = a;
    }
    /* a write that ended: anyone waiting at begin looks again */
    vbd_co_queue_wake_all(&m->slot_wait);
}

static void wait_all(struct job_mirror *m)
{
    while (m->inflight)
        vbd_co_queue_wait(&m->slot_wait);
}

/* Start copying [off, off + bytes) in a free slot, once nothing in flight overlaps it. */
static void start_copy(struct job_mirror *m, uint64_t off, uint64_t bytes)
{
    while (m->inflight == m->nslots || overlaps_inflight(m, off, bytes))
        vbd_co_queue_wait(&m->slot_wait);
    struct slot *s = NULL;
    for (int i = 0; i < m->nslots && !s; i++)
        if (!m->slots[i].used)
            s = &m->slots[i];
    s->used = true;
    s->off = off;
    s->bytes = bytes;
    m->inflight++;
    m->inflight_bytes += bytes;
    vbd_co_wake(vbd_co_create(slot_co, s));
}

/* Zeroes the whole target, deallocating (QEMU's initial zeroing for
 * zero_target, not counted in the job's progress): 0, or -errno. */
static int zero_target(struct job_mirror *m, uint64_t len)
{
    for (uint64_t pos = 0; pos < len && !vbd_job_is_cancelled(m->job);) {
        uint64_t n = len - pos < 64 * m->chunk ? len - pos : 64 * m->chunk;
        int rc = vbd_node_co_pwrite_zeroes(m->target, pos, n, VBD_REQ_MAY_UNMAP);
        if (rc < 0)
            return rc;
        pos += n;
        vbd_job_pause_point(m->job);
    }
    return 0;
}

/* Does the whole of [0, len) of n read as zeroes (by its metadata)? */
static bool reads_zeroes(struct vbd_node *n, uint64_t len)
{
    for (uint64_t pos = 0, pnum = 0; pos < len; pos += pnum) {
        int st = vbd_node_co_block_status_above(n, NULL, false, pos, len - pos, &pnum, NULL, NULL, NULL);
        if (st < 0 || !pnum || !(st & VBD_BS_ZERO))
            return false;
    }
    return true;
}

int job_mirror_run(struct job_mirror *m)
{
    struct vbd_job *job = m->job;
    uint64_t len = vbd_node_size(m->src);
    /* QEMU's mirror_dirty_init. With a base (sync=top, the active commit)
     * only what the layers above it define is dirty: the rest the target
     * gets from the backing it shares (copy_range skips it too), and the
     * job's length counts only what it copies. Without a base the target
     * may hold old data anywhere: every chunk is dirty, unless the target
     * reads zeroes already (drive-mirror's new image) or is zeroed first
     * with unmap (opened with discard=unmap, a driver that deallocates
     * zeroes): then only what some layer allocates, as QEMU counts it.
     * Not with write-blocking, whose copies of guest writes would land
     * under the zeroing (QEMU holds them back until the dirty init). */
    bool by_allocation = m->base || m->target_new;
    /* sync=top without a backing file: QEMU copies only what the source
     * allocates (no zeroing, its length counts that); vbd too when the
     * target reads zeroes everywhere already, so nothing old shows through
     * (else every chunk, as sync=full) */
    if (m->initial_copy && !by_allocation && m->top_unbacked)
        by_allocation = reads_zeroes(m->target, len);
    if (m->initial_copy && !by_allocation && !m->write_blocking && (m->target->open_flags & VBD_OPEN_UNMAP) &&
        (m->target->supported_zero_flags & VBD_REQ_MAY_UNMAP))
        by_allocation = zero_target(m, len) == 0; /* else all dirty: copy_range zeroes what it must */
    for (uint64_t pos = 0, pnum = 0; m->initial_copy && pos < len; pos += pnum) {
        int st = by_allocation
                     ? vbd_node_co_block_status_above(m->src, m->base, true, pos, len - pos, &pnum, NULL, NULL, NULL)
                     : (int)VBD_BS_ALLOCATED;
        if (!by_allocation || st < 0 || !pnum) {
            vbd_job_tracker_set_dirty(m->tracker, pos, len - pos); /* copy_range looks again (and reports) */
            break;
        }
        if (st & VBD_BS_ALLOCATED)
            vbd_job_tracker_set_dirty(m->tracker, pos, pnum);
    }
    update_total(m);
    uint64_t next = 0;
    int rc = 0;
    for (;;) {
        if (vbd_job_is_cancelled(job)) {
            rc = -ECANCELED;
            break;
        }
        if (m->ret) {
            rc = m->ret;
            break;
        }
        if (m->stopped || vbd_job_should_pause(job)) {
            /* the copies in flight end first: a paused job does no I/O */
            wait_all(m);
            if (m->ret)
                continue;
            m->stopped = false;
            vbd_job_pause_point(job);
            continue;
        }
        uint64_t off = next, bytes;
        if (vbd_job_tracker_take_dirty(m->tracker, &off, &bytes, m->chunk)) {
            start_copy(m, off, bytes);
            next = off + bytes;
            vbd_job_ratelimit(job, bytes);
            continue;
        }
        if (m->inflight) {
            vbd_co_queue_wait(&m->slot_wait);
            continue;
        }
        /* in sync */
        if (job->status == VBD_JOB_RUNNING) {
            int f = vbd_node_co_flush(m->target);
            if (f < 0) {
                int r = on_error(m, false, f);
                if (r < 0) {
                    rc = r;
                    break;
                }
                if (r)
                    continue;
            }
            vbd_job_transition_ready(job);
        }
        if (job->status == VBD_JOB_READY && (m->complete || vbd_job_cancel_requested(job)))
            break;
        vbd_job_wait(job); /* a guest write, complete, cancel or pause wakes it */
        vbd_job_pause_point(job);
    }
    wait_all(m);
    if (rc == 0 && m->ret)
        rc = m->ret;
    if (rc == 0)
        rc = vbd_node_co_flush(m->target);
    return rc; /* the job's error is strerror's, as QEMU's */
}

void job_mirror_complete(struct job_mirror *m) { m->complete = true; }

void job_mirror_pause(struct job_mirror *m)
{
    /* the background copies, and the guest writes' copies to the target
     * begun before the pause (new ones are not made: job_idle) */
    while (m->inflight || m->active)
        vbd_co_queue_wait(&m->slot_wait);
}

static int copy_last(struct job_mirror *m)
{
    uint64_t off = 0, bytes;
    while (vbd_job_tracker_take_dirty(m->tracker, &off, &bytes, m->chunk)) {
        int rc = copy_range(m, off, bytes, m->slots[0].buf);
        if (rc) {
            vbd_job_tracker_set_dirty(m->tracker, off, bytes);
            return rc < 0 ? rc : -EIO;
        }
        m->job->ctl.current += bytes;
        m->job->ctl.total += bytes;
        off += bytes;
    }
    return 0;
}

int job_mirror_sync_last(struct job_mirror *m)
{
    m->stopped = false;
    int rc = copy_last(m);
    if (rc == 0)
        rc = vbd_node_co_flush(m->target);
    return rc;
}

void job_mirror_stop_tracking(struct job_mirror *m)
{
    if (!m)
        return;
    m->closing = true;
    vbd_co_queue_wake_all(&m->slot_wait); /* writes waiting in active_begin go on, uncopied */
    vbd_job_tracker_free(m->tracker);
    m->tracker = NULL;
}

/* every slot's buffer 4 KiB-aligned for O_DIRECT, whatever the granularity */
static size_t slot_stride(const struct job_mirror *m) { return ((size_t)m->chunk + 4095) & ~(size_t)4095; }

/* The slots' buffers in one region of transparent huge pages
 * (vbd_alloc_transfer_buffer): a 1 MiB O_DIRECT request from 4 KiB pages
 * scattered in memory has up to 256 segments and a virtio disk
 * (max_segments 254) splits it in two; from a huge page it is one segment,
 * one request. */
static size_t bufs_len(const struct job_mirror *m) { return (size_t)m->nslots * slot_stride(m); }

struct job_mirror *job_mirror_new(struct vbd_job *job, const struct job_mirror_opts *o)
{
    struct job_mirror *m = vbd_xcalloc(1, sizeof(*m));
    m->job = job;
    m->src = o->src;
    m->target = o->target;
    m->base = o->base;
    m->unmap = o->unmap;
    m->initial_copy = o->initial_copy;
    m->target_new = o->target_new;
    m->top_unbacked = o->top_unbacked;
    m->gran = o->granularity ? o->granularity : 64 * 1024;
    /* a chunk is a few granules, the slots share buf-size */
    uint64_t buf = o->buf_size ? o->buf_size : 16 * 1024 * 1024;
    m->chunk = m->gran > MIRROR_MAX_CHUNK ? m->gran : MIRROR_MAX_CHUNK;
    if (buf < m->chunk)
        m->chunk = buf < m->gran ? m->gran : buf / m->gran * m->gran;
    m->nslots = (int)(buf / m->chunk);
    if (m->nslots < 1)
        m->nslots = 1;
    if (m->nslots > MIRROR_MAX_INFLIGHT)
        m->nslots = MIRROR_MAX_INFLIGHT;
    m->slots = vbd_xcalloc((size_t)m->nslots, sizeof(*m->slots));
    m->bufs = vbd_alloc_transfer_buffer(bufs_len(m));
    for (int i = 0; i < m->nslots; i++) {
        m->slots[i].m = m;
        m->slots[i].buf = m->bufs + (size_t)i * slot_stride(m);
    }
    m->tracker = vbd_job_tracker_new(m->src, m->gran);
    vbd_job_tracker_set_job(m->tracker, job);
    m->write_blocking = o->write_blocking;
    if (m->write_blocking)
        vbd_job_tracker_set_write_copy(m->tracker, active_begin, active_end, m);
    return m;
}

void job_mirror_free(struct job_mirror *m)
{
    if (!m)
        return;
    job_mirror_stop_tracking(m);
    while (m->spare) {
        struct active_write *a = m->spare;
        m->spare = a->next;
        free(a);
    }
    vbd_free_transfer_buffer(m->bufs, bufs_len(m));
    free(m->slots);
    free(m);
}

/* ---------- blockdev-mirror / drive-mirror ---------- */

static int mirror_run(struct vbd_job *job, struct vbd_error **err)
{
    struct mirror *mj = job->opaque;
    /* QEMU's mirror_run: a target of another size (smaller: the copy
     * would not fit; larger: the guest would see its disk grow at the
     * pivot) fails the job it has started, with nothing copied (created,
     * running, aborting, BLOCK_JOB_COMPLETED with this error, len 0) */
    if (vbd_node_size(mj->target) != vbd_node_size(mj->src)) {
        vbd_error_setf(err, EINVAL, "Source and target image have different sizes");
        return -EINVAL;
    }
    return job_mirror_run(mj->m);
}

static void mirror_pause(struct vbd_job *job)
{
    struct mirror *mj = job->opaque;
    job_mirror_pause(mj->m);
}

static void mirror_complete(struct vbd_job *job)
{
    struct mirror *mj = job->opaque;
    job_mirror_complete(mj->m);
}

static int mirror_prepare(struct vbd_job *job, struct vbd_error **err)
{
    struct mirror *mj = job->opaque;
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(mj->src, &d);
    /* the exports and parents back on src: the pivot moves them from there */
    job_filter_drop(&mj->filter);
    /* the guest's last writes: a cancel in READY leaves the target a copy
     * of this moment too (QEMU's point-in-time block-job-cancel) */
    int rc = job_mirror_sync_last(mj->m);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not copy the last writes to '%s': %s", mj->target->node_name, strerror(-rc));
    } else if (!vbd_job_cancel_requested(job)) {
        struct vbd_node *old = mj->replaces;
        /* the target joins the old node's home loop (an iothread) when it can */
        struct vbd_loop *home = vbd_node_home_loop(old);
        struct vbd_error *e = NULL;
        if (vbd_node_home_loop(mj->target) != home && !vbd_daemon_node_pinned(mj->target, home) &&
            vbd_node_co_set_home(mj->target, home, &e) < 0) {
            vbd_error_free(e);
            e = NULL;
        }
        rc = vbd_daemon_replace_root(old, mj->target, err);
        if (rc >= 0) {
            rc = 0;
            /* QEMU's mirror_exit_common: the target takes the replaced
             * node's read-only state (a source reopened read-only while
             * the job ran) */
            if (old->read_only != mj->target->read_only && mj->target->drv->reopen_rw) {
                struct vbd_error *re = NULL;
                if (vbd_node_co_set_read_only(mj->target, old->read_only, &re) < 0)
                    vbd_warn("job '%s': target '%s' stays %s: %s", job->id, mj->target->node_name,
                             mj->target->read_only ? "read-only" : "read-write", re ? re->msg : "reopen failed");
                vbd_error_free(re);
            }
            /* every node whose backing the old node was reads the target */
            for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p))
                if (p->backing == old && p != mj->target) {
                    vbd_node_ref(mj->target);
                    p->backing = mj->target;
                    vbd_node_unref(old);
                }
            /* drive-mirror's target is its new users' (the exports, the
             * nodes above it), not the monitor's, as in qsd: it closes
             * with the last of them (at the job's end when none took it
             * over), and --state describes it from this save on */
            if (mj->target_owned)
                mj->target->held_by_users = true;
            /* vbd-daemon --state: saved before the guest writes to the target */
            struct vbd_error *ce = NULL;
            if (vbd_qmp_config_changed("job-finalize", NULL, &ce) < 0)
                vbd_warn("job '%s': %s", job->id, ce ? ce->msg : "the daemon's state was not saved");
            vbd_error_free(ce);
        }
    }
    vbd_daemon_drain_end(&d);
    return rc;
}

static void release_nodes(struct mirror *mj)
{
    if (!mj->src)
        return;
    vbd_node_unref(mj->src);
    vbd_node_unref(mj->replaces);
    if (mj->base)
        vbd_node_unref(mj->base);
    mj->target->backing_at_job_end = false; /* QEMU's mirror_exit_common attaches it */
    /* QEMU's mirror_exit_common: drive-mirror's target closes here unless
     * the pivot gave it users (the job's reference was its only one; the
     * job flushed it at its last sync) */
    vbd_node_unref(mj->target);
    mj->src = mj->target = mj->base = mj->replaces = NULL;
}

static void mirror_clean(struct vbd_job *job)
{
    struct mirror *mj = job->opaque;
    job_mirror_stop_tracking(mj->m);
    job_filter_co_remove(&mj->filter);
    release_nodes(mj);
}

static void mirror_free(struct vbd_job *job)
{
    struct mirror *mj = job->opaque;
    if (!mj)
        return;
    job_mirror_free(mj->m);
    job_filter_co_remove(&mj->filter);
    release_nodes(mj);
    free(mj);
}

static bool mirror_uses(struct vbd_job *job, struct vbd_node *n)
{
    struct mirror *mj = job->opaque;
    return mj->src && (n == mj->src || n == mj->target || n == mj->replaces);
}

/* QEMU's mirror_start_job: the job holds its mirror_top ("main node":
 * consistent reads; writes shared), the source (nothing taken, reads and
 * writes shared) and the target (nothing taken, all shared); its own
 * backend writes the target and shares only unchanged writes. In QEMU's
 * job->nodes order, the newest first. */
static void mirror_graph_edges(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct mirror *mj = job->opaque;
    if (!mj || !mj->src)
        return;
    edge(opaque, NULL, "target", mj->target, 0, 0xf);
    edge(opaque, NULL, "source", mj->src, 0, 0x1 | 0x2 | 0x4);
    if (mj->filter)
        edge(opaque, NULL, "main node", mj->filter, 0x1, 0x1 | 0x2 | 0x4);
}

static void mirror_graph_backends(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque)
{
    struct mirror *mj = job->opaque;
    if (mj && mj->src)
        edge(opaque, NULL, "root", mj->target, 0x2, 0x4);
}

static bool mirror_writes(struct vbd_job *job, struct vbd_node *n)
{
    struct mirror *mj = job->opaque;
    return mj->src && n == mj->target;
}

static const struct vbd_job_driver mirror_driver = {
    .type = "mirror",
    .run = mirror_run,
    .complete = mirror_complete,
    .pause = mirror_pause,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
    .free = mirror_free,
    .uses_node = mirror_uses,
    .graph_edges = mirror_graph_edges,
    .graph_backends = mirror_graph_backends,
    .writes_node = mirror_writes,
};

/* A target whose data a writable node keeps (a format's file, a quorum's
 * child): the mirror would write under the format's metadata or into one
 * replica apart from the others. QEMU's permission error, which QEMU
 * raises when it attaches the target to the job it has made (so after
 * the job's "created": then "null", as qsd 7.2's events show). */
static bool target_data_owned(struct vbd_node *t, struct vbd_qmp_error *err)
{
    char by[512];
    int owner = vbd_node_data_owner(t, by, sizeof(by));
    if (owner == VBD_NODE_OWNER_NONE)
        return false;
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                       "Permission conflict on node '%s': permissions '%s' are both required by %s and unshared by an "
                       "unnamed block device (uses node '%s' as 'root' child).",
                       t->node_name,
                       owner == VBD_NODE_OWNER_FORMAT      ? "consistent read, write, resize"
                       : owner == VBD_NODE_OWNER_FORMAT_RO ? "consistent read"
                                                           : "consistent read, write",
                       by, t->node_name);
    return true;
}

struct vbd_job *vbd_mirror_start(const struct vbd_mirror_args *a, struct vbd_qmp_error *err)
{
    /* QEMU's mirror_start_job compares the nodes below their filters: a
     * filter over the source is the source */
    if (vbd_node_skip_filters(a->src) == vbd_node_skip_filters(a->target)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't mirror node into itself");
        return NULL;
    }
    /* a target of another size is the job's failure once it runs
     * (mirror_run), as QEMU's: the command itself succeeds */
    if (a->target->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block node '%s' is read-only", a->target->node_name);
        return NULL;
    }
    /* The exports over the source drained from the filter to the write
     * hook (as QEMU drains around mirror_top's insertion; its dirty bitmap
     * also sees a write that ends later): no write is in flight unhooked
     * when the job looks at the source. */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(a->src, &d);
    /* QEMU's order: the filter, then the job */
    struct vbd_node *filter = NULL;
    struct vbd_job *job = NULL;
    if (job_filter_insert(JOB_FILTER_MIRROR, a->src, a->filter_node_name, NULL, &filter, err) == 0)
        job = vbd_job_create(&mirror_driver, a->job_id, a->auto_finalize, a->auto_dismiss, 0, a->on_source_error, err);
    if (job && vbd_job_set_speed(job, a->speed, err) < 0) {
        vbd_job_early_fail(job);
        job = NULL;
    }
    /* the target's locks before the job writes it (QEMU's mirror_start_job:
     * its backend writes and shares only unchanged writes), and no user of
     * the target that conflicts with that; the job's own edges keep them
     * from here on. QEMU attaches the target once the job is made: a
     * refusal shows the job created, then null. */
    struct vbd_error *le = NULL;
    if (job && target_data_owned(a->target, err)) {
        vbd_job_early_fail(job);
        job = NULL;
    }
    /* the source's reads first (QEMU's block_job_create on mirror_top,
     * before the target is attached): another node's image opened as the
     * target (drive-mirror mode=existing of the same image) then finds
     * them taken, as qsd's open does */
    char job_user[160];
    snprintf(job_user, sizeof(job_user), "mirror job '%s'", job ? job->id : "");
    struct vbd_qmp_perm_user users[] = {
        {.node = filter, .perm = 0x1, .shared = 0x1 | 0x2 | 0x4, .user = job_user, .child = "main node"},
        {.node = a->target, .perm = 0x2, .shared = 0x4, .user = "an unnamed block device", .child = "root"},
    };
    if (job && filter && vbd_qmp_image_locks_follow_users(users, 1, &le) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", le->msg);
        vbd_error_free(le);
        le = NULL;
        vbd_job_early_fail(job);
        job = NULL;
    }
    if (job && vbd_qmp_image_locks_follow_users(filter ? users : users + 1, filter ? 2 : 1, &le) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", le->msg);
        vbd_error_free(le);
        vbd_job_early_fail(job);
        job = NULL;
    }
    if (!job) {
        job_filter_co_remove(&filter);
        vbd_daemon_drain_end(&d);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* what the target was to take goes */
        return NULL;
    }
    job->on_target_error = a->on_target_error;
    struct mirror *mj = vbd_xcalloc(1, sizeof(*mj));
    mj->src = a->src;
    mj->target = a->target;
    mj->replaces = a->replaces ? a->replaces : a->src;
    mj->filter = filter;
    /* top and none: what the backing provides, the target's backing provides too */
    mj->base = a->sync == VBD_MIRROR_SYNC_FULL ? NULL : a->src->backing;
    vbd_node_ref(mj->src);
    vbd_node_ref(mj->replaces);
    if (mj->base)
        vbd_node_ref(mj->base);
    if (!a->target_owned)
        vbd_node_ref(mj->target); /* drive-mirror hands its reference over */
    mj->target_owned = a->target_owned;
    struct job_mirror_opts o = {
        .src = mj->src, .target = mj->target, .base = mj->base, .granularity = a->granularity,
        .buf_size = a->buf_size, .initial_copy = a->sync != VBD_MIRROR_SYNC_NONE, .unmap = a->unmap,
        .target_new = a->target_new,
        .top_unbacked = a->sync == VBD_MIRROR_SYNC_TOP && !a->src->backing,
        .write_blocking = a->write_blocking,
    };
    mj->m = job_mirror_new(job, &o);
    job->opaque = mj;
    vbd_daemon_drain_end(&d);
    vbd_job_start(job);
    return job;
}
