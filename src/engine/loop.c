/* SPDX-License-Identifier: MIT */
/*
 * Per-thread event loop. io_uring backend: every wait (file I/O, polls,
 * the wake-up eventfd) is an SQE, submitted in one batch per iteration.
 * Fallback (no io_uring, or VBD_NO_IO_URING=1): epoll for fds and the
 * thread pool for file I/O, behind the same API.
 * Completions never run request code directly: they put the waiting
 * coroutine on the ready list, drained after all completions are reaped.
 */
#include "engine-internal.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h> /* IOV_MAX (1024): the most segments one readv/writev/sendmsg/recvmsg takes */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct loop_op {
    void (*complete)(struct loop_op *op, int res);
};

struct fdreg {
    struct loop_op *in_waiter, *out_waiter;
    struct vbd_fd_watch *watch;
    uint32_t registered; /* epoll events currently registered, 0 = none */
};

#define EPOLL_BATCH 64

struct vbd_loop {
    bool uring;
    struct io_uring ring;
    int epfd;
    /* epoll: what the busy-poll's look at the fds found (poll_fds_ready),
     * dispatched by the iteration instead of another epoll_wait */
    struct epoll_event ep_found[EPOLL_BATCH];
    int ep_nfound;
    int efd;
    uint64_t efd_buf;
    struct loop_op efd_op;
    pthread_mutex_t bh_lock;
    struct vbd_bh *bh_head, *bh_tail;
    atomic_bool bh_pending;
    struct vbd_timer *timers; /* sorted by deadline */
    struct fdreg *fds;
    int nfds;
    struct vbd_poller *pollers;
    uint64_t poll_max_ns, poll_ns; /* bound, and the current (adaptive) busy-poll time */
    unsigned io_inflight;
    unsigned remote_inflight; /* vbd_loop_remote_begin/end */
    uint64_t remote_poll_ns;  /* the adaptive busy-poll time while any is in flight (poll_window) */
    pthread_t thread;         /* the thread that created it and runs it (vbd_loop_is_current) */
    /* SQEs queued since the last submit: only lazy ones (a wait that
     * receives, loop_sqe_lazy) so far; and an iteration that had ready
     * coroutines left them queued once already (see vbd_loop_run_once) */
    bool sq_eager, sq_lazy_held;
    bool recv_nowait; /* the ring answered a receive with -EAGAIN: vbd_co_recv_wait polls instead */
    enum vbd_uring_taskrun taskrun; /* how the ring was set up (see ring_setup) */
};

/* The busy-poll bound's default (VBD_LOOP_POLL_MAX_NS_DEFAULT, loop.h) is
 * 128 us, not QEMU's 32: a front end that sleeps between requests (a
 * vCPU that halts at once, as with guest_halt_poll_ns=0) comes back after
 * its wake-up, 35-70 us on a KVM guest. A 32 us window always ran out
 * first, so both sides paid a wake-up per request (QD1) or per batch
 * (QD32); a window that outlasts the front end's round trip leaves one.
 * The adaptation below still shrinks it to nothing when requests come
 * further apart than this. */

#define POLL_GROW_START_NS 4096

struct vbd_fd_watch {
    struct loop_op op;
    struct vbd_loop *loop;
    int fd;
    short events;
    void (*cb)(void *arg, short revents);
    void *arg;
    bool armed, removed;
};

static __thread struct vbd_loop *tls_loop;

uint64_t vbd_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/*
 * A clock for statistics: the block layer reads one at the start and one
 * at the end of every request (query-blockstats' times and latency
 * histogram, as QEMU's block accounting). clock_gettime costs ~24 ns in
 * the vDSO on this KVM guest and more amid the request's cache misses
 * (its rdtsc is ordered by an lfence, which waits for them): the two
 * reads were 15-17 % of vbd-daemon's CPU on 4K reads of a null node
 * (RESULTS.md 2026-12-05, vu13). Where the kernel's own clock source is
 * the TSC (so the TSC runs at a constant rate, synchronised across CPUs),
 * a plain rdtsc (~10 ns, not ordered: it may be off by the tens of ns the
 * CPU runs it early or late) scaled to ns does the same job. The rate is
 * measured against CLOCK_MONOTONIC over the first STAT_CALIBRATE_NS after
 * the first read; until then, and on other hosts, it is clock_gettime.
 * Only differences of two readings mean anything; one taken either side
 * of the switch is off by the calibration's error (each end of it is a
 * TSC reading bracketed by clock reads < 2 us apart: at most a
 * microsecond), and a difference is never negative (vbd_clock_stat_since).
 * Should the kernel later drop the TSC (its watchdog), request times would
 * be as wrong as the TSC, never deadlines or timers (vbd_clock_ns).
 */
#if defined(__x86_64__)
#include <x86intrin.h>
#define STAT_CALIBRATE_NS 20000000ull
enum { STAT_CLOCK_NEW, STAT_CLOCK_BUSY, STAT_CLOCK_BASE, STAT_CLOCK_TSC, STAT_CLOCK_SYSTEM };
static _Atomic int stat_clock_state;
/* ns = base_ns + (tsc - base_tsc) * mult >> 32; written in the BUSY state
 * only, read in the TSC state (after the release that ends BUSY); base_ns
 * is also read in the BASE state, while a calibration may rewrite it */
static uint64_t stat_base_tsc, stat_base_ns, stat_mult;

static bool kernel_clock_is_tsc(void)
{
    char buf[16] = "";
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (!f)
        return false;
    bool tsc = fgets(buf, sizeof(buf), f) && !strcmp(buf, "tsc\n");
    fclose(f);
    return tsc;
}

/* A TSC reading and the CLOCK_MONOTONIC time it was taken at, bracketed by
 * two clock reads less than STAT_PAIR_NS apart: a pair split by a
 * preemption (a time slice: ms) would skew the rate. */
#define STAT_PAIR_NS 2000
static bool stat_pair(uint64_t *tsc, uint64_t *ns)
{
    for (int i = 0; i < 8; i++) {
        uint64_t a = vbd_clock_ns(), t = __rdtsc(), b = vbd_clock_ns();
        if (b - a < STAT_PAIR_NS) {
            *tsc = t;
            *ns = a + (b - a) / 2;
            return true;
        }
    }
    return false;
}

static uint64_t stat_clock_slow(int state)
{
    uint64_t ns = vbd_clock_ns(), tsc, at;
    int busy = STAT_CLOCK_BUSY;
    if (state == STAT_CLOCK_NEW &&
        atomic_compare_exchange_strong_explicit(&stat_clock_state, &state, busy, memory_order_acquire,
                                                memory_order_relaxed)) {
        if (!kernel_clock_is_tsc()) {
            atomic_store_explicit(&stat_clock_state, STAT_CLOCK_SYSTEM, memory_order_release);
            return ns;
        }
        bool ok = stat_pair(&tsc, &at);
        if (ok) {
            stat_base_tsc = tsc;
            __atomic_store_n(&stat_base_ns, at, __ATOMIC_RELAXED);
        }
        atomic_store_explicit(&stat_clock_state, ok ? STAT_CLOCK_BASE : STAT_CLOCK_NEW, memory_order_release);
    } else if (state == STAT_CLOCK_BASE && ns - __atomic_load_n(&stat_base_ns, __ATOMIC_RELAXED) >= STAT_CALIBRATE_NS &&
               atomic_compare_exchange_strong_explicit(&stat_clock_state, &state, busy, memory_order_acquire,
                                                       memory_order_relaxed)) {
        if (!stat_pair(&tsc, &at)) {
            atomic_store_explicit(&stat_clock_state, STAT_CLOCK_BASE, memory_order_release); /* a later call tries */
            return ns;
        }
        uint64_t ticks = tsc - stat_base_tsc;
        if (tsc <= stat_base_tsc || ticks < STAT_CALIBRATE_NS / 100) { /* not a TSC we can use */
            atomic_store_explicit(&stat_clock_state, STAT_CLOCK_SYSTEM, memory_order_release);
            return ns;
        }
        stat_mult = (uint64_t)(((unsigned __int128)(at - stat_base_ns) << 32) / ticks);
        stat_base_tsc = tsc;
        __atomic_store_n(&stat_base_ns, at, __ATOMIC_RELAXED);
        atomic_store_explicit(&stat_clock_state, STAT_CLOCK_TSC, memory_order_release);
    }
    return ns;
}

static uint64_t stat_clock_read(void)
{
    int state = atomic_load_explicit(&stat_clock_state, memory_order_acquire);
    if (state != STAT_CLOCK_TSC)
        return state == STAT_CLOCK_SYSTEM || state == STAT_CLOCK_BUSY ? vbd_clock_ns() : stat_clock_slow(state);
    uint64_t ticks = __rdtsc() - stat_base_tsc;
    if ((int64_t)ticks < 0)
        ticks = 0; /* another CPU's TSC a few cycles behind, right after the calibration */
    return stat_base_ns + (uint64_t)(((unsigned __int128)ticks * stat_mult) >> 32);
}
#else
static uint64_t stat_clock_read(void)
{
    return vbd_clock_ns();
}
#endif

/* this thread's last reading (vbd_clock_stat_last) */
static _Thread_local uint64_t stat_clock_last;

uint64_t vbd_clock_stat_ns(void)
{
    uint64_t now = stat_clock_read();
    stat_clock_last = now;
    return now;
}

uint64_t vbd_clock_stat_last(void)
{
    return stat_clock_last;
}

uint64_t vbd_clock_stat_since(uint64_t start_ns)
{
    uint64_t now = vbd_clock_stat_ns();
    return now > start_ns ? now - start_ns : 0;
}

static struct io_uring_sqe *loop_sqe_lazy(struct vbd_loop *loop)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    while (!sqe) {
        /* SQ full: flush what we have; never fail a request for it. */
        io_uring_submit(&loop->ring);
        sqe = io_uring_get_sqe(&loop->ring);
    }
    return sqe;
}

/* An SQE that goes to the kernel in this iteration's submit (file I/O,
 * polls, cancels): what it starts should not wait for the ready
 * coroutines. loop_sqe_lazy: one that may wait for the iteration that
 * blocks (vbd_co_recv_wait). */
static struct io_uring_sqe *loop_sqe(struct vbd_loop *loop)
{
    loop->sq_eager = true;
    return loop_sqe_lazy(loop);
}

static void efd_complete(struct loop_op *op, int res)
{
    struct vbd_loop *loop = (struct vbd_loop *)((char *)op - offsetof(struct vbd_loop, efd_op));
    (void)res;
    struct io_uring_sqe *sqe = loop_sqe(loop);
    io_uring_prep_read(sqe, loop->efd, &loop->efd_buf, sizeof(loop->efd_buf), 0);
    io_uring_sqe_set_data(sqe, &loop->efd_op);
}

/* ---- epoll registrations ---- */

static struct fdreg *fdreg_get(struct vbd_loop *loop, int fd)
{
    if (fd >= loop->nfds) {
        int n = loop->nfds ? loop->nfds : 64;
        while (n <= fd)
            n *= 2;
        struct fdreg *f = realloc(loop->fds, n * sizeof(*f));
        if (!f)
            abort();
        memset(f + loop->nfds, 0, (n - loop->nfds) * sizeof(*f));
        loop->fds = f;
        loop->nfds = n;
    }
    return &loop->fds[fd];
}

static int fdreg_update(struct vbd_loop *loop, int fd)
{
    struct fdreg *r = fdreg_get(loop, fd);
    uint32_t ev = 0;
    if (r->in_waiter || (r->watch && (r->watch->events & POLLIN)))
        ev |= EPOLLIN;
    if (r->out_waiter || (r->watch && (r->watch->events & POLLOUT)))
        ev |= EPOLLOUT;
    if (ev == r->registered)
        return 0;
    struct epoll_event e = {.events = ev, .data.fd = fd};
    int rc;
    if (!ev) {
        rc = epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
        if (rc < 0 && (errno == ENOENT || errno == EBADF))
            rc = 0;
    } else {
        rc = epoll_ctl(loop->epfd, r->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &e);
        /* The fd may have been closed and reused since: retry the other way. */
        if (rc < 0 && errno == ENOENT)
            rc = epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &e);
        else if (rc < 0 && errno == EEXIST)
            rc = epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &e);
    }
    if (rc < 0)
        return -errno;
    r->registered = ev;
    return 0;
}

/* ---- creation ---- */

/*
 * When a ring's request completes outside the loop's thread (a socket's
 * data arriving from the sender's context, a disk interrupt), the kernel
 * finishes it as task work in the loop's thread. How that thread is told
 * (VBD_URING_TASKRUN; the default is VBD_URING_TASKRUN_DEFAULT):
 * - "ipi" (0): io_uring's default, TWA_SIGNAL: a thread asleep is woken, a
 *   thread running on another CPU is interrupted (an IPI, a VM exit on a
 *   guest) and runs the task work on its way back to user space;
 * - "coop": IORING_SETUP_COOP_TASKRUN, no IPI: a thread that is running
 *   runs the task work at its next entry into the kernel (a syscall, a
 *   timer tick);
 * - "defer": IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (Linux
 *   6.1): the task work runs only in io_uring_enter(GETEVENTS), and the
 *   thread is woken only when it waits there.
 * coop and defer come with IORING_SETUP_TASKRUN_FLAG: the kernel raises
 * IORING_SQ_TASKRUN in the SQ ring's flags while task work waits, so a
 * loop that looks at its CQ without a syscall (the busy-poll,
 * loop_has_events) sees it and enters the kernel (liburing's
 * io_uring_submit adds GETEVENTS when the flag is up, even with nothing to
 * submit: a loop kept busy by its pollers, which never blocks, still runs
 * the task work on each pass). Without the flag, a deferred completion
 * would wait for a syscall that a spinning loop may never make.
 * SINGLE_ISSUER holds here: a loop's ring is only ever submitted to by the
 * thread that created it (vbd_loop_is_current; every SQE comes from
 * vbd_loop_current()). A kernel that refuses a mode's flags (EINVAL: older
 * than 5.19 for coop, 6.1 for defer) gets the next simpler one.
 */
#define VBD_URING_TASKRUN_DEFAULT VBD_URING_TASKRUN_IPI

static enum vbd_uring_taskrun taskrun_setting(void)
{
    const char *v = getenv("VBD_URING_TASKRUN");
    if (!v || !*v)
        return VBD_URING_TASKRUN_DEFAULT;
    if (!strcmp(v, "0") || !strcmp(v, "ipi"))
        return VBD_URING_TASKRUN_IPI;
    if (!strcmp(v, "coop"))
        return VBD_URING_TASKRUN_COOP;
    if (!strcmp(v, "defer"))
        return VBD_URING_TASKRUN_DEFER;
    static atomic_bool warned; /* read for every new loop (tests switch it), said once */
    if (!atomic_exchange(&warned, true))
        vbd_warn("VBD_URING_TASKRUN=%s is not one of 0, ipi, coop, defer: using %s", v,
                 vbd_uring_taskrun_name(VBD_URING_TASKRUN_DEFAULT));
    return VBD_URING_TASKRUN_DEFAULT;
}

const char *vbd_uring_taskrun_name(enum vbd_uring_taskrun mode)
{
    return mode == VBD_URING_TASKRUN_DEFER ? "defer" : mode == VBD_URING_TASKRUN_COOP ? "coop" : "ipi";
}

static int ring_setup(struct vbd_loop *loop, unsigned entries)
{
    static const unsigned setup_flags[] = {
        [VBD_URING_TASKRUN_IPI] = 0,
        [VBD_URING_TASKRUN_COOP] = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        [VBD_URING_TASKRUN_DEFER] = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    };
    for (int mode = (int)taskrun_setting();; mode--) {
        struct io_uring_params p = {.flags = setup_flags[mode]};
        int rc = io_uring_queue_init_params(entries, &loop->ring, &p);
        if (rc != -EINVAL || mode == VBD_URING_TASKRUN_IPI) {
            loop->taskrun = (enum vbd_uring_taskrun)mode;
            return rc;
        }
    }
}

enum vbd_uring_taskrun vbd_loop_uring_taskrun(const struct vbd_loop *loop)
{
    return loop->taskrun;
}

struct vbd_loop *vbd_loop_new(unsigned queue_depth, unsigned flags, struct vbd_error **err)
{
    struct vbd_loop *loop = calloc(1, sizeof(*loop));
    if (!loop) {
        vbd_error_setf(err, ENOMEM, "cannot allocate an event loop");
        return NULL;
    }
    pthread_mutex_init(&loop->bh_lock, NULL);
    loop->epfd = -1;
    loop->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->efd < 0) {
        vbd_error_setf(err, errno, "cannot create an eventfd: %s", strerror(errno));
        free(loop);
        return NULL;
    }
    const char *env = getenv("VBD_NO_IO_URING");
    bool want_uring = !(flags & VBD_LOOP_FORCE_EPOLL) && !(env && *env && strcmp(env, "0") != 0);
    if (want_uring) {
        int rc = ring_setup(loop, queue_depth ? queue_depth : 256);
        if (rc == 0) {
            vbd_debug("io_uring task work: %s", vbd_uring_taskrun_name(loop->taskrun));
            loop->uring = true;
            loop->efd_op.complete = efd_complete;
            efd_complete(&loop->efd_op, 0);
        } else {
            vbd_debug("io_uring unavailable (%s): using epoll and worker threads", strerror(-rc));
        }
    }
    if (!loop->uring) {
        loop->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (loop->epfd < 0) {
            vbd_error_setf(err, errno, "cannot create an epoll instance: %s", strerror(errno));
            close(loop->efd);
            free(loop);
            return NULL;
        }
        struct epoll_event e = {.events = EPOLLIN, .data.fd = -1};
        epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->efd, &e);
    }
    loop->poll_max_ns = loop->poll_ns = loop->remote_poll_ns = VBD_LOOP_POLL_MAX_NS_DEFAULT;
    loop->thread = pthread_self();
    if (!tls_loop)
        tls_loop = loop;
    return loop;
}

void vbd_loop_free(struct vbd_loop *loop)
{
    if (!loop)
        return;
    /* a thread still inside vbd_loop_schedule_bh (its kick) is let out */
    pthread_mutex_lock(&loop->bh_lock);
    pthread_mutex_unlock(&loop->bh_lock);
    if (loop->uring)
        io_uring_queue_exit(&loop->ring);
    if (loop->epfd >= 0)
        close(loop->epfd);
    close(loop->efd);
    free(loop->fds);
    pthread_mutex_destroy(&loop->bh_lock);
    if (tls_loop == loop)
        tls_loop = NULL;
    free(loop);
}

struct vbd_loop *vbd_loop_current_or_null(void)
{
    return tls_loop;
}

struct vbd_loop *vbd_loop_current(void)
{
    if (!tls_loop) {
        struct vbd_error *err = NULL;
        if (!vbd_loop_new(0, 0, &err)) {
            fprintf(stderr, "vbd: cannot create an event loop: %s\n", err->msg);
            abort();
        }
    }
    return tls_loop;
}

bool vbd_loop_is_current(const struct vbd_loop *loop)
{
    return pthread_equal(loop->thread, pthread_self());
}

/* The main thread's id is the process's (Linux); cached per thread, and
 * right in a forked child too (its one thread is its main thread, and the
 * fork was made from the parent's main thread, whose cache said so). */
bool vbd_thread_is_main(void)
{
    static __thread signed char is_main = -1;
    if (is_main < 0)
        is_main = (pid_t)syscall(SYS_gettid) == getpid();
    return is_main;
}

bool vbd_loop_has_io_uring(const struct vbd_loop *loop)
{
    return loop->uring;
}

void vbd_loop_kick(struct vbd_loop *loop)
{
    uint64_t one = 1;
    ssize_t r = write(loop->efd, &one, sizeof(one));
    (void)r; /* EAGAIN: the counter is already non-zero, a wake-up is pending */
}

void vbd_loop_schedule_bh(struct vbd_loop *loop, struct vbd_bh *bh)
{
    bh->next = NULL;
    pthread_mutex_lock(&loop->bh_lock);
    /* A non-empty list has had its wake-up already, and run_bhs takes the
     * whole list: only the first BH of a batch pays for the eventfd write
     * (completions from librbd's threads at QD32 arrive in bursts). */
    bool first = !loop->bh_head;
    if (loop->bh_tail)
        loop->bh_tail->next = bh;
    else
        loop->bh_head = bh;
    loop->bh_tail = bh;
    atomic_store_explicit(&loop->bh_pending, true, memory_order_release);
    /* Kicked under the lock: once the BH is in the list its loop may run
     * it, let its coroutine finish, stop and be freed (an iothread at
     * shutdown, while a pool worker that finished the last job was still
     * about to kick: TSan, tsan-iothreads.sh). vbd_loop_free takes the
     * lock, so it waits for a kick in progress. */
    if (loop != tls_loop && first)
        vbd_loop_kick(loop);
    pthread_mutex_unlock(&loop->bh_lock);
}

static int run_bhs(struct vbd_loop *loop)
{
    if (!atomic_load_explicit(&loop->bh_pending, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&loop->bh_lock);
    struct vbd_bh *list = loop->bh_head;
    loop->bh_head = loop->bh_tail = NULL;
    atomic_store_explicit(&loop->bh_pending, false, memory_order_relaxed);
    pthread_mutex_unlock(&loop->bh_lock);
    int n = 0;
    while (list) {
        struct vbd_bh *bh = list;
        list = bh->next;
        bh->fn(bh->arg);
        n++;
    }
    return n;
}

/* ---- timers ---- */

void vbd_timer_arm(struct vbd_timer *t, uint64_t deadline_ns)
{
    struct vbd_loop *loop = vbd_loop_current();
    if (t->armed)
        vbd_timer_cancel(t);
    t->loop = loop;
    t->deadline_ns = deadline_ns;
    struct vbd_timer **pp = &loop->timers;
    while (*pp && (*pp)->deadline_ns <= deadline_ns)
        pp = &(*pp)->next;
    t->next = *pp;
    *pp = t;
    t->armed = true;
}

void vbd_timer_cancel(struct vbd_timer *t)
{
    if (!t->armed)
        return;
    struct vbd_loop *loop = vbd_loop_current();
    VBD_DEBUG_ASSERT(t->loop == loop); /* a timer armed on another thread's loop is that loop's to cancel */
    for (struct vbd_timer **pp = &loop->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    t->armed = false;
}

static int run_timers(struct vbd_loop *loop)
{
    int n = 0;
    if (!loop->timers)
        return 0;
    uint64_t now = vbd_clock_ns();
    while (loop->timers && loop->timers->deadline_ns <= now) {
        struct vbd_timer *t = loop->timers;
        loop->timers = t->next;
        t->armed = false;
        t->fn(t->arg);
        n++;
    }
    return n;
}

/* ---- the iteration ---- */

static int reap_uring(struct vbd_loop *loop)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&loop->ring, head, cqe)
    {
        struct loop_op *op = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        /* Advance first: complete() may queue SQEs and submit. */
        io_uring_cqe_seen(&loop->ring, cqe);
        if (op)
            op->complete(op, res);
        n++;
    }
    return n;
}

static int dispatch_epoll(struct vbd_loop *loop, struct epoll_event *ev, int nev)
{
    for (int i = 0; i < nev; i++) {
        int fd = ev[i].data.fd;
        if (fd < 0) {
            uint64_t v;
            while (read(loop->efd, &v, sizeof(v)) > 0)
                ;
            continue;
        }
        if (fd >= loop->nfds)
            continue;
        struct fdreg *r = &loop->fds[fd];
        uint32_t e = ev[i].events;
        short revents = ((e & EPOLLIN) ? POLLIN : 0) | ((e & EPOLLOUT) ? POLLOUT : 0) |
                        ((e & EPOLLERR) ? POLLERR : 0) | ((e & EPOLLHUP) ? POLLHUP : 0);
        if (r->in_waiter && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            struct loop_op *op = r->in_waiter;
            r->in_waiter = NULL;
            op->complete(op, revents);
        }
        if (r->out_waiter && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            struct loop_op *op = r->out_waiter;
            r->out_waiter = NULL;
            op->complete(op, revents);
        }
        if (r->watch)
            r->watch->cb(r->watch->arg, revents);
        fdreg_update(loop, fd);
    }
    return nev;
}

/* The counters below are the loop thread's own (not atomic): the checks
 * are on request paths, so only in builds that are not release builds. */
void vbd_loop_io_begin(struct vbd_loop *loop)
{
    VBD_DEBUG_ASSERT(vbd_loop_is_current(loop));
    loop->io_inflight++;
}

void vbd_loop_io_end(struct vbd_loop *loop)
{
    VBD_DEBUG_ASSERT(vbd_loop_is_current(loop));
    loop->io_inflight--;
}

void vbd_loop_remote_begin(struct vbd_loop *loop)
{
    VBD_DEBUG_ASSERT(vbd_loop_is_current(loop));
    loop->remote_inflight++;
}

void vbd_loop_remote_end(struct vbd_loop *loop)
{
    VBD_DEBUG_ASSERT(vbd_loop_is_current(loop));
    loop->remote_inflight--;
}

void vbd_loop_add_poller(struct vbd_loop *loop, struct vbd_poller *p)
{
    assert(vbd_loop_is_current(loop));
    p->next = loop->pollers;
    loop->pollers = p;
}

void vbd_loop_remove_poller(struct vbd_loop *loop, struct vbd_poller *p)
{
    assert(vbd_loop_is_current(loop));
    for (struct vbd_poller **pp = &loop->pollers; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->next = NULL;
}

void vbd_loop_set_poll_max_ns(struct vbd_loop *loop, uint64_t ns)
{
    assert(vbd_loop_is_current(loop)); /* qom-set on an iothread goes there as a bottom half */
    loop->poll_max_ns = ns;
    loop->poll_ns = ns;
    loop->remote_poll_ns = ns;
}

uint64_t vbd_loop_poll_max_ns(const struct vbd_loop *loop)
{
    return loop->poll_max_ns;
}

bool vbd_loop_polling(const struct vbd_loop *loop)
{
    return loop->poll_max_ns != 0;
}

static bool run_pollers(struct vbd_loop *loop)
{
    bool found = false;
    for (struct vbd_poller *p = loop->pollers, *next; p; p = next) {
        next = p->next; /* a poller may remove itself */
        found |= p->poll(p->arg);
    }
    return found;
}

/* Task work waits for the loop's thread to enter the kernel (coop and
 * defer rings, IORING_SETUP_TASKRUN_FLAG; never raised on other rings):
 * a completion that is not in the CQ yet. */
static inline bool taskrun_pending(const struct vbd_loop *loop)
{
    return IO_URING_READ_ONCE(*loop->ring.sq.kflags) & IORING_SQ_TASKRUN;
}

static bool loop_has_events(struct vbd_loop *loop)
{
    return vbd_loop_has_ready(loop) || atomic_load_explicit(&loop->bh_pending, memory_order_acquire) ||
           (loop->uring && (io_uring_cq_ready(&loop->ring) || taskrun_pending(loop)));
}

/* The busy-poll window for this wait (NULL: no spin, no adaptation).
 * I/O on our own threads in flight: none, the CPU goes to them. One wait
 * for a peer's reply (the nbd client at QD1): a window of its own, adapted
 * to how long replies take, apart from the idle one (the wait for the front
 * end's next request lasts differently long; one window adapted on both
 * gave 7-35 % fewer IOPS). Without the spin, on this KVM guest the vCPU
 * halted in each wait and the reply paid its wake-up: nbd client 4K reads
 * QD1 over TCP lost 14-33 % of their IOPS and the server spent 15-30 %
 * more CPU per request; a peer slower than the bound still ends the spin.
 * Several replies awaited (QD32): none, as for I/O: replies stream in, the
 * peer is busy and, on a shared host, needs the CPU the spin would take
 * (4K reads QD32 over TCP, spinning: 19-25 % fewer IOPS and 31-57 % more
 * daemon CPU per request). bench/nbd-client-ab.sh; RESULTS.md 2026-12-04
 * (nbdclient6). */
static uint64_t *poll_window(struct vbd_loop *loop)
{
    if (loop->io_inflight || loop->remote_inflight > 1)
        return NULL;
    return loop->remote_inflight ? &loop->remote_poll_ns : &loop->poll_ns;
}

/* The epoll engine's fds (sockets, eventfds: an NBD reply, a vhost-user
 * kick, a bottom half's wake-up) during the busy-poll: true if any is
 * ready, its events kept for the iteration to dispatch. Without it the
 * spin ran to the end of its window whatever came (a 120 s window in
 * test_engine's loop_taskrun_modes spun out in full; at the default 128 us
 * an NBD reply at QD1 waited out the window). io_uring's completions are
 * in the CQ, which loop_has_events reads without a syscall. */
static bool poll_fds_ready(struct vbd_loop *loop)
{
    if (loop->uring)
        return false;
    int n = epoll_wait(loop->epfd, loop->ep_found, EPOLL_BATCH, 0);
    if (n <= 0)
        return false;
    loop->ep_nfound = n;
    return true;
}

/* The loop would block: busy-poll first (true: something happened, do
 * not block), then let the pollers re-arm their notifications. */
static bool poll_before_blocking(struct vbd_loop *loop, int64_t timeout_ns)
{
    const uint64_t *w = poll_window(loop);
    uint64_t poll_ns = w ? *w : 0;
    if (poll_ns && (timeout_ns < 0 || (uint64_t)timeout_ns > poll_ns)) {
        if (loop->uring)
            io_uring_submit(&loop->ring);
        uint64_t end = vbd_clock_ns() + poll_ns;
        unsigned spins = 0;
        /* The clock (and the epoll engine's fds, a syscall) every 8th pass
         * only: a pass over a ring is a few loads, and the clock read took
         * as long as the polling in profiles (more where the vDSO clock is
         * unusable and it is a syscall). */
        for (;;) {
            if (run_pollers(loop) || loop_has_events(loop))
                return true;
            if (++spins & 7)
                continue;
            if (poll_fds_ready(loop))
                return true;
            if (vbd_clock_ns() >= end)
                break;
        }
    }
    bool found = false;
    for (struct vbd_poller *p = loop->pollers, *next; p; p = next) {
        next = p->next;
        found |= p->before_sleep(p->arg);
    }
    return found;
}

/* QEMU's adaptive polling, called after the loop blocked: judged on the
 * whole wait for the event (the poll that failed plus the block), as QEMU
 * does. Longer than the bound: no poll window could have caught it, so
 * poll less (down to not at all). Within the bound: a longer poll would
 * have, so poll more. Judging on the block alone kept the window at its
 * bound while events came every 33-64 us (a QD1 client with a little think
 * time, or one that gets half a core): each one cost a full failed poll
 * and a wake-up. */
static void adapt_poll_time(struct vbd_loop *loop, uint64_t blocked_ns)
{
    uint64_t *w = poll_window(loop);
    if (!loop->poll_max_ns || !w)
        return;
    uint64_t waited = blocked_ns + *w;
    if (waited > loop->poll_max_ns)
        *w = *w > POLL_GROW_START_NS ? *w / 2 : 0;
    else if (*w < loop->poll_max_ns)
        *w = *w ? *w * 2 : POLL_GROW_START_NS;
    if (*w > loop->poll_max_ns)
        *w = loop->poll_max_ns;
}

int vbd_loop_run_once(struct vbd_loop *loop, int64_t timeout_ns)
{
    VBD_DEBUG_ASSERT(vbd_loop_is_current(loop)); /* its ring, timers and ready list are its thread's */
    int n = 0;
    if (loop->pollers && run_pollers(loop))
        timeout_ns = 0;
    if (vbd_loop_has_ready(loop) || atomic_load_explicit(&loop->bh_pending, memory_order_acquire))
        timeout_ns = 0;
    if (loop->timers) {
        uint64_t now = vbd_clock_ns();
        int64_t until = loop->timers->deadline_ns > now ? (int64_t)(loop->timers->deadline_ns - now) : 0;
        if (timeout_ns < 0 || until < timeout_ns)
            timeout_ns = until;
    }
    uint64_t block_start = 0;
    if (timeout_ns != 0 && loop->pollers) {
        if (poll_before_blocking(loop, timeout_ns))
            timeout_ns = 0;
        else
            block_start = vbd_clock_ns();
    }
    if (loop->uring) {
        struct io_uring_cqe *cqe = NULL;
        /* A receive that is a wait (vbd_co_recv_wait) is queued while other
         * coroutines are ready (an NBD request finishing after its reply
         * went out): submitted now it cost an io_uring_enter of its own,
         * and the one that then blocks another, two per QD1 request where
         * one does (it is in the kernel before the loop sleeps either
         * way). Held for one iteration at most, so a loop that never
         * blocks still submits it. */
        bool hold = timeout_ns == 0 && !loop->sq_eager && !loop->sq_lazy_held && io_uring_sq_ready(&loop->ring) &&
                    !taskrun_pending(loop); /* the submit's io_uring_enter runs it */
        loop->sq_lazy_held = hold;
        if (!hold)
            loop->sq_eager = false;
        if (timeout_ns == 0) {
            if (!hold)
                io_uring_submit(&loop->ring);
        } else if (timeout_ns < 0) {
            io_uring_submit_and_wait(&loop->ring, 1);
        } else {
            struct __kernel_timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
            io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &ts, NULL);
        }
        n += reap_uring(loop);
    } else {
        struct epoll_event ev[EPOLL_BATCH];
        int nev = loop->ep_nfound;
        if (nev) { /* the busy-poll found them (poll_fds_ready), and nothing ran since */
            memcpy(ev, loop->ep_found, (size_t)nev * sizeof(ev[0])); /* a callback may run a nested iteration */
            loop->ep_nfound = 0;
        } else {
            int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
            nev = epoll_wait(loop->epfd, ev, EPOLL_BATCH, ms);
        }
        if (nev > 0)
            n += dispatch_epoll(loop, ev, nev);
    }
    if (block_start)
        adapt_poll_time(loop, vbd_clock_ns() - block_start);
    n += run_bhs(loop);
    n += run_timers(loop);
    while (vbd_loop_has_ready(loop)) {
        vbd_co_run_ready(loop);
        n++;
        /* Submit what the coroutines queued before running newly ready ones,
         * but without blocking. */
        break;
    }
    return n;
}

void vbd_loop_run(struct vbd_loop *loop, volatile bool *stop)
{
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE))
        vbd_loop_run_once(loop, -1);
}

/* ---- coroutine I/O ---- */

struct co_op {
    struct loop_op base;
    struct vbd_co *co;
    int res;
};

static void co_op_complete(struct loop_op *op, int res)
{
    struct co_op *c = (struct co_op *)op;
    c->res = res;
    vbd_co_wake(c->co);
}

/* file_io: counted in io_inflight (the pollers do not spin meanwhile) */
static int uring_wait(struct vbd_loop *loop, struct io_uring_sqe *sqe, bool file_io)
{
    struct co_op op = {.base.complete = co_op_complete, .co = vbd_co_self()};
    assert(op.co && "I/O outside a coroutine");
    io_uring_sqe_set_data(sqe, &op);
    loop->io_inflight += file_io;
    vbd_co_yield();
    loop->io_inflight -= file_io;
    return op.res;
}

struct file_job {
    int kind; /* 0 read, 1 write, 2 fsync, 3 fdatasync, 4 fallocate */
    int fd;
    const struct iovec *iov;
    int iovcnt;
    off_t off, len;
    int flags;
};

static long file_job_run(void *opaque)
{
    struct file_job *j = opaque;
    long r;
    switch (j->kind) {
    case 0:
        r = preadv(j->fd, j->iov, j->iovcnt, j->off);
        break;
    case 1:
        r = j->flags ? pwritev2(j->fd, j->iov, j->iovcnt, j->off, j->flags) : pwritev(j->fd, j->iov, j->iovcnt, j->off);
        break;
    case 2:
        r = fsync(j->fd);
        break;
    case 3:
        r = fdatasync(j->fd);
        break;
    default:
        r = fallocate(j->fd, j->flags, j->off, j->len);
        break;
    }
    return r < 0 ? -errno : r;
}

static bool use_uring(struct vbd_loop *loop, enum vbd_aio aio)
{
    return loop->uring && aio == VBD_AIO_IO_URING;
}

ssize_t vbd_co_preadv(int fd, const struct iovec *iov, int iovcnt, off_t off, enum vbd_aio aio)
{
    if (aio == VBD_AIO_SYNC) {
        ssize_t r = preadv(fd, iov, iovcnt, off);
        return r < 0 ? -errno : r;
    }
    struct vbd_loop *loop = vbd_loop_current();
    if (use_uring(loop, aio)) {
        struct io_uring_sqe *sqe = loop_sqe(loop);
        io_uring_prep_readv(sqe, fd, iov, iovcnt, off);
        return uring_wait(loop, sqe, true);
    }
    struct file_job j = {.kind = 0, .fd = fd, .iov = iov, .iovcnt = iovcnt, .off = off};
    return vbd_co_run_in_thread(file_job_run, &j);
}

ssize_t vbd_co_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off, int rwf_flags, enum vbd_aio aio)
{
    if (aio == VBD_AIO_SYNC) {
        ssize_t r = pwritev2(fd, iov, iovcnt, off, rwf_flags);
        return r < 0 ? -errno : r;
    }
    struct vbd_loop *loop = vbd_loop_current();
    if (use_uring(loop, aio)) {
        struct io_uring_sqe *sqe = loop_sqe(loop);
        io_uring_prep_writev(sqe, fd, iov, iovcnt, off);
        sqe->rw_flags = rwf_flags;
        return uring_wait(loop, sqe, true);
    }
    struct file_job j = {.kind = 1, .fd = fd, .iov = iov, .iovcnt = iovcnt, .off = off, .flags = rwf_flags};
    return vbd_co_run_in_thread(file_job_run, &j);
}

static int rw_full(int fd, const struct iovec *iov, int iovcnt, off_t off, int rwf_flags, enum vbd_aio aio, bool write)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    int first = iovcnt < IOV_MAX ? iovcnt : IOV_MAX;
    ssize_t r = write ? vbd_co_pwritev(fd, iov, first, off, rwf_flags, aio) : vbd_co_preadv(fd, iov, first, off, aio);
    if (r < 0 && r != -EINTR && r != -EAGAIN)
        return (int)r;
    if (r >= 0 && (size_t)r == total)
        return 0;
    /* Short transfer (rare), or more segments than one call takes (a
     * vhost-user chain whose buffers cross memory regions can bring up to
     * 1040; such requests failed with EINVAL, an EIO for the guest): the
     * rest from a private copy of the vector, IOV_MAX segments a call. */
    struct iovec *rest = malloc(sizeof(*rest) * iovcnt);
    if (!rest)
        return -ENOMEM;
    size_t done = r > 0 ? (size_t)r : 0;
    while (done < total) {
        int n = vbd_iov_slice(rest, iovcnt, iov, iovcnt, done, total - done);
        if (n > IOV_MAX)
            n = IOV_MAX;
        r = write ? vbd_co_pwritev(fd, rest, n, off + done, rwf_flags, aio) : vbd_co_preadv(fd, rest, n, off + done, aio);
        if (r == -EINTR || r == -EAGAIN)
            continue;
        if (r < 0) {
            free(rest);
            return (int)r;
        }
        if (r == 0) {
            if (write) {
                free(rest);
                return -EIO;
            }
            vbd_iov_memset(iov, iovcnt, done, 0, total - done); /* past EOF reads as zeroes */
            break;
        }
        done += r;
    }
    free(rest);
    return 0;
}

int vbd_co_preadv_full(int fd, const struct iovec *iov, int iovcnt, off_t off, enum vbd_aio aio)
{
    return rw_full(fd, iov, iovcnt, off, 0, aio, false);
}

int vbd_co_pwritev_full(int fd, const struct iovec *iov, int iovcnt, off_t off, int rwf_flags, enum vbd_aio aio)
{
    return rw_full(fd, iov, iovcnt, off, rwf_flags, aio, true);
}

int vbd_co_fsync(int fd, bool datasync, enum vbd_aio aio)
{
    struct vbd_loop *loop = vbd_loop_current();
    if (use_uring(loop, aio)) {
        struct io_uring_sqe *sqe = loop_sqe(loop);
        io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
        return uring_wait(loop, sqe, true);
    }
    struct file_job j = {.kind = datasync ? 3 : 2, .fd = fd};
    return (int)vbd_co_run_in_thread(file_job_run, &j);
}

int vbd_co_fallocate(int fd, int mode, off_t off, off_t len)
{
    /* In the pool, not the ring: io_uring runs fallocate in its own
     * worker anyway, and the pool path works on every backend. */
    struct file_job j = {.kind = 4, .fd = fd, .off = off, .len = len, .flags = mode};
    return (int)vbd_co_run_in_thread(file_job_run, &j);
}

struct epoll_wait_op {
    struct loop_op base;
    struct vbd_co *co;
    int res;
};

/* w: a cancellable wait (vbd_co_poll_wait), NULL for a plain one */
static int poll_wait_once(int fd, short events, struct vbd_poll_wait *w)
{
    struct vbd_loop *loop = vbd_loop_current();
    struct co_op op = {.base.complete = co_op_complete, .co = vbd_co_self()};
    assert(op.co && "I/O outside a coroutine");
    if (loop->uring) {
        struct io_uring_sqe *sqe = loop_sqe(loop);
        io_uring_prep_poll_add(sqe, fd, events);
        io_uring_sqe_set_data(sqe, &op.base);
    } else {
        struct fdreg *r = fdreg_get(loop, fd);
        if (events & POLLIN) {
            if (r->in_waiter)
                return -EBUSY;
            r->in_waiter = &op.base;
        } else {
            if (r->out_waiter)
                return -EBUSY;
            r->out_waiter = &op.base;
        }
        int rc = fdreg_update(loop, fd);
        if (rc < 0) {
            if (events & POLLIN)
                r->in_waiter = NULL;
            else
                r->out_waiter = NULL;
            return rc;
        }
    }
    if (w) {
        w->op = &op;
        w->fd = fd;
    }
    vbd_co_yield();
    if (w)
        w->op = NULL;
    return op.res;
}

/* A wait for fd's readiness through an epoll set of its own, which reports
 * only the events asked for (and errors, hang-ups). */
static int poll_wait_epoll(int fd, short events, struct vbd_poll_wait *w)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    struct epoll_event ev = {.events = (uint32_t)events};
    int res = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : poll_wait_once(ep, POLLIN, w);
    if (res > 0) {
        struct epoll_event got;
        res = epoll_wait(ep, &got, 1, 0) == 1 ? (int)got.events : (int)events;
    }
    close(ep);
    return res;
}

/* io_uring's poll reports POLLRDHUP whatever it was asked for (the
 * kernel's IO_POLL_UNMASK): a wait for POLLOUT on a socket whose peer has
 * shut down its sending side (shutdown(SHUT_WR), a FIN) completes at once
 * for as long as that lasts, while the send it waits for still fails with
 * EAGAIN, and the caller's retry spun. A client that sent its requests,
 * half-closed and read no replies held the daemon at a full CPU (NBD
 * replies, QMP replies alike). Such a wait goes again through an epoll set
 * of its own, which waits for what was asked. */
static int poll_wait(int fd, short events, struct vbd_poll_wait *w)
{
    int res = poll_wait_once(fd, events, w);
    if (res > 0 && (res & POLLRDHUP) && !(events & POLLRDHUP) &&
        !(res & (events | POLLERR | POLLHUP | POLLNVAL)))
        res = poll_wait_epoll(fd, events, w);
    return res;
}

int vbd_co_poll(int fd, short events)
{
    return poll_wait(fd, events, NULL);
}

int vbd_co_poll_wait(struct vbd_poll_wait *w, int fd, short events)
{
    assert(!w->op); /* one waiter at a time */
    if (w->cancelled)
        return -ECANCELED; /* latched: cancelled before it waited */
    return poll_wait(fd, events, w);
}

bool vbd_co_poll_wait_cancel(struct vbd_poll_wait *w)
{
    w->cancelled = true;
    struct co_op *op = w->op;
    if (!op)
        return false;
    struct vbd_loop *loop = vbd_loop_current();
    w->op = NULL; /* one cancel per wait */
    if (loop->uring) {
        /* The poll (or the receive: vbd_co_recv_wait) completes with
         * -ECANCELED, or with its readiness (its data) if that came first
         * (then the remove finds nothing). SQEs run in order: a later wait
         * at the same address is armed after this remove. */
        struct io_uring_sqe *sqe = loop_sqe(loop);
        if (w->recv)
            io_uring_prep_cancel64(sqe, (__u64)(uintptr_t)&op->base, 0);
        else
            io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&op->base);
        io_uring_sqe_set_data(sqe, NULL);
        return true;
    }
    struct fdreg *r = fdreg_get(loop, w->fd);
    if (r->in_waiter == &op->base)
        r->in_waiter = NULL;
    else if (r->out_waiter == &op->base)
        r->out_waiter = NULL;
    else
        return false; /* completed already: its waiter is woken */
    fdreg_update(loop, w->fd);
    op->base.complete(&op->base, -ECANCELED);
    return true;
}

/* A non-blocking socket call failed (errno): 0 to try it again (it was
 * interrupted, or fd is ready for events now: w's wait, NULL a plain one),
 * else the -errno to return, the call's own or the wait's. */
static inline int sock_retry(int fd, short events, struct vbd_poll_wait *w)
{
    if (errno == EINTR)
        return 0;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return -errno;
    assert(!w || !w->op); /* one waiter at a time */
    int p = poll_wait(fd, events, w);
    return p < 0 ? p : 0;
}

/* w: a cancellable wait (vbd_co_recv_cancellable), NULL for a plain one */
static inline ssize_t recv_wait(int fd, void *buf, size_t len, struct vbd_poll_wait *w)
{
    bool cancelled = false;
    for (;;) {
        ssize_t r = recv(fd, buf, len, MSG_DONTWAIT);
        if (r < 0 && errno == ENOTSOCK)
            r = read(fd, buf, len);
        if (r >= 0)
            return r;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && (cancelled || (w && w->cancelled)))
            return -ECANCELED;
        int rc = sock_retry(fd, POLLIN, w);
        if (rc == -ECANCELED)
            cancelled = true; /* one more look: data that came with the cancel goes first */
        else if (rc < 0)
            return rc;
    }
}

ssize_t vbd_co_recv(int fd, void *buf, size_t len)
{
    return recv_wait(fd, buf, len, NULL);
}

ssize_t vbd_co_recv_cancellable(int fd, void *buf, size_t len, struct vbd_poll_wait *w)
{
    return recv_wait(fd, buf, len, w);
}

/* The io_uring receive of vbd_co_recv_wait: the kernel tries it at once,
 * else arms its own poll on the socket and receives when data comes,
 * before the thread's wait for completions returns. */
static ssize_t uring_recv(struct vbd_loop *loop, int fd, void *buf, size_t len, struct vbd_poll_wait *w)
{
    struct co_op op = {.base.complete = co_op_complete, .co = vbd_co_self()};
    assert(op.co && "I/O outside a coroutine");
    struct io_uring_sqe *sqe = loop_sqe_lazy(loop);
    io_uring_prep_recv(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data(sqe, &op.base);
    if (w) {
        assert(!w->op); /* one waiter at a time */
        w->op = &op;
        w->fd = fd;
        w->recv = true;
    }
    vbd_co_yield();
    if (w) {
        w->op = NULL;
        w->recv = false;
    }
    return op.res;
}

ssize_t vbd_co_recv_wait(int fd, void *buf, size_t len, struct vbd_poll_wait *w)
{
    struct vbd_loop *loop = vbd_loop_current();
    if (!loop->uring || loop->recv_nowait || (w && w->cancelled))
        return recv_wait(fd, buf, len, w); /* a latched cancel: data first, else -ECANCELED at once */
    ssize_t r = uring_recv(loop, fd, buf, len, w);
    if (r >= 0)
        return r;
    /* cancelled (data that came with the cancel goes first), interrupted,
     * or a receive the ring would not wait for (not a socket; -EAGAIN: a
     * kernel that honours O_NONBLOCK there, asked no more): the plain way */
    if (r == -EAGAIN)
        loop->recv_nowait = true;
    if (r == -ECANCELED || r == -EINTR || r == -EAGAIN || r == -ENOTSOCK)
        return recv_wait(fd, buf, len, w);
    return r;
}

ssize_t vbd_co_send(int fd, const void *buf, size_t len)
{
    for (;;) {
        ssize_t r = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK)
            r = write(fd, buf, len);
        if (r >= 0)
            return r;
        int rc = sock_retry(fd, POLLOUT, NULL);
        if (rc < 0)
            return rc;
    }
}

int vbd_co_recv_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = vbd_co_recv(fd, (char *)buf + done, len - done);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return -ECONNRESET;
        done += r;
    }
    return 0;
}

int vbd_co_send_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = vbd_co_send(fd, (const char *)buf + done, len - done);
        if (r < 0)
            return (int)r;
        done += r;
    }
    return 0;
}

ssize_t vbd_co_recvmsg(int fd, struct msghdr *msg, int flags)
{
    for (;;) {
        ssize_t r = recvmsg(fd, msg, flags | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r >= 0)
            return r;
        int rc = sock_retry(fd, POLLIN, NULL);
        if (rc < 0)
            return rc;
    }
}

ssize_t vbd_co_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    for (;;) {
        ssize_t r = sendmsg(fd, msg, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r >= 0)
            return r;
        int rc = sock_retry(fd, POLLOUT, NULL);
        if (rc < 0)
            return rc;
    }
}

int vbd_co_sendv_full(int fd, struct iovec *iov, int iovcnt, int flags)
{
    while (iovcnt > 0) {
        /* at most IOV_MAX a call: more is EMSGSIZE (an NBD write of a
         * merged vhost-user request of 1024 segments plus its header) */
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = iovcnt < IOV_MAX ? iovcnt : IOV_MAX};
        ssize_t r = vbd_co_sendmsg(fd, &msg, flags);
        if (r < 0)
            return (int)r;
        while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
            r -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= r;
        }
    }
    return 0;
}

int vbd_co_accept(int listen_fd, struct sockaddr *addr, socklen_t *len)
{
    for (;;) {
        int fd = accept4(listen_fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int p = vbd_co_poll(listen_fd, POLLIN);
        if (p < 0)
            return p;
        /* a listener that was shut down polls as hung up and never accepts again */
        if (p & (POLLHUP | POLLERR | POLLNVAL))
            return -ESHUTDOWN;
    }
}

int vbd_co_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (connect(fd, addr, len) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EAGAIN)
        return -errno;
    int p = vbd_co_poll(fd, POLLOUT);
    if (p < 0)
        return p;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        return -errno;
    return -soerr;
}

static void sleep_wake(void *arg)
{
    vbd_co_wake(arg);
}

void vbd_co_sleep_ns(uint64_t ns)
{
    struct vbd_timer t = {.fn = sleep_wake, .arg = vbd_co_self()};
    vbd_timer_arm(&t, vbd_clock_ns() + ns);
    vbd_co_yield();
}

int64_t vbd_co_eventfd_wait(int efd)
{
    for (;;) {
        uint64_t v;
        ssize_t r = read(efd, &v, sizeof(v));
        if (r == sizeof(v))
            return (int64_t)v;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno != EAGAIN)
            return -errno;
        int p = vbd_co_poll(efd, POLLIN);
        if (p < 0)
            return p;
    }
}

/* ---- fd watches ---- */

static void watch_arm(struct vbd_fd_watch *w)
{
    struct io_uring_sqe *sqe = loop_sqe(w->loop);
    io_uring_prep_poll_add(sqe, w->fd, w->events);
    io_uring_sqe_set_data(sqe, &w->op);
    w->armed = true;
}

static void watch_complete(struct loop_op *op, int res)
{
    struct vbd_fd_watch *w = (struct vbd_fd_watch *)op;
    w->armed = false;
    if (w->removed) {
        free(w);
        return;
    }
    if (res > 0)
        w->cb(w->arg, (short)res);
    if (w->removed) {
        free(w);
        return;
    }
    if (res < 0 && res != -EINTR && res != -ECANCELED) {
        /* The fd is gone (EBADF): report it once as an error, stop. */
        w->cb(w->arg, POLLERR);
        if (w->removed)
            free(w);
        return;
    }
    watch_arm(w);
}

struct vbd_fd_watch *vbd_loop_watch_fd(struct vbd_loop *loop, int fd, short events,
                                       void (*cb)(void *arg, short revents), void *arg)
{
    assert(vbd_loop_is_current(loop)); /* the ring's submission queue is its thread's */
    struct vbd_fd_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->op.complete = watch_complete;
    w->loop = loop;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->arg = arg;
    if (loop->uring) {
        watch_arm(w);
    } else {
        struct fdreg *r = fdreg_get(loop, fd);
        r->watch = w;
        if (fdreg_update(loop, fd) < 0) {
            r->watch = NULL;
            free(w);
            return NULL;
        }
    }
    return w;
}

void vbd_loop_unwatch_fd(struct vbd_fd_watch *w)
{
    if (!w)
        return;
    struct vbd_loop *loop = w->loop;
    assert(vbd_loop_is_current(loop));
    if (loop->uring) {
        if (w->removed)
            return;
        w->removed = true;
        if (w->armed) {
            struct io_uring_sqe *sqe = loop_sqe(loop);
            io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&w->op);
            io_uring_sqe_set_data(sqe, NULL);
            io_uring_submit(&loop->ring);
        }
        /* freed when its poll completes (or by watch_complete if in callback) */
        return;
    }
    struct fdreg *r = fdreg_get(loop, w->fd);
    if (r->watch == w) {
        r->watch = NULL;
        fdreg_update(loop, w->fd);
    }
    free(w);
}
