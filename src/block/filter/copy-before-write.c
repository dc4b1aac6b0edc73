/* SPDX-License-Identifier: MIT */
/*
 * Filter driver "copy-before-write" (QEMU 7.2's block/copy-before-write.c)
 * and the copy-before-write state it shares with the backup job
 * (vbd/cbw.h). Options as QEMU's: file (the source: reads and writes go
 * there), target (where old data is saved), bitmap {node, name} (only its
 * dirty clusters are saved), on-cbw-error (break-guest-write: the guest's
 * write fails when the old data cannot be saved; break-snapshot: the write
 * goes on and the point-in-time image becomes unreadable).
 *
 * Serialisation, as QEMU's block-copy with its in-flight requests: a
 * cluster being copied is claimed (other writers and the job wait on it
 * rather than copying it twice); a write waits, after its copies, for the
 * point-in-time reads of the source it overlaps. cbw-timeout (seconds, as
 * QEMU's): a guest write's copy that takes longer fails with ETIMEDOUT,
 * then on-cbw-error says what that breaks; the copy itself goes on in the
 * background (it cannot be stopped half-way) and the node's close waits for
 * it, as QEMU's block-copy with a timeout. The state lives on the
 * loop that made it (the main loop): every entry moves there and back, so
 * coroutine queues suffice even when the source's writes come from an
 * iothread.
 */
#include "vbd/cbw.h"

#include "block/filter/passthrough.h"
#include "vbd/alloc.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CBW_MAX_COPY (1u << 20) /* bytes claimed and copied in one step */
/* Copy buffers in the pool, made at the first copy: a fresh 1 MiB buffer
 * is 256 page faults. */
#define CBW_POOL_BUFS 16

struct span {
    uint64_t start, end;
    struct span *next;
};

struct vbd_cbw {
    struct vbd_node *source, *target;
    uint64_t cluster, size, nbits, ntodo;
    uint64_t *todo;           /* 1: old data only in the source */
    struct span *copying;     /* clusters claimed by a copy */
    struct span *reading;     /* point-in-time reads of the source */
    struct vbd_co_queue wait; /* anyone waiting for a span to end */
    int copy_error, snap_error;
    bool break_snapshot;
    bool compress;
    bool last_err_read; /* the last failed copy failed reading the source */
    struct vbd_loop *loop;
    uint64_t timeout_ns; /* a guest write's copy: 0 = no limit */
    int background;      /* copies that outlived their timeout, still running */
    /* The copies' buffers: CBW_POOL_BUFS of buf_size bytes in one region
     * of 2 MiB transparent huge pages (vbd_alloc_transfer_buffer). On a
     * virtio disk an O_DIRECT request is one descriptor per physically
     * contiguous run of its buffer: a 1 MiB copy from 4 KiB pages was 256
     * of them (the host serves each on its own), from a huge page it is
     * one. A copy beyond the pool's takes a buffer of its own. */
    uint8_t *pool;
    void *spare[CBW_POOL_BUFS]; /* the pool's buffers not in use */
    int nspare;
    size_t buf_size;
};

/* The pool's buffers start 4 KiB apart (O_DIRECT's alignment). */
static size_t pool_stride(const struct vbd_cbw *c) { return (c->buf_size + 4095) & ~(size_t)4095; }

static bool todo(const struct vbd_cbw *c, uint64_t i) { return c->todo[i / 64] >> (i % 64) & 1; }

static void set_todo(struct vbd_cbw *c, uint64_t i, bool v)
{
    if (todo(c, i) == v)
        return;
    c->todo[i / 64] ^= 1ull << (i % 64);
    if (v)
        c->ntodo++;
    else
        c->ntodo--;
}

static bool overlaps(const struct span *l, uint64_t s, uint64_t e)
{
    for (; l; l = l->next)
        if (l->start < e && s < l->end)
            return true;
    return false;
}

static void span_del(struct vbd_cbw *c, struct span **list, struct span *sp)
{
    for (struct span **p = list; *p; p = &(*p)->next)
        if (*p == sp) {
            *p = sp->next;
            break;
        }
    vbd_co_queue_wake_all(&c->wait);
}

uint64_t vbd_cbw_default_cluster(struct vbd_node *target)
{
    struct vbd_image_info info = {0};
    struct vbd_node *img = vbd_node_skip_filters(target);
    uint64_t cl = 65536;
    if (img && img->drv->get_info && vbd_node_get_info(img, &info, NULL) == 0 && info.cluster_size > cl &&
        !(info.cluster_size & (info.cluster_size - 1)))
        cl = info.cluster_size;
    json_object_put(info.format_specific);
    return cl;
}

struct vbd_cbw *vbd_cbw_new(struct vbd_node *source, struct vbd_node *target, uint64_t cluster,
                            struct vbd_dirty_bitmap *bitmap)
{
    struct vbd_cbw *c = vbd_xcalloc(1, sizeof(*c));
    c->source = source;
    c->target = target;
    c->cluster = cluster;
    c->loop = vbd_loop_current();
    c->size = vbd_node_size(source);
    c->nbits = (c->size + cluster - 1) / cluster;
    c->todo = vbd_xcalloc((size_t)(c->nbits / 64 + 1), sizeof(uint64_t));
    c->buf_size = cluster > CBW_MAX_COPY ? cluster : CBW_MAX_COPY;
    if (!bitmap) {
        for (uint64_t i = 0; i < c->nbits; i++)
            set_todo(c, i, true);
        return c;
    }
    for (uint64_t off = 0, pnum = 0; off < c->size; off += pnum) {
        int st = vbd_dirty_bitmap_status(bitmap, off, c->size - off, &pnum);
        if (!pnum)
            break;
        if (st == 1)
            for (uint64_t i = off / cluster; i <= (off + pnum - 1) / cluster && i < c->nbits; i++)
                set_todo(c, i, true);
    }
    return c;
}

static void wait_idle(void *arg)
{
    struct vbd_cbw *c = arg;
    while (c->copying || c->reading || c->background)
        vbd_co_queue_wait(&c->wait);
}

void vbd_cbw_free(struct vbd_cbw *c)
{
    if (!c)
        return;
    /* a copy that outlived its cbw-timeout may still run when the daemon
     * closes its nodes at exit, outside any coroutine */
    vbd_co_run_sync(wait_idle, c);
    vbd_free_transfer_buffer(c->pool, CBW_POOL_BUFS * pool_stride(c));
    free(c->todo);
    free(c);
}

uint64_t vbd_cbw_cluster(struct vbd_cbw *c) { return c->cluster; }
uint64_t vbd_cbw_remaining(struct vbd_cbw *c) { return c->ntodo * c->cluster; }
uint64_t vbd_cbw_todo_bytes(struct vbd_cbw *c, uint64_t off, uint64_t bytes)
{
    uint64_t n = 0;
    for (uint64_t i = off / c->cluster; i < c->nbits && i * c->cluster < off + bytes; i++)
        if (todo(c, i))
            n += c->cluster;
    return n;
}
bool vbd_cbw_todo(struct vbd_cbw *c, uint64_t off)
{
    assert(vbd_loop_is_current(c->loop));
    return off / c->cluster < c->nbits && todo(c, off / c->cluster);
}
int vbd_cbw_snapshot_error(struct vbd_cbw *c) { return c->snap_error; }
void vbd_cbw_set_break_snapshot(struct vbd_cbw *c, bool on) { c->break_snapshot = on; }
int vbd_cbw_copy_error(struct vbd_cbw *c) { return c->copy_error; }
bool vbd_cbw_last_error_read(struct vbd_cbw *c) { return c->last_err_read; }
void vbd_cbw_set_compress(struct vbd_cbw *c, bool on) { c->compress = on; }

bool vbd_cbw_next(struct vbd_cbw *c, uint64_t *off)
{
    assert(vbd_loop_is_current(c->loop));
    for (uint64_t i = *off / c->cluster; i < c->nbits; i++) {
        if (!c->todo[i / 64]) {
            i |= 63;
            continue;
        }
        if (todo(c, i)) {
            *off = i * c->cluster;
            return true;
        }
    }
    return false;
}

void vbd_cbw_forget(struct vbd_cbw *c, uint64_t off, uint64_t bytes)
{
    assert(vbd_loop_is_current(c->loop));
    for (uint64_t i = off / c->cluster; i < c->nbits && i * c->cluster < off + bytes; i++)
        set_todo(c, i, false);
}

/* A buffer for a copy of len bytes (at most buf_size: copy_clusters'
 * steps), from the pool when it has one: the pool's are 4 KiB-aligned,
 * enough for a source that asks no more. */
static void *copy_buf_get(struct vbd_cbw *c, uint64_t len)
{
    size_t align = c->source->bl.min_mem_alignment > 4096 ? c->source->bl.min_mem_alignment : 4096;
    if (align == 4096 && len <= c->buf_size) {
        if (!c->pool) {
            c->pool = vbd_alloc_transfer_buffer(CBW_POOL_BUFS * pool_stride(c));
            for (int i = CBW_POOL_BUFS; i-- > 0;)
                c->spare[c->nspare++] = c->pool + (size_t)i * pool_stride(c);
        }
        if (c->nspare)
            return c->spare[--c->nspare];
    }
    return vbd_alloc_aligned(align, c->buf_size);
}

static void copy_buf_put(struct vbd_cbw *c, void *buf)
{
    uint8_t *b = buf;
    if (c->pool && b >= c->pool && b < c->pool + CBW_POOL_BUFS * pool_stride(c))
        c->spare[c->nspare++] = buf;
    else
        free(buf);
}

/* Copy one claimed span whose status st (for pnum bytes) the caller
 * looked up: zeroes as zeroes, the rest read and written. */
static int copy_span(struct vbd_cbw *c, uint64_t s, uint64_t e, int st, uint64_t pnum, bool *skipped,
                     bool skip_unallocated)
{
    *skipped = false;
    if (st >= 0 && pnum >= e - s) {
        if (skip_unallocated && !(st & VBD_BS_ALLOCATED)) {
            *skipped = true;
            return 0;
        }
        if (st & VBD_BS_ZERO) {
            c->last_err_read = false;
            return vbd_node_co_pwrite_zeroes(c->target, s, e - s, 0);
        }
    }
    void *buf = copy_buf_get(c, e - s);
    int rc = vbd_node_co_pread(c->source, s, buf, e - s);
    c->last_err_read = rc < 0;
    if (rc == 0 && c->compress) {
        /* compressed writes are one cluster each */
        for (uint64_t p = s; p < e && rc == 0; p += c->cluster)
            rc = vbd_node_co_pwrite(c->target, p, (uint8_t *)buf + (p - s), e - p < c->cluster ? e - p : c->cluster,
                                    VBD_REQ_COMPRESSED);
    } else if (rc == 0) {
        rc = vbd_node_co_pwrite(c->target, s, buf, e - s, 0);
    }
    copy_buf_put(c, buf);
    return rc;
}

/* Claim, copy and clear what is still to copy in the clusters [first, last). */
static int copy_clusters(struct vbd_cbw *c, uint64_t first, uint64_t last, bool skip_unallocated, uint64_t *copied)
{
    uint64_t max = CBW_MAX_COPY / c->cluster ? CBW_MAX_COPY / c->cluster : 1;
    for (;;) {
        uint64_t i = first;
        while (i < last && !todo(c, i))
            i++;
        if (i >= last)
            return 0;
        if (overlaps(c->copying, i * c->cluster, (i + 1) * c->cluster)) {
            vbd_co_queue_wait(&c->wait); /* someone copies it: look again when they are done */
            continue;
        }
        uint64_t j = i + 1;
        while (j < last && j - i < max && todo(c, j) && !overlaps(c->copying, j * c->cluster, (j + 1) * c->cluster))
            j++;
        /* claimed before the status look-up, which may yield: a writer
         * that comes meanwhile must wait for this copy, not copy the same
         * clusters beside it (its write to the source would then race with
         * this copy's read, and the new data reach the target) */
        struct span sp = {.start = i * c->cluster, .end = j * c->cluster, .next = c->copying};
        c->copying = &sp;
        /* one status per step: a span of the same kind */
        uint64_t s = i * c->cluster, e = j * c->cluster < c->size ? j * c->cluster : c->size, pnum = 0;
        int st = vbd_node_co_block_status(c->source, true, s, e - s, &pnum, NULL, NULL);
        if (st >= 0 && pnum >= c->cluster && pnum < e - s) {
            e = s + pnum / c->cluster * c->cluster;
            j = e / c->cluster;
        } else if (st >= 0 && pnum < c->cluster && e - s > c->cluster) {
            e = s + c->cluster; /* a mixed cluster: copied as data */
            j = i + 1;
        }
        if (sp.end > j * c->cluster) {
            sp.end = j * c->cluster; /* the rest is free again: its waiters look again */
            vbd_co_queue_wake_all(&c->wait);
        }
        bool skipped;
        int rc = copy_span(c, s, e, st, pnum, &skipped, skip_unallocated);
        if (rc == 0)
            for (uint64_t k = i; k < j; k++)
                set_todo(c, k, false);
        span_del(c, &c->copying, &sp);
        if (rc < 0) {
            if (!copied && !c->copy_error) /* a guest write's copy: the image is incomplete */
                c->copy_error = rc;
            return rc;
        }
        if (copied && !skipped)
            *copied += e - s;
    }
}

/* A guest write's copy with a time limit: it runs in its own coroutine,
 * which the writer stops waiting for at the deadline. */
struct timed_copy {
    struct vbd_cbw *c;
    uint64_t first, last;
    int rc;
    bool done, woken, abandoned;
    struct vbd_co *writer;
    struct vbd_timer timer;
};

static void timed_copy_co(void *arg)
{
    struct timed_copy *t = arg;
    struct vbd_cbw *c = t->c;
    t->rc = copy_clusters(c, t->first, t->last, false, NULL);
    t->done = true;
    if (t->abandoned) {
        free(t);
        c->background--;
        vbd_co_queue_wake_all(&c->wait);
    } else if (!t->woken) {
        t->woken = true;
        vbd_co_wake(t->writer);
    }
}

static void timed_copy_expired(void *arg)
{
    struct timed_copy *t = arg;
    if (!t->woken) {
        t->woken = true;
        vbd_co_wake(t->writer);
    }
}

static int copy_for_write(struct vbd_cbw *c, uint64_t first, uint64_t last)
{
    if (!c->timeout_ns)
        return copy_clusters(c, first, last, false, NULL);
    struct timed_copy *t = vbd_xcalloc(1, sizeof(*t));
    t->c = c;
    t->first = first;
    t->last = last;
    t->writer = vbd_co_self();
    t->timer.fn = timed_copy_expired;
    t->timer.arg = t;
    c->background++;
    vbd_timer_arm(&t->timer, vbd_clock_ns() + c->timeout_ns);
    vbd_co_wake(vbd_co_create(timed_copy_co, t));
    vbd_co_yield();
    vbd_timer_cancel(&t->timer);
    if (!t->done) {
        t->abandoned = true; /* it frees itself when it ends */
        return -ETIMEDOUT;
    }
    int rc = t->rc;
    free(t);
    c->background--;
    vbd_co_queue_wake_all(&c->wait);
    return rc;
}

void vbd_cbw_set_timeout_ns(struct vbd_cbw *c, uint64_t ns) { c->timeout_ns = ns; }

int vbd_cbw_co_copy(struct vbd_cbw *c, uint64_t off, uint64_t bytes, bool skip_unallocated, uint64_t *copied)
{
    uint64_t last = (off + bytes + c->cluster - 1) / c->cluster;
    *copied = 0;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(c->loop);
    int rc = copy_clusters(c, off / c->cluster, last < c->nbits ? last : c->nbits, skip_unallocated, copied);
    vbd_co_move_to(here);
    return rc;
}

int vbd_cbw_co_before_write(struct vbd_cbw *c, uint64_t off, uint64_t bytes)
{
    if (!bytes || off >= c->size)
        return 0;
    uint64_t last = (off + bytes + c->cluster - 1) / c->cluster;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(c->loop);
    int rc = c->snap_error ? 0 : copy_for_write(c, off / c->cluster, last < c->nbits ? last : c->nbits);
    if (rc < 0 && c->break_snapshot) {
        c->snap_error = rc; /* the image is lost; the guest goes on */
        rc = 0;
    }
    while (overlaps(c->reading, off, off + bytes))
        vbd_co_queue_wait(&c->wait);
    vbd_co_move_to(here);
    return rc;
}

int vbd_cbw_co_snapshot_read(struct vbd_cbw *c, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff)
{
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(c->loop);
    int rc = 0;
    for (uint64_t pos = off; pos < off + bytes && rc == 0;) {
        if (c->snap_error) {
            rc = -EACCES; /* QEMU's word for a broken snapshot */
            break;
        }
        uint64_t i = pos / c->cluster;
        bool from_source = i < c->nbits && todo(c, i);
        uint64_t end = (i + 1) * c->cluster;
        while (end < off + bytes && end / c->cluster < c->nbits && todo(c, end / c->cluster) == from_source)
            end += c->cluster;
        if (end > off + bytes)
            end = off + bytes;
        if (from_source) {
            struct span sp = {.start = pos, .end = end, .next = c->reading};
            c->reading = &sp;
            rc = vbd_node_co_preadv(c->source, pos, end - pos, q, qoff + (pos - off), 0);
            span_del(c, &c->reading, &sp);
        } else {
            rc = vbd_node_co_preadv(c->target, pos, end - pos, q, qoff + (pos - off), 0);
        }
        pos = end;
    }
    vbd_co_move_to(here);
    return rc;
}

/* ---------- the filter driver ---------- */

struct cbw_node {
    struct vbd_cbw *c;
    struct vbd_node *target;
};

static const struct vbd_driver cbw_driver;

struct vbd_cbw *vbd_cbw_of_node(struct vbd_node *n)
{
    return n && n->drv == &cbw_driver ? ((struct cbw_node *)n->opaque)->c : NULL;
}

struct vbd_node *vbd_cbw_node_target(struct vbd_node *n)
{
    return n && n->drv == &cbw_driver ? ((struct cbw_node *)n->opaque)->target : NULL;
}

static int cbw_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct cbw_node *s = n->opaque;
    static const char *const policies[] = {"break-guest-write", "break-snapshot", NULL};
    int policy = 0;
    uint64_t timeout = 0;
    struct json_object *bm = vbd_opt_take_obj(opts, "bitmap");
    if (vbd_opt_take_enum(opts, "on-cbw-error", policies, &policy, err) < 0 ||
        vbd_opt_take_u64(opts, "cbw-timeout", &timeout, err) < 0)
        goto fail;
    /* seconds (a uint32 in QEMU's schema); QEMU 7.2 keeps them times 10^9
     * in 32 bits, so above 4 s its limit wraps (fixed in QEMU 9.0): vbd
     * takes the seconds as given */
    if (timeout > UINT32_MAX) {
        vbd_error_setf(err, EINVAL, "Parameter 'cbw-timeout' expects uint32_t");
        goto fail;
    }
    struct vbd_dirty_bitmap *bitmap = NULL;
    if (bm) {
        struct json_object *bn, *bname;
        struct vbd_node *owner;
        if (!json_object_object_get_ex(bm, "node", &bn) || !json_object_object_get_ex(bm, "name", &bname)) {
            vbd_error_setf(err, EINVAL, "copy-before-write: bitmap needs 'node' and 'name'");
            goto fail;
        }
        if (!(owner = vbd_node_find(json_object_get_string(bn))) ||
            !(bitmap = vbd_dirty_bitmap_find(owner, json_object_get_string(bname)))) {
            vbd_error_setf(err, ENOENT, "Dirty bitmap '%s' not found", json_object_get_string(bname));
            goto fail;
        }
    }
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        goto fail;
    s->target = vbd_open_child(n, opts, "target", NULL, flags | VBD_OPEN_RDWR, err);
    if (!s->target)
        goto fail;
    if (vbd_node_size(s->target) < vbd_node_size(n->file)) {
        vbd_error_setf(err, EINVAL, "copy-before-write: target '%s' is smaller than the source", s->target->node_name);
        goto fail;
    }
    vbd_filter_inherit(n);
    s->c = vbd_cbw_new(n->file, s->target, vbd_cbw_default_cluster(s->target), bitmap);
    vbd_cbw_set_break_snapshot(s->c, policy == 1);
    vbd_cbw_set_timeout_ns(s->c, timeout * 1000000000u);
    json_object_put(bm);
    return 0;
fail:
    json_object_put(bm);
    return -EINVAL;
}

static void cbw_close(struct vbd_node *n)
{
    struct cbw_node *s = n->opaque;
    vbd_cbw_free(s->c);
    vbd_node_unref(s->target);
}

static int cbw_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct cbw_node *s = n->opaque;
    int rc = vbd_cbw_co_before_write(s->c, off, bytes);
    return rc < 0 ? rc : vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
}

static int cbw_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct cbw_node *s = n->opaque;
    int rc = vbd_cbw_co_before_write(s->c, off, bytes);
    return rc < 0 ? rc : vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
}

static int cbw_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct cbw_node *s = n->opaque;
    int rc = vbd_cbw_co_before_write(s->c, off, bytes);
    return rc < 0 ? rc : vbd_node_co_pdiscard(n->file, off, bytes);
}

static int cbw_flush(struct vbd_node *n)
{
    struct cbw_node *s = n->opaque;
    return vbd_node_co_flush(s->target);
}

static const struct vbd_driver cbw_driver = {
    .name = "copy-before-write",
    .kind = VBD_DRV_FILTER,
    .state_size = sizeof(struct cbw_node),
    .open = cbw_open,
    .close = cbw_close,
    .co_preadv = vbd_filter_co_preadv,
    .co_pwritev = cbw_pwritev,
    .co_pwrite_zeroes = cbw_pwrite_zeroes,
    .co_pdiscard = cbw_pdiscard,
    .co_flush = cbw_flush,
};
VBD_DRIVER_REGISTER(copy_before_write, cbw_driver);
