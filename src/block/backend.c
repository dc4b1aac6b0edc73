/* SPDX-License-Identifier: MIT */
/*
 * The user's drive: policy on top of a node (read-only, write-through,
 * discard, sector size) and accounting. Requests may come from several
 * queue threads; nodes whose driver is not multi-loop safe are only ever
 * touched from the root's home loop (requests hop there and back).
 */
#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/error.h"
#include "vbd/loop.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * A thread's share of a backend's statistics. Requests of one backend run
 * on several threads at once (an export's rings on iothreads); counters
 * that all of them added to with atomic read-modify-writes were shared
 * cache lines and locked instructions on every request. Each thread adds
 * to its own share instead (a load and a store: it is the only writer, so
 * no update is lost), and vbd_backend_get_stats sums the shares. Threads
 * beyond BE_STATS_SHARES - 1 share share 0, with atomic adds.
 */
#define BE_STATS_SHARES 64
struct be_stats {
    struct be_op_stats {
        _Atomic uint64_t ops, bytes, errors, total_ns, merged;
        _Atomic uint64_t hist[VBD_LAT_BUCKETS];
    } op[VBD_STAT_NR];
};

/* this thread's share index in every backend: 1.. in order of a thread's
 * first request, 0 once they are used up (threads are not numbered again:
 * an iothread made and deleted over and over ends up in share 0) */
static atomic_uint stats_shares_given;
static _Thread_local unsigned stats_share_index;

static unsigned stats_share_of_thread(void)
{
    unsigned i = stats_share_index;
    if (__builtin_expect(i == 0, 0)) {
        i = atomic_fetch_add_explicit(&stats_shares_given, 1, memory_order_relaxed) + 1;
        if (i >= BE_STATS_SHARES)
            i = BE_STATS_SHARES; /* past the end: share 0 from now on */
        stats_share_index = i;
    }
    return i == BE_STATS_SHARES ? 0 : i;
}

struct vbd_backend {
    struct vbd_node *root; /* atomic: replaced in a drained section, read from any loop */
    bool single_loop;      /* some node below root is single-loop: requests run on root's home loop; changes with root */
    struct vbd_loop *ctl;  /* the loop it was created on: drains and root swaps happen there */
    bool read_only;
    /* vbd_node_growable(root): the size is bounded here, not by io.c.
     * Atomic: a request reads it before the drain gate, while a root swap
     * (drained) writes it on the ctl loop */
    bool root_growable;
    /* root->io_inline, read before the gate as root_growable is: a node
     * whose requests always take the coroutine path (a file) pays nothing
     * more for the inline path than this load */
    bool root_inline;
    atomic_bool writethrough;
    bool discard_unmap;
    uint32_t lbs, pbs;
    char name[64];
    char serial[64];
    /* the statistics, one share per thread that counted
     * (stats_share_of_thread): share 0 made with the backend, each other
     * one by its thread at its first request */
    struct be_stats *_Atomic stats[BE_STATS_SHARES];
    /* The drain gate (vbd_backend_co_drain_begin): requests between
     * be_enter and be_leave, and whether new ones must wait. */
    atomic_uint in_flight;
    atomic_bool quiesced;
    unsigned drain_depth;            /* ctl loop only */
    struct vbd_co_queue gate_waiters; /* on the ctl loop */
};

int vbd_cache_mode_parse(const char *s, enum vbd_cache_mode *mode)
{
    static const struct {
        const char *name;
        enum vbd_cache_mode mode;
    } names[] = {
        {"writeback", VBD_CACHE_WRITEBACK}, {"writethrough", VBD_CACHE_WRITETHROUGH},
        {"writethru", VBD_CACHE_WRITETHROUGH}, {"none", VBD_CACHE_NONE},
        {"directsync", VBD_CACHE_DIRECTSYNC}, {"unsafe", VBD_CACHE_UNSAFE},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(s, names[i].name)) {
            *mode = names[i].mode;
            return 0;
        }
    return -EINVAL;
}

const char *vbd_cache_mode_name(enum vbd_cache_mode mode)
{
    static const char *const names[] = {"writeback", "writethrough", "none", "directsync", "unsafe"};
    return names[mode];
}

unsigned vbd_cache_mode_open_flags(enum vbd_cache_mode mode)
{
    switch (mode) {
    case VBD_CACHE_NONE:
    case VBD_CACHE_DIRECTSYNC:
        return VBD_OPEN_NOCACHE;
    case VBD_CACHE_UNSAFE:
        return VBD_OPEN_NO_FLUSH;
    default:
        return 0;
    }
}

bool vbd_cache_mode_writethrough(enum vbd_cache_mode mode)
{
    return mode == VBD_CACHE_WRITETHROUGH || mode == VBD_CACHE_DIRECTSYNC;
}


struct vbd_backend *vbd_backend_new(struct vbd_node *root, const struct vbd_backend_opts *o, struct vbd_error **err)
{
    uint32_t lbs = o->logical_block_size ? o->logical_block_size : 512;
    uint32_t pbs = o->physical_block_size ? o->physical_block_size : lbs;
    if ((lbs != 512 && lbs != 4096) || pbs < lbs || (pbs & (pbs - 1)) || pbs > 65536) {
        vbd_error_setf(err, EINVAL, "Invalid sector sizes %u/%u: logical must be 512 or 4096, physical a power of two >= logical",
                       lbs, pbs);
        return NULL;
    }
    if (!o->read_only && root->read_only) {
        vbd_error_setf(err, EACCES, "Block node '%s' is read-only", root->node_name);
        return NULL;
    }
    struct vbd_backend *be = vbd_xcalloc(1, sizeof(*be));
    vbd_node_ref(root);
    be->root = root;
    be->ctl = vbd_loop_current();
    be->stats[0] = vbd_xcalloc(1, sizeof(struct be_stats)); /* shared by the unnumbered threads: made before any of them */
    /* Requests hop to the root's home loop when some node in the graph is
     * not multi-loop (the whole request runs there, rather than hopping at
     * every single-loop node on the way down). */
    assert(pthread_equal(root->home_thread, pthread_self()));
    be->single_loop = !vbd_node_chain_multi_loop(root);
    be->read_only = o->read_only;
    be->root_growable = vbd_node_growable(root);
    be->root_inline = root->io_inline;
    atomic_store(&be->writethrough, o->writethrough);
    be->discard_unmap = o->discard_unmap;
    be->lbs = lbs;
    be->pbs = pbs;
    snprintf(be->name, sizeof(be->name), "%s", o->name ? o->name : root->node_name);
    snprintf(be->serial, sizeof(be->serial), "%s", o->serial ? o->serial : be->name);
    return be;
}

void vbd_backend_free(struct vbd_backend *be)
{
    if (!be)
        return;
    assert(be->drain_depth == 0 && vbd_co_queue_empty(&be->gate_waiters));
    vbd_node_unref(be->root);
    for (int i = 0; i < BE_STATS_SHARES; i++)
        free(atomic_load(&be->stats[i]));
    free(be);
}

/* The root as a request or an accessor on any loop sees it. */
static struct vbd_node *root_of(struct vbd_backend *be)
{
    return __atomic_load_n(&be->root, __ATOMIC_ACQUIRE);
}

struct vbd_node *vbd_backend_node(struct vbd_backend *be) { return root_of(be); }
uint64_t vbd_backend_size(struct vbd_backend *be) { return vbd_node_size(root_of(be)); }
bool vbd_backend_read_only(struct vbd_backend *be) { return be->read_only; }
bool vbd_backend_writethrough(struct vbd_backend *be) { return atomic_load(&be->writethrough); }
void vbd_backend_set_writethrough(struct vbd_backend *be, bool wt) { atomic_store(&be->writethrough, wt); }
bool vbd_backend_discard_unmap(struct vbd_backend *be) { return be->discard_unmap; }
uint32_t vbd_backend_logical_block_size(struct vbd_backend *be) { return be->lbs; }
uint32_t vbd_backend_physical_block_size(struct vbd_backend *be) { return be->pbs; }
const char *vbd_backend_name(struct vbd_backend *be) { return be->name; }
const char *vbd_backend_serial(struct vbd_backend *be) { return be->serial; }

/* A counter of this thread's own share: its only writer (share 0: all the
 * threads past the numbered ones, atomically). */
static inline void share_add(_Atomic uint64_t *c, uint64_t v, bool own)
{
    if (own)
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* own, n and merged: constants at each call, so each is compiled for one
 * kind of share and the one-request path multiplies by nothing */
static inline __attribute__((always_inline)) void count_ops(struct be_op_stats *o, uint64_t n, uint64_t bytes, int rc,
                                                            uint64_t ns, int bucket, uint64_t merged, bool own)
{
    share_add(&o->ops, n, own);
    share_add(&o->total_ns, ns * n, own);
    share_add(&o->hist[bucket], n, own);
    if (rc < 0)
        share_add(&o->errors, n, own);
    else
        share_add(&o->bytes, bytes, own);
    if (merged)
        share_add(&o->merged, merged, own);
}

/* n operations of one latency (since start_ns), bytes in all, merged of them
 * merged into another's request */
static inline __attribute__((always_inline)) void account_ops(struct vbd_backend *be, enum vbd_stat_op op, uint64_t n,
                                                              uint64_t bytes, int rc, uint64_t start_ns,
                                                              uint64_t merged)
{
    uint64_t ns = vbd_clock_stat_since(start_ns);
    uint64_t us = ns / 1000;
    /* bucket b holds [2^b, 2^(b+1)) us (0: under 2 us), the last one the
     * rest: floor(log2(us)) by one bit scan, not a loop of shifts */
    int b = us > 1 ? 63 - __builtin_clzll(us) : 0;
    if (b > VBD_LAT_BUCKETS - 1)
        b = VBD_LAT_BUCKETS - 1;
    unsigned i = stats_share_of_thread();
    struct be_stats *st = atomic_load_explicit(&be->stats[i], memory_order_relaxed); /* written by this thread only (i > 0) */
    if (__builtin_expect(!st, 0)) {
        st = vbd_xcalloc(1, sizeof(*st)); /* once per thread and backend */
        atomic_store_explicit(&be->stats[i], st, memory_order_release);
    }
    if (__builtin_expect(i != 0, 1))
        count_ops(&st->op[op], n, bytes, rc, ns, b, merged, true);
    else
        count_ops(&st->op[op], n, bytes, rc, ns, b, merged, false);
}

static void account(struct vbd_backend *be, enum vbd_stat_op op, uint64_t bytes, int rc, uint64_t start_ns)
{
    account_ops(be, op, 1, bytes, rc, start_ns, 0);
}

/* A merged group's other requests: QEMU's virtio-blk counts every guest
 * request as an operation (with the group's latency, its own bytes) and the
 * ones merged into another in rd_merged/wr_merged; the group's one backend
 * request, and all its bytes, were counted by the call that served it. */
void vbd_backend_account_merged(struct vbd_backend *be, bool write, unsigned extra, uint64_t start_ns)
{
    account_ops(be, write ? VBD_STAT_WRITE : VBD_STAT_READ, extra, 0, 0, start_ns, extra);
}

/*
 * The drain gate. A request passes be_enter before it looks at the root
 * and be_leave after its last use of it. Fast path: one atomic increment
 * and one load (the same cache line the statistics already touch). While
 * the backend is drained, a request that arrives decrements again, moves
 * to the ctl loop and waits there (a single-loop queue, so no lock): it
 * goes on with the new root once the drain ends.
 *
 * The increment before the load of `quiesced` here, and the store of
 * `quiesced` before the load of in_flight in drain_begin, are sequentially
 * consistent: either the drainer sees the request or the request sees the
 * gate closed (never neither).
 */
static struct vbd_loop *gate_wait(struct vbd_backend *be)
{
    struct vbd_loop *origin = vbd_loop_current();
    atomic_fetch_sub(&be->in_flight, 1);
    vbd_co_move_to(be->ctl);
    /* quiesced changes only on the ctl loop, so it cannot change between
     * this check and the increment */
    while (atomic_load(&be->quiesced))
        vbd_co_queue_wait(&be->gate_waiters);
    atomic_fetch_add(&be->in_flight, 1);
    return origin == be->ctl ? NULL : origin;
}

/* The gate alone: counted in flight, past a drain. Returns the loop a
 * wait at the gate moved the request from (NULL: stayed). */
static struct vbd_loop *be_pass_gate(struct vbd_backend *be)
{
    atomic_fetch_add(&be->in_flight, 1);
    return atomic_load(&be->quiesced) ? gate_wait(be) : NULL;
}

/* Returns the loop to go back to in be_leave (NULL: stayed). Runs the
 * rest of the request on the home loop when the graph needs it. */
static struct vbd_loop *be_enter(struct vbd_backend *be)
{
    struct vbd_loop *origin = be_pass_gate(be);
    if (!be->single_loop)
        return origin;
    /* past the gate: the root and its home loop change only while drained */
    struct vbd_loop *home = vbd_node_home_loop(root_of(be));
    struct vbd_loop *here = vbd_loop_current();
    if (here != home) {
        if (!origin)
            origin = here;
        vbd_co_move_to(home);
    }
    return origin;
}

static void be_leave(struct vbd_backend *be, struct vbd_loop *origin)
{
    atomic_fetch_sub_explicit(&be->in_flight, 1, memory_order_release);
    if (origin)
        vbd_co_move_to(origin);
}

void vbd_backend_co_drain_begin(struct vbd_backend *be)
{
    assert(vbd_in_co() && vbd_loop_current() == be->ctl);
    if (be->drain_depth++ == 0)
        atomic_store(&be->quiesced, true);
    /* Polled: a wake-up from the last request out would put a cross-loop
     * wake on every request's exit path for the sake of a rare graph
     * change. The wait is as long as the slowest request in flight. */
    while (atomic_load(&be->in_flight))
        vbd_co_sleep_ns(100 * 1000);
}

void vbd_backend_drain_end(struct vbd_backend *be)
{
    assert(vbd_loop_current() == be->ctl && be->drain_depth > 0);
    if (--be->drain_depth)
        return;
    atomic_store(&be->quiesced, false);
    vbd_co_queue_wake_all(&be->gate_waiters);
}

int vbd_backend_set_root(struct vbd_backend *be, struct vbd_node *root, struct vbd_error **err)
{
    assert(be->drain_depth > 0 && vbd_loop_current() == be->ctl);
    assert(pthread_equal(root->home_thread, pthread_self()));
    if (!be->read_only && root->read_only) {
        vbd_error_setf(err, EACCES, "Block node '%s' is read-only", root->node_name);
        return -EACCES;
    }
    struct vbd_node *old = be->root;
    vbd_node_ref(root);
    be->single_loop = !vbd_node_chain_multi_loop(root);
    __atomic_store_n(&be->root_growable, vbd_node_growable(root), __ATOMIC_RELAXED);
    __atomic_store_n(&be->root_inline, root->io_inline, __ATOMIC_RELAXED);
    __atomic_store_n(&be->root, root, __ATOMIC_RELEASE);
    vbd_node_unref(old);
    return 0;
}

int vbd_backend_co_replace_root(struct vbd_backend *be, struct vbd_node *root, struct vbd_error **err)
{
    vbd_backend_co_drain_begin(be);
    int rc = vbd_backend_set_root(be, root, err);
    vbd_backend_drain_end(be);
    return rc;
}

/* io.c bounds every request by its node's size (vbd_request_check), so a
 * request normally goes down unchecked. A drive does not grow, though: over
 * a node that would (a bare file) its bound is the same rule, applied here. */
static int check_drive_range(struct vbd_backend *be, uint64_t off, uint64_t bytes)
{
    return __atomic_load_n(&be->root_growable, __ATOMIC_RELAXED) ? vbd_request_check(vbd_node_size(root_of(be)), off, bytes) : 0;
}

int vbd_backend_co_preadv(struct vbd_backend *be, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, unsigned flags)
{
    uint64_t t = vbd_clock_stat_ns();
    int rc = check_drive_range(be, off, bytes);
    if (rc == 0) {
        struct vbd_loop *origin = be_enter(be);
        rc = vbd_node_co_preadv(root_of(be), off, bytes, qiov, 0, flags);
        be_leave(be, origin);
    }
    account(be, VBD_STAT_READ, bytes, rc, t);
    return rc;
}

bool vbd_backend_root_inline(struct vbd_backend *be) { return __atomic_load_n(&be->root_inline, __ATOMIC_RELAXED); }

bool vbd_backend_rw_inline(struct vbd_backend *be, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov,
                           int *rc)
{
    /* a read-only drive, a range past a growable root's size: answered (and
     * counted) by the coroutine path. Whether the root completes inline is
     * vbd_node_rw_inline's first test (the caller asked
     * vbd_backend_root_inline before preparing the request). */
    if ((write && be->read_only) || check_drive_range(be, off, bytes))
        return false;
    uint64_t t = vbd_clock_stat_ns();
    unsigned flags = write && atomic_load_explicit(&be->writethrough, memory_order_relaxed) ? VBD_REQ_FUA : 0;
    /* single_loop, like the root, changes only while drained: read past the
     * gate. A closed gate is waited at in a coroutine. */
    bool done;
    if (vbd_loop_current_or_null() == be->ctl) {
        /* The drainer's own thread: a request that never yields runs
         * between two of its steps, wholly before a drain begins or while
         * the gate is closed, so it needs no count in flight. */
        done = !atomic_load_explicit(&be->quiesced, memory_order_relaxed) && !be->single_loop &&
               vbd_node_rw_inline(root_of(be), write, off, bytes, qiov, flags, rc);
    } else {
        /* be_pass_gate's fast path */
        atomic_fetch_add(&be->in_flight, 1);
        done = !atomic_load(&be->quiesced) && !be->single_loop &&
               vbd_node_rw_inline(root_of(be), write, off, bytes, qiov, flags, rc);
        atomic_fetch_sub_explicit(&be->in_flight, 1, memory_order_release);
    }
    if (done)
        account(be, write ? VBD_STAT_WRITE : VBD_STAT_READ, bytes, *rc, t);
    return done;
}

int vbd_backend_co_read_zero_copy(struct vbd_backend *be, uint64_t off, uint64_t bytes,
                                  int (*send)(void *opaque, int fd, uint64_t foff), void *opaque)
{
    uint64_t t = vbd_clock_stat_ns();
    if (check_drive_range(be, off, bytes) < 0)
        return -ENOTSUP; /* the normal path answers it */
    /* the gate without be_enter's move to the root's home loop: what runs
     * here is the socket's send, which belongs to the caller's loop; the
     * block status below enters the node's home loop itself */
    struct vbd_loop *origin = be_pass_gate(be);
    if (origin)
        vbd_co_move_to(origin);
    uint64_t foff;
    int fd = vbd_node_co_zero_copy_source(root_of(be), off, bytes, &foff);
    int rc = fd < 0 ? -ENOTSUP : send(opaque, fd, foff);
    be_leave(be, NULL);
    if (fd >= 0)
        account(be, VBD_STAT_READ, bytes, rc, t);
    return rc;
}

struct vbd_node *vbd_backend_co_node_get(struct vbd_backend *be)
{
    struct vbd_loop *origin = be_pass_gate(be);
    if (origin)
        vbd_co_move_to(origin);
    return root_of(be);
}

void vbd_backend_node_put(struct vbd_backend *be) { be_leave(be, NULL); }

int vbd_backend_co_pwritev(struct vbd_backend *be, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, unsigned flags)
{
    uint64_t t = vbd_clock_stat_ns();
    int rc = be->read_only ? -EROFS : check_drive_range(be, off, bytes);
    if (rc == 0) {
        if (atomic_load_explicit(&be->writethrough, memory_order_relaxed))
            flags |= VBD_REQ_FUA;
        struct vbd_loop *origin = be_enter(be);
        rc = vbd_node_co_pwritev(root_of(be), off, bytes, qiov, 0, flags);
        be_leave(be, origin);
    }
    account(be, VBD_STAT_WRITE, bytes, rc, t);
    return rc;
}

int vbd_backend_co_flush(struct vbd_backend *be)
{
    uint64_t t = vbd_clock_stat_ns();
    int rc = 0;
    if (!be->read_only) {
        struct vbd_loop *origin = be_enter(be);
        rc = vbd_node_co_flush(root_of(be));
        be_leave(be, origin);
    }
    account(be, VBD_STAT_FLUSH, 0, rc, t);
    return rc;
}

int vbd_backend_co_pdiscard(struct vbd_backend *be, uint64_t off, uint64_t bytes)
{
    uint64_t t = vbd_clock_stat_ns();
    int rc = be->read_only ? -EROFS : 0;
    if (rc == 0 && be->discard_unmap && (rc = check_drive_range(be, off, bytes)) == 0) {
        struct vbd_loop *origin = be_enter(be);
        rc = vbd_node_co_pdiscard(root_of(be), off, bytes);
        be_leave(be, origin);
    } else if (rc == 0 && !be->discard_unmap) {
        /* dropped here, so io.c never sees it: a bad range fails all the same */
        rc = vbd_request_check(vbd_node_size(root_of(be)), off, bytes);
    }
    account(be, VBD_STAT_DISCARD, bytes, rc, t);
    return rc;
}

int vbd_backend_co_pwrite_zeroes(struct vbd_backend *be, uint64_t off, uint64_t bytes, unsigned flags)
{
    uint64_t t = vbd_clock_stat_ns();
    int rc = be->read_only ? -EROFS : check_drive_range(be, off, bytes);
    if (rc == 0) {
        if (!be->discard_unmap)
            flags &= ~VBD_REQ_MAY_UNMAP;
        if (atomic_load_explicit(&be->writethrough, memory_order_relaxed))
            flags |= VBD_REQ_FUA;
        struct vbd_loop *origin = be_enter(be);
        rc = vbd_node_co_pwrite_zeroes(root_of(be), off, bytes, flags);
        be_leave(be, origin);
    }
    account(be, VBD_STAT_ZEROES, bytes, rc, t);
    return rc;
}

void vbd_backend_get_stats(struct vbd_backend *be, struct vbd_backend_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < BE_STATS_SHARES; i++) {
        struct be_stats *st = atomic_load_explicit(&be->stats[i], memory_order_acquire);
        for (int op = 0; st && op < VBD_STAT_NR; op++) {
            out->ops[op] += atomic_load_explicit(&st->op[op].ops, memory_order_relaxed);
            out->bytes[op] += atomic_load_explicit(&st->op[op].bytes, memory_order_relaxed);
            out->errors[op] += atomic_load_explicit(&st->op[op].errors, memory_order_relaxed);
            out->total_ns[op] += atomic_load_explicit(&st->op[op].total_ns, memory_order_relaxed);
            out->merged[op] += atomic_load_explicit(&st->op[op].merged, memory_order_relaxed);
            for (int b = 0; b < VBD_LAT_BUCKETS; b++)
                out->lat_hist[op][b] += atomic_load_explicit(&st->op[op].hist[b], memory_order_relaxed);
        }
    }
}

uint64_t vbd_stats_percentile_us(const struct vbd_backend_stats *s, enum vbd_stat_op op, double pct)
{
    uint64_t total = 0;
    for (int b = 0; b < VBD_LAT_BUCKETS; b++)
        total += s->lat_hist[op][b];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(total * pct / 100.0 + 0.5), seen = 0;
    if (want == 0)
        want = 1;
    for (int b = 0; b < VBD_LAT_BUCKETS; b++) {
        seen += s->lat_hist[op][b];
        if (seen >= want)
            return 2ull << b;
    }
    return 2ull << (VBD_LAT_BUCKETS - 1);
}
