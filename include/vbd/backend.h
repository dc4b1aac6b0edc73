/* SPDX-License-Identifier: MIT */
#ifndef VBD_BACKEND_H
#define VBD_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "vbd/block.h"

/*
 * The block backend: the user's drive on top of a node. It owns the
 * user-facing policy: permissions, cache mode, write-through flushing,
 * sector sizes, and request accounting. Exports (vhost-user-blk, NBD) and
 * tools (vbd-io) send every read, write, flush, discard and zeroing through
 * a backend. What a backend does not offer they ask its node
 * (vbd_backend_node): the NBD server's block status, dirty bitmaps and
 * sendfile source, vbd-io's map, info and truncate.
 */
enum vbd_cache_mode {
    VBD_CACHE_WRITEBACK,   /* page cache, flushes honoured */
    VBD_CACHE_WRITETHROUGH,/* page cache, every write made durable (FUA or flush) */
    VBD_CACHE_NONE,        /* O_DIRECT, writeback */
    VBD_CACHE_DIRECTSYNC,  /* O_DIRECT + writethrough */
    VBD_CACHE_UNSAFE,      /* page cache, flushes ignored */
};
/* "writeback","writethrough","none","directsync","unsafe" (and ACRN's
 * "writethru"). Returns 0 or -EINVAL. */
int vbd_cache_mode_parse(const char *s, enum vbd_cache_mode *mode);
const char *vbd_cache_mode_name(enum vbd_cache_mode mode);
/* Open flags the mode implies for the nodes (NOCACHE, NO_FLUSH) and whether
 * the backend writes through. */
unsigned vbd_cache_mode_open_flags(enum vbd_cache_mode mode);
bool vbd_cache_mode_writethrough(enum vbd_cache_mode mode);

enum vbd_stat_op { VBD_STAT_READ, VBD_STAT_WRITE, VBD_STAT_FLUSH, VBD_STAT_DISCARD, VBD_STAT_ZEROES, VBD_STAT_NR };
#define VBD_LAT_BUCKETS 32 /* bucket i: latency in [2^i, 2^(i+1)) microseconds; 0 includes < 1 us */
struct vbd_backend_stats {
    uint64_t ops[VBD_STAT_NR];
    uint64_t bytes[VBD_STAT_NR];
    uint64_t errors[VBD_STAT_NR];
    uint64_t total_ns[VBD_STAT_NR];
    uint64_t merged[VBD_STAT_NR]; /* requests merged into another one's backend request */
    uint64_t lat_hist[VBD_STAT_NR][VBD_LAT_BUCKETS];
};

struct vbd_backend_opts {
    bool read_only;
    bool writethrough;          /* from the cache mode; can be toggled at run time (virtio CONFIG_WCE) */
    uint32_t logical_block_size;  /* 512 or 4096 (0: 512) */
    uint32_t physical_block_size; /* >= logical (0: logical) */
    bool discard_unmap;         /* discard=unmap; else discards are ignored */
    const char *name;           /* drive id, for messages and stats */
    const char *serial;         /* virtio GET_ID; NULL: name */
};

/* Concurrency: a backend is created and freed on the graph thread of its
 * root node (n->home_thread, vbd/block.h); the co_ functions, the accessors,
 * set_writethrough and get_stats may be called from any loop at once (the
 * write-through flag and the statistics are atomics, the rest is fixed at
 * creation or changed only while drained). Requests over a graph that is
 * not multi-loop run on the root's home loop (n->home_loop: it follows the
 * graph when vbd_node_co_set_home moves it, inside a drained section) and
 * come back. */
struct vbd_backend;
/* Takes a reference on root. */
struct vbd_backend *vbd_backend_new(struct vbd_node *root, const struct vbd_backend_opts *opts, struct vbd_error **err);
void vbd_backend_free(struct vbd_backend *be);
struct vbd_node *vbd_backend_node(struct vbd_backend *be);
uint64_t vbd_backend_size(struct vbd_backend *be);
bool vbd_backend_read_only(struct vbd_backend *be);
bool vbd_backend_writethrough(struct vbd_backend *be);
void vbd_backend_set_writethrough(struct vbd_backend *be, bool wt);
bool vbd_backend_discard_unmap(struct vbd_backend *be);
uint32_t vbd_backend_logical_block_size(struct vbd_backend *be);
uint32_t vbd_backend_physical_block_size(struct vbd_backend *be);
const char *vbd_backend_name(struct vbd_backend *be);
const char *vbd_backend_serial(struct vbd_backend *be);

/*
 * Drained sections and root swaps (a live snapshot's switch to the overlay,
 * later a job's pivot): DESIGN.md pattern 13.
 *
 * Thread rules: these run in a coroutine on the loop the backend was
 * created on (its "ctl" loop: the daemon's main loop), never on a request's
 * loop. drain_begin closes the backend's gate and returns once no request
 * is past it on any loop (requests already in the node finish first; new
 * ones wait, on the ctl loop, until drain_end). Drains nest (a counter).
 * Inside a drained section the caller may change the graph below the
 * backend and swap its root with set_root; requests that waited resume on
 * the new root, and return to their own loop afterwards. A request never
 * sees half a graph. Callers must not issue requests through the same
 * backend while they hold it drained (they would wait for themselves).
 * What the exports read straight from the node (the NBD server's block
 * and bitmap status) goes through vbd_backend_co_node_get/_put: the gate
 * alone, so that a graph change (a job's filter node dropped at its end)
 * never frees the node under a status look-up that yields.
 */
void vbd_backend_co_drain_begin(struct vbd_backend *be);
void vbd_backend_drain_end(struct vbd_backend *be);
/* The root, held past the drain gate until vbd_backend_node_put: a drain
 * waits for it, so the root is neither swapped nor freed meanwhile. Any
 * loop; the caller stays on its own. Between get and put the caller must
 * not issue requests through the backend (a drain would wait for itself). */
struct vbd_node *vbd_backend_co_node_get(struct vbd_backend *be);
void vbd_backend_node_put(struct vbd_backend *be);
/* Inside a drained section: the backend now sends its requests to root
 * (it takes a reference on root and drops the one on the old root);
 * -EACCES if the backend writes and root is read-only. */
int vbd_backend_set_root(struct vbd_backend *be, struct vbd_node *root, struct vbd_error **err);
/* drain_begin + set_root + drain_end. */
int vbd_backend_co_replace_root(struct vbd_backend *be, struct vbd_node *root, struct vbd_error **err);

/* Coroutine context. Same return convention as vbd_node_co_*. Writes on a
 * read-only backend fail with -EROFS; discard without discard_unmap
 * succeeds without effect (as QEMU's discard=ignore). The range is checked
 * once, by the node's entry point (vbd_request_check); the backend adds
 * only its own policy, and the drive's size over a growable node. */
int vbd_backend_co_preadv(struct vbd_backend *be, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, unsigned flags);
int vbd_backend_co_pwritev(struct vbd_backend *be, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, unsigned flags);
int vbd_backend_co_flush(struct vbd_backend *be);
/* vbd_backend_co_preadv / co_pwritev (flags 0) for a root that completes
 * the request inline (vbd_node_rw_inline), in or outside a coroutine, with
 * the same drain gate, policy and accounting: true and *rc its result.
 * false: nothing was done or counted (the drive is drained, or the root
 * cannot): call vbd_backend_co_preadv / co_pwritev in a coroutine. */
/* A hint, for a caller to skip what it would prepare for vbd_backend_rw_inline: false
 * if the root cannot complete requests inline now. Ask it first: rw_inline
 * does not (a root that cannot costs it a clock read and the gate). */
bool vbd_backend_root_inline(struct vbd_backend *be);
bool vbd_backend_rw_inline(struct vbd_backend *be, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov,
                           int *rc);
int vbd_backend_co_pdiscard(struct vbd_backend *be, uint64_t off, uint64_t bytes);
int vbd_backend_co_pwrite_zeroes(struct vbd_backend *be, uint64_t off, uint64_t bytes, unsigned flags);
/* A read whose bytes send() puts on the wire straight from the page cache
 * (sendfile(2)): when the root maps [off, off + bytes) 1:1 onto a file
 * (vbd_node_co_zero_copy_source), send(opaque, fd, foff) runs as a request
 * of the backend: past the drain gate (the graph, and with it the fd,
 * stays while it sends, even across yields on a full socket), counted in
 * the read statistics. The caller's loop is kept (the socket's). Returns
 * send's result, or -ENOTSUP without calling it when the range has no such
 * mapping (qcow2 and every other format: their clusters can be freed and
 * reused, so a file page is not the disk's sector for long); the caller
 * then reads normally. */
int vbd_backend_co_read_zero_copy(struct vbd_backend *be, uint64_t off, uint64_t bytes,
                                  int (*send)(void *opaque, int fd, uint64_t foff), void *opaque);

/* Counts a merged group's other `extra` guest requests (each an operation of
 * the group's latency since start_ns, a vbd_clock_stat_ns() reading, and a
 * merged one); their bytes went with the group's request. */
void vbd_backend_account_merged(struct vbd_backend *be, bool write, unsigned extra, uint64_t start_ns);
void vbd_backend_get_stats(struct vbd_backend *be, struct vbd_backend_stats *out);
/* Latency percentile (0..100) from the histogram, in microseconds (bucket upper bound). */
uint64_t vbd_stats_percentile_us(const struct vbd_backend_stats *s, enum vbd_stat_op op, double pct);

#endif
