/* SPDX-License-Identifier: MIT */
/*
 * vhost-user back end: the message loop. Messages are handled one at a
 * time in a coroutine; the ones that must wait for the device to go quiet
 * (GET_VRING_BASE, memory table changes, reset, disconnect) simply yield
 * until the rings' in-flight counts reach zero.
 */
#include "vhost-user.h"
#include "guest-memory.h"
#include "util/socket.h"

#include "vbd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define VU_HDR_SIZE 12
#define VU_MAX_PAYLOAD 4096
#define VU_MAX_FDS 8

struct vu_msg {
    uint32_t request, flags, size;
    uint8_t payload[VU_MAX_PAYLOAD];
    int fds[VU_MAX_FDS];
    int nfds;
    bool fds_truncated; /* fds were dropped: more than VU_MAX_FDS sent, or no room in our fd table */
};

static const char *request_name(uint32_t r)
{
    static const char *const names[] = {
        [1] = "GET_FEATURES",     [2] = "SET_FEATURES",        [3] = "SET_OWNER",          [4] = "RESET_OWNER",
        [5] = "SET_MEM_TABLE",    [6] = "SET_LOG_BASE",        [7] = "SET_LOG_FD",         [8] = "SET_VRING_NUM",
        [9] = "SET_VRING_ADDR",   [10] = "SET_VRING_BASE",     [11] = "GET_VRING_BASE",    [12] = "SET_VRING_KICK",
        [13] = "SET_VRING_CALL",  [14] = "SET_VRING_ERR",      [15] = "GET_PROTOCOL_FEATURES",
        [16] = "SET_PROTOCOL_FEATURES", [17] = "GET_QUEUE_NUM", [18] = "SET_VRING_ENABLE", [19] = "SEND_RARP",
        [20] = "NET_SET_MTU",     [21] = "SET_BACKEND_REQ_FD", [22] = "IOTLB_MSG",         [23] = "SET_VRING_ENDIAN",
        [24] = "GET_CONFIG",      [25] = "SET_CONFIG",         [26] = "CREATE_CRYPTO_SESSION",
        [27] = "CLOSE_CRYPTO_SESSION", [28] = "POSTCOPY_ADVISE", [29] = "POSTCOPY_LISTEN", [30] = "POSTCOPY_END",
        [31] = "GET_INFLIGHT_FD", [32] = "SET_INFLIGHT_FD",    [33] = "GPU_SET_SOCKET",    [34] = "RESET_DEVICE",
        [35] = "VRING_KICK",      [36] = "GET_MAX_MEM_SLOTS",  [37] = "ADD_MEM_REG",       [38] = "REM_MEM_REG",
        [39] = "SET_STATUS",      [40] = "GET_STATUS",
    };
    return r < sizeof(names) / sizeof(names[0]) && names[r] ? names[r] : "unknown";
}

bool vu_has_feature(const struct vu_dev *dev, unsigned bit)
{
    return dev->features & (1ull << bit);
}

static bool has_protocol_feature(const struct vu_dev *dev, unsigned bit)
{
    return dev->protocol_features & (1ull << bit);
}

/* ------------------------------------------------------------------ */
/* queues                                                              */

struct vbd_loop *vu_queue_enter(struct vu_queue *q)
{
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(q->loop);
    return here;
}

void vu_queue_leave(struct vbd_loop *prev)
{
    vbd_co_move_to(prev);
}

/* A deep queue's iteration signals again after this many completions: see
 * vu_queue_complete. */
#define SIGNAL_EVERY 4

/* A request of at least SIGNAL_BIG_BYTES that completes less than
 * DENSE_GAP_NS after the previous such request signals at once: see
 * vu_queue_complete. */
#define SIGNAL_BIG_BYTES (64u << 10)
#define DENSE_GAP_NS 4000

/* With EVENT_IDX, a dense big completion on a loop that serves more than
 * one busy ring does not signal while its ring still holds at least
 * SIGNAL_DEFER_PENDING requests: see vu_queue_complete. "Busy": another
 * ring of the loop completed a big request less than SHARED_WINDOW_NS ago. */
#define SIGNAL_DEFER_PENDING 2
#define SHARED_WINDOW_NS 50000
/* With EVENT_IDX, a dense big completion on a loop with one busy ring
 * signals the driver only once SIGNAL_ALONE_AFTER completions have passed
 * the one it asked to hear of: see vu_queue_complete. */
#define SIGNAL_ALONE_AFTER 2

/* The first completion of an iteration, or SIGNAL_EVERY since the last signal. */
static bool signal_due(const struct vu_queue *q)
{
    return !q->signalled || q->unsignalled >= SIGNAL_EVERY;
}

/* When this thread (a loop, and the rings it serves) last completed a big
 * request, 0 before the first. Per loop, not per ring: a loop that serves
 * two rings alternates between them, so each ring sees gaps twice as long
 * as the loop's, and a driver thread that waits on both rings (vbd-bench)
 * is kept awake by either ring's signals. */
static _Thread_local uint64_t big_done_ns;
/* The ring of this thread's last big completion (compared, never followed)
 * and when its big completions last moved from one ring to another. */
static _Thread_local const struct vu_queue *big_ring;
static _Thread_local uint64_t big_switch_ns;

/* Big and close behind the previous big one; the clock is read for big
 * requests only, so 4K requests pay nothing for the rule. *shared: another
 * ring of this loop completed big requests too within SHARED_WINDOW_NS. */
static bool big_and_dense(const struct vu_queue *q, uint64_t moved, bool *shared)
{
    *shared = false;
    if (moved < SIGNAL_BIG_BYTES)
        return false;
    /* the statistics clock (a bare TSC read where the kernel's clock is the
     * TSC, else the system clock): only differences of a few to tens of
     * microseconds are compared here, and it spares each big completion the
     * vDSO clock's ordered TSC read and sequence loop. Not read again: a
     * request that moved data was accounted by the backend on this thread
     * just before it completes here (vbd_backend_co_preadv/pwritev, the
     * inline path, a merged group's account), which read that clock at its
     * end; its reading is "now" to within the completion's own ~100 ns
     * (one TSC read, ~25 instructions and the rdtsc, less per 64K request) */
    uint64_t now = vbd_clock_stat_last(), prev = big_done_ns;
    big_done_ns = now;
    if (big_ring != q) {
        big_ring = q;
        big_switch_ns = now;
    }
    *shared = now - big_switch_ns < SHARED_WINDOW_NS;
    return prev && now - prev < DENSE_GAP_NS;
}

static void signal_front_end(struct vu_queue *q)
{
    q->unsignalled = 0;
    if (q->call_fd >= 0 && vu_vq_should_notify(&q->vq))
        eventfd_write(q->call_fd, 1);
}

static void notify_bh(void *arg)
{
    struct vu_queue *q = arg;
    q->notify_pending = false;
    q->signalled = false;
    if (q->unsignalled)
        signal_front_end(q);
    if (q->inflight_reqs == 0)
        vbd_co_queue_wake_all(&q->idle);
}

/*
 * The first completion of a loop iteration signals at once, then every
 * SIGNAL_EVERY-th, and a bottom half signals at the iteration's end for
 * the rest. Signalling only at the end turned a deep queue into ping-pong:
 * the driver slept while the whole batch was served, then the device slept
 * while the driver refilled. With only the first and the last, a driver
 * that drains the used ring faster than we fill it caught up in between,
 * found its call eventfd empty and slept through the rest of the batch
 * (a halted vCPU takes tens of microseconds to wake). A signal every few
 * completions keeps it awake while the batch lasts; one per completion
 * (qsd) costs a syscall per request.
 *
 * Except for big requests (64 KiB and more) that complete within
 * DENSE_GAP_NS of each other (64K reads of a null node: ~1.5 us apart):
 * each of those signals. With every 4th, the driver (much quicker per
 * request than we are) drained the ring between two signals and went to
 * sleep, so nearly every signal was a cross-CPU wake-up (~3 us of our CPU
 * on a KVM guest, 40 % of the daemon's time in perf), and it refilled 4
 * at a time while the device ran short of work at QD8. Signalled at every
 * completion it is still awake (a plain eventfd write, ~0.3 us, small
 * beside a 64K request's work). Big requests further apart (64K reads of
 * tmpfs, ~9 us) keep the every-4th rule: the driver sleeps between them
 * anyway and each signal would be a wake-up (measured: 17-34 % fewer IOPS
 * there); so do small requests (a syscall per 4K request costs more than
 * the request: vuperf3).
 *
 * With EVENT_IDX the driver asks for a signal only once it has reaped the
 * ring and is about to sleep, so the dense rule's eventfd write is nearly
 * always a cross-CPU wake-up (~5 us of our CPU on a KVM guest whose idle
 * vCPU halts: half the daemon's time on 2-queue 64K reads). When this loop
 * serves another busy ring too, such a completion waits while its own ring
 * still holds SIGNAL_DEFER_PENDING requests: the driver then wakes once
 * for more completions, and the rest of this ring and the other ring's
 * requests keep us busy while it wakes. The skipped check is not lost:
 * the next check covers every completion pushed since (vring_need_event
 * over old..new), and the iteration's bottom half signals whatever is
 * left, so no completion waits past the loop's iteration. A loop with one
 * ring does not wait for its ring to run low: nothing would cover the
 * driver's wake-up (1 queue 64K QD8 lost 10-20 % so). With two rings the
 * other ring's turn (~8 requests, ~15 us) covers a wake-up (~10 us) even
 * when the signal waits until 2 are left (4 before vuperf17): the driver
 * then reaps more per wake-up and its requests are reaped in fewer
 * distinct cycles. 2 queues 64K QD8, 5-round A/Bs: 509k -> 565k IOPS,
 * 1835 -> 1683 ns per request, p99 63.5 -> 59.4 us; 16 segments 424k ->
 * 454k, p99 86 -> 70 us; signalling earlier (6, or at once) made p99
 * worse (RESULTS.md 2026-12-06, vuperf17).
 *
 * It waits for one completion instead: the driver that asked to hear of
 * completion n is told at n+1 (or by the bottom half, if the iteration
 * ends first). The wake-up is what the signal costs us (~6 us of our CPU
 * where a syscall is ~0.4 us: a quarter to a third of a 64K request's
 * time), and the driver reaps everything done by the time it runs: at QD8
 * it woke every ~6 requests, now every ~7.7, the most QD8 allows while the
 * rest of the ring still covers its wake-up. 1 queue null 64K QD8 (main
 * loop, iothread, 16 segments): 11-14 % less CPU per request, p50 lower
 * (RESULTS.md 2026-12-05, vuperf15). Waiting for two (signal at n+2) took
 * no fewer wake-ups: the ring ran dry first.
 */
void vu_queue_complete(struct vu_queue *q, uint16_t head, uint32_t len, uint64_t moved)
{
    vu_vq_push(&q->vq, head, len);
    if (!q->notify_pending) {
        q->notify_pending = true;
        vbd_loop_schedule_bh(vbd_loop_current(), &q->notify_bh);
    }
    q->unsignalled++;
    bool shared;
    bool dense = big_and_dense(q, moved, &shared); /* always: it keeps the clock of the last big completion */
    bool due = signal_due(q) || dense;
    if (dense && shared && q->vq.event_idx && vu_vq_pending_at_least(&q->vq, SIGNAL_DEFER_PENDING))
        due = false; /* the driver is woken later, with more to reap; the bottom half still signals */
    if (dense && !shared && q->vq.event_idx) {
        uint16_t waited = vu_vq_completions_waited(&q->vq);
        if (waited && waited < SIGNAL_ALONE_AFTER)
            due = false; /* the next completion (or the bottom half) signals both */
    }
    if (!q->notify_held && due) {
        q->signalled = true;
        signal_front_end(q);
    }
    /* a request completed inline takes the count from 0 to 1 and back:
     * the call only when someone waits (GET_VRING_BASE, a memory table change) */
    if (--q->inflight_reqs == 0 && !vbd_co_queue_empty(&q->idle))
        vbd_co_queue_wake_all(&q->idle);
}

void vu_queue_hold_notify(struct vu_queue *q)
{
    q->notify_held = true;
}

void vu_queue_release_notify(struct vu_queue *q)
{
    q->notify_held = false;
    if (q->unsignalled && signal_due(q)) {
        q->signalled = true;
        signal_front_end(q);
    }
}

/* ------------------------------------------------------------------ */
/* dirty logging (migration)                                           */

static int take_fd(struct vu_msg *m);

void vu_queue_log_write(struct vu_queue *q, const struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t gpa;
        if (!iov[i].iov_len)
            continue;
        if (!vu_host_to_gpa(&q->dev->mem, iov[i].iov_base, iov[i].iov_len, &gpa) ||
            !vu_log_mark(q->log, q->log_size, gpa, iov[i].iov_len)) {
            if (!q->log_warned)
                vbd_error_report("%s: queue %d: a write into guest memory lies beyond the dirty log (%llu bytes): "
                                 "the migration may miss it",
                                 q->dev->name, q->index, (unsigned long long)q->log_size);
            q->log_warned = true;
        }
    }
}

void vu_queue_log_kick(struct vu_queue *q)
{
    if (q->log_call_fd >= 0)
        eventfd_write(q->log_call_fd, 1);
}

/* On q's loop: the ring takes the device's logging state. The used ring is
 * logged at the address SET_VRING_ADDR gave, if its last byte falls inside
 * the log (vhost-user.rst); else it is not and we say so. */
static void log_apply_here(struct vu_dev *dev, struct vu_queue *q)
{
    bool on = dev->log && vu_has_feature(dev, VHOST_F_LOG_ALL);
    q->log = on ? dev->log : NULL;
    q->log_size = dev->log_size;
    q->log_call_fd = dev->log_call_fd;
    q->log_warned = false;
    q->vq.used_log = NULL;
    if (!on || !q->log_used_asked || !q->vq.num)
        return;
    uint64_t used_len = 4 + 8 * (uint64_t)q->vq.num + 2;
    uint64_t last = q->log_used_gpa + used_len - 1;
    if (last < q->log_used_gpa || last / VHOST_LOG_PAGE / 8 >= dev->log_size) {
        vbd_error_report("%s: queue %d: the used ring's log address 0x%llx lies beyond the dirty log (%llu bytes): "
                         "its writes are not logged",
                         dev->name, q->index, (unsigned long long)q->log_used_gpa, (unsigned long long)dev->log_size);
        return;
    }
    q->vq.used_log_gpa = q->log_used_gpa;
    q->vq.used_log_size = dev->log_size;
    q->vq.used_log = dev->log;
}

static void log_apply(struct vu_dev *dev, struct vu_queue *q)
{
    struct vbd_loop *prev = vu_queue_enter(q);
    log_apply_here(dev, q);
    vu_queue_leave(prev);
}

/* After a change of the log, its fd or VHOST_F_LOG_ALL: every ring, on its
 * own loop, so that once this returns no ring writes the old log. */
static void log_apply_all(struct vu_dev *dev)
{
    for (int i = 0; i < VU_MAX_QUEUES; i++)
        if (dev->queues[i])
            log_apply(dev, dev->queues[i]);
}

static void log_unmap(void *map, size_t len)
{
    if (map)
        munmap(map, len);
}

/* SET_LOG_BASE (with LOG_SHMFD): the log is size bytes at offset in the fd. */
static int set_log_base(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t size, offset;
    memcpy(&size, m->payload, 8);
    memcpy(&offset, m->payload + 8, 8);
    if (!has_protocol_feature(dev, VHOST_USER_PROTOCOL_F_LOG_SHMFD) || m->nfds != 1) {
        vbd_error_report("%s: SET_LOG_BASE without %s", dev->name,
                         m->nfds != 1 ? "the log's file descriptor" : "LOG_SHMFD negotiated");
        return -EINVAL;
    }
    if (!size || size > (1ull << 40)) { /* 2^40 bytes of bits: 4 EiB of guest memory */
        vbd_error_report("%s: SET_LOG_BASE with a log of %llu bytes", dev->name, (unsigned long long)size);
        return -EINVAL;
    }
    if (vu_region_fits_fd(dev, "SET_LOG_BASE", m->fds[0], offset, size) < 0)
        return -EINVAL;
    uint64_t skew = offset % (uint64_t)sysconf(_SC_PAGESIZE);
    size_t len = (size_t)(size + skew);
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fds[0], (off_t)(offset - skew));
    if (map == MAP_FAILED) {
        int err = errno;
        vbd_error_report("%s: cannot map the dirty log (%llu bytes): %s", dev->name, (unsigned long long)size,
                         strerror(err));
        return -err;
    }
    void *old = dev->log_map;
    size_t old_len = dev->log_map_len;
    dev->log_map = map;
    dev->log_map_len = len;
    dev->log = (uint8_t *)map + skew;
    dev->log_size = size;
    log_apply_all(dev);
    log_unmap(old, old_len); /* no ring writes it any more */
    vbd_debug("%s: dirty log of %llu bytes mapped", dev->name, (unsigned long long)size);
    return 0;
}

static int set_log_fd(struct vu_dev *dev, struct vu_msg *m)
{
    int fd = take_fd(m);
    if (fd < 0) {
        vbd_error_report("%s: SET_LOG_FD without a file descriptor", dev->name);
        return -EINVAL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int old = dev->log_call_fd;
    dev->log_call_fd = fd;
    log_apply_all(dev);
    if (old >= 0)
        close(old);
    return 0;
}

/* Disconnect: every ring is gone already. */
static void log_clear(struct vu_dev *dev)
{
    log_unmap(dev->log_map, dev->log_map_len);
    dev->log_map = NULL;
    dev->log_map_len = 0;
    dev->log = NULL;
    dev->log_size = 0;
    if (dev->log_call_fd >= 0)
        close(dev->log_call_fd);
    dev->log_call_fd = -1;
}

void vu_queue_fail(struct vu_queue *q, const char *why)
{
    q->vq.broken = true;
    vbd_error_report("%s: queue %d: %s; the queue is stopped until the device is reset", q->dev->name, q->index, why);
    if (q->err_fd >= 0)
        eventfd_write(q->err_fd, 1);
}

bool vu_queue_rearm(struct vu_queue *q)
{
    if (q->polled && vbd_loop_polling(q->loop)) {
        if (!q->notify_off) {
            vu_vq_disable_notification(&q->vq);
            q->notify_off = true;
        }
        return false;
    }
    return vu_vq_enable_notification(&q->vq);
}

/* Runs the device on the ring; true if it took requests off it (a device
 * stopped by an error policy takes none: no busy loop then). */
static bool kick_popped(struct vu_queue *q)
{
    uint16_t before = q->vq.last_avail_idx;
    q->dev->ops->queue_kick(q);
    return q->vq.last_avail_idx != before;
}

/* Poller (DESIGN: the loop busy-polls a ring before it blocks). */
static bool queue_poll(void *arg)
{
    struct vu_queue *q = arg;
    if (!vu_queue_can_process(q) || vu_vq_pending(&q->vq) == 0)
        return false;
    return kick_popped(q);
}

static bool queue_before_sleep(void *arg)
{
    struct vu_queue *q = arg;
    if (!q->notify_off)
        return false;
    q->notify_off = false;
    if (!vu_queue_can_process(q) || !vu_vq_enable_notification(&q->vq))
        return false;
    return kick_popped(q);
}

/* A kick fd that can never be read again (a pipe whose writer is gone, an
 * fd in an error state) stays ready for ever: left armed, the loop would
 * spin on it. The ring stops until the front end sets it up again. */
static void kick_fd_broken(struct vu_queue *q, const char *why)
{
    vbd_loop_unwatch_fd(q->kick_watch);
    q->kick_watch = NULL;
    vu_queue_fail(q, why);
}

static void kick_cb(void *arg, short revents)
{
    struct vu_queue *q = arg;
    if (revents & (POLLERR | POLLNVAL)) {
        kick_fd_broken(q, "the kick file descriptor is in an error state");
        return;
    }
    uint8_t buf[64]; /* an eventfd gives 8 bytes; anything else is drained in one go */
    ssize_t r = read(q->kick_fd, buf, sizeof(buf));
    if (r == 0) {
        kick_fd_broken(q, "the kick file descriptor reached its end (its writer is gone)");
        return;
    }
    if (r < 0 && errno != EAGAIN && errno != EINTR) {
        kick_fd_broken(q, "the kick file descriptor cannot be read");
        return;
    }
    if (r < 0 && (revents & POLLHUP)) {
        kick_fd_broken(q, "the kick file descriptor hung up");
        return;
    }
    if (vu_queue_can_process(q))
        q->dev->ops->queue_kick(q);
}

static struct vu_queue *get_queue(struct vu_dev *dev, uint32_t index)
{
    if (index >= dev->max_queues)
        return NULL;
    if (!dev->queues[index]) {
        struct vu_queue *q = calloc(1, sizeof(*q));
        if (!q)
            return NULL;
        q->dev = dev;
        q->index = (int)index;
        q->kick_fd = q->call_fd = q->err_fd = q->log_call_fd = -1;
        q->loop = dev->nqueue_loops ? dev->queue_loops[index % (uint32_t)dev->nqueue_loops] : dev->loop;
        q->notify_bh.fn = notify_bh;
        q->notify_bh.arg = q;
        dev->queues[index] = q;
    }
    return dev->queues[index];
}

/* On q's loop. */
void vu_queue_wait_idle(struct vu_queue *q)
{
    if (q->dev->ops->queue_cancel)
        q->dev->ops->queue_cancel(q);
    /* the last interrupt goes out too (its bottom half must have run before
     * the queue can be freed) */
    while (q->inflight_reqs || q->notify_pending)
        vbd_co_queue_wait(&q->idle);
}

/* All three pointers or none: a ring whose memory went away (REM_MEM_REG,
 * a smaller SET_MEM_TABLE) keeps no pointer into the old mapping. Returns
 * NULL, or why the rings cannot be used (the caller reports it). */
const char *vu_queue_translate_rings(struct vu_dev *dev, struct vu_queue *q)
{
    uint16_t n = q->vq.num;
    size_t avail_len = 4 + 2 * (size_t)n + 2, used_len = 4 + 8 * (size_t)n + 2;
    void *desc = vu_qva_to_host(&dev->mem, q->desc_qva, 16 * (size_t)n);
    void *avail = vu_qva_to_host(&dev->mem, q->avail_qva, avail_len);
    void *used = vu_qva_to_host(&dev->mem, q->used_qva, used_len);
    q->vq.desc = NULL;
    q->vq.avail = NULL;
    q->vq.used = NULL;
    q->vq.avail_known = 0; /* counted in the ring we had: read the index again */
    if (!desc || !avail || !used)
        return "ring addresses outside guest memory";
    /* the front end's addresses were aligned, but a region mapped at an odd
     * mmap_offset moves them: the host addresses are what we dereference */
    if ((uintptr_t)desc % 16 || (uintptr_t)avail % 2 || (uintptr_t)used % 4)
        return "the rings land unaligned in our mapping (region offset not aligned)";
    q->vq.desc = desc;
    q->vq.avail = avail;
    q->vq.used = used;
    return NULL;
}

static void queue_stop(struct vu_queue *q)
{
    struct vbd_loop *prev = vu_queue_enter(q);
    if (q->kick_watch) {
        vbd_loop_unwatch_fd(q->kick_watch);
        q->kick_watch = NULL;
    }
    if (q->polled) {
        vbd_loop_remove_poller(q->loop, &q->poller);
        q->polled = false;
        /* leave the ring asking for kicks, for whoever runs it next */
        if (q->notify_off && q->started && q->vq.used && !q->vq.broken &&
            !__atomic_load_n(&q->dev->mem_changing, __ATOMIC_RELAXED))
            vu_vq_enable_notification(&q->vq);
        q->notify_off = false;
    }
    bool was_started = q->started;
    q->started = false;
    vu_queue_wait_idle(q);
    if (was_started && q->dev->ops->queue_stop)
        q->dev->ops->queue_stop(q);
    vu_queue_leave(prev);
}

static void queue_free(struct vu_queue *q)
{
    queue_stop(q);
    if (q->kick_fd >= 0)
        close(q->kick_fd);
    if (q->call_fd >= 0)
        close(q->call_fd);
    if (q->err_fd >= 0)
        close(q->err_fd);
    free(q);
}

static int queue_start_here(struct vu_dev *dev, struct vu_queue *q)
{
    if (!q->addr_set || !q->vq.num) {
        vbd_error_report("%s: queue %d: kick before the ring size and addresses", dev->name, q->index);
        return -EINVAL;
    }
    if (!dev->features_acked) {
        vbd_error_report("%s: queue %d: kick before SET_FEATURES", dev->name, q->index);
        return -EINVAL;
    }
    const char *bad = vu_queue_translate_rings(dev, q);
    if (bad) {
        vbd_error_report("%s: queue %d: %s", dev->name, q->index, bad);
        return -EFAULT;
    }
    log_apply_here(dev, q);
    q->vq.event_idx = vu_has_feature(dev, VIRTIO_RING_F_EVENT_IDX);
    q->vq.indirect = vu_has_feature(dev, VIRTIO_RING_F_INDIRECT_DESC);
    q->vq.broken = false;
    q->vq.signalled_used_valid = false;
    q->vq.used_idx = __atomic_load_n(&q->vq.used->idx, __ATOMIC_ACQUIRE);
    q->vq.inflight = NULL;
    if (dev->inflight_base && q->index < dev->inflight_num_queues && dev->inflight_queue_size == q->vq.num)
        q->vq.inflight = (struct vu_inflight_queue *)((uint8_t *)dev->inflight_base +
                                                      (size_t)q->index * vu_inflight_queue_size(q->vq.num));
    if (!vu_has_feature(dev, VHOST_USER_F_PROTOCOL_FEATURES))
        q->enabled = true; /* without the protocol feature rings start enabled */
    int rc = dev->ops->queue_start(q);
    if (rc < 0)
        return rc;
    q->started = true;
    uint16_t heads[VU_MAX_QUEUE_SIZE];
    int n = vu_vq_inflight_recover(&q->vq, heads, VU_MAX_QUEUE_SIZE);
    if (n > 0) {
        vbd_info("%s: queue %d: resubmitting %d requests left in flight by the previous back end", dev->name,
                 q->index, n);
        for (int i = 0; i < n; i++)
            dev->ops->queue_resubmit(q, heads[i]);
    }
    q->kick_watch = vbd_loop_watch_fd(vbd_loop_current(), q->kick_fd, POLLIN, kick_cb, q);
    if (!q->kick_watch) {
        /* e.g. a regular file, which epoll refuses */
        vbd_error_report("%s: queue %d: cannot watch the kick file descriptor", dev->name, q->index);
        return -EINVAL;
    }
    q->poller = (struct vbd_poller){.poll = queue_poll, .before_sleep = queue_before_sleep, .arg = q};
    vbd_loop_add_poller(q->loop, &q->poller);
    q->polled = true;
    q->notify_off = false;
    if (vu_queue_can_process(q))
        dev->ops->queue_kick(q); /* entries may be waiting already */
    if (n > 0 && q->call_fd >= 0)
        eventfd_write(q->call_fd, 1); /* completions the old back end pushed may not have been signalled */
    return 0;
}

static int queue_start(struct vu_dev *dev, struct vu_queue *q)
{
    struct vbd_loop *prev = vu_queue_enter(q);
    int rc = queue_start_here(dev, q);
    vu_queue_leave(prev);
    return rc;
}

/* ------------------------------------------------------------------ */
/* inflight region                                                     */

static void inflight_clear(struct vu_dev *dev)
{
    if (dev->inflight_base)
        munmap(dev->inflight_base, dev->inflight_size);
    if (dev->inflight_fd >= 0)
        close(dev->inflight_fd);
    dev->inflight_base = NULL;
    dev->inflight_fd = -1;
    dev->inflight_size = 0;
}

struct inflight_wire {
    uint64_t mmap_size, mmap_offset;
    uint16_t num_queues, queue_size;
    uint8_t pad[4];
};

/* The running rings point into the inflight region: it changes only
 * while every ring is stopped. */
static bool any_ring_started(const struct vu_dev *dev, const char *what)
{
    for (int i = 0; i < VU_MAX_QUEUES; i++)
        if (dev->queues[i] && dev->queues[i]->started) {
            vbd_error_report("%s: %s while queue %d runs (stop the rings first)", dev->name, what, i);
            return true;
        }
    return false;
}

static int get_inflight_fd(struct vu_dev *dev, struct vu_msg *m, struct inflight_wire *out)
{
    struct inflight_wire w = {0};
    memcpy(&w, m->payload, m->size < sizeof(w) ? m->size : sizeof(w));
    if (any_ring_started(dev, "GET_INFLIGHT_FD"))
        return -EBUSY;
    if (!w.num_queues || w.num_queues > dev->max_queues || !w.queue_size || w.queue_size > VU_MAX_QUEUE_SIZE) {
        vbd_error_report("%s: GET_INFLIGHT_FD for %u queues of %u", dev->name, w.num_queues, w.queue_size);
        return -EINVAL;
    }
    inflight_clear(dev);
    size_t size = (size_t)w.num_queues * vu_inflight_queue_size(w.queue_size);
    int fd = memfd_create("vbd-inflight", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
        vbd_error_report("%s: cannot create the inflight region: %s", dev->name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return -ENOMEM;
    }
    dev->inflight_base = p;
    dev->inflight_size = size;
    dev->inflight_fd = fd;
    dev->inflight_num_queues = w.num_queues;
    dev->inflight_queue_size = w.queue_size;
    *out = w;
    out->mmap_size = size;
    out->mmap_offset = 0;
    return fd;
}

static int set_inflight_fd(struct vu_dev *dev, struct vu_msg *m)
{
    struct inflight_wire w = {0};
    memcpy(&w, m->payload, m->size < sizeof(w) ? m->size : sizeof(w));
    if (m->nfds != 1 || !w.num_queues || w.num_queues > dev->max_queues || !w.queue_size ||
        w.queue_size > VU_MAX_QUEUE_SIZE || w.mmap_size < (uint64_t)w.num_queues * vu_inflight_queue_size(w.queue_size)) {
        vbd_error_report("%s: SET_INFLIGHT_FD with a region that does not fit %u queues of %u", dev->name,
                         w.num_queues, w.queue_size);
        return -EINVAL;
    }
    if (any_ring_started(dev, "SET_INFLIGHT_FD"))
        return -EBUSY;
    if (vu_region_fits_fd(dev, "SET_INFLIGHT_FD", m->fds[0], w.mmap_offset, w.mmap_size) < 0)
        return -EINVAL;
    void *p = mmap(NULL, w.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fds[0], (off_t)w.mmap_offset);
    if (p == MAP_FAILED) {
        vbd_error_report("%s: cannot map the inflight region: %s", dev->name, strerror(errno));
        return -errno;
    }
    inflight_clear(dev);
    dev->inflight_base = p;
    dev->inflight_size = w.mmap_size;
    dev->inflight_fd = m->fds[0];
    m->fds[0] = -1; /* kept */
    dev->inflight_num_queues = w.num_queues;
    dev->inflight_queue_size = w.queue_size;
    return 0;
}

/* ------------------------------------------------------------------ */
/* messages                                                            */

static void close_msg_fds(struct vu_msg *m)
{
    for (int i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    m->nfds = 0;
}

static int recv_msg_fds(struct vu_dev *dev, struct vu_msg *m);

/* Every error return leaves no fd of the message open. */
static int recv_msg(struct vu_dev *dev, struct vu_msg *m)
{
    int rc = recv_msg_fds(dev, m);
    if (rc < 0)
        close_msg_fds(m);
    return rc;
}

static int recv_msg_fds(struct vu_dev *dev, struct vu_msg *m)
{
    uint8_t hdr[VU_HDR_SIZE];
    char cbuf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
    struct iovec iov = {hdr, sizeof(hdr)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    m->nfds = 0;
    m->fds_truncated = false;
    ssize_t r = vbd_co_recvmsg(dev->conn_fd, &mh, 0);
    if (r <= 0)
        return r == 0 ? -ECONNRESET : (int)r;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (m->nfds < VU_MAX_FDS)
                    m->fds[m->nfds++] = fd;
                else
                    close(fd);
            }
        }
    m->fds_truncated = (mh.msg_flags & MSG_CTRUNC) != 0;
    if (r < VU_HDR_SIZE && vbd_co_recv_full(dev->conn_fd, hdr + r, VU_HDR_SIZE - r) < 0)
        return -ECONNRESET;
    memcpy(&m->request, hdr, 4);
    memcpy(&m->flags, hdr + 4, 4);
    memcpy(&m->size, hdr + 8, 4);
    if ((m->flags & 0x3) != VHOST_USER_VERSION) {
        vbd_error_report("%s: message with protocol version %u (expected 1), disconnecting", dev->name,
                         m->flags & 0x3);
        return -EPROTO;
    }
    if (m->size > VU_MAX_PAYLOAD) {
        vbd_error_report("%s: %s message of %u bytes is too large, disconnecting", dev->name,
                         request_name(m->request), m->size);
        return -EPROTO;
    }
    if (m->size && vbd_co_recv_full(dev->conn_fd, m->payload, m->size) < 0)
        return -ECONNRESET;
    return 0;
}

static int send_reply(struct vu_dev *dev, const struct vu_msg *req, const void *payload, uint32_t size, int fd)
{
    uint8_t hdr[VU_HDR_SIZE];
    uint32_t flags = VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY;
    memcpy(hdr, &req->request, 4);
    memcpy(hdr + 4, &flags, 4);
    memcpy(hdr + 8, &size, 4);
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)payload, size}};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
    if (fd >= 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t r = vbd_co_sendmsg(dev->conn_fd, &mh, 0);
    if (r < 0)
        return (int)r;
    if ((size_t)r < sizeof(hdr) + size) {
        /* the rest goes without the fd */
        size_t done = (size_t)r;
        uint8_t all[VU_HDR_SIZE + VU_CONFIG_MAX + 64];
        if (sizeof(hdr) + size > sizeof(all))
            return -EMSGSIZE;
        memcpy(all, hdr, sizeof(hdr));
        memcpy(all + sizeof(hdr), payload, size);
        return vbd_co_send_full(dev->conn_fd, all + done, sizeof(hdr) + size - done);
    }
    return 0;
}

static int reply_u64(struct vu_dev *dev, const struct vu_msg *m, uint64_t v)
{
    return send_reply(dev, m, &v, sizeof(v), -1);
}

static int take_fd(struct vu_msg *m)
{
    if (m->nfds < 1)
        return -1;
    int fd = m->fds[0];
    m->fds[0] = -1;
    return fd;
}

/* The payload size and the fds each request carries (vhost-user.rst):
 * anything else is refused before the handler sees it, so the handlers
 * never read what the front end did not send. */
static int msg_check(struct vu_dev *dev, const struct vu_msg *m)
{
    const char *name = request_name(m->request);
    uint32_t size = 0, min_size = 0; /* exact size, or at least min_size */
    int fds = 0;
    uint64_t u64 = 0;
    if (m->size >= 8)
        memcpy(&u64, m->payload, 8);
    if (m->fds_truncated && m->nfds < VU_MAX_FDS) {
        /* fds were dropped though the buffer had room: the kernel could not
         * install them here (our fd table is full). Said first: the checks
         * below would blame the front end for fds it did send. */
        vbd_error_report("%s: %s: its file descriptors could not be received (too many open files?)", dev->name,
                         name);
        return -EMFILE;
    }
    switch (m->request) {
    case VHOST_USER_SET_FEATURES:
    case VHOST_USER_SET_PROTOCOL_FEATURES:
    case VHOST_USER_SET_VRING_NUM:
    case VHOST_USER_SET_VRING_BASE:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE:
    case VHOST_USER_SET_VRING_ENDIAN:
        size = 8;
        break;
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
        size = 8;
        fds = (u64 & VHOST_USER_VRING_NOFD) ? 0 : 1;
        if (m->size == 8 && fds && m->nfds == 0) {
            vbd_error_report("%s: %s without a file descriptor and without the NOFD flag", dev->name, name);
            return -EINVAL;
        }
        break;
    case VHOST_USER_SET_VRING_ADDR:
        size = 40;
        break;
    case VHOST_USER_ADD_MEM_REG:
    case VHOST_USER_REM_MEM_REG: /* QEMU sends the region's fd with REM_MEM_REG too */
        size = 40;
        fds = 1;
        break;
    case VHOST_USER_SET_MEM_TABLE:
        min_size = 8;
        fds = VU_MAX_FDS; /* one per region: vu_mem_set_table checks the count */
        break;
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_SET_CONFIG:
        min_size = 12;
        break;
    case VHOST_USER_GET_INFLIGHT_FD:
    case VHOST_USER_SET_INFLIGHT_FD:
        min_size = 20; /* 24 with QEMU's padding */
        fds = m->request == VHOST_USER_SET_INFLIGHT_FD;
        break;
    case VHOST_USER_SET_BACKEND_REQ_FD:
    case VHOST_USER_SET_LOG_FD:
        min_size = 0;
        fds = 1;
        break;
    case VHOST_USER_SET_LOG_BASE:
        size = 16; /* the log description: size, offset */
        fds = 1;
        break;
    default: /* GET_* without arguments, SET_OWNER, resets, and requests we refuse anyway */
        break;
    }
    if (m->fds_truncated) {
        vbd_error_report("%s: %s came with more than %d file descriptors", dev->name, name, VU_MAX_FDS);
        return -EINVAL;
    }
    if (m->nfds > fds) {
        vbd_error_report("%s: %s came with %d file descriptors (it takes %d)", dev->name, name, m->nfds, fds);
        return -EINVAL;
    }
    if (size ? m->size != size : m->size < min_size) {
        vbd_error_report("%s: %s with a payload of %u bytes (%s %u)", dev->name, name, m->size,
                         size ? "expected" : "at least", size ? size : min_size);
        return -EINVAL;
    }
    return 0;
}

static uint64_t protocol_features_offered(void)
{
    return (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
           (1ull << VHOST_USER_PROTOCOL_F_CONFIG) | (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
           (1ull << VHOST_USER_PROTOCOL_F_RESET_DEVICE) | (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ) |
           (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) | (1ull << VHOST_USER_PROTOCOL_F_LOG_SHMFD);
}

/* The device's features, and the transport's: VHOST_F_LOG_ALL (we log our
 * writes into guest memory while the front end migrates). */
static uint64_t features_offered(struct vu_dev *dev)
{
    return dev->ops->features(dev) | (1ull << VHOST_F_LOG_ALL);
}

static void reset_device(struct vu_dev *dev)
{
    for (int i = 0; i < VU_MAX_QUEUES; i++)
        if (dev->queues[i]) {
            queue_free(dev->queues[i]);
            dev->queues[i] = NULL;
        }
    dev->features = 0;
    dev->features_acked = false;
}

/* Returns <0 on a failed request, 0 on success, 1 when a reply was already sent. */
static int handle(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t u64 = 0;
    if (m->size >= 8)
        memcpy(&u64, m->payload, 8);
    struct vu_queue *q = NULL;
    switch (m->request) {
    case VHOST_USER_GET_FEATURES:
        return reply_u64(dev, m, features_offered(dev)) < 0 ? -EIO : 1;
    case VHOST_USER_SET_FEATURES: {
        uint64_t offered = features_offered(dev);
        if (u64 & ~offered) {
            vbd_error_report("%s: front end set features 0x%llx we did not offer", dev->name,
                             (unsigned long long)(u64 & ~offered));
            return -EINVAL;
        }
        bool log_was = vu_has_feature(dev, VHOST_F_LOG_ALL);
        dev->features = u64;
        dev->features_acked = true;
        dev->ops->features_set(dev, u64 & ~(1ull << VHOST_F_LOG_ALL));
        if (log_was != vu_has_feature(dev, VHOST_F_LOG_ALL)) {
            /* a migration starts or ends: the running rings log, or stop */
            log_apply_all(dev);
            vbd_info("%s: dirty logging %s", dev->name, log_was ? "off" : "on");
        }
        return 0;
    }
    case VHOST_USER_GET_PROTOCOL_FEATURES:
        return reply_u64(dev, m, protocol_features_offered()) < 0 ? -EIO : 1;
    case VHOST_USER_SET_PROTOCOL_FEATURES:
        if (u64 & ~protocol_features_offered()) {
            vbd_error_report("%s: front end set protocol features 0x%llx we did not offer", dev->name,
                             (unsigned long long)(u64 & ~protocol_features_offered()));
            return -EINVAL;
        }
        dev->protocol_features = u64;
        return 0;
    case VHOST_USER_SET_OWNER:
        if (dev->owned) {
            vbd_error_report("%s: SET_OWNER again on a connection that has an owner", dev->name);
            return -EBUSY;
        }
        dev->owned = true;
        return 0;
    case VHOST_USER_RESET_OWNER:
    case VHOST_USER_RESET_DEVICE:
        reset_device(dev);
        dev->owned = m->request == VHOST_USER_RESET_DEVICE && dev->owned;
        return 0;
    case VHOST_USER_GET_QUEUE_NUM:
        return reply_u64(dev, m, dev->max_queues) < 0 ? -EIO : 1;
    case VHOST_USER_GET_MAX_MEM_SLOTS:
        return reply_u64(dev, m, VU_MAX_MEM_REGIONS) < 0 ? -EIO : 1;
    case VHOST_USER_SET_MEM_TABLE:
        return vu_mem_set_table(dev, m->payload, m->size, m->fds, m->nfds);
    case VHOST_USER_ADD_MEM_REG:
        return vu_mem_add_region(dev, m->payload, m->size, m->fds, m->nfds);
    case VHOST_USER_REM_MEM_REG:
        return vu_mem_remove_region(dev, m->payload, m->size);
    case VHOST_USER_SET_VRING_NUM:
    case VHOST_USER_SET_VRING_BASE:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE: {
        uint32_t index, num;
        memcpy(&index, m->payload, 4);
        memcpy(&num, m->payload + 4, 4);
        if (!(q = get_queue(dev, index))) {
            vbd_error_report("%s: %s for queue %u (the device has %u)", dev->name, request_name(m->request),
                             index, dev->max_queues);
            return -EINVAL;
        }
        if (m->request == VHOST_USER_SET_VRING_NUM) {
            /* split rings: a power of two, or the 16-bit indices do not wrap with the ring */
            if (q->started || !num || num > VU_MAX_QUEUE_SIZE || (num & (num - 1))) {
                vbd_error_report("%s: queue %u: bad ring size %u (a power of two up to %d, ring stopped)", dev->name,
                                 index, num, VU_MAX_QUEUE_SIZE);
                return -EINVAL;
            }
            q->vq.num = (uint16_t)num;
        } else if (m->request == VHOST_USER_SET_VRING_BASE) {
            if (q->started || num > UINT16_MAX) {
                vbd_error_report("%s: queue %u: SET_VRING_BASE %u %s", dev->name, index, num,
                                 q->started ? "while the ring runs" : "beyond a 16-bit ring index");
                return q->started ? -EBUSY : -EINVAL;
            }
            q->vq.last_avail_idx = (uint16_t)num;
            q->vq.avail_known = 0;
        } else if (m->request == VHOST_USER_SET_VRING_ENABLE) {
            struct vbd_loop *prev = vu_queue_enter(q);
            q->enabled = num != 0;
            if (vu_queue_can_process(q))
                dev->ops->queue_kick(q);
            vu_queue_leave(prev);
        } else {
            queue_stop(q);
            if (q->kick_fd >= 0) {
                close(q->kick_fd);
                q->kick_fd = -1;
            }
            uint32_t st[2] = {index, q->vq.last_avail_idx};
            return send_reply(dev, m, st, sizeof(st), -1) < 0 ? -EIO : 1;
        }
        return 0;
    }
    case VHOST_USER_SET_VRING_ADDR: {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
        memcpy(&index, m->payload, 4);
        memcpy(&flags, m->payload + 4, 4);
        memcpy(&desc, m->payload + 8, 8);
        memcpy(&used, m->payload + 16, 8);
        memcpy(&avail, m->payload + 24, 8);
        memcpy(&log, m->payload + 32, 8);
        if (!(q = get_queue(dev, index))) {
            vbd_error_report("%s: SET_VRING_ADDR for queue %u (the device has %u)", dev->name, index, dev->max_queues);
            return -EINVAL;
        }
        if (q->started) {
            /* QEMU's vhost_dev_set_log: the same addresses, used-ring
             * logging turned on or off while the ring runs */
            if (desc != q->desc_qva || used != q->used_qva || avail != q->avail_qva) {
                vbd_error_report("%s: SET_VRING_ADDR moves queue %u while it runs", dev->name, index);
                return -EBUSY;
            }
            q->log_used_asked = flags & VHOST_VRING_F_LOG_USED;
            q->log_used_gpa = log;
            log_apply(dev, q);
            return 0;
        }
        q->log_used_asked = flags & VHOST_VRING_F_LOG_USED;
        q->log_used_gpa = log;
        /* virtio 1.x 2.7: descriptor table 16, available ring 2, used ring 4 bytes aligned */
        if (desc % 16 || avail % 2 || used % 4) {
            vbd_error_report("%s: queue %u: unaligned ring addresses (desc 0x%llx, avail 0x%llx, used 0x%llx)",
                             dev->name, index, (unsigned long long)desc, (unsigned long long)avail,
                             (unsigned long long)used);
            return -EINVAL;
        }
        q->desc_qva = desc;
        q->used_qva = used;
        q->avail_qva = avail;
        const char *bad = q->vq.num ? vu_queue_translate_rings(dev, q) : NULL;
        if (bad) {
            vbd_error_report("%s: queue %u: %s", dev->name, index, bad);
            return -EFAULT;
        }
        q->addr_set = true;
        return 0;
    }
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR: {
        uint32_t index = (uint32_t)(u64 & 0xff);
        int fd = (u64 & VHOST_USER_VRING_NOFD) ? -1 : take_fd(m);
        if (!(q = get_queue(dev, index))) {
            if (fd >= 0)
                close(fd);
            vbd_error_report("%s: %s for queue %u (the device has %u)", dev->name, request_name(m->request),
                             index, dev->max_queues);
            return -EINVAL;
        }
        if (m->request == VHOST_USER_SET_VRING_KICK) {
            if (fd < 0) {
                vbd_error_report("%s: queue %u: polling mode (no kick fd) is not supported", dev->name, index);
                return -EINVAL;
            }
            queue_stop(q);
            if (q->kick_fd >= 0)
                close(q->kick_fd);
            q->kick_fd = fd;
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            return queue_start(dev, q);
        }
        /* a front end that never reads a full pipe must not block the ring's thread */
        if (fd >= 0)
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        /* the ring's thread signals these fds: swap them there */
        struct vbd_loop *prev = vu_queue_enter(q);
        int *slot = m->request == VHOST_USER_SET_VRING_CALL ? &q->call_fd : &q->err_fd;
        if (*slot >= 0)
            close(*slot);
        *slot = fd;
        /* A new call fd is signalled once, as libvhost-user does, once in
         * place (a completion from here on signals it too): completions
         * pushed while the ring had no call fd, or an earlier session's
         * (which the front end stopped watching when that connection went;
         * QEMU sends SET_VRING_CALL after the kick that restarts a ring),
         * would otherwise wait for a later request's interrupt, and a guest
         * waiting only for them hangs. A spurious interrupt costs the
         * driver a look at its used ring. */
        if (fd >= 0 && slot == &q->call_fd)
            eventfd_write(fd, 1);
        vu_queue_leave(prev);
        return 0;
    }
    case VHOST_USER_GET_CONFIG: {
        uint32_t off, size;
        memcpy(&off, m->payload, 4);
        memcpy(&size, m->payload + 4, 4);
        if (size > VU_CONFIG_MAX || off > VU_CONFIG_MAX - size || m->size < 12 + size) {
            vbd_error_report("%s: GET_CONFIG of %u bytes at %u", dev->name, size, off);
            return -EINVAL;
        }
        uint8_t cfg[VU_CONFIG_MAX] = {0};
        dev->ops->get_config(dev, cfg, VU_CONFIG_MAX);
        memcpy(m->payload + 12, cfg + off, size);
        return send_reply(dev, m, m->payload, 12 + size, -1) < 0 ? -EIO : 1;
    }
    case VHOST_USER_SET_CONFIG: {
        uint32_t off, size;
        memcpy(&off, m->payload, 4);
        memcpy(&size, m->payload + 4, 4);
        if (size > VU_CONFIG_MAX || off > VU_CONFIG_MAX - size || m->size < 12 + size) {
            vbd_error_report("%s: SET_CONFIG of %u bytes at %u", dev->name, size, off);
            return -EINVAL;
        }
        return dev->ops->set_config(dev, off, m->payload + 12, size);
    }
    case VHOST_USER_GET_INFLIGHT_FD: {
        struct inflight_wire w;
        int fd = get_inflight_fd(dev, m, &w);
        if (fd < 0)
            return fd;
        return send_reply(dev, m, &w, sizeof(w), fd) < 0 ? -EIO : 1;
    }
    case VHOST_USER_SET_INFLIGHT_FD:
        return set_inflight_fd(dev, m);
    case VHOST_USER_SET_BACKEND_REQ_FD: {
        int fd = take_fd(m);
        if (fd < 0) {
            vbd_error_report("%s: SET_BACKEND_REQ_FD without a file descriptor", dev->name);
            return -EINVAL;
        }
        if (dev->backend_req_fd >= 0)
            close(dev->backend_req_fd);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        dev->backend_req_fd = fd;
        return 0;
    }
    case VHOST_USER_SET_LOG_BASE:
        if (set_log_base(dev, m) < 0)
            return -EINVAL; /* no reply: the connection drops (serve) */
        return reply_u64(dev, m, 0) < 0 ? -EIO : 1;
    case VHOST_USER_SET_LOG_FD:
        return set_log_fd(dev, m);
    case VHOST_USER_SET_VRING_ENDIAN:
        return (u64 >> 32) == 0 ? 0 : -ENOTSUP; /* little-endian only (VERSION_1) */
    default:
        vbd_warn("%s: unsupported vhost-user message %u (%s)", dev->name, m->request, request_name(m->request));
        return -ENOTSUP;
    }
}

#define VHOST_USER_BACKEND_CONFIG_CHANGE_MSG 2

int vu_dev_config_changed(struct vu_dev *dev)
{
    if (dev->conn_fd < 0)
        return 1;
    if (!has_protocol_feature(dev, VHOST_USER_PROTOCOL_F_BACKEND_REQ) || dev->backend_req_fd < 0)
        return -ENOTSUP;
    /* No NEED_REPLY: the front end answers by reading the config
     * (GET_CONFIG). Never wait for room on the channel: a front end that
     * does not read it must not stall the caller (a QMP block_resize, the
     * SIGHUP handler); it sees the new size at its next GET_CONFIG. The
     * 12-byte message goes whole or not at all on a unix stream socket
     * with room for it. */
    uint32_t hdr[3] = {VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, VHOST_USER_VERSION, 0};
    ssize_t sent = send(dev->backend_req_fd, hdr, sizeof(hdr), MSG_NOSIGNAL | MSG_DONTWAIT);
    int rc = sent == (ssize_t)sizeof(hdr) ? 0 : sent < 0 ? -errno : -EAGAIN;
    if (rc < 0)
        vbd_warn("%s: cannot send the config change to the front end: %s", dev->name, strerror(-rc));
    return rc;
}

static bool has_own_reply(uint32_t request)
{
    switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_GET_INFLIGHT_FD:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_SET_LOG_BASE:
        return true;
    }
    return false;
}

static void disconnect(struct vu_dev *dev)
{
    reset_device(dev);
    log_clear(dev);
    vu_mem_clear(dev);
    inflight_clear(dev);
    if (dev->backend_req_fd >= 0)
        close(dev->backend_req_fd);
    dev->backend_req_fd = -1;
    dev->protocol_features = 0;
    dev->owned = false;
    close(dev->conn_fd);
    __atomic_store_n(&dev->conn_fd, -1, __ATOMIC_RELAXED);
}

static void serve(struct vu_dev *dev)
{
    struct vu_msg *m = malloc(sizeof(*m));
    if (!m)
        return;
    while (!dev->stopping) {
        int rc = recv_msg(dev, m);
        if (rc < 0) {
            if (rc != -ECONNRESET)
                vbd_warn("%s: front end connection lost: %s", dev->name, strerror(-rc));
            break;
        }
        vbd_debug("%s: %s (%u bytes, %d fds)", dev->name, request_name(m->request), m->size, m->nfds);
        vbd_co_mutex_lock(&dev->lock);
        rc = msg_check(dev, m);
        if (rc == 0)
            rc = handle(dev, m);
        vbd_co_mutex_unlock(&dev->lock);
        for (int i = 0; i < m->nfds; i++)
            if (m->fds[i] >= 0)
                close(m->fds[i]);
        if (rc != 1 && (m->flags & VHOST_USER_FLAG_NEED_REPLY) &&
            has_protocol_feature(dev, VHOST_USER_PROTOCOL_F_REPLY_ACK) && !has_own_reply(m->request)) {
            if (reply_u64(dev, m, rc < 0 ? 1 : 0) < 0)
                break;
        } else if (rc < 0 && rc != -ENOTSUP && has_own_reply(m->request)) {
            /* a GET the front end waits for: it must not hang, so we drop the connection */
            vbd_error_report("%s: cannot answer %s, disconnecting", dev->name, request_name(m->request));
            break;
        }
    }
    free(m);
    dev->conn_ending = true; /* a front end that connects from here on waits for the end (accept_co) */
    vbd_co_mutex_lock(&dev->lock);
    disconnect(dev);
    vbd_co_mutex_unlock(&dev->lock);
    /* logged once the next front end can be accepted (tests wait for it) */
    vbd_info("%s: front end disconnected", dev->name);
}

static void conn_co(void *arg)
{
    struct vu_dev *dev = arg;
    serve(dev);
    dev->conn_done = true;
    vbd_co_queue_wake_all(&dev->idle);
}

static int connect_client(struct vu_dev *dev)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", dev->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = vbd_co_connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* The connected front end has hung up (or we shut the connection down):
 * its session is ending even if its message loop has not read the end
 * yet. A front end that closes its connection and connects again (QEMU's
 * reconnect=1) closes first, so its new connection finds the old one hung
 * up. */
static bool front_end_hung_up(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return fd < 0 || (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)));
}

/*
 * A front end that connects while a session exists. If that session is
 * ending (its front end hung up, or we dropped it) its requests in flight
 * may still be completing into guest memory and the rings: the newcomer
 * waits, its messages unread, until the session is gone, then is served
 * (a front end that reconnects at once: QEMU with reconnect=1, a VM that
 * libvirt restarts). Two sessions never share the device: its guest
 * memory, rings, inflight region and dirty log belong to one front end.
 * A newcomer while the session is live is refused (README: two front ends
 * on one socket are a mistake, and the second VM then fails at once with
 * this warning where qsd leaves it hanging in the listen backlog; a QEMU
 * with reconnect=1 tries again). Returns the fd to serve, or -1.
 */
static int admit_front_end(struct vu_dev *dev, int fd)
{
    if (dev->conn_done)
        return fd;
    if (!dev->conn_ending && !front_end_hung_up(dev->conn_fd)) {
        vbd_warn("%s: refusing a second front end (one is connected)", dev->name);
        close(fd);
        return -1;
    }
    vbd_info("%s: a front end connects while the previous one's session ends: it is served once that session's "
             "requests in flight have completed",
             dev->name);
    while (!dev->conn_done && !dev->stopping)
        vbd_co_queue_wait(&dev->idle);
    if (dev->stopping) {
        close(fd);
        return -1;
    }
    return fd;
}

static void accept_co(void *arg)
{
    struct vu_dev *dev = arg;
    bool warned = false;
    while (!dev->stopping) {
        int fd;
        if (dev->server) {
            fd = vbd_co_accept(dev->listen_fd, NULL, NULL);
            if (fd < 0) {
                if (dev->stopping || fd == -ESHUTDOWN || fd == -EINVAL || fd == -EBADF)
                    break;
                if (!vbd_co_accept_backoff(&dev->accept_lacking, fd, dev->name))
                    vbd_co_sleep_ns(100000000);
                continue;
            }
            vbd_co_accept_backoff(&dev->accept_lacking, fd, dev->name);
            if ((fd = admit_front_end(dev, fd)) < 0)
                continue;
        } else {
            if (dev->conn_fd >= 0) {
                while (dev->conn_fd >= 0 && !dev->stopping)
                    vbd_co_queue_wait(&dev->idle);
                continue;
            }
            fd = connect_client(dev);
            if (fd < 0) {
                if (!warned)
                    vbd_warn("%s: cannot connect to '%s': %s; retrying every second", dev->name, dev->path,
                             strerror(-fd));
                warned = true;
                vbd_co_sleep_ns(1000000000);
                continue;
            }
            warned = false;
        }
        vbd_info("%s: front end connected", dev->name);
        dev->conn_fd = fd;
        dev->conn_done = false;
        dev->conn_ending = false;
        vbd_co_wake(vbd_co_create(conn_co, dev));
    }
    dev->accept_done = true;
    vbd_co_queue_wake_all(&dev->idle);
}

int vu_dev_start(struct vu_dev *dev, struct vbd_error **err)
{
    dev->loop = vbd_loop_current();
    dev->listen_fd = dev->conn_fd = dev->inflight_fd = dev->backend_req_fd = dev->log_call_fd = -1;
    dev->conn_done = true;
    if (dev->server) {
        int fd = vbd_unix_listen(dev->path, 4);
        if (fd == -ENAMETOOLONG) {
            vbd_error_setf(err, ENAMETOOLONG, "%s: socket path '%s' is too long", dev->name, dev->path);
            return fd;
        }
        if (fd < 0) {
            vbd_error_setf(err, -fd, "%s: cannot listen on '%s': %s", dev->name, dev->path, strerror(-fd));
            return fd;
        }
        dev->listen_fd = fd;
    }
    dev->accept_done = false;
    vbd_co_wake(vbd_co_create(accept_co, dev));
    return 0;
}

void vu_dev_stop(struct vu_dev *dev)
{
    dev->stopping = true;
    if (dev->listen_fd >= 0)
        shutdown(dev->listen_fd, SHUT_RDWR);
    if (dev->conn_fd >= 0)
        shutdown(dev->conn_fd, SHUT_RDWR);
    vbd_co_queue_wake_all(&dev->idle);
    while (!dev->accept_done || !dev->conn_done)
        vbd_co_queue_wait(&dev->idle);
    if (dev->listen_fd >= 0) {
        close(dev->listen_fd);
        dev->listen_fd = -1;
        unlink(dev->path);
    }
}
