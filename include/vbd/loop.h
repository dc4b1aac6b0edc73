/* SPDX-License-Identifier: MIT */
#ifndef VBD_LOOP_H
#define VBD_LOOP_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/socket.h>

struct vbd_error;

/*
 * One event loop per thread. The io_uring backend drives file I/O, polls,
 * timers and wake-ups through one ring; submissions are batched and flushed
 * once per loop iteration (io_uring_submit_and_wait). When io_uring cannot
 * be had (ENOSYS, EPERM, kernel.io_uring_disabled) the loop falls back to
 * epoll + a thread pool, with the same API.
 *
 * File I/O method is per call site: aio=io_uring (the ring) or aio=threads
 * (the thread pool), as in QEMU. With the epoll backend only "threads" is
 * possible; VBD_AIO_IO_URING then degrades to threads silently and
 * vbd_loop_has_io_uring() says so.
 */
/* VBD_AIO_SYNC: the syscall runs on the loop thread itself, for files whose
 * I/O is a memory copy that never sleeps (tmpfs): a hand-off to io_uring's
 * workers or the thread pool costs more than the copy. */
enum vbd_aio { VBD_AIO_IO_URING = 0, VBD_AIO_THREADS = 1, VBD_AIO_SYNC = 2 };

struct vbd_loop;

/* Create the calling thread's loop (at most one per thread). queue_depth
 * sizes the ring (0: default 256). Returns NULL with *err on failure.
 * VBD_LOOP_FORCE_EPOLL (env VBD_NO_IO_URING=1 does the same) is for tests. */
#define VBD_LOOP_FORCE_EPOLL 1u
struct vbd_loop *vbd_loop_new(unsigned queue_depth, unsigned flags, struct vbd_error **err);
/* Once nothing runs it any more (its thread ended or stops using it): an
 * iothread's loop is freed by the thread that joins it. */
void vbd_loop_free(struct vbd_loop *loop);
/* The calling thread's loop; created on first use with defaults (aborts
 * with a message if even the epoll fallback fails). */
struct vbd_loop *vbd_loop_current(void);
/* The calling thread's loop, or NULL if it has none (none is made). */
struct vbd_loop *vbd_loop_current_or_null(void);
bool vbd_loop_has_io_uring(const struct vbd_loop *loop);
/* How an io_uring loop's thread learns of completions the kernel finishes
 * in its context (task work; loop.c's ring_setup): an IPI while it runs
 * (io_uring's default), at its next syscall (COOP_TASKRUN), or only when it
 * asks for completions (DEFER_TASKRUN). VBD_URING_TASKRUN=ipi|0, coop or
 * defer in the environment chooses for loops created after; a kernel that
 * refuses one gets the next simpler. */
enum vbd_uring_taskrun { VBD_URING_TASKRUN_IPI, VBD_URING_TASKRUN_COOP, VBD_URING_TASKRUN_DEFER };
enum vbd_uring_taskrun vbd_loop_uring_taskrun(const struct vbd_loop *loop);
const char *vbd_uring_taskrun_name(enum vbd_uring_taskrun mode);

/*
 * Checks of the threading contract (docs/DESIGN.md, "Concurrency
 * contract"), for assertions; both cheap and never create a loop.
 * vbd_loop_is_current: the calling thread is the one that created loop and
 * runs it. vbd_thread_is_main: the calling thread is the process's main
 * thread, which runs the control plane (vbd-daemon's main loop: the graph,
 * QMP, jobs, exports, objects). VBD_DEBUG_ASSERT is for checks on request
 * paths: compiled in builds other than release builds (meson.build defines
 * VBD_DEBUG_CHECKS), where plain assert() stays for the control paths.
 */
bool vbd_loop_is_current(const struct vbd_loop *loop);
bool vbd_thread_is_main(void);
#ifdef VBD_DEBUG_CHECKS
#define VBD_DEBUG_ASSERT(cond) assert(cond)
#else
#define VBD_DEBUG_ASSERT(cond) ((void)0)
#endif

/* One iteration (loop's own thread): submit pending SQEs, wait for at least one event or until
 * timeout_ns (-1 = forever, 0 = poll), run completions, scheduled
 * coroutines and bottom halves. Returns number of events processed. */
int vbd_loop_run_once(struct vbd_loop *loop, int64_t timeout_ns);
/* Run until *stop becomes true (checked after every iteration). Loop's thread. */
void vbd_loop_run(struct vbd_loop *loop, volatile bool *stop);
/* Wake a loop blocked in run_once, from any thread or a signal handler. */
void vbd_loop_kick(struct vbd_loop *loop);

/* Bottom halves: run fn(arg) in loop's thread on its next iteration.
 * Thread-safe (may be called from any thread); allocation-free when
 * called with a caller-owned struct vbd_bh. */
struct vbd_bh {
    void (*fn)(void *arg);
    void *arg;
    struct vbd_bh *next; /* private */
};
void vbd_loop_schedule_bh(struct vbd_loop *loop, struct vbd_bh *bh);

/* Monotonic clock in ns. */
uint64_t vbd_clock_ns(void);
/* For statistics (request times): cheaper, only differences count, off by
 * up to tens of ns; vbd_clock_stat_since gives the ns since a reading of
 * it (never negative). Not for deadlines or timers: use vbd_clock_ns. */
uint64_t vbd_clock_stat_ns(void);
uint64_t vbd_clock_stat_since(uint64_t start_ns);
/* The calling thread's last vbd_clock_stat_ns reading (0 before its
 * first): for a rule that wants "about now" right after the block layer
 * read the clock on this thread (a request's accounting, at its end), so
 * the same instant is not read twice. */
uint64_t vbd_clock_stat_last(void);

/* Timers: armed on the calling thread's loop, callback fires once at
 * deadline there; cancelled (and re-armed) only on that loop's thread. */
struct vbd_timer {
    uint64_t deadline_ns;
    void (*fn)(void *arg);
    void *arg;
    struct vbd_timer *next; /* private */
    bool armed;             /* private */
    struct vbd_loop *loop;  /* private: where it was last armed */
};
void vbd_timer_arm(struct vbd_timer *t, uint64_t deadline_ns);
void vbd_timer_cancel(struct vbd_timer *t);

/*
 * Coroutine I/O: submit on the current thread's loop and yield until the
 * completion. Must be called from a coroutine. Return value as the syscall
 * would have it but negative errno instead of -1/errno (short transfers are
 * returned as-is; callers loop when they need all bytes).
 */
ssize_t vbd_co_preadv(int fd, const struct iovec *iov, int iovcnt, off_t off, enum vbd_aio aio);
ssize_t vbd_co_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off, int rwf_flags, enum vbd_aio aio);
/* Full transfers: loop on short reads/writes; a read that hits EOF zero-fills
 * the rest and succeeds (files may be shorter than the image's size). Any
 * number of segments: more than IOV_MAX (1024) go in several calls. */
int vbd_co_preadv_full(int fd, const struct iovec *iov, int iovcnt, off_t off, enum vbd_aio aio);
int vbd_co_pwritev_full(int fd, const struct iovec *iov, int iovcnt, off_t off, int rwf_flags, enum vbd_aio aio);
int vbd_co_fsync(int fd, bool datasync, enum vbd_aio aio);
int vbd_co_fallocate(int fd, int mode, off_t off, off_t len);
/* Wait until fd is ready for events (POLLIN/POLLOUT); returns revents or -errno. */
int vbd_co_poll(int fd, short events);
/* A poll wait that the loop's own thread can cut short: a connection that
 * waits idle for its client, whose node moved to another loop, is woken
 * to follow it (the NBD server's connections; qsd moves such a client at
 * once). vbd_co_poll_wait waits as vbd_co_poll does, w recording the wait
 * while it lasts; vbd_co_poll_wait_cancel (on the waiter's loop, from a
 * coroutine or a bottom half there) latches a cancel in w and ends a wait
 * in progress, which then returns -ECANCELED, or its readiness when that
 * came first; it returns whether a wait was in progress. While the latch
 * is set every vbd_co_poll_wait on w returns -ECANCELED at once: a cancel
 * that comes while the waiter is busy elsewhere (serving a request) is not
 * lost. The waiter looks at the latch (vbd_poll_wait_cancelled) and clears
 * it once it acted on the cancel (vbd_poll_wait_rearm). w: zeroed before
 * first use, one waiter at a time. Costs what vbd_co_poll costs; a cancel
 * is one poll-remove. */
struct vbd_poll_wait {
    void *op;       /* private: the wait in progress (loop.c), NULL between waits */
    int fd;         /* private */
    bool cancelled; /* private: the latch */
    bool recv;      /* private: the wait in progress is vbd_co_recv_wait's */
};
int vbd_co_poll_wait(struct vbd_poll_wait *w, int fd, short events);
bool vbd_co_poll_wait_cancel(struct vbd_poll_wait *w);
static inline bool vbd_poll_wait_cancelled(const struct vbd_poll_wait *w)
{
    return w->cancelled;
}
static inline void vbd_poll_wait_rearm(struct vbd_poll_wait *w)
{
    w->cancelled = false;
}
/* Sockets: non-blocking fds; these try the syscall first, then poll. They
 * return once *some* progress is made (like the syscalls) except the _full
 * variants, which return 0 only after all bytes, -errno otherwise
 * (-ECONNRESET / -EPIPE when the peer closes mid-way, 0-byte read = -ECONNRESET). */
ssize_t vbd_co_recv(int fd, void *buf, size_t len);
/* vbd_co_recv whose wait for data is w's (vbd_co_poll_wait): -ECANCELED,
 * nothing received, when w is cancelled (latched or during the wait) and
 * there is nothing to read; data first: bytes already there, or that came
 * with the cancel, are returned (the latch stays set for the next call).
 * w NULL: vbd_co_recv. */
ssize_t vbd_co_recv_cancellable(int fd, void *buf, size_t len, struct vbd_poll_wait *w);
/* vbd_co_recv_cancellable for a socket that is expected to be empty (a
 * QD1 client thinking): the receive is the wait, without a failing
 * recv(2) and a poll first (with io_uring: one receive SQE, which the
 * kernel completes when data comes; it goes in with the loop's next
 * blocking submit). Same results. */
ssize_t vbd_co_recv_wait(int fd, void *buf, size_t len, struct vbd_poll_wait *w);
ssize_t vbd_co_send(int fd, const void *buf, size_t len);
int vbd_co_recv_full(int fd, void *buf, size_t len);
int vbd_co_send_full(int fd, const void *buf, size_t len);
int vbd_co_sendv_full(int fd, struct iovec *iov, int iovcnt, int flags); /* iov is modified; flags: sendmsg's (MSG_MORE) */
ssize_t vbd_co_recvmsg(int fd, struct msghdr *msg, int flags);
ssize_t vbd_co_sendmsg(int fd, const struct msghdr *msg, int flags);
int vbd_co_accept(int listen_fd, struct sockaddr *addr, socklen_t *len); /* returns fd, non-blocking, CLOEXEC */
int vbd_co_connect(int fd, const struct sockaddr *addr, socklen_t len);
void vbd_co_sleep_ns(uint64_t ns);
/* Wait for an eventfd to be signalled (reads and returns the counter). */
int64_t vbd_co_eventfd_wait(int efd);

/* Run fn(arg) on the thread pool, yield until it returns its value. For
 * syscalls io_uring cannot do (ioctl, fstat on slow fs, open, ...). */
long vbd_co_run_in_thread(long (*fn)(void *arg), void *arg);

/*
 * Pollers (QEMU's io_poll handlers): a device whose work arrives in shared
 * memory (a vhost-user ring) can be polled instead of waiting for its
 * notification. Before the loop blocks it busy-polls its pollers for up to
 * the loop's poll time, adaptively (grown while waits are short, shrunk
 * when they are long; 0 turns it off), unless file I/O is in flight (it
 * completes through io_uring's or the pool's threads, which may need this
 * CPU). poll() looks for work and handles it, true if it found some;
 * before_sleep() is called every time the loop is about to block: it
 * re-enables the notification and returns true (having handled the work)
 * if work arrived meanwhile. Added and removed on the loop's thread
 * (asserted).
 */
struct vbd_poller {
    bool (*poll)(void *arg);
    bool (*before_sleep)(void *arg);
    void *arg;
    struct vbd_poller *next; /* private */
};
void vbd_loop_add_poller(struct vbd_loop *loop, struct vbd_poller *p);
void vbd_loop_remove_poller(struct vbd_loop *loop, struct vbd_poller *p);
/* Upper bound of the busy-poll time (QEMU's poll-max-ns; our default is
 * 128 us where QEMU's is 32: see loop.c). */
#define VBD_LOOP_POLL_MAX_NS_DEFAULT 131072
void vbd_loop_set_poll_max_ns(struct vbd_loop *loop, uint64_t ns); /* loop's thread (asserted) */
/* The bound in force (an NBD connection's socket spin follows it too). Loop's thread. */
uint64_t vbd_loop_poll_max_ns(const struct vbd_loop *loop);
bool vbd_loop_polling(const struct vbd_loop *loop);
/* I/O in flight that completes through another thread's or process's work
 * (io_uring's and the pool's workers, a network library's threads, a target
 * on this host): while any is, the loop does not busy-poll its pollers, so
 * the CPU goes to whoever completes it. Loop thread only (asserted in
 * builds other than release); every begin gets an end on the same loop. The waiting code brackets itself (file I/O in
 * loop.c, vbd_co_run_in_thread, the rbd and iscsi drivers; the nbd driver
 * uses vbd_loop_remote_begin/end below), not the block layer: only a
 * driver knows whether its request waits on other work (the null
 * driver's never does), and both placements measured the same for nbd
 * (bench/nbd-client-ab.sh). */
void vbd_loop_io_begin(struct vbd_loop *loop);
void vbd_loop_io_end(struct vbd_loop *loop);
/* A wait for a peer's answer over a socket (the nbd client's reply),
 * which needs no thread of ours. While it is the only wait in flight, the
 * loop keeps busy-polling in a window of its own, adapted (as the idle
 * one) to how long these waits last: a peer answering within the bound is
 * caught by the spin, a slower one stops it. With several in flight, no
 * spinning (as for vbd_loop_io_begin). Why: loop.c, poll_window. Loop
 * thread only; begin and end pair on one loop. */
void vbd_loop_remote_begin(struct vbd_loop *loop);
void vbd_loop_remote_end(struct vbd_loop *loop);

/* Non-coroutine fd watching for servers (listening sockets, vhost kick fds):
 * calls cb(arg, revents) from the loop each time fd becomes ready (level
 * triggered, re-armed automatically) until removed. Both on loop's own
 * thread (asserted: the ring's submission queue is not thread-safe). */
struct vbd_fd_watch;
struct vbd_fd_watch *vbd_loop_watch_fd(struct vbd_loop *loop, int fd, short events,
                                       void (*cb)(void *arg, short revents), void *arg);
void vbd_loop_unwatch_fd(struct vbd_fd_watch *w);

#endif
