#include "unit.h"
#include "vbd/coroutine.h"
#include "vbd/loop.h"
#include "vbd/iov.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static int order[16], norder;

static void co_yield_twice(void *arg)
{
    int id = (int)(intptr_t)arg;
    order[norder++] = id;
    vbd_co_yield();
    order[norder++] = id + 10;
}

UNIT_TEST(coroutine_enter_yield)
{
    norder = 0;
    struct vbd_co *a = vbd_co_create(co_yield_twice, (void *)1);
    struct vbd_co *b = vbd_co_create(co_yield_twice, (void *)2);
    vbd_co_enter(a);
    vbd_co_enter(b);
    vbd_co_enter(a);
    vbd_co_enter(b);
    CHECK_EQ(norder, 4);
    CHECK_EQ(order[0], 1);
    CHECK_EQ(order[1], 2);
    CHECK_EQ(order[2], 11);
    CHECK_EQ(order[3], 12);
}

static void inner(void *arg) { (*(int *)arg)++; vbd_co_yield(); (*(int *)arg)++; }
static struct vbd_co *inner_co;
static void outer(void *arg)
{
    inner_co = vbd_co_create(inner, arg);
    vbd_co_enter(inner_co); /* nested: returns when inner yields */
    (*(int *)arg) += 100;
}

UNIT_TEST(coroutine_nested)
{
    int v = 0;
    vbd_co_enter(vbd_co_create(outer, &v));
    CHECK_EQ(v, 101);
    vbd_co_enter(inner_co);
    CHECK_EQ(v, 102);
}

static void noop(void *arg) { (*(int *)arg)++; }
UNIT_TEST(coroutine_pool_reuse)
{
    int v = 0;
    for (int i = 0; i < 10000; i++)
        vbd_co_enter(vbd_co_create(noop, &v));
    CHECK_EQ(v, 10000);
}

/* vbd_co_call's context is read back with its own key only: a second user
 * (another key) sees NULL, inside a nested call of its own too */
static const struct vbd_co_key key_a = {"test a"}, key_b = {"test b"};
static int value_a, value_b;
struct co_local_seen {
    void *a_in_a, *b_in_a, *a_in_b, *b_in_b, *a_after_b, *outside;
};
static void in_b(void *arg)
{
    struct co_local_seen *s = arg;
    vbd_co_sleep_ns(1000); /* through the loop and back */
    s->a_in_b = vbd_co_local(&key_a);
    s->b_in_b = vbd_co_local(&key_b);
}
static void in_a(void *arg)
{
    struct co_local_seen *s = arg;
    s->a_in_a = vbd_co_local(&key_a);
    s->b_in_a = vbd_co_local(&key_b);
    vbd_co_call(in_b, s, &key_b, &value_b);
    s->a_after_b = vbd_co_local(&key_a);
}
static void co_local_top(void *arg)
{
    struct co_local_seen *s = arg;
    s->outside = vbd_co_local(&key_a);
    vbd_co_call(in_a, s, &key_a, &value_a);
}
UNIT_TEST(coroutine_call_local_keys)
{
    struct co_local_seen s = {0};
    vbd_co_run_sync(co_local_top, &s);
    CHECK(s.outside == NULL);
    CHECK(s.a_in_a == &value_a);
    CHECK(s.b_in_a == NULL);
    CHECK(s.a_in_b == NULL);
    CHECK(s.b_in_b == &value_b);
    CHECK(s.a_after_b == &value_a);
    CHECK(vbd_co_local(&key_a) == NULL);
}

static struct vbd_co_mutex mtx = VBD_CO_MUTEX_INIT;
static int in_critical, max_in_critical, done_count;
static void locker(void *arg)
{
    vbd_co_mutex_lock(&mtx);
    in_critical++;
    if (in_critical > max_in_critical)
        max_in_critical = in_critical;
    vbd_co_sleep_ns(1000000);
    in_critical--;
    vbd_co_mutex_unlock(&mtx);
    done_count++;
}

UNIT_TEST(co_mutex_excludes)
{
    struct vbd_loop *loop = vbd_loop_current();
    done_count = 0;
    for (int i = 0; i < 5; i++)
        vbd_co_enter(vbd_co_create(locker, NULL));
    while (done_count < 5)
        vbd_loop_run_once(loop, -1);
    CHECK_EQ(max_in_critical, 1);
}

struct file_args { const char *path; enum vbd_aio aio; int rc; };
static void file_io(void *opaque)
{
    struct file_args *a = opaque;
    int fd = open(a->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    char wbuf[8192], rbuf[8192];
    for (int i = 0; i < 8192; i++) wbuf[i] = (char)(i * 7);
    struct iovec w[2] = {{wbuf, 4096}, {wbuf + 4096, 4096}};
    a->rc = vbd_co_pwritev_full(fd, w, 2, 4096, 0, a->aio);
    if (!a->rc) a->rc = vbd_co_fsync(fd, true, a->aio);
    struct iovec r = {rbuf, 8192};
    if (!a->rc) a->rc = vbd_co_preadv_full(fd, &r, 1, 4096, a->aio);
    if (!a->rc && memcmp(rbuf, wbuf, 8192)) a->rc = -EIO;
    /* read past EOF zero-fills */
    memset(rbuf, 1, 4096);
    struct iovec r2 = {rbuf, 4096};
    if (!a->rc) a->rc = vbd_co_preadv_full(fd, &r2, 1, 12288, a->aio);
    if (!a->rc && !vbd_buffer_is_zero(rbuf, 4096)) a->rc = -EINVAL;
    if (!a->rc) a->rc = vbd_co_fallocate(fd, 0, 0, 65536);
    close(fd);
}

UNIT_TEST(file_io_both_aio)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/f", unit_tmpdir());
    for (int aio = 0; aio < 2; aio++) {
        struct file_args a = {path, aio, 1};
        vbd_co_run_sync(file_io, &a);
        CHECK_EQ(a.rc, 0);
    }
}

static uint64_t wake_times[3];
static int wake_n;
static void sleeper(void *arg)
{
    vbd_co_sleep_ns((uint64_t)(uintptr_t)arg * 1000000ull);
    wake_times[wake_n++] = (uint64_t)(uintptr_t)arg;
}

UNIT_TEST(sleep_order)
{
    wake_n = 0;
    vbd_co_enter(vbd_co_create(sleeper, (void *)30));
    vbd_co_enter(vbd_co_create(sleeper, (void *)10));
    vbd_co_enter(vbd_co_create(sleeper, (void *)20));
    while (wake_n < 3)
        vbd_loop_run_once(vbd_loop_current(), -1);
    CHECK_EQ(wake_times[0], 10);
    CHECK_EQ(wake_times[1], 20);
    CHECK_EQ(wake_times[2], 30);
}

static volatile bool bh_ran;
static void bh_fn(void *arg) { (void)arg; bh_ran = true; }
static struct vbd_bh remote_bh = {bh_fn, NULL, NULL};
static void *bh_thread(void *arg) { usleep(10000); vbd_loop_schedule_bh(arg, &remote_bh); return NULL; }

UNIT_TEST(bh_from_other_thread)
{
    struct vbd_loop *loop = vbd_loop_current();
    pthread_t t;
    bh_ran = false;
    pthread_create(&t, NULL, bh_thread, loop);
    while (!bh_ran)
        vbd_loop_run_once(loop, -1);
    pthread_join(t, NULL);
    CHECK(bh_ran);
}

/* BHs from another thread in bursts and one by one, while the loop runs
 * them or sleeps: only the first BH of a batch writes the eventfd, so a
 * lost wake-up would leave the loop asleep with BHs queued (a wait that
 * lasts its whole timeout). A smoke test: a race there is a window of a
 * few instructions, which 20000 BHs do not reliably hit. */
#define BURST_BHS 20000
static atomic_int burst_ran;
static void burst_fn(void *arg) { (void)arg; atomic_fetch_add(&burst_ran, 1); }
static void *burst_thread(void *arg)
{
    static struct vbd_bh bhs[BURST_BHS];
    for (int i = 0; i < BURST_BHS; i++) {
        bhs[i] = (struct vbd_bh){burst_fn, NULL, NULL};
        vbd_loop_schedule_bh(arg, &bhs[i]);
        if (i % 64 == 0)
            usleep(i % 3 ? 20 : 200); /* let the loop go to sleep now and then */
    }
    return NULL;
}

UNIT_TEST(bh_bursts_never_lose_a_wakeup)
{
    struct vbd_loop *loop = vbd_loop_current();
    pthread_t t;
    atomic_store(&burst_ran, 0);
    pthread_create(&t, NULL, burst_thread, loop);
    int full_waits = 0;
    while (atomic_load(&burst_ran) < BURST_BHS) {
        /* a wait of its whole 60 s is a lost wake-up; 3 s was not: a loop
         * thread at nice 19 behind busy nice 0 tasks waits seconds for a
         * CPU after its wake-up */
        uint64_t t0 = vbd_clock_ns();
        vbd_loop_run_once(loop, 60000000000ll);
        if (vbd_clock_ns() - t0 >= 59000000000ull)
            full_waits++;
    }
    pthread_join(t, NULL);
    CHECK_EQ(full_waits, 0);
    CHECK_EQ(atomic_load(&burst_ran), BURST_BHS);
}

static struct vbd_loop *other_loop;
static volatile bool other_stop;
static void *loop_thread(void *arg)
{
    (void)arg;
    other_loop = vbd_loop_current();
    vbd_loop_run(other_loop, &other_stop);
    return NULL;
}
struct move_args { struct vbd_loop *home; bool on_other, back_home, done; };
static void mover(void *opaque)
{
    struct move_args *m = opaque;
    vbd_co_move_to(other_loop);
    m->on_other = vbd_loop_current() == other_loop;
    vbd_co_move_to(m->home);
    m->back_home = vbd_loop_current() == m->home;
    m->done = true;
}

UNIT_TEST(co_move_between_threads)
{
    pthread_t t;
    other_stop = false;
    other_loop = NULL;
    pthread_create(&t, NULL, loop_thread, NULL);
    while (!__atomic_load_n(&other_loop, __ATOMIC_ACQUIRE))
        usleep(1000);
    struct move_args m = {vbd_loop_current(), false, false, false};
    vbd_co_run_sync(mover, &m);
    CHECK(m.on_other);
    CHECK(m.back_home);
    other_stop = true;
    vbd_loop_kick(other_loop);
    pthread_join(t, NULL);
}

struct sock_args { int fd; int rc; int passed_fd; };
static void sock_reader(void *opaque)
{
    struct sock_args *s = opaque;
    char buf[5];
    s->rc = vbd_co_recv_full(s->fd, buf, 5);
    if (!s->rc && memcmp(buf, "hello", 5)) s->rc = -EIO;
    char b;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&b, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    if (!s->rc && vbd_co_recvmsg(s->fd, &msg, 0) != 1) s->rc = -EIO;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!s->rc && c && c->cmsg_type == SCM_RIGHTS) memcpy(&s->passed_fd, CMSG_DATA(c), sizeof(int));
}
static void sock_writer(void *opaque)
{
    struct sock_args *s = opaque;
    vbd_co_sleep_ns(2000000);
    s->rc = vbd_co_send_full(s->fd, "hello", 5);
    int pass = 0; /* stdin */
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {"x", 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pass, sizeof(int));
    if (!s->rc && vbd_co_sendmsg(s->fd, &msg, 0) != 1) s->rc = -EIO;
}

UNIT_TEST(socket_recv_send_fds)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct sock_args r = {sv[0], 1, -1}, w = {sv[1], 1, -1};
    vbd_co_enter(vbd_co_create(sock_reader, &r));
    vbd_co_enter(vbd_co_create(sock_writer, &w));
    for (int i = 0; i < 1000 && (r.rc == 1 || w.rc == 1 || r.passed_fd < 0); i++)
        vbd_loop_run_once(vbd_loop_current(), 100000000);
    CHECK_EQ(r.rc, 0);
    CHECK_EQ(w.rc, 0);
    CHECK(r.passed_fd >= 0);
    if (r.passed_fd >= 0) close(r.passed_fd);
    close(sv[0]);
    close(sv[1]);
}

/* vbd_co_poll_wait: a cancel ends the wait with -ECANCELED (the fd has
 * nothing to read), a later wait on the same struct, once the waiter
 * rearmed it, sees readiness, and a cancel without a wait is latched
 * (the io_uring and epoll backends: run.sh runs the unit tests under
 * both). */
struct idle_wait_args {
    int fd;
    struct vbd_poll_wait w;
    int first, second; /* 1: still waiting */
};
static void idle_waiter(void *opaque)
{
    struct idle_wait_args *a = opaque;
    a->first = vbd_co_poll_wait(&a->w, a->fd, POLLIN);
    vbd_poll_wait_rearm(&a->w);
    a->second = vbd_co_poll_wait(&a->w, a->fd, POLLIN);
}

UNIT_TEST(poll_wait_cancel)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct idle_wait_args a = {.fd = sv[0], .first = 1, .second = 1};
    CHECK(!vbd_co_poll_wait_cancel(&a.w)); /* nobody waits: latched */
    CHECK(vbd_poll_wait_cancelled(&a.w));
    CHECK_EQ(vbd_co_poll_wait(&a.w, a.fd, POLLIN), -ECANCELED); /* at once, no coroutine needed */
    vbd_poll_wait_rearm(&a.w);
    vbd_co_enter(vbd_co_create(idle_waiter, &a));
    for (int i = 0; i < 3; i++)
        vbd_loop_run_once(vbd_loop_current(), 1000000);
    CHECK_EQ(a.first, 1); /* nothing to read: still waiting */
    CHECK(vbd_co_poll_wait_cancel(&a.w));
    CHECK(!vbd_co_poll_wait_cancel(&a.w)); /* one cancel per wait */
    for (int i = 0; i < 100 && a.first == 1; i++)
        vbd_loop_run_once(vbd_loop_current(), 10000000);
    CHECK_EQ(a.first, -ECANCELED);
    for (int i = 0; i < 3; i++)
        vbd_loop_run_once(vbd_loop_current(), 1000000);
    CHECK_EQ(a.second, 1); /* waiting again, not cancelled by the first cancel */
    CHECK_EQ(write(sv[1], "x", 1), 1);
    for (int i = 0; i < 100 && a.second == 1; i++)
        vbd_loop_run_once(vbd_loop_current(), 10000000);
    CHECK(a.second > 0 && (a.second & POLLIN));
    CHECK(!vbd_co_poll_wait_cancel(&a.w)); /* over */
    close(sv[0]);
    close(sv[1]);
    vbd_loop_run_once(vbd_loop_current(), 0);
}

/* vbd_co_recv_cancellable (the NBD server's read of its client's next
 * request, which a node move cuts short): a cancel before the read is
 * latched (-ECANCELED at once, again until rearmed), one during its wait
 * ends it, and data goes first: bytes already there, or written just
 * before the cancel of a wait in progress, are returned, the latch staying
 * set for the next call. Both backends, as poll_wait_cancel. */
#define RECV_WAITING 1000
struct recv_cancel_args {
    int fd;
    struct vbd_poll_wait w;
    ssize_t r; /* RECV_WAITING: still waiting */
    char buf[8];
};
static void recv_cancel_co(void *opaque)
{
    struct recv_cancel_args *a = opaque;
    a->r = vbd_co_recv_cancellable(a->fd, a->buf, sizeof(a->buf), &a->w);
}
/* a read in a new coroutine; returns its result, RECV_WAITING if it waits
 * (after a few loop passes) */
static ssize_t recv_cancel_start(struct recv_cancel_args *a)
{
    a->r = RECV_WAITING;
    vbd_co_enter(vbd_co_create(recv_cancel_co, a));
    for (int i = 0; i < 3 && a->r == RECV_WAITING; i++)
        vbd_loop_run_once(vbd_loop_current(), 1000000);
    return a->r;
}
static ssize_t recv_cancel_finish(struct recv_cancel_args *a)
{
    for (int i = 0; i < 100 && a->r == RECV_WAITING; i++)
        vbd_loop_run_once(vbd_loop_current(), 10000000);
    return a->r;
}

UNIT_TEST(recv_cancellable)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct recv_cancel_args a = {.fd = sv[0]};

    /* cancel before the read: -ECANCELED without waiting, until rearmed */
    CHECK(!vbd_co_poll_wait_cancel(&a.w));
    CHECK_EQ(recv_cancel_start(&a), -ECANCELED);
    CHECK_EQ(recv_cancel_start(&a), -ECANCELED);
    /* bytes already there go first, the latch stays */
    CHECK_EQ(write(sv[1], "ab", 2), 2);
    CHECK_EQ(recv_cancel_start(&a), 2);
    CHECK(!memcmp(a.buf, "ab", 2));
    CHECK(vbd_poll_wait_cancelled(&a.w));
    CHECK_EQ(recv_cancel_start(&a), -ECANCELED);

    /* cancel during the wait */
    vbd_poll_wait_rearm(&a.w);
    CHECK_EQ(recv_cancel_start(&a), RECV_WAITING);
    CHECK(vbd_co_poll_wait_cancel(&a.w));
    CHECK_EQ(recv_cancel_finish(&a), -ECANCELED);
    CHECK(vbd_poll_wait_cancelled(&a.w));

    /* data and cancel together: the data, then the latch */
    vbd_poll_wait_rearm(&a.w);
    CHECK_EQ(recv_cancel_start(&a), RECV_WAITING);
    CHECK_EQ(write(sv[1], "xyz", 3), 3);
    CHECK(vbd_co_poll_wait_cancel(&a.w));
    CHECK_EQ(recv_cancel_finish(&a), 3);
    CHECK(!memcmp(a.buf, "xyz", 3));
    CHECK_EQ(recv_cancel_start(&a), -ECANCELED);

    /* rearmed: waits for data as vbd_co_recv, and an EOF is 0 */
    vbd_poll_wait_rearm(&a.w);
    CHECK_EQ(recv_cancel_start(&a), RECV_WAITING);
    CHECK_EQ(write(sv[1], "q", 1), 1);
    CHECK_EQ(recv_cancel_finish(&a), 1);
    close(sv[1]);
    CHECK_EQ(recv_cancel_start(&a), 0);
    CHECK(!vbd_poll_wait_cancelled(&a.w));
    close(sv[0]);
    vbd_loop_run_once(vbd_loop_current(), 0);
}

static int watch_hits;
static struct vbd_fd_watch *the_watch;
static void watch_cb(void *arg, short revents)
{
    int fd = (int)(intptr_t)arg;
    char c;
    if (revents & POLLIN) { if (read(fd, &c, 1) == 1) watch_hits++; }
    if (watch_hits == 3) vbd_loop_unwatch_fd(the_watch);
}

UNIT_TEST(watch_fd)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
    watch_hits = 0;
    the_watch = vbd_loop_watch_fd(vbd_loop_current(), p[0], POLLIN, watch_cb, (void *)(intptr_t)p[0]);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(write(p[1], "a", 1), 1);
        vbd_loop_run_once(vbd_loop_current(), 50000000);
        vbd_loop_run_once(vbd_loop_current(), 0);
    }
    CHECK_EQ(watch_hits, 3);
    close(p[0]);
    close(p[1]);
    vbd_loop_run_once(vbd_loop_current(), 10000000);
}

static long thread_fn(void *arg) { return (long)(intptr_t)arg * 2; }
static void run_thread_co(void *arg) { *(long *)arg = vbd_co_run_in_thread(thread_fn, (void *)21); }
UNIT_TEST(run_in_thread)
{
    long v = 0;
    vbd_co_run_sync(run_thread_co, &v);
    CHECK_EQ(v, 42);
}

/* Pollers: polled on every iteration, busy-polled before the loop blocks,
 * and told before every block so they can re-arm their notification. */
struct poll_state {
    int polls, sleeps;
    int work;          /* set by the test: found by poll() without any wake-up */
    int handled;
    bool late_arrival; /* before_sleep finds work once */
};
static bool t_poll(void *arg)
{
    struct poll_state *p = arg;
    p->polls++;
    if (!p->work)
        return false;
    p->work = 0;
    p->handled++;
    return true;
}
static bool t_before_sleep(void *arg)
{
    struct poll_state *p = arg;
    p->sleeps++;
    if (!p->late_arrival)
        return false;
    p->late_arrival = false;
    p->handled++;
    return true;
}

static void timer_cb_set(void *arg) { *(bool *)arg = true; }

/* Kicks a loop every period_ns until stopped: events from outside that
 * come at a steady pace, as a QD1 client's requests do. */
struct kicker {
    struct vbd_loop *loop;
    long period_ns;
    bool stop;
};
static void *kicker_thread(void *arg)
{
    struct kicker *k = arg;
    while (!__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, k->period_ns};
        nanosleep(&ts, NULL);
        vbd_loop_kick(k->loop);
    }
    return NULL;
}

/* Waits for kicked events (up to 300) until the busy-poll has stopped:
 * three waits in a row without a second poll. One alone does not show it:
 * a kick that lands while the loop is between waits (the kicker thread
 * woken late on a loaded host) ends the next wait before any busy-poll
 * (make check saw the remote window still open after such a single wait:
 * 185 polls where none were due). Returns the waits it took. */
static int shrink_poll_window(struct vbd_loop *loop, struct poll_state *st)
{
    int waits = 0, quiet = 0;
    while (quiet < 3 && waits < 300) {
        st->polls = 0;
        vbd_loop_run_once(loop, -1);
        quiet = st->polls > 1 ? 0 : quiet + 1;
        waits++;
    }
    return waits;
}

UNIT_TEST(loop_pollers)
{
    struct vbd_loop *loop = vbd_loop_current();
    struct poll_state st = {0};
    struct vbd_poller p = {.poll = t_poll, .before_sleep = t_before_sleep, .arg = &st};
    vbd_loop_add_poller(loop, &p);

    /* work waiting in memory is found by polling, with no notification */
    st.work = 1;
    vbd_loop_run_once(loop, 0);
    CHECK_EQ(st.handled, 1);
    CHECK_EQ(st.sleeps, 0); /* a non-blocking iteration does not re-arm */

    /* an iteration that may block busy-polls, then re-arms exactly once
     * (tried again from the full window while a preemption on a loaded
     * host outlasts the whole poll and leaves a single poll: each such
     * block also halves the window, hence the reset) */
    for (int tries = 0; tries < 50; tries++) {
        vbd_loop_set_poll_max_ns(loop, VBD_LOOP_POLL_MAX_NS_DEFAULT);
        st.polls = 0;
        st.sleeps = 0;
        vbd_loop_run_once(loop, 1000000);
        CHECK_EQ(st.sleeps, 1);
        if (st.polls > 1)
            break;
    }
    CHECK(st.polls > 1);

    /* work that arrives while re-arming: the loop does not block (if it
     * did, the timer due at the end of the timeout would fire in this call) */
    static bool fired;
    struct vbd_timer t = {.fn = timer_cb_set, .arg = &fired};
    vbd_timer_arm(&t, vbd_clock_ns() + 2000000000ull);
    st.late_arrival = true;
    st.sleeps = 0;
    vbd_loop_run_once(loop, -1);
    CHECK_EQ(st.handled, 2);
    CHECK_EQ(st.sleeps, 1);
    CHECK(!fired);
    vbd_timer_cancel(&t);

    /* Adaptive: events that come later than poll-max-ns stop the busy-poll,
     * even though the block after the failed poll alone is shorter than the
     * bound (kicks every 15 ms with a 10 ms bound: 10 ms polled, 5 ms
     * blocked; judged on the block, the loop kept polling 10 ms per event).
     * From 10 ms, halving to nothing takes 12 events. Short waits then
     * bring the poll back (a loaded host may stretch some past the bound:
     * up to 200 are allowed; and a preemption inside a poll makes a late
     * kick look found by it, which grows the window again: up to 300 kicks
     * for the shrink). */
    vbd_loop_set_poll_max_ns(loop, 10000000);
    struct kicker k = {.loop = loop, .period_ns = 15000000};
    pthread_t kt;
    pthread_create(&kt, NULL, kicker_thread, &k);
    int waits = shrink_poll_window(loop, &st);
    __atomic_store_n(&k.stop, true, __ATOMIC_RELEASE);
    pthread_join(kt, NULL);
    CHECK_EQ(st.polls, 1);
    CHECK(waits >= 12);
    int tries = 0;
    do {
        st.polls = 0;
        vbd_loop_run_once(loop, 100000);
    } while (st.polls == 1 && ++tries < 200);
    CHECK(st.polls > 1);

    /* A remote wait (the nbd client's) adapts a window of its own: replies
     * later than the bound stop the spin while one is in flight, and the
     * idle window is left as it was (both start at the bound here). */
    vbd_loop_set_poll_max_ns(loop, 10000000);
    vbd_loop_remote_begin(loop);
    struct kicker k2 = {.loop = loop, .period_ns = 15000000};
    pthread_create(&kt, NULL, kicker_thread, &k2);
    waits = shrink_poll_window(loop, &st);
    __atomic_store_n(&k2.stop, true, __ATOMIC_RELEASE);
    pthread_join(kt, NULL);
    CHECK_EQ(st.polls, 1);
    CHECK(waits >= 12);
    st.polls = 0;
    vbd_loop_run_once(loop, 20000000); /* the remote window: none */
    CHECK_EQ(st.polls, 1);
    vbd_loop_remote_end(loop);
    st.polls = 0;
    vbd_loop_run_once(loop, 20000000); /* the idle one: still the bound */
    CHECK(st.polls > 1);
    /* an I/O wait still stops every spin, with a remote one in flight too */
    vbd_loop_set_poll_max_ns(loop, 10000000);
    vbd_loop_remote_begin(loop);
    vbd_loop_io_begin(loop);
    st.polls = 0;
    vbd_loop_run_once(loop, 20000000);
    CHECK_EQ(st.polls, 1);
    vbd_loop_io_end(loop);
    /* more than one remote wait: no spin (the peer needs the CPU), and the
     * window is kept for the next single one */
    vbd_loop_remote_begin(loop);
    st.polls = 0;
    vbd_loop_run_once(loop, 20000000);
    CHECK_EQ(st.polls, 1);
    vbd_loop_remote_end(loop);
    st.polls = 0;
    vbd_loop_run_once(loop, 20000000);
    CHECK(st.polls > 1);
    vbd_loop_remote_end(loop);

    /* poll-max-ns=0: polled once per iteration, no busy-poll, still re-armed */
    vbd_loop_set_poll_max_ns(loop, 0);
    CHECK(!vbd_loop_polling(loop));
    st.polls = st.sleeps = 0;
    vbd_loop_run_once(loop, 1000000);
    CHECK_EQ(st.polls, 1);
    CHECK_EQ(st.sleeps, 1);

    /* removed: never called again */
    vbd_loop_remove_poller(loop, &p);
    st.polls = st.sleeps = 0;
    vbd_loop_run_once(loop, 1000000);
    CHECK_EQ(st.polls, 0);
    CHECK_EQ(st.sleeps, 0);
    vbd_loop_set_poll_max_ns(loop, 32768);
}

/* The statistics clock measures what CLOCK_MONOTONIC measures, before and
 * after its calibration (rdtsc where the kernel's clock source is the TSC):
 * an interval read by it lies within the two clock intervals that bracket
 * its readings, give or take 1 % (the calibration over >= 20 ms is good to
 * ~1e-4) and 5 us (either end of a calibration is a bracketed pair < 2 us
 * wide). A bound that a preemption between two reads cannot break: it only
 * widens the brackets. */
static void stat_interval_within(uint64_t sleep_ns)
{
    uint64_t a0 = vbd_clock_ns(), s0 = vbd_clock_stat_ns(), b0 = vbd_clock_ns();
    struct timespec ts = {0, (long)sleep_ns};
    nanosleep(&ts, NULL);
    uint64_t a1 = vbd_clock_ns(), s1 = vbd_clock_stat_ns(), b1 = vbd_clock_ns();
    uint64_t got = s1 > s0 ? s1 - s0 : 0, lo = a1 - b0, hi = b1 - a0;
    CHECK(got + lo / 100 + 5000 >= lo);
    CHECK(got <= hi + hi / 100 + 5000);
    CHECK(vbd_clock_stat_since(s1 + 1000000000ull) == 0); /* a reading later than now: 0, never negative */
}

UNIT_TEST(stat_clock_follows_monotonic)
{
    stat_interval_within(1000000); /* likely before the calibration: clock_gettime */
    for (int i = 0; i < 4; i++)
        stat_interval_within(10000000); /* the 20 ms calibration falls in here */
    for (int i = 0; i < 3; i++)
        stat_interval_within(30000000);
}

/*
 * Data another thread sends reaches a loop that never blocks, while it
 * spins, in each engine:
 * - io_uring, every VBD_URING_TASKRUN mode (loop_taskrun_modes): the
 *   receive is a receive SQE (vbd_co_recv_wait), which the kernel completes
 *   as task work in the loop's thread; under DEFER_TASKRUN such a
 *   completion waits until the thread enters io_uring_enter(GETEVENTS), and
 *   under COOP_TASKRUN until it enters the kernel at all; the loop learns
 *   of it from IORING_SQ_TASKRUN. Two loops that never block: one whose
 *   poller always finds work (a vhost-user ring under steady traffic: every
 *   pass is a zero-timeout iteration), one that busy-polls for longer than
 *   the test lasts. Without the flag (ring_setup without
 *   IORING_SETUP_TASKRUN_FLAG) the first spins forever and the second for
 *   its whole window.
 * - epoll (VBD_LOOP_FORCE_EPOLL, under either engine's pass;
 *   epoll_busy_poll_ends_on_readable_fd): the busy-poll ends when a socket
 *   it waits on (vbd_co_recv's poll) becomes readable, not only when its
 *   window runs out. Before, the spin looked only at the pollers, bottom
 *   halves and ready coroutines, and the receive waited out the whole
 *   window.
 * One run: a loop thread of its own with a poller (always work, or never
 * any and a 120 s busy-poll window), a receiver coroutine on one end of a
 * socket pair and a sender thread that sends one byte once the loop spins.
 */
struct spin_run {
    const char *mode; /* VBD_URING_TASKRUN of an io_uring loop; NULL: an epoll loop */
    bool busy;        /* the poller always finds work (else: a 120 s busy-poll window) */
    enum vbd_uring_taskrun got;
    bool uring, done;
    ssize_t received;
    uint64_t took_ns;
    int sv[2];
    atomic_int stage; /* 1: the receive waits and the loop spins; the sender sends */
};

static bool spin_poll(void *arg)
{
    struct spin_run *r = arg;
    if (!r->busy && atomic_load(&r->stage) == 0)
        atomic_store(&r->stage, 1); /* the busy-poll began: the receive waits since before it */
    return r->busy;
}

static bool spin_before_sleep(void *arg)
{
    (void)arg;
    return false;
}

static void spin_receiver(void *arg)
{
    struct spin_run *r = arg;
    char buf[8];
    /* io_uring: a receive SQE, completed as task work; epoll: a recv that
     * finds nothing, then a wait for the fd */
    r->received = r->mode ? vbd_co_recv_wait(r->sv[0], buf, sizeof(buf), NULL) : vbd_co_recv(r->sv[0], buf, sizeof(buf));
    r->done = true;
}

static void *spin_sender(void *arg)
{
    struct spin_run *r = arg;
    while (atomic_load(&r->stage) == 0)
        sched_yield();
    if (send(r->sv[1], "x", 1, MSG_NOSIGNAL) != 1)
        abort();
    return NULL;
}

static void *spin_loop_thread(void *arg)
{
    struct spin_run *r = arg;
    struct vbd_error *err = NULL;
    struct vbd_loop *loop = vbd_loop_new(0, r->mode ? 0 : VBD_LOOP_FORCE_EPOLL, &err);
    if (!loop)
        return NULL;
    r->uring = vbd_loop_has_io_uring(loop);
    r->got = vbd_loop_uring_taskrun(loop);
    if (r->mode && !r->uring) { /* epoll (VBD_NO_IO_URING): no task work; the window would only be spun out */
        vbd_co_thread_cleanup();
        vbd_loop_free(loop);
        return NULL;
    }
    struct vbd_poller p = {.poll = spin_poll, .before_sleep = spin_before_sleep, .arg = r};
    vbd_loop_add_poller(loop, &p);
    if (!r->busy)
        vbd_loop_set_poll_max_ns(loop, 120000000000ull);
    pthread_t sender;
    pthread_create(&sender, NULL, spin_sender, r);
    vbd_co_enter(vbd_co_create(spin_receiver, r));
    uint64_t start = vbd_clock_ns();
    if (r->busy) {
        /* the receive's SQE may be held for one pass (vbd_loop_run_once) */
        vbd_loop_run_once(loop, -1);
        vbd_loop_run_once(loop, -1);
        atomic_store(&r->stage, 1);
    }
    while (!r->done && vbd_clock_ns() - start < 120000000000ull)
        vbd_loop_run_once(loop, -1);
    r->took_ns = vbd_clock_ns() - start;
    atomic_store(&r->stage, 1); /* the sender ends in any case */
    pthread_join(sender, NULL);
    vbd_loop_remove_poller(loop, &p);
    while (!r->done) /* the test failed: a blocking wait lets the receiver finish */
        vbd_loop_run_once(loop, -1);
    vbd_co_thread_cleanup();
    vbd_loop_free(loop);
    return NULL;
}

/* r (mode and busy set) run on a loop thread of its own */
static void spin_once(struct spin_run *r)
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, r->sv) == 0);
    if (r->mode)
        setenv("VBD_URING_TASKRUN", r->mode, 1); /* read by vbd_loop_new, on the thread */
    pthread_t t;
    pthread_create(&t, NULL, spin_loop_thread, r);
    pthread_join(t, NULL);
    if (r->mode)
        unsetenv("VBD_URING_TASKRUN");
    close(r->sv[0]);
    close(r->sv[1]);
}

/* the byte came, and the spin ended with it, not with its 120 s window
 * (generous: a loaded host) */
static void spin_check(const struct spin_run *r, const char *test)
{
    if (!r->done || r->received != 1 || r->took_ns >= 60000000000ull)
        fprintf(stderr, "%s: %s, %s: done %d, received %zd, after %.3f s\n", test, r->mode ? r->mode : "epoll",
                r->busy ? "busy pollers" : "busy-poll window", r->done, r->received, r->took_ns / 1e9);
    CHECK(r->done);
    CHECK_EQ(r->received, 1);
    CHECK(r->took_ns < 60000000000ull);
}

UNIT_TEST(loop_taskrun_modes)
{
    static const char *const modes[] = {"ipi", "coop", "defer"};
    for (int m = 0; m < 3; m++)
        for (int busy = 0; busy < 2; busy++) {
            struct spin_run r = {.mode = modes[m], .busy = busy};
            spin_once(&r);
            if (!r.uring)
                continue; /* no io_uring here: nothing of this applies */
            /* the mode asked for: kernels from 6.1 on have all three */
            struct utsname u;
            int major = 0, minor = 0;
            if (uname(&u) == 0)
                sscanf(u.release, "%d.%d", &major, &minor);
            if (major > 6 || (major == 6 && minor >= 1))
                CHECK_STR(vbd_uring_taskrun_name(r.got), modes[m]);
            else if (r.got != (enum vbd_uring_taskrun)m)
                fprintf(stderr, "loop_taskrun_modes: %s refused by kernel %s, got %s\n", modes[m], u.release,
                        vbd_uring_taskrun_name(r.got));
            spin_check(&r, "loop_taskrun_modes");
        }
}

UNIT_TEST(epoll_busy_poll_ends_on_readable_fd)
{
    struct spin_run r = {.mode = NULL, .busy = false};
    spin_once(&r);
    spin_check(&r, "epoll_busy_poll_ends_on_readable_fd");
}
