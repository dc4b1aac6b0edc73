/* SPDX-License-Identifier: MIT */
/*
 * The generic request path: bounds, permission and flag checks once at the
 * top, then alignment (read-modify-write through a bounce buffer,
 * serialised against overlapping requests), splitting at max_transfer, FUA
 * and write-zeroes emulation. Drivers below see only valid, aligned
 * requests (what they may assume: vbd/block.h, struct vbd_driver).
 */
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/loop.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BOUNCE_CHUNK (1u << 20)
#define MAX_IOV 1024

/*
 * Overlapping requests on a node with request_alignment > 1 (cache.direct=on
 * files and raw on top of them). A write that is not aligned is a
 * read-modify-write of whole blocks: it is "serialising" and must not
 * overlap any other request in flight, earlier or later, or one of the two
 * writes is lost. Requests may come from several loops at once (multi-loop
 * drivers), so the list is guarded by n->reqs_lock, as QEMU's bs->reqs_lock.
 *
 * Aligned requests are nearly all of them, and they only need to keep
 * out of serialising ones: while no serialising request is in flight they
 * are counted in n->untracked_in_flight, take no lock and stay off the
 * list. Dekker-style (both sides sequentially consistent): an aligned
 * request adds itself to the count and then looks for serialising
 * requests; a serialising request announces itself and then waits for the
 * count to drain. At least one of the two sees the other. Once a
 * serialising request is announced, new aligned requests take the lock
 * and join the list until it is done.
 */
struct vbd_tracked_req {
    uint64_t start, end; /* aligned byte range */
    uint64_t seq;        /* order of arrival on the list: only earlier conflicts are waited for */
    bool serialising;
    bool waiting;        /* yielded in tracked_begin; whoever changes the list wakes it */
    struct vbd_co *co;
    struct vbd_tracked_req *next;
};

static bool needs_tracking(struct vbd_node *n)
{
    return n->bl.request_alignment > 1;
}

static bool conflicts(const struct vbd_tracked_req *a, const struct vbd_tracked_req *b)
{
    return a->start < b->end && b->start < a->end && (a->serialising || b->serialising);
}

/* reqs_lock held */
static bool must_wait(struct vbd_node *n, const struct vbd_tracked_req *r)
{
    if (r->serialising && atomic_load(&n->untracked_in_flight))
        return true;
    for (struct vbd_tracked_req *o = n->tracked; o; o = o->next)
        if (o != r && o->seq < r->seq && conflicts(o, r))
            return true;
    return false;
}

/* reqs_lock held. A waiter on another loop is woken there (vbd_co_wake),
 * never before it has yielded: its loop runs the wake-up only then. */
static void wake_waiters(struct vbd_node *n)
{
    for (struct vbd_tracked_req *o = n->tracked; o; o = o->next)
        if (o->waiting) {
            o->waiting = false;
            vbd_co_wake(o->co);
        }
}

static void untracked_end(struct vbd_node *n)
{
    /* The last one out wakes a serialising request waiting for the count. */
    if (atomic_fetch_sub(&n->untracked_in_flight, 1) == 1 && atomic_load(&n->serialising_in_flight)) {
        pthread_mutex_lock(&n->reqs_lock);
        wake_waiters(n);
        pthread_mutex_unlock(&n->reqs_lock);
    }
}

/* The lock-free entry of an aligned request: true if it may go on untracked. */
static bool untracked_begin(struct vbd_node *n)
{
    atomic_fetch_add(&n->untracked_in_flight, 1);
    if (!atomic_load(&n->serialising_in_flight))
        return true;
    untracked_end(n);
    return false;
}

/* Register, then wait until no earlier conflicting request is in flight.
 * Waiting only on earlier requests rules out deadlocks. */
static void tracked_begin(struct vbd_node *n, struct vbd_tracked_req *r, uint64_t off, uint64_t bytes, bool ser)
{
    uint64_t a = n->bl.request_alignment;
    r->start = off & ~(a - 1);
    r->end = (off + bytes + a - 1) & ~(a - 1);
    r->serialising = ser;
    r->waiting = false;
    r->co = vbd_co_self();
    pthread_mutex_lock(&n->reqs_lock);
    if (ser)
        atomic_fetch_add(&n->serialising_in_flight, 1);
    r->seq = ++n->tracked_seq;
    r->next = n->tracked;
    n->tracked = r;
    while (must_wait(n, r)) {
        r->waiting = true;
        pthread_mutex_unlock(&n->reqs_lock);
        vbd_co_yield();
        pthread_mutex_lock(&n->reqs_lock);
    }
    pthread_mutex_unlock(&n->reqs_lock);
}

static void tracked_end(struct vbd_node *n, struct vbd_tracked_req *r)
{
    pthread_mutex_lock(&n->reqs_lock);
    for (struct vbd_tracked_req **pp = &n->tracked; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    if (r->serialising)
        atomic_fetch_sub(&n->serialising_in_flight, 1);
    wake_waiters(n);
    pthread_mutex_unlock(&n->reqs_lock);
}

/* The concurrency contract (vbd/block.h): a node whose driver is not
 * multi-loop is entered only on its home loop. */
static inline void assert_home(const struct vbd_node *n)
{
    assert((n->drv->caps & VBD_DRV_CAP_MULTI_LOOP) || vbd_node_home_loop(n) == vbd_loop_current());
}

struct vbd_loop *vbd_node_co_enter_home(struct vbd_node *n)
{
    if (n->drv->caps & VBD_DRV_CAP_MULTI_LOOP)
        return NULL;
    struct vbd_loop *home = vbd_node_home_loop(n), *here = vbd_loop_current();
    if (home == here)
        return NULL;
    /* only a coroutine can change threads: callers outside one (the tools)
     * open and use their nodes on one loop */
    assert(vbd_in_co());
    vbd_co_move_to(home);
    return here;
}

void vbd_node_co_leave_home(struct vbd_loop *origin)
{
    if (origin)
        vbd_co_move_to(origin);
}

bool vbd_node_growable(const struct vbd_node *n)
{
    /* a format grows its file by writing past the end; a filter between
     * them (blkdebug, throttle...) passes such writes down, as in QEMU */
    while (n->drv->kind == VBD_DRV_FILTER && n->file)
        n = n->file;
    return n->drv->kind == VBD_DRV_PROTOCOL && n->drv->co_truncate;
}

/* A write past the end of a growable filter grew the file under it: the
 * filter's size follows (QEMU's write_req_finish), else a format reading
 * back what it appended would see a stale end (qcow2 takes a refcount
 * block past it for never written). Writers on several loops may race
 * here: the size only ever grows. */
static void filter_grown(struct vbd_node *n, uint64_t end)
{
    if (n->drv->kind != VBD_DRV_FILTER || !vbd_node_growable(n))
        return;
    uint64_t cur = vbd_node_size(n);
    while (end > cur && !__atomic_compare_exchange_n(&n->size, &cur, end, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* The request edge: every range a caller hands in is checked here, once. */
static int check_range(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    assert_home(n);
    return vbd_request_check(vbd_node_growable(n) ? VBD_MAX_REQUEST_END : vbd_node_size(n), off, bytes);
}

static bool mem_aligned(struct vbd_node *n, const struct vbd_qiov *q, size_t qoff, uint64_t bytes)
{
    uint32_t m = n->bl.min_mem_alignment;
    if (m <= 1)
        return true;
    size_t skip = qoff, left = bytes;
    for (int i = 0; i < q->niov && left; i++) {
        if (skip >= q->iov[i].iov_len) {
            skip -= q->iov[i].iov_len;
            continue;
        }
        uintptr_t base = (uintptr_t)q->iov[i].iov_base + skip;
        size_t len = q->iov[i].iov_len - skip;
        if (len > left)
            len = left;
        if ((base & (m - 1)) || (len & (m - 1)))
            return false;
        left -= len;
        skip = 0;
    }
    return true;
}

/* A limit (0: none) aligned down to the node's request alignment, never
 * below it: a node may align more coarsely than its child limits a request
 * (a probed raw node aligns to 512 over a child with max-transfer=2), and a
 * limit aligned down to 0 would split a request into empty pieces forever;
 * the child splits what it is handed to its own limit. */
static uint64_t limit_aligned(uint64_t limit, uint64_t none, uint64_t a)
{
    uint64_t m = (limit ? limit : none) & ~(a - 1);
    return m ? m : a;
}

static uint64_t max_xfer(struct vbd_node *n)
{
    return limit_aligned(n->bl.max_transfer, 1ull << 30, n->bl.request_alignment);
}

/* Aligned and in bounds: split at max_transfer and hand to the driver. */
static int drv_rw(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                  unsigned flags)
{
    uint64_t mx = max_xfer(n);
    int (*fn)(struct vbd_node *, uint64_t, uint64_t, struct vbd_qiov *, size_t, unsigned) =
        write ? n->drv->co_pwritev : n->drv->co_preadv;
    if (!fn)
        return -ENOTSUP;
    unsigned dflags = write ? (flags & n->supported_write_flags) : (flags & VBD_REQ_INLINE); /* the only read flag */
    while (bytes) {
        uint64_t len = bytes < mx ? bytes : mx;
        int rc = fn(n, off, len, q, qoff, dflags);
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    if (write && (flags & VBD_REQ_FUA) && !(n->supported_write_flags & VBD_REQ_FUA))
        return vbd_node_co_flush(n);
    return 0;
}

/* Unaligned (offset, length or memory): go through an aligned bounce
 * buffer chunk by chunk; partial blocks at the ends are read first. */
static int bounce_rw(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                     unsigned flags, const void *zero_src)
{
    uint64_t a = n->bl.request_alignment;
    uint32_t ma = n->bl.min_mem_alignment > 512 ? n->bl.min_mem_alignment : 512;
    uint64_t start = off & ~(a - 1);
    uint64_t end = (off + bytes + a - 1) & ~(a - 1);
    uint64_t chunk = BOUNCE_CHUNK > a ? BOUNCE_CHUNK : a;
    if (chunk > end - start)
        chunk = end - start;
    uint8_t *buf = vbd_alloc_aligned(ma > 4096 ? ma : 4096, chunk);
    int rc = 0;
    for (uint64_t pos = start; pos < end && rc == 0;) {
        uint64_t len = end - pos < chunk ? end - pos : chunk;
        uint64_t data_lo = off > pos ? off : pos;
        uint64_t data_hi = off + bytes < pos + len ? off + bytes : pos + len;
        struct iovec one = {buf, len};
        struct vbd_qiov bq = {&one, 1, len};
        if (!write || data_lo > pos || data_hi < pos + len) {
            /* Past a protocol file's EOF the read zero-fills. */
            rc = drv_rw(n, false, pos, len, &bq, 0, 0);
            if (rc < 0)
                break;
        }
        if (write) {
            if (zero_src)
                memset(buf + (data_lo - pos), 0, data_hi - data_lo);
            else
                vbd_iov_to_buf(q->iov, q->niov, qoff + (data_lo - off), buf + (data_lo - pos), data_hi - data_lo);
            rc = drv_rw(n, true, pos, len, &bq, 0, flags);
        } else {
            vbd_iov_from_buf(q->iov, q->niov, qoff + (data_lo - off), buf + (data_lo - pos), data_hi - data_lo);
        }
        pos += len;
    }
    free(buf);
    return rc;
}

static int node_rw_data(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    assert(vbd_in_co());
    int rc = check_range(n, off, bytes);
    if (rc < 0)
        return rc;
    if (write && n->read_only)
        return -EACCES;
    if (write)
        vbd_node_check_write_threshold(n, off, bytes);
    if (bytes == 0)
        return 0;
    if (q && qoff + bytes > q->size)
        return -EINVAL;
    uint64_t a = n->bl.request_alignment;
    bool aligned = !((off | bytes) & (a - 1));
    bool direct = aligned && mem_aligned(n, q, qoff, bytes);
    if (!needs_tracking(n) && direct)
        return drv_rw(n, write, off, bytes, q, qoff, flags);
    bool serialising = write && !aligned;
    if (!serialising && untracked_begin(n)) {
        rc = direct ? drv_rw(n, write, off, bytes, q, qoff, flags) : bounce_rw(n, write, off, bytes, q, qoff, flags, NULL);
        untracked_end(n);
        return rc;
    }
    struct vbd_tracked_req tr;
    tracked_begin(n, &tr, off, bytes, serialising);
    rc = direct ? drv_rw(n, write, off, bytes, q, qoff, flags) : bounce_rw(n, write, off, bytes, q, qoff, flags, NULL);
    tracked_end(n, &tr);
    return rc;
}

static bool qiov_is_zero(const struct vbd_qiov *q, size_t qoff, uint64_t bytes)
{
    for (int i = 0; i < q->niov && bytes; i++) {
        size_t l = q->iov[i].iov_len;
        if (qoff >= l) {
            qoff -= l;
            continue;
        }
        l -= qoff;
        if (l > bytes)
            l = bytes;
        if (!vbd_buffer_is_zero((const char *)q->iov[i].iov_base + qoff, l))
            return false;
        bytes -= l;
        qoff = 0;
    }
    return true;
}

static int pwrite_zeroes_home(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags);

/* detect-zeroes as QEMU's bdrv_aligned_pwritev: a write whose data is all
 * zeroes goes down as a write-zeroes request, FUA kept, allowed to
 * deallocate with detect-zeroes=unmap (which needs discard=unmap). Off costs
 * one predictable branch. Compressed writes stay writes. */
static int node_rw_home(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    int rc;
    if (__builtin_expect(write && n->detect_zeroes != VBD_DZ_OFF, 0) && n->drv->co_pwrite_zeroes && bytes && q &&
        !(flags & VBD_REQ_COMPRESSED) && qoff <= q->size && bytes <= q->size - qoff && qiov_is_zero(q, qoff, bytes))
        rc = pwrite_zeroes_home(n, off, bytes,
                                (flags & VBD_REQ_FUA) | (n->detect_zeroes == VBD_DZ_UNMAP ? VBD_REQ_MAY_UNMAP : 0));
    else
        rc = node_rw_data(n, write, off, bytes, q, qoff, flags);
    if (rc == 0 && write && off + bytes > vbd_node_size(n))
        filter_grown(n, off + bytes);
    return rc;
}

static int pdiscard_home(struct vbd_node *n, uint64_t off, uint64_t bytes);

/* The requests that pass the node's write hook; each call site names a
 * constant one, so that the inlined switch below folds away. */
enum node_op { NODE_READ, NODE_WRITE, NODE_DISCARD, NODE_ZEROES };

static inline __attribute__((always_inline)) int node_op_home(struct vbd_node *n, enum node_op op, uint64_t off,
                                                               uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                                                               unsigned flags)
{
    switch (op) {
    case NODE_READ:
        return node_rw_home(n, false, off, bytes, q, qoff, flags);
    case NODE_WRITE:
        return node_rw_home(n, true, off, bytes, q, qoff, flags);
    case NODE_DISCARD:
        return pdiscard_home(n, off, bytes);
    default:
        return pwrite_zeroes_home(n, off, bytes, flags);
    }
}

void vbd_node_add_write_hook(struct vbd_node *n, struct vbd_write_hook *h)
{
    assert(pthread_equal(n->home_thread, pthread_self()));
    h->next = n->write_hook;
    __atomic_store_n(&n->write_hook, h, __ATOMIC_RELEASE);
}

void vbd_node_remove_write_hook(struct vbd_node *n, struct vbd_write_hook *h)
{
    assert(pthread_equal(n->home_thread, pthread_self()));
    for (struct vbd_write_hook **pp = &n->write_hook; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            __atomic_store_n(pp, h->next, __ATOMIC_RELEASE);
            return;
        }
}

/* The write itself, inside every hook; the dirty bitmaps mark it after,
 * failed or not, as QEMU's write_req_finish. */
static int node_op_marked(struct vbd_node *n, enum node_op op, struct vbd_hooked_write *w, bool bm)
{
    int rc = node_op_home(n, op, w->off, w->bytes, w->qiov, w->qoff, w->flags);
    w->ret = rc;
    if (bm || vbd_node_has_dirty_bitmaps(n))
        vbd_dirty_bitmaps_mark(n, w->off, w->bytes);
    return rc;
}

/* Hook h and the ones under it around the write: each end pairs with its
 * begin even if the list changes meanwhile. */
static int node_op_in_hooks(struct vbd_node *n, enum node_op op, struct vbd_write_hook *h, struct vbd_hooked_write *w,
                            bool bm)
{
    h->begin(h, w);
    struct vbd_write_hook *under = __atomic_load_n(&h->next, __ATOMIC_ACQUIRE);
    int rc = under ? node_op_in_hooks(n, op, under, w, bm) : node_op_marked(n, op, w, bm);
    h->end(h, w);
    return rc;
}

/* The write hooks (block jobs) and the dirty bitmaps see the write around
 * it; one load and one test when there are none. */
static inline __attribute__((always_inline)) int node_op_hooked(struct vbd_node *n, enum node_op op, uint64_t off,
                                                                 uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                                                                 unsigned flags)
{
    struct vbd_write_hook *h = __atomic_load_n(&n->write_hook, __ATOMIC_ACQUIRE);
    bool bm = vbd_node_has_dirty_bitmaps(n);
    if (__builtin_expect(h == NULL && !bm, 1))
        return node_op_home(n, op, off, bytes, q, qoff, flags);
    struct vbd_hooked_write w = {.off = off, .bytes = bytes, .co = vbd_co_self(), .qiov = q,
                                 .qoff = qoff, .flags = flags, .discard = op == NODE_DISCARD};
    return h ? node_op_in_hooks(n, op, h, &w, bm) : node_op_marked(n, op, &w, bm);
}

/* Writes pass the node's write hook (a block job) on the home loop, where
 * the job's state lives: the hook never runs on two loops at once. */
static int rw_hooked(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                     unsigned flags)
{
    if (!write)
        return node_op_home(n, NODE_READ, off, bytes, q, qoff, flags);
    return node_op_hooked(n, NODE_WRITE, off, bytes, q, qoff, flags);
}

/* Discard and write zeroes: on the home loop, through the write hook. */
static int node_op(struct vbd_node *n, enum node_op op, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = op == NODE_DISCARD ? node_op_hooked(n, NODE_DISCARD, off, bytes, NULL, 0, flags)
                                : node_op_hooked(n, NODE_ZEROES, off, bytes, NULL, 0, flags);
    vbd_node_co_leave_home(origin);
    return rc;
}

/* The entry of every read and write: on the home loop from here down. */
/* The common request in one test: a multi-loop node that needs no
 * alignment, tracking or splitting, a request inside it, and for a write no
 * job hook, no dirty bitmap, no threshold and no flag to emulate. What the
 * path of node_rw would do with it is exactly the driver call; its checks
 * cost as much as the driver call itself for a filter passing requests to
 * its file (a throttle node's second pass through this layer was about 250
 * instructions under callgrind). */
static inline bool goes_straight_down(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q,
                                      size_t qoff, unsigned flags)
{
    const struct vbd_driver *drv = n->drv;
    if (!((drv->caps & VBD_DRV_CAP_MULTI_LOOP) && n->bl.request_alignment == 1 && n->bl.min_mem_alignment <= 1 &&
          bytes && q && qoff <= q->size && bytes <= q->size - qoff &&
          bytes <= (n->bl.max_transfer ? n->bl.max_transfer : 1ull << 30) && off <= vbd_node_size(n) &&
          bytes <= vbd_node_size(n) - off))
        return false;
    if (!write)
        return drv->co_preadv != NULL;
    return drv->co_pwritev && !n->read_only && !n->detect_zeroes && !(flags & ~n->supported_write_flags) &&
           !__atomic_load_n(&n->write_hook, __ATOMIC_ACQUIRE) && !vbd_node_has_dirty_bitmaps(n) &&
           !__atomic_load_n(&n->write_threshold, __ATOMIC_RELAXED);
}

static int node_rw(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                   unsigned flags)
{
    if (goes_straight_down(n, write, off, bytes, q, qoff, flags)) {
        assert(vbd_in_co());
        return write ? n->drv->co_pwritev(n, off, bytes, q, qoff, flags)
                     : n->drv->co_preadv(n, off, bytes, q, qoff, flags & VBD_REQ_INLINE);
    }
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = rw_hooked(n, write, off, bytes, q, qoff, flags);
    vbd_node_co_leave_home(origin);
    return rc;
}

bool vbd_node_rw_inline(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q,
                        unsigned flags, int *rc)
{
    if (!n->io_inline || !goes_straight_down(n, write, off, bytes, q, 0, flags))
        return false;
    *rc = write ? n->drv->co_pwritev(n, off, bytes, q, 0, flags) : n->drv->co_preadv(n, off, bytes, q, 0, flags & VBD_REQ_INLINE);
    return true;
}

int vbd_node_co_read_backing(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off,
                             unsigned flags)
{
    uint64_t bsize = n->backing ? vbd_node_size(n->backing) : 0;
    uint64_t have = off < bsize ? (bsize - off < bytes ? bsize - off : bytes) : 0;
    if (have) {
        int rc = vbd_node_co_preadv(n->backing, off, have, qiov, qiov_off, flags & VBD_REQ_INLINE);
        if (rc < 0)
            return rc;
    }
    if (have < bytes)
        vbd_iov_memset(qiov->iov, qiov->niov, qiov_off + have, 0, bytes - have);
    return 0;
}

int vbd_node_co_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off,
                       unsigned flags)
{
    return node_rw(n, false, off, bytes, qiov, qiov_off, flags);
}

int vbd_node_co_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off,
                        unsigned flags)
{
    return node_rw(n, true, off, bytes, qiov, qiov_off, flags);
}

bool vbd_node_can_split_writes(const struct vbd_node *n)
{
    return n->drv->co_write_prepare && n->drv->co_write_commit;
}

int vbd_node_co_write_prepare(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_split_write *w)
{
    assert(vbd_in_co());
    w->off = off;
    w->len = 0;
    w->normal = bytes;
    w->file = NULL;
    w->host = 0;
    /* what node_rw_data and node_op_hooked would do around the driver's
     * write (tracking, bouncing, hooks, bitmaps, thresholds) the data write
     * here would miss: such nodes write normally */
    uint64_t a = n->bl.request_alignment;
    if (!vbd_node_can_split_writes(n) || n->read_only || n->detect_zeroes || ((off | bytes) & (a - 1)) ||
        needs_tracking(n) || __atomic_load_n(&n->write_hook, __ATOMIC_ACQUIRE) || vbd_node_has_dirty_bitmaps(n) ||
        __atomic_load_n(&n->write_threshold, __ATOMIC_RELAXED) || !bytes)
        return 0;
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = check_range(n, off, bytes);
    if (rc == 0)
        rc = n->drv->co_write_prepare(n, off, bytes, w);
    vbd_node_co_leave_home(origin);
    assert(rc < 0 || w->len || w->normal);
    return rc;
}

int vbd_node_co_write_commit(struct vbd_node *n, struct vbd_split_write *w, int rc)
{
    assert(vbd_in_co());
    if (!w->len)
        return rc;
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int crc = n->drv->co_write_commit(n, w, rc);
    vbd_node_co_leave_home(origin);
    w->len = 0;
    return rc < 0 ? rc : crc;
}

int vbd_node_co_pread(struct vbd_node *n, uint64_t off, void *buf, uint64_t bytes)
{
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, bytes);
    return node_rw(n, false, off, bytes, &q, 0, 0);
}

int vbd_node_co_pwrite(struct vbd_node *n, uint64_t off, const void *buf, uint64_t bytes, unsigned flags)
{
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, (void *)buf, bytes);
    return node_rw(n, true, off, bytes, &q, 0, flags);
}

int vbd_node_co_flush(struct vbd_node *n)
{
    assert(vbd_in_co());
    if (!n || n->read_only)
        return 0;
    int rc = 0;
    if (n->drv->co_flush) {
        struct vbd_loop *origin = vbd_node_co_enter_home(n);
        rc = n->drv->co_flush(n);
        vbd_node_co_leave_home(origin);
    }
    if (rc == 0 && n->file && n->file != n)
        rc = vbd_node_co_flush(n->file);
    return rc;
}

/* The driver's write-zeroes or discard of an aligned range, tracked as an
 * aligned write is (node_rw_data): a serialising read-modify-write of a
 * block it covers (an unaligned write beside or over it on a
 * cache.direct=on file) must not read the block before the zeroes and write
 * it back after them, or the block's other bytes bring the old data back
 * over a write-zeroes that has completed (vbd-stress --overlap on vmdk over
 * cache.direct=on; write-zeroes-rmw.sh). QEMU tracks both too. */
static int drv_zero_or_discard(struct vbd_node *n, bool zero, uint64_t off, uint64_t bytes, unsigned flags)
{
    bool counted = false;
    struct vbd_tracked_req tr;
    if (needs_tracking(n) && !(counted = untracked_begin(n)))
        tracked_begin(n, &tr, off, bytes, false);
    int rc = zero ? n->drv->co_pwrite_zeroes(n, off, bytes, flags) : n->drv->co_pdiscard(n, off, bytes);
    if (counted)
        untracked_end(n);
    else if (needs_tracking(n))
        tracked_end(n, &tr);
    return rc;
}

static int pdiscard_home(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    int rc = check_range(n, off, bytes);
    if (rc < 0)
        return rc;
    if (n->read_only)
        return -EACCES;
    vbd_node_check_write_threshold(n, off, bytes);
    /* discard=ignore (the default, as in QEMU) drops discards at this node */
    if (!bytes || !n->drv->co_pdiscard || !(n->open_flags & VBD_OPEN_UNMAP))
        return 0;
    /* Discard is advisory: shrink to whole aligned blocks. */
    uint64_t a = n->bl.pdiscard_alignment > n->bl.request_alignment ? n->bl.pdiscard_alignment
                                                                    : n->bl.request_alignment;
    uint64_t start = (off + a - 1) / a * a, end = (off + bytes) / a * a;
    if (end <= start)
        return 0;
    uint64_t mx = n->bl.max_pdiscard ? n->bl.max_pdiscard : (1ull << 62);
    for (uint64_t pos = start; pos < end;) {
        uint64_t len = end - pos < mx ? end - pos : mx;
        rc = drv_zero_or_discard(n, false, pos, len, 0);
        if (rc == -ENOTSUP)
            return 0;
        if (rc < 0)
            return rc;
        pos += len;
    }
    return 0;
}

static int zero_fallback(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    uint64_t chunk = bytes < BOUNCE_CHUNK ? bytes : BOUNCE_CHUNK;
    uint32_t ma = n->bl.min_mem_alignment > 4096 ? n->bl.min_mem_alignment : 4096;
    chunk = (chunk + ma - 1) & ~(uint64_t)(ma - 1);
    void *zero = vbd_alloc_aligned(ma, chunk);
    memset(zero, 0, chunk);
    int rc = 0;
    while (bytes && rc == 0) {
        uint64_t len = bytes < chunk ? bytes : chunk;
        struct iovec one = {zero, len};
        struct vbd_qiov q = {&one, 1, len};
        /* as data, never detected as zeroes again */
        rc = node_rw_data(n, true, off, len, &q, 0, flags & VBD_REQ_FUA); /* hooked by the caller */
        off += len;
        bytes -= len;
    }
    free(zero);
    return rc;
}

static int pwrite_zeroes_home(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    int rc = check_range(n, off, bytes);
    if (rc < 0)
        return rc;
    if (n->read_only)
        return -EACCES;
    vbd_node_check_write_threshold(n, off, bytes);
    if (!bytes)
        return 0;
    /* before anything is written: a fast zero that cannot be fast has no side effects */
    if ((flags & VBD_REQ_NO_FALLBACK) && !(n->supported_zero_flags & VBD_REQ_NO_FALLBACK))
        return -ENOTSUP;
    /* nor can a misaligned one: its edges would be written as data (QEMU's
     * rule too: qemu-nbd answers such an NBD fast zero ENOTSUP) */
    if ((flags & VBD_REQ_NO_FALLBACK) && ((off | bytes) & (n->bl.request_alignment - 1)))
        return -ENOTSUP;
    if (!(n->open_flags & VBD_OPEN_UNMAP))
        flags &= ~VBD_REQ_MAY_UNMAP;
    uint64_t a = n->bl.request_alignment;
    if (n->drv->co_pwrite_zeroes) {
        /* Aligned middle through the driver; unaligned edges as data. */
        uint64_t start = (off + a - 1) & ~(a - 1), end = (off + bytes) & ~(a - 1);
        if (end > start) {
            if (start > off && (rc = zero_fallback(n, off, start - off, flags)) < 0)
                return rc;
            uint64_t mx = limit_aligned(n->bl.max_pwrite_zeroes, 1ull << 62, a);
            for (uint64_t pos = start; pos < end;) {
                uint64_t len = end - pos < mx ? end - pos : mx;
                rc = drv_zero_or_discard(n, true, pos, len, flags);
                if (rc == -ENOTSUP) {
                    if (flags & VBD_REQ_NO_FALLBACK)
                        return rc;
                    rc = zero_fallback(n, pos, end - pos, flags);
                    if (rc < 0)
                        return rc;
                    break;
                }
                if (rc < 0)
                    return rc;
                pos += len;
            }
            if ((flags & VBD_REQ_FUA) && !(n->supported_zero_flags & VBD_REQ_FUA) && (rc = vbd_node_co_flush(n)) < 0)
                return rc;
            if (off + bytes > end)
                return zero_fallback(n, end, off + bytes - end, flags);
            return 0;
        }
    }
    if (flags & VBD_REQ_NO_FALLBACK)
        return -ENOTSUP;
    return zero_fallback(n, off, bytes, flags);
}

int vbd_node_co_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    int rc = node_op(n, NODE_ZEROES, off, bytes, flags);
    if (rc == 0 && off + bytes > vbd_node_size(n))
        filter_grown(n, off + bytes);
    return rc;
}

int vbd_node_co_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    return node_op(n, NODE_DISCARD, off, bytes, 0);
}

/* The in-memory bitmap `name` of n, or of the nodes under its filters:
 * not its backing file's nor its file node's, which other writes feed. */
static struct vbd_dirty_bitmap *memory_bitmap(struct vbd_node *n, const char *name)
{
    struct vbd_dirty_bitmap *mem = NULL;
    for (struct vbd_node *p = n; p && !mem; p = p->drv->kind == VBD_DRV_FILTER ? p->file : NULL)
        mem = vbd_dirty_bitmap_find(p, name);
    return mem;
}

int vbd_node_co_bitmap_status(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
    struct vbd_dirty_bitmap *mem = memory_bitmap(n, name);
    if (mem)
        return vbd_dirty_bitmap_status(mem, off, bytes, pnum);
    return vbd_node_co_persistent_bitmap_status(vbd_node_skip_filters(n), name, off, bytes, pnum);
}

int vbd_node_co_bitmap_count(struct vbd_node *n, const char *name, uint64_t *count)
{
    struct vbd_dirty_bitmap *mem = memory_bitmap(n, name);
    /* a persistent bitmap's extents are the driver's state, read on the
     * image's home loop: go there once for all of them, not there and back
     * for each (behind an iothread busy with a guest's rings each move
     * waits its turn: query-named-block-nodes took 7-22 s under TSan) */
    struct vbd_node *img = mem ? NULL : vbd_node_skip_filters(n);
    struct vbd_loop *origin = img ? vbd_node_co_enter_home(img) : NULL;
    uint64_t size = vbd_node_size(n), pnum;
    int rc = 0;
    *count = 0;
    for (uint64_t off = 0; off < size; off += pnum) {
        int st = mem ? vbd_dirty_bitmap_status(mem, off, size - off, &pnum)
                     : vbd_node_co_persistent_bitmap_status(img, name, off, size - off, &pnum);
        if (st < 0 || !pnum) {
            rc = st < 0 ? st : 0;
            break;
        }
        if (st)
            *count += pnum;
    }
    vbd_node_co_leave_home(origin);
    return rc;
}

int vbd_node_co_persistent_bitmap_status(struct vbd_node *img, const char *name, uint64_t off, uint64_t bytes,
                                         uint64_t *pnum)
{
    if (!img || !img->drv->co_bitmap_status)
        return -ENOENT;
    if (off >= vbd_node_size(img)) {
        *pnum = bytes;
        return 0;
    }
    if (bytes > vbd_node_size(img) - off)
        bytes = vbd_node_size(img) - off;
    if (!bytes) {
        *pnum = 0;
        return 0;
    }
    struct vbd_loop *origin = vbd_node_co_enter_home(img);
    int rc = img->drv->co_bitmap_status(img, name, off, bytes, pnum);
    vbd_node_co_leave_home(origin);
    return rc;
}

int vbd_node_co_zero_copy_source(struct vbd_node *n, uint64_t off, uint64_t bytes, uint64_t *map)
{
    struct vbd_node *below = n->drv->page_cache_fd ? n : n->file;
    if (!below || !below->drv->page_cache_fd || (below != n && !(n->drv->caps & VBD_DRV_CAP_FILE_WINDOW)))
        return -1;
    uint64_t pnum, m;
    struct vbd_node *f = NULL;
    int st = vbd_node_co_block_status(n, false, off, bytes, &pnum, &m, &f);
    if (st < 0 || f != below || pnum < bytes || (st & (VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ZERO)) !=
                                                     (VBD_BS_DATA | VBD_BS_OFFSET_VALID))
        return -1;
    *map = m;
    return below->drv->page_cache_fd(below, m, bytes);
}

static int block_status_home(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file);

int vbd_node_co_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = block_status_home(n, want_zero, off, bytes, pnum, map, file);
    vbd_node_co_leave_home(origin);
    return rc;
}

static int block_status_home(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    uint64_t m = 0;
    struct vbd_node *f = NULL;
    assert_home(n);
    uint64_t size = vbd_node_size(n);
    if (off >= size) {
        *pnum = 0;
        return VBD_BS_EOF;
    }
    if (bytes > size - off)
        bytes = size - off;
    if (!bytes) { /* nothing asked, nothing to say: drivers never see an empty range */
        *pnum = 0;
        return 0;
    }
    int rc;
    if (n->drv->co_block_status) {
        rc = n->drv->co_block_status(n, want_zero, off, bytes, pnum, &m, &f);
    } else if (n->drv->kind == VBD_DRV_PROTOCOL || !n->file) {
        *pnum = bytes;
        m = off;
        f = n;
        rc = VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    } else {
        rc = vbd_node_co_block_status(n->file, want_zero, off, bytes, pnum, &m, &f);
        if (rc >= 0 && *pnum == 0) { /* past the file's end: zeroes */
            *pnum = bytes;
            rc = VBD_BS_ZERO;
        }
    }
    if (rc < 0)
        return rc;
    if (*pnum == 0 || *pnum > bytes)
        *pnum = bytes;
    if (off + *pnum >= size)
        rc |= VBD_BS_EOF;
    if (map)
        *map = m;
    if (file)
        *file = f;
    return rc;
}

int vbd_node_co_block_status_above(struct vbd_node *top, struct vbd_node *base, bool want_zero, uint64_t off,
                                   uint64_t bytes, uint64_t *pnum, uint64_t *map, struct vbd_node **file,
                                   int *depth)
{
    /* depth is 0-based as in qemu-img map: 0 = top. Not present anywhere:
     * the depth of the last layer looked at, flags without ALLOCATED. */
    struct vbd_node *p = vbd_node_skip_filters(top);
    if (off >= vbd_node_size(top)) {
        *pnum = 0;
        return VBD_BS_EOF;
    }
    uint64_t n = bytes < vbd_node_size(top) - off ? bytes : vbd_node_size(top) - off;
    for (int d = 0;; d++) {
        uint64_t got = 0;
        int rc = vbd_node_co_block_status(p, want_zero, off, n, &got, map, file);
        if (rc < 0)
            return rc;
        if (depth)
            *depth = d;
        if (got == 0) { /* a shorter backing file: the rest reads as zeroes */
            *pnum = n;
            return VBD_BS_ZERO;
        }
        if ((rc & VBD_BS_ALLOCATED) || p->drv->kind != VBD_DRV_FORMAT) {
            *pnum = got;
            return rc | VBD_BS_ALLOCATED;
        }
        n = got;
        struct vbd_node *next = p->backing ? vbd_node_skip_filters(p->backing) : NULL;
        if (!next || next == base) {
            *pnum = n;
            return rc & ~VBD_BS_ALLOCATED;
        }
        if (off >= vbd_node_size(next)) { /* past the backing file's end: zeroes of this layer, as qemu-img map says */
            *pnum = n;
            return (rc & ~VBD_BS_ALLOCATED) | VBD_BS_ZERO;
        }
        p = next;
    }
}

int vbd_node_co_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                         struct vbd_error **err)
{
    if (n->read_only) {
        vbd_error_setf(err, EACCES, "Image '%s' is read-only", n->filename);
        return -EACCES;
    }
    if (!n->drv->co_truncate) {
        vbd_error_setf(err, ENOTSUP, "Image format driver does not support resize"); /* QEMU's words */
        return -ENOTSUP;
    }
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = n->drv->co_truncate(n, size, exact, prealloc, err);
    vbd_node_co_leave_home(origin);
    if (rc == 0) {
        vbd_node_set_size(n, size);
        vbd_dirty_bitmaps_truncate(n, size);
    }
    return rc;
}

int vbd_node_co_vmstate(struct vbd_node *n, uint64_t pos, void *buf, uint64_t bytes, bool save)
{
    assert(vbd_in_co());
    while (n && !n->drv->co_vmstate)
        n = n->file != n ? n->file : NULL;
    if (!n)
        return -ENOTSUP;
    /* QEMU's request check (BDRV_MAX_LENGTH: 2^63 down to 1 GiB), and its errno */
    const uint64_t max = (uint64_t)INT64_MAX & ~((UINT64_C(1) << 30) - 1);
    if (pos > max || bytes > max - pos)
        return -EIO;
    if (save && n->read_only)
        return -EACCES;
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, bytes);
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = n->drv->co_vmstate(n, pos, bytes, &q, save);
    vbd_node_co_leave_home(origin);
    return rc;
}

int vbd_node_refresh_size(struct vbd_node *n, struct vbd_error **err)
{
    if (n->file) {
        int rc = vbd_node_refresh_size(n->file, err);
        if (rc < 0)
            return rc;
    }
    if (n->backing) {
        int rc = vbd_node_refresh_size(n->backing, err);
        if (rc < 0)
            return rc;
    }
    if (!n->drv->refresh_size)
        return 0;
    uint64_t old = vbd_node_size(n);
    /* a multi-loop node's refresh runs here, the caller's loop, while
     * writes on other loops may raise its size (file_refresh_size) */
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = n->drv->refresh_size(n);
    vbd_node_co_leave_home(origin);
    if (rc == 0 && vbd_node_size(n) != old)
        vbd_dirty_bitmaps_truncate(n, vbd_node_size(n)); /* a filter over a resized node */
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not get the size of '%s': %s", n->filename, strerror(-rc));
    return rc;
}

int64_t vbd_node_get_allocated_size(struct vbd_node *n)
{
    if (n->drv->get_allocated_size) {
        struct vbd_loop *origin = vbd_node_co_enter_home(n);
        int64_t r = n->drv->get_allocated_size(n);
        vbd_node_co_leave_home(origin);
        return r;
    }
    if (n->file)
        return vbd_node_get_allocated_size(n->file);
    return n->drv->kind == VBD_DRV_PROTOCOL ? -1 : 0; /* a protocol that cannot say (nbd) */
}

int vbd_node_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    memset(info, 0, sizeof(*info));
    info->virtual_size = vbd_node_size(n);
    info->actual_size = vbd_node_get_allocated_size(n);
    if (!n->drv->get_info)
        return 0;
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int rc = n->drv->get_info(n, info, err);
    vbd_node_co_leave_home(origin);
    return rc;
}

const char *const vbd_prealloc_names[] = {"off", "metadata", "falloc", "full", NULL};
