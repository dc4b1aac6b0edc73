/* SPDX-License-Identifier: MIT */
/*
 * NBD server, transmission: requests of one connection run concurrently (a
 * bounded pool of request slots); replies are sent whole under a
 * per-connection lock, in completion order, those of one loop iteration
 * batched into one send.
 */
#include "internal.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "util/readahead.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static uint32_t errno_to_nbd(int err)
{
    switch (err) {
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

static void reply_small(struct nbd_req *r, const void *a, size_t la, const void *b, size_t lb)
{
    uint8_t *p = r->small[r->nsmall++];
    memcpy(p, a, la);
    if (lb)
        memcpy(p + la, b, lb);
    r->riov[r->rn++] = (struct iovec){p, la + lb};
}

static void reply_ref(struct nbd_req *r, const void *p, size_t len)
{
    if (len)
        r->riov[r->rn++] = (struct iovec){(void *)p, len};
}

/* Sends the queued replies (c->out) in one send; the caller holds the send
 * lock. The batch's number is taken under the lock, so batches leave in
 * their numbers' order and sent_gen only grows: a reply whose batch number
 * sent_gen reached is out, and its request may reuse its pieces. */
static void out_send_locked(struct nbd_conn *c)
{
    struct iovec *batch = c->out;
    int n = c->out_n;
    uint64_t gen = c->out_gen++;
    c->out = c->out_spare;
    c->out_spare = batch;
    c->out_n = 0;
    vbd_co_queue_wake_all(&c->space_q);
    int rc = c->send_err ? c->send_err : vbd_chan_sendv_full(&c->ch, batch, n);
    if (rc < 0 && !c->send_err)
        c->send_err = rc;
    c->sent_gen = gen;
    vbd_co_queue_wake_all(&c->sent_q);
}

/* Sends the reply built in r (with the other replies of this loop
 * iteration) and waits until it is out: its pieces point into r.
 * The flusher sends what the iteration queued after its last request ran;
 * a request alone in flight sends its reply itself. (Sending the queue
 * from within a batch, by the request whose reply was the K-th queued, was
 * measured at K=1-8 in five holds, rounds 25-27: no K paid, in IOPS or in
 * the client's CPU per request; RESULTS.md, nbd26 and nbd27.) Either way a
 * reply is queued only once its request completed (a FUA write's data is
 * stable, a flush done), and the chunks of one reply leave in order: each
 * waits for the last to be out. */
static int reply_send(struct nbd_conn *c, struct nbd_req *r)
{
    int n = r->rn;
    r->rn = r->nsmall = 0;
    while (!c->send_err && c->out_n + n > NBD_OUT_IOV)
        vbd_co_queue_wait(&c->space_q);
    if (c->send_err)
        return c->send_err;
    memcpy(c->out + c->out_n, r->riov, (size_t)n * sizeof(struct iovec));
    c->out_n += n;
    uint64_t mine = c->out_gen;
    /* alone: no other request in flight, whose reply could join this one
     * (a QD1 client): the flusher would only add two coroutine switches
     * between this reply and the client */
    bool alone = c->inflight == 1;
    if (alone && !c->send_lock.locked) {
        vbd_co_mutex_lock(&c->send_lock);
        if (c->sent_gen < mine)
            out_send_locked(c);
        vbd_co_mutex_unlock(&c->send_lock);
    } else {
        vbd_co_queue_wake_one(&c->flush_q);
    }
    while (!c->send_err && c->sent_gen < mine)
        vbd_co_queue_wait(&c->sent_q);
    return c->send_err;
}

static void flusher_co(void *opaque)
{
    struct nbd_conn *c = opaque;
    for (;;) {
        while (!c->out_n && !c->flush_stop)
            vbd_co_queue_wait(&c->flush_q);
        if (!c->out_n)
            break;
        vbd_co_mutex_lock(&c->send_lock);
        if (c->out_n) /* a request alone in flight may have sent them meanwhile */
            out_send_locked(c);
        vbd_co_mutex_unlock(&c->send_lock);
    }
    c->flusher_running = false;
    vbd_co_queue_wake_all(&c->flusher_exit_q);
}

/* Connections reading in batches on this thread (a connection runs on its
 * node's loop: the main loop or an iothread; all state here is the
 * thread's own). While there are any and the thread is seen waiting for
 * its CPU, it asks the scheduler for a short slice (NBD_BATCH_SLICE_NS as
 * EEVDF's request size, sched_attr.sched_runtime; Linux 6.12 and later,
 * older kernels ignore it). A batch sleeps on a timer between reads: on a shared host the
 * timer's wake-up found the CPU taken by another task, which EEVDF may let
 * finish its slice (1.4 ms on this 2-CPU guest) before a woken task with
 * the default slice runs. A woken task with a shorter slice than the
 * running one preempts it (PREEMPT_SHORT), so a batch is read when it is
 * due and the client, which had sent its whole queue, is not left without
 * replies: fio 4K QD32 at load 12-22, 1.2-4x the IOPS of the default slice
 * over TCP and unix (RESULTS.md, nbdperf17); the loop thread had waited
 * for its CPU 74 % of the time. Only while batching: held for the whole
 * connection the slice also raised QD1 IOPS (up to +35 %) but cost unix 1M
 * reads at QD8 7 % more server CPU per request (5 of 5 pairs). The share
 * of the CPU is the nice value's, as before; the thread's policy and nice
 * value are kept, other policies (SCHED_FIFO, SCHED_BATCH set by the user)
 * are left alone.
 *
 * Only when the thread waits to run (see slice_gate): with nothing to
 * preempt the slice bought nothing, and on a lightly loaded host it cost
 * server CPU per request (the thread preempted in shorter pieces). */
static _Thread_local int batching_conns;

/* The kernel's struct sched_attr, first version (<linux/sched/types.h>
 * clashes with <sched.h>; glibc 2.36 has no wrapper). */
struct thread_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

/* Threads the loop thread creates meanwhile (thread-pool workers, an
 * iothread) would inherit the short slice and keep it: with
 * SCHED_FLAG_RESET_ON_FORK they start with the default one (for a thread
 * at nice >= 0 that flag changes nothing else; at a negative nice it would
 * also reset theirs to 0, so it is not set then). */
#define NBD_SCHED_FLAG_RESET_ON_FORK 0x01 /* <linux/sched.h>, which clashes with <sched.h> */

static _Thread_local bool slice_short; /* the loop thread's slice is NBD_BATCH_SLICE_NS now */

static void slice_set(bool on)
{
    static _Thread_local uint64_t reset_on_fork; /* the thread's own flag, given back at the end */
    if (on == slice_short)
        return;
    struct thread_sched_attr a;
    if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) < 0 || a.sched_policy != SCHED_OTHER)
        return;
    a.size = sizeof(a);
    if (on)
        reset_on_fork = a.sched_flags & NBD_SCHED_FLAG_RESET_ON_FORK;
    a.sched_flags = on && a.sched_nice >= 0 ? NBD_SCHED_FLAG_RESET_ON_FORK : reset_on_fork;
    a.sched_runtime = on ? NBD_BATCH_SLICE_NS : 0; /* 0: the default slice again */
    a.sched_deadline = a.sched_period = 0;
    if (syscall(SYS_sched_setattr, 0, &a, 0) == 0)
        slice_short = on;
}

/* The gate: the loop thread's run-queue delay (the 2nd field of its
 * /proc/thread-self/schedstat, ns spent runnable but not running; kernels
 * with CONFIG_SCHED_INFO) is sampled every NBD_SLICE_SAMPLE_NS while
 * batching and judged over windows of NBD_SLICE_WINDOW samples. A window
 * that waited more than NBD_SLICE_ON_PCT % turns the short slice on (at
 * once when its waits reach that share of a whole window);
 * NBD_SLICE_OFF_WINDOWS windows under NBD_SLICE_OFF_PCT % turn it off
 * (with the slice on the wait falls, so the two bounds are apart: the
 * slice is not dropped by its own effect). A wait is added when the
 * thread gets its CPU, so one sample holds a whole wait: round 18's rule
 * (one 1 ms sample over 5 %) took any 50 us wait for a kworker as
 * contention, and on a quiet host the slice was on for part of a run at a
 * cost in server CPU per request (tcp 4K QD32, 9.0 vs 7.3 us). A task
 * that really shares the CPU makes the thread wait in lumps of its own
 * slice (0.3-3 ms; nice 19 builds as much as a nice 0 busy loop), which
 * reach 10 % of a 16 ms window at once (RESULTS.md, nbdgate19).
 * What was seen is kept across batching sessions: a session that starts
 * within NBD_SLICE_KEEP_NS of a busy window takes the slice at once (fio's
 * pauses under load end and restart batching tens of times a second).
 * The file is open only while batching (a connection's end leaves the
 * daemon's fds as they were); without it the slice is never taken. */
static _Thread_local struct {
    int fd;                 /* open while batching; -1: closed, -2: not available here */
    uint64_t at_ns, delay;  /* the last sample: when, the run-queue delay then */
    uint64_t busy_ns;       /* when a window last crossed NBD_SLICE_ON_PCT */
    uint32_t quiet;         /* windows under NBD_SLICE_OFF_PCT since the last busy one */
    uint64_t win_span, win_waited; /* the window so far: ns, ns waited */
    uint32_t win_n;         /* samples in it */
} gate = {.fd = -1};

static bool run_delay(uint64_t *delay)
{
    if (gate.fd < 0)
        return false;
    char buf[96];
    ssize_t n = pread(gate.fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return false;
    buf[n] = 0;
    char *p = buf, *end; /* "on-CPU-ns run-queue-ns timeslices" */
    (void)strtoull(p, &end, 10);
    if (end == p)
        return false;
    p = end;
    *delay = strtoull(p, &end, 10);
    return end != p;
}

/* A sample, at most every NBD_SLICE_SAMPLE_NS (called before each batch
 * read); the slice follows it. */
static void slice_gate(void)
{
    uint64_t now = vbd_clock_ns(), delay;
    if (now - gate.at_ns < NBD_SLICE_SAMPLE_NS || !run_delay(&delay))
        return;
    uint64_t span = now - gate.at_ns, waited = delay - gate.delay;
    bool fresh = span < NBD_SLICE_KEEP_NS; /* an old base says nothing of now */
    gate.at_ns = now;
    gate.delay = delay;
    if (!fresh) {
        gate.win_span = gate.win_waited = gate.win_n = 0;
        return;
    }
    gate.win_span += span;
    gate.win_waited += waited;
    bool busy = gate.win_waited * 100 > (uint64_t)NBD_SLICE_WINDOW * NBD_SLICE_SAMPLE_NS * NBD_SLICE_ON_PCT;
    if (!busy && ++gate.win_n < NBD_SLICE_WINDOW)
        return;
    span = gate.win_span;
    waited = gate.win_waited;
    gate.win_span = gate.win_waited = gate.win_n = 0;
    if (busy || waited * 100 > span * NBD_SLICE_ON_PCT) {
        gate.busy_ns = now;
        gate.quiet = 0;
        slice_set(true);
    } else if (waited * 100 < span * NBD_SLICE_OFF_PCT && ++gate.quiet >= NBD_SLICE_OFF_WINDOWS) {
        gate.busy_ns = 0;
        slice_set(false);
    }
}

static void batch_slice(bool on)
{
    if (on ? batching_conns++ : --batching_conns)
        return; /* not the first to start, or not the last to stop */
    if (!on) {
        slice_set(false);
        if (gate.fd >= 0)
            close(gate.fd);
        gate.fd = gate.fd == -2 ? -2 : -1;
        return;
    }
    /* /proc/thread-self: this thread's, whichever reads the fd later */
    if (gate.fd == -1 && (gate.fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC)) < 0)
        gate.fd = -2;
    uint64_t now = vbd_clock_ns();
    if (gate.busy_ns && now - gate.busy_ns < NBD_SLICE_KEEP_NS)
        slice_set(true);
    slice_gate();
}

/* Back to the busy-poll. A client seen keeping more than twice a small
 * batch on the way tries batching again soon: what ends batching with
 * such a client is a pause (its CPU taken on a shared host: fio 4K QD32
 * at load 3-9, 6-40 ends per 2-3 s run), and waiting for the next 1024
 * requests that came with three in flight sent 3-18k requests through the
 * busy-poll after each (72-79 % of all over TCP; after this change 6-38 %).
 * A new try still needs three requests in flight, so a client that
 * became shallow does not batch again. */
static void batch_stop(struct nbd_conn *c)
{
    if (c->batching)
        batch_slice(false);
    c->batching = false;
    c->batch_empty = 0;
    c->batch_probe = c->batch_reqs > NBD_BATCH_REQS ? NBD_BATCH_PROBE_DEEP : NBD_BATCH_PROBE;
    /* Only a client seen deep (a read of more than twice a small batch,
     * which a QD8 client never brings) resumes on any request: in this
     * session, or in the last window of NBD_BATCH_WINDOW batch reads. A
     * session of a few reads between two pauses often saw no such read,
     * and then up to NBD_BATCH_PROBE requests went through the busy-poll,
     * which answers each at once, so that three were rarely in flight to
     * count: fio 4K randread QD32 over TCP at load 15-19 read 50-66 % of
     * its requests in batches in some runs (1.8-3.6 poll(2) and 15-19 us
     * of server CPU per request, against 0.02-0.2 and 9-10 us at 93-100 %;
     * RESULTS.md, nbd20). A client that became shallow is forgotten
     * within a window; until then its sessions end after a few empty
     * sleeps, as before. */
    c->batch_resume = c->batch_sess_max > 2 * NBD_BATCH_REQS + 1 || c->batch_depth > 2 * NBD_BATCH_REQS + 1;
}

/* The batch size follows the client's depth: a read after a sleep brings
 * at most the requests the client had on the way, and the most one read
 * brought (counted as parsed: a read's bytes over batch_unit would take a
 * 4K write for 147 reads in a mixed stream) over the last
 * NBD_BATCH_WINDOW reads (a lower bound on that
 * depth, which the server cannot see otherwise: the rest of it are
 * replies the client has not read yet) sizes the batch at half of it,
 * NBD_BATCH_REQS..NBD_BATCH_REQS_MAX. A client with half its requests in
 * a batch still has the other half's replies to work on while the server
 * waits for the batch; with all of them it idles. Batches of 8 cut the
 * server's CPU per request 20 % with fio at 4K QD32 over TCP but cost
 * QD8 clients 12-19 % of their IOPS (round 7): those never bring more
 * than 8 in one read and keep batches of 4. */
static void batch_target(struct nbd_conn *c, uint32_t got)
{
    if (got > c->batch_win)
        c->batch_win = got;
    if (got > c->batch_sess_max)
        c->batch_sess_max = got;
    if (++c->batch_reads >= NBD_BATCH_WINDOW) {
        c->batch_depth = c->batch_win; /* a client that became shallower is followed within a window */
        c->batch_win = 0;
        c->batch_reads = 0;
    }
    uint32_t depth = c->batch_depth > c->batch_win ? c->batch_depth : c->batch_win, b = depth / 2;
    c->batch_reqs = b < NBD_BATCH_REQS ? NBD_BATCH_REQS : b > NBD_BATCH_REQS_MAX ? NBD_BATCH_REQS_MAX : b;
}

/* One batch: sleep, then read what came. The next sleep is sized for
 * c->batch_reqs requests from what this one brought; none when it brought
 * twice that (the server is the slower side: sleeping would only idle it;
 * vbd-bench over unix lost 8-12 % of its 4K read IOPS to those sleeps);
 * doubled when it brought nothing (a client pausing a few tens of us
 * between sends, as fio does at times, ended batching when it was halved);
 * NBD_BATCH_EMPTY of those in a row: the client stopped keeping requests on
 * the way, back to the busy-poll. */
static int batch_read(struct nbd_conn *c)
{
    slice_gate();
    if (c->batch_ns) {
        vbd_co_sleep_ns(c->batch_ns);
    } else {
        vbd_co_wake(vbd_co_self()); /* the requests just read run (and reply) first */
        vbd_co_yield();
    }
    batch_target(c, c->batch_got); /* what the last read brought */
    c->batch_got = 0;
    ssize_t r = recv(c->ch.fd, c->rbuf + c->rlen, NBD_RBUF - c->rlen, MSG_DONTWAIT);
    if (r == 0)
        return -ECONNRESET;
    uint64_t cur = c->batch_ns ? c->batch_ns : NBD_BATCH_MIN_NS, next;
    /* a batch of more requests needs a longer sleep from the same client */
    uint64_t max_ns = NBD_BATCH_MAX_NS * c->batch_reqs / NBD_BATCH_REQS;
    if (r > 0) {
        c->rlen += (size_t)r;
        uint64_t got = (uint64_t)r / c->batch_unit;
        /* The longest sleep brought one request: the client no longer keeps
         * several on the way (a queue drained to one at a time). Counted as
         * an empty sleep, or every request would wait out the sleep. */
        if (got < 2 && cur >= NBD_BATCH_MAX_NS) {
            if (++c->batch_empty >= NBD_BATCH_EMPTY)
                batch_stop(c);
            return 0;
        }
        c->batch_empty = 0;
        if (got >= 2 * c->batch_reqs) {
            c->batch_ns = 0; /* the client is ahead of us: read again without sleeping */
            return 0;
        }
        next = (cur + cur * c->batch_reqs / (got ? got : 1)) / 2;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (++c->batch_empty >= NBD_BATCH_EMPTY) {
            batch_stop(c);
            return 0;
        }
        next = c->batch_ns ? c->batch_ns * 2 : NBD_BATCH_MIN_NS;
        max_ns = NBD_BATCH_MAX_NS; /* a client that paused waits no longer than before */
    } else {
        return errno == EINTR ? 0 : -errno;
    }
    if (next < NBD_BATCH_MIN_NS)
        next = NBD_BATCH_MIN_NS;
    if (next > max_ns)
        next = max_ns;
    c->batch_ns = next;
    return 0;
}

/* A request was read (c->inflight counts it): try batching again
 * after NBD_BATCH_PROBE small requests that came while two others were in
 * flight (a client with one or two requests on the way would only wait
 * out the sleeps). Large transfers stop it: their data is the work, and
 * holding requests back until a batch is queued starved the pipeline
 * (TCP 1M reads QD8: 7-12 % fewer IOPS).
 *
 * A deep client that paused (batch_resume) goes back to batching after
 * NBD_BATCH_PROBE_DEEP requests whatever is in flight: the busy-poll
 * answers each request at once, so the server sees one or two in flight
 * while the client's other 30 are replies it has not read yet, and
 * counting only requests with three in flight took 400-2600 requests per
 * pause (fio 4K QD32 over TCP at load 5: 28-63 pauses in 3 s, 9-37 % of
 * all requests through the busy-poll). Those cost fio, the bound of these
 * rows, more than batches do: 14.1-14.8 us of its CPU per request against
 * a server that never batches, 9.5-11.7 with batches of 8. */
static void batch_count(struct nbd_conn *c, const struct nbd_req *r)
{
    if (!c->rbuf)
        return; /* TLS: the session reads ahead itself */
    if (r->len >= NBD_RBUF / 2 && (r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE)) {
        if (c->batching)
            batch_stop(c);
        return;
    }
    c->batch_got++;
    if (c->batching || (c->inflight < 3 && !c->batch_resume) || --c->batch_probe)
        return;
    c->batch_got = 0; /* those read before batching are no batch */
    c->batch_sess_max = 0;
    c->batch_unit = 28 + (r->type == NBD_CMD_WRITE ? r->len : 0);
    c->batch_empty = 0;
    c->batching = true;
    batch_slice(true);
}

/* conn_recv's busy-poll before a wait for request bytes (see NBD_POLL_NS):
 * when it began (0: not yet for this request; non-zero also when the wait
 * came at once: the client made us wait), when it ends (0: no window
 * open), the loop's bound it was opened under, and whether the wait that
 * follows resizes the connection's window. */
struct recv_spin {
    uint64_t start, until, bound;
    bool adapt;
};

/* Opens a spin window: the loop's bound now (qom-set poll-max-ns on its
 * iothread applies from the next wait on) clamps the connection's window.
 * Large transfers in flight use other threads (and are few): no spinning
 * against them, and their waits say nothing of how soon the client
 * answers. True: spin until s->until; false: no window, the caller waits
 * at once (the clock is read only for a window that can grow back,
 * poll-max-ns > 0). */
static bool spin_begin(struct nbd_conn *c, struct recv_spin *s)
{
    s->bound = vbd_loop_poll_max_ns(vbd_loop_current());
    if (c->poll_ns > s->bound)
        c->poll_ns = s->bound;
    s->adapt = c->inflight_bytes < NBD_POLL_MAX_INFLIGHT;
    if (s->adapt && c->poll_ns) {
        s->start = vbd_clock_ns();
        s->until = s->start + c->poll_ns;
        return true;
    }
    s->adapt = s->adapt && s->bound;
    s->start = s->adapt ? vbd_clock_ns() : 1;
    return false;
}

/* The busy-poll ran out (or was off): wait for request bytes, then size
 * the next window from when they came, counted from the spin's start,
 * against its bound, the loop's poll-max-ns (see NBD_POLL_NS). With ~1 us
 * syscalls (a PVM guest, or bench/syscall-tax) fio's next request came
 * 45-55 us after the spin began (its own send/poll/recv cost that much
 * more), so a fixed 32 us window expired before 85-95 % of requests and
 * the server paid the spin and the wake-up both: unix 4K randread QD1 fio
 * 14-19k IOPS at 42-48 us of server CPU per request against nbdkit's
 * 14-18k at 31-41 us. A bound of 128 us caught them: 20.6-22.0k (unix
 * and TCP) at about the same CPU per request. A client that pauses longer
 * than the bound shrinks the window to nothing, and the server sleeps at
 * once. */
static ssize_t recv_after_spin(struct nbd_conn *c, const struct recv_spin *s, bool idle)
{
    /* nothing of the next header has come: the wait may be cut short by a
     * node move (nbd_export_node_moved), -ECANCELED */
    struct vbd_poll_wait *w = idle && !c->rlen ? &c->idle_wait : NULL;
    ssize_t r = vbd_co_recv_wait(c->ch.fd, c->rbuf + c->rlen, NBD_RBUF - c->rlen, w);
    if (r <= 0 || !s->adapt)
        return r;
    uint64_t waited = vbd_clock_ns() - s->start;
    if (waited > s->bound)
        c->poll_ns = c->poll_ns >= 2 * NBD_POLL_GROW_NS ? c->poll_ns / 2 : 0;
    else if (c->poll_ns < NBD_POLL_GROW_NS)
        c->poll_ns = NBD_POLL_GROW_NS;
    else
        c->poll_ns = c->poll_ns < s->bound / 2 ? c->poll_ns * 2 : s->bound;
    if (c->poll_ns > s->bound)
        c->poll_ns = s->bound;
    return r;
}

/* A read's or a wait's result into the read-ahead buffer: its bytes kept;
 * none (the client closed) or an error end the connection. */
static int readahead_got(struct nbd_conn *c, ssize_t r)
{
    if (r < 0)
        return (int)r;
    if (r == 0)
        return -ECONNRESET;
    c->rlen += (size_t)r;
    return 0;
}

/* Request bytes: from the read-ahead buffer; large payloads straight into
 * place. TLS sessions keep their own read-ahead.
 *
 * The server reads requests in batches when the client keeps
 * several on the way: it sleeps a few tens of microseconds between reads
 * (a timer on its own CPU), and one recv(2) and one send of the replies
 * serve the batch. Without it the server, faster than a client with a
 * full queue, took each request as it arrived (one recv(2) and two to five
 * poll(2) spins per request: fio 4K randwrite QD32 10-13 us of server CPU
 * per request). Round 5 slept on the socket instead, with SO_RCVLOWAT at a
 * batch's bytes: then the client's send that completed a batch woke the
 * server, and fio (libnbd), the bound of these rows, spent 7.4 % of its
 * time in that wake-up (sock_def_readable; against nbdkit 1.5 %, against a
 * spinning server 0.8 %): a server that wakes on its own timer costs the
 * client no wake-up. Unix sockets batch the same way since round 6 (they
 * could not with SO_RCVLOWAT, which they ignore): fio 4K randread QD32
 * 170-183k IOPS at 5.2-5.5 us of server CPU per request instead of
 * 138-148k at 6.6-7.0 us in one A/B, +28 % and -5 % in another (noisy
 * host); fio and vbd-bench 4K randwrite QD32 +17-30 %. */
static int conn_recv(struct nbd_conn *c, void *dst, size_t len, bool header)
{
    if (!len)
        return 0;
    if (c->ch.tls || !c->rbuf) {
        if (!header)
            return vbd_chan_recv_full(&c->ch, dst, len);
        if (vbd_poll_wait_cancelled(&c->idle_wait))
            return -ECANCELED; /* kicked while it waited at the gate: follow first */
        return vbd_chan_recv_full_idle(&c->ch, dst, len, &c->idle_wait);
    }
    size_t take = vbd_readahead_take(dst, len, c->rbuf, &c->rpos, c->rlen);
    dst = (uint8_t *)dst + take;
    len -= take;
    if (!len)
        return 0;
    c->rpos = c->rlen = 0;
    if (len >= NBD_RBUF / 2) {
        if (c->batching)
            batch_stop(c);
        return vbd_co_recv_full(c->ch.fd, dst, len);
    }
    struct recv_spin spin = {0};
    bool idle = header && !take; /* no byte of this request read yet */
    /* Requests just read run first, and their replies leave, before the
     * socket is asked for more: a request runs on the loop's next pass,
     * the flusher that sends its reply on the one after. Reading first put
     * a failing recv(2) and a poll(2) between a QD1 client's request and
     * its reply (the client cannot have sent its next one yet). Only
     * before a header (a write's payload belongs to a request not yet
     * running), and only for a client that made us wait for the last
     * request (a QD1 client): one that keeps requests on the way is read
     * at once, as before (fio 4K QD32 lost IOPS in 10 of 15 pairs when
     * every header waited for the replies). */
    int settle = header && c->inflight == 1 && c->client_waited ? 2 : 0;
    while (c->rlen < len) {
        if (c->batching) {
            int rc = batch_read(c);
            if (rc < 0)
                return rc;
            continue;
        }
        if (settle) {
            settle--;
            vbd_co_wake(vbd_co_self());
            vbd_co_yield();
            continue;
        }
        /* Poll briefly before arming a wait: arming a poll on the socket costs
         * more than a few retries when the client sends its next request
         * right after our reply (QEMU's adaptive polling does the same).
         * While spinning, readiness is asked with poll(2), which reads the
         * socket's state without its lock: a failing recv(2) takes the lock
         * the client's packets are delivered under (on TCP from the
         * client's CPU), and the spins slowed the client's sends. */
        if (spin.until) {
            struct pollfd p = {.fd = c->ch.fd, .events = POLLIN};
            if (poll(&p, 1, 0) == 0) {
                if (vbd_clock_ns() < spin.until) {
                    vbd_co_wake(vbd_co_self()); /* let the replies and other requests run first */
                    vbd_co_yield();
                    continue;
                }
                int rc = readahead_got(c, recv_after_spin(c, &spin, idle));
                if (rc < 0)
                    return rc;
                spin.until = 0;
                continue;
            }
        }
        /* A client that made us wait for its last request (QD1) has not
         * sent the next one yet when its reply has only just left: no
         * failing recv(2) first. With a spin window the spin starts at
         * once; with none the receive is the wait (one io_uring recv). */
        if (!spin.start && header && c->client_waited) {
            if (spin_begin(c, &spin))
                continue;
            int rc = readahead_got(c, recv_after_spin(c, &spin, idle));
            if (rc < 0)
                return rc;
            continue;
        }
        ssize_t r = recv(c->ch.fd, c->rbuf + c->rlen, NBD_RBUF - c->rlen, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!spin.until) {
                if (spin_begin(c, &spin)) {
                    vbd_co_wake(vbd_co_self());
                    vbd_co_yield();
                    continue;
                }
                /* no window: spent at once, so a wait that brings part of
                 * the request is followed by poll(2) and another wait,
                 * timed from this start */
                spin.until = spin.start;
            } else if (vbd_clock_ns() < spin.until) {
                vbd_co_wake(vbd_co_self());
                vbd_co_yield();
                continue;
            }
            r = recv_after_spin(c, &spin, idle);
        } else if (r < 0 && errno != EINTR) {
            r = -errno;
        } else if (r < 0) {
            continue;
        }
        int rc = readahead_got(c, r);
        if (rc < 0)
            return rc;
    }
    c->client_waited = spin.start != 0; /* non-zero: the client made us wait */
    memcpy(dst, c->rbuf, len);
    c->rpos = len;
    return 0;
}

static void simple_header(uint8_t h[16], const struct nbd_req *r, int err)
{
    put_be32p(h, NBD_SIMPLE_REPLY_MAGIC);
    put_be32p(h + 4, err ? errno_to_nbd(err) : 0);
    put_be64p(h + 8, r->cookie);
}

/* A structured chunk's header; len: the payload's bytes after it. */
static void chunk_header(uint8_t h[20], const struct nbd_req *r, uint16_t flags, uint16_t type, uint32_t len)
{
    put_be32p(h, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16p(h + 4, flags);
    put_be16p(h + 6, type);
    put_be64p(h + 8, r->cookie);
    put_be32p(h + 16, len);
}

static int send_simple(struct nbd_conn *c, struct nbd_req *r, int err, const void *data, uint32_t len)
{
    uint8_t h[16];
    simple_header(h, r, err);
    reply_small(r, h, 16, NULL, 0);
    if (data && !err)
        reply_ref(r, data, len);
    return reply_send(c, r);
}

/* Adds one structured chunk to r's reply: p1 (at most 12 bytes) is copied, p2 referenced. */
static void add_chunk(struct nbd_req *r, uint16_t flags, uint16_t type, const void *p1, uint32_t l1, const void *p2,
                      uint32_t l2)
{
    uint8_t h[20];
    chunk_header(h, r, flags, type, l1 + l2);
    reply_small(r, h, 20, p1, l1);
    reply_ref(r, p2, l2);
}

/* The connection's pipe for splice(2), made on its first zero-copy read and
 * sized for a whole 1 MiB reply; false (sendfile then) if it cannot be. */
static bool zc_pipe(struct nbd_conn *c)
{
    if (c->zc_pipe_size)
        return true;
    if (c->zc_pipe[0] < 0 || pipe2(c->zc_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        c->zc_pipe[0] = -1; /* do not try again on every read */
        return false;
    }
    int sz = fcntl(c->zc_pipe[1], F_SETPIPE_SZ, NBD_ZC_PIPE_SIZE);
    if (sz <= 0) /* over fs.pipe-max-size or the user's pipe quota: the default size */
        sz = fcntl(c->zc_pipe[1], F_GETPIPE_SZ);
    c->zc_pipe_size = sz > 0 ? (size_t)sz : 65536;
    return true;
}

/* sendfile(2) moves a reply through the task's internal pipe of 16 pages, so
 * a 1 MiB reply is 16 rounds of splice read + socket sendmsg; a pipe of
 * 1 MiB takes it in one of each (2 syscalls). TCP 1M seqread QD8 with
 * vbd-bench as the client, 3 alternating rounds: 3654/3716/3821 IOPS at
 * 242/235/229 us of server CPU per request vs 2666/2574/2650 at 355/373/358
 * with sendfile; with fio level (3270/3162/3431 vs 3334/3618/3501). Bytes
 * left in the pipe by an error go with the connection (send_err). EOF of
 * the file (cut shorter under us) returns with *left > 0: the caller pads. */
static int splice_through_pipe(struct nbd_conn *c, int fd, off_t *pos, size_t *left)
{
    size_t inpipe = 0;
    while (*left || inpipe) {
        if (*left && inpipe < c->zc_pipe_size) {
            size_t room = c->zc_pipe_size - inpipe, want = *left < room ? *left : room;
            ssize_t n = splice(fd, pos, c->zc_pipe[1], NULL, want, SPLICE_F_NONBLOCK);
            if (n > 0) {
                *left -= (size_t)n;
                inpipe += (size_t)n;
            } else if (n == 0 || (errno == EAGAIN && !inpipe)) {
                /* the file ended (the caller pads with zeroes), or it cannot
                 * be spliced without waiting: the caller's sendfile goes on */
                if (!inpipe)
                    return 0;
            } else if (errno != EAGAIN && errno != EINTR) {
                return -errno;
            }
        }
        if (!inpipe)
            continue;
        ssize_t n = splice(c->zc_pipe[0], NULL, c->ch.fd, NULL, inpipe, SPLICE_F_NONBLOCK | (*left ? SPLICE_F_MORE : 0));
        if (n > 0) {
            inpipe -= (size_t)n;
        } else if (n == 0) {
            return -EPIPE;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int ev = vbd_co_poll(c->ch.fd, POLLOUT);
            if (ev < 0)
                return ev;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* A read reply whose data goes from the page cache to the socket with
 * splice(2) through the connection's pipe (splice_through_pipe; sendfile(2)
 * without one): the server neither reads it into memory nor copies it out
 * again. Used over unix sockets and for TCP clients on other hosts
 * (server.c, zero_copy_ok): a loopback TCP client copies out of the
 * page-cache pages themselves, which cost fio twice what copying our fresh
 * socket buffers does (nbd24's RESULTS: 1M QD8 1.3-1.8x faster with the
 * copy at 1.1-1.3x the server CPU per request; nbdbig7's host of
 * 2026-12-04 had seen the opposite). Runs
 * inside vbd_backend_co_read_zero_copy, as a request of the backend, only
 * for mappings that cannot move under us (raw or file over a file in the
 * page cache).
 *
 * What the client gets: the socket holds references to the page-cache
 * pages, not copies (TCP and, since 6.5, unix sockets alike; checked with a
 * write after sendfile returned: the peer read the new bytes), until the
 * client's recv(2) copies them, or on a real network until the segments are
 * acked. A write landing in that window shows in the reply: one the client
 * sent before it had the whole reply, i.e. in flight with the read by the
 * protocol's rules (old or new allowed; the page cache gives no sector
 * atomicity between concurrent pread and pwrite either, see
 * tests/integration/nbd-read-race.py). A write sent after the client had
 * the reply cannot show: the bytes were copied by then.
 *
 * The header and data leave under the send lock, so no other reply lands in
 * between; a full socket makes the coroutine wait for POLLOUT (the loop
 * goes on); a reply cut short by an error poisons the connection (send_err:
 * it is dropped, never desynced); a file that ends early (truncated by
 * someone else) is padded with zeroes to the promised length. */
static int send_read_zero_copy(void *opaque, int fd, uint64_t foff)
{
    struct nbd_req *r = opaque;
    struct nbd_conn *c = r->c;
    uint8_t h[28];
    size_t hl;
    if (c->structured) {
        chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 8 + r->len);
        put_be64p(h + 20, r->offset);
        hl = 28;
    } else {
        simple_header(h, r, 0);
        hl = 16;
    }
    vbd_co_mutex_lock(&c->send_lock);
    int rc = c->send_err;
    /* MSG_MORE: the header waits for the data instead of leaving as a
     * segment of its own (TCP_NODELAY is on); the last piece sendfile
     * hands to the socket carries no MSG_MORE and pushes it all */
    struct iovec iov = {h, hl};
    if (!rc)
        rc = vbd_co_sendv_full(c->ch.fd, &iov, 1, MSG_MORE);
    off_t pos = (off_t)foff;
    size_t left = r->len;
    if (!rc && zc_pipe(c))
        rc = splice_through_pipe(c, fd, &pos, &left);
    while (!rc && left) {
        ssize_t w = sendfile(c->ch.fd, fd, &pos, left);
        if (w > 0) {
            left -= (size_t)w;
        } else if (w == 0) {
            /* the file ended under us (truncated): the promised length still goes out, as zeroes */
            static const uint8_t zeroes[4096];
            struct iovec z = {(void *)zeroes, left < sizeof(zeroes) ? left : sizeof(zeroes)};
            rc = vbd_co_sendv_full(c->ch.fd, &z, 1, 0);
            left -= z.iov_len;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int ev = vbd_co_poll(c->ch.fd, POLLOUT);
            rc = ev < 0 ? ev : 0;
        } else if (errno != EINTR) {
            rc = -errno;
        }
    }
    if (rc < 0 && !c->send_err)
        c->send_err = rc; /* a reply cut short: the stream is unusable */
    vbd_co_mutex_unlock(&c->send_lock);
    return rc;
}

static int send_error_reply(struct nbd_conn *c, struct nbd_req *r, int err)
{
    r->rn = r->nsmall = 0; /* whatever was being built is replaced */
    if (!c->structured)
        return send_simple(c, r, err, NULL, 0);
    uint8_t p[6];
    put_be32p(p, errno_to_nbd(err));
    put_be16p(p + 4, 0);
    add_chunk(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, p, 6, NULL, 0);
    return reply_send(c, r);
}

/* Success without data: a simple reply even when structured replies were
 * negotiated (the spec allows it for every command but reads; nbdkit and
 * QEMU do the same). libnbd reads every reply as a simple one first and
 * then the 4 bytes a chunk header has more: a chunk cost the client a
 * second recv(2) per write. */
static int send_ok(struct nbd_conn *c, struct nbd_req *r)
{
    return send_simple(c, r, 0, NULL, 0);
}

static int backend_read(struct nbd_export *e, uint64_t off, uint8_t *buf, uint32_t len)
{
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, len);
    int rc = vbd_backend_co_preadv(e->be, off, len, &q, 0);
    if (rc < 0)
        nbd_export_io_error(e, false, rc);
    return rc;
}

static int handle_read(struct nbd_conn *c, struct nbd_req *r)
{
    struct nbd_export *e = c->exp;
    if (!r->len && c->structured) {
        /* nothing to read: no content chunk, which carries at least one
         * byte (the spec: its length at least 9), only the final
         * NBD_REPLY_TYPE_NONE, as QEMU's nbd_co_send_structured_done. An
         * OFFSET_DATA chunk of length 8 went out, which a client (libnbd)
         * takes as a broken server and disconnects. */
        add_chunk(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0);
        return reply_send(c, r);
    }
    if (c->zero_copy_ok && !c->ch.tls && r->len >= NBD_ZERO_COPY_MIN) {
        int rc = vbd_backend_co_read_zero_copy(e->be, r->offset, r->len, send_read_zero_copy, r);
        if (rc != -ENOTSUP)
            return rc;
    }
    if (!c->structured) {
        int rc = backend_read(e, r->offset, r->buf, r->len);
        return rc < 0 ? send_simple(c, r, -rc, NULL, 0) : send_simple(c, r, 0, r->buf, r->len);
    }
    /* Structured: holes are sent as hole chunks instead of zero bytes, in
     * reads large enough for that to pay (see NBD_SPARSE_READ_MIN). */
    struct { uint64_t off; uint32_t len; bool hole; } runs[16];
    int nruns = 0;
    uint64_t pos = r->offset, end = r->offset + r->len;
    bool dense = (r->flags & NBD_CMD_FLAG_DF) || r->len < NBD_SPARSE_READ_MIN;
    /* held past the drain gate: a job's end may drop the node otherwise */
    struct vbd_node *n = dense ? NULL : vbd_backend_co_node_get(e->be);
    while (pos < end && !dense) {
        uint64_t pnum;
        int st = vbd_node_co_block_status_above(n, NULL, true, pos, end - pos, &pnum, NULL, NULL, NULL);
        if (st < 0 || pnum == 0)
            break;
        bool hole = (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED);
        if (nruns && runs[nruns - 1].hole == hole) {
            runs[nruns - 1].len += (uint32_t)pnum;
        } else if (nruns == 16) {
            runs[15].len += (uint32_t)pnum;
            runs[15].hole = false; /* too fragmented: send the rest as data */
        } else {
            runs[nruns].off = pos;
            runs[nruns].len = (uint32_t)pnum;
            runs[nruns].hole = hole;
            nruns++;
        }
        pos += pnum;
    }
    if (n)
        vbd_backend_node_put(e->be);
    if (pos < end || nruns == 0) { /* DF, a small read, or status unavailable: one data chunk */
        nruns = 1;
        runs[0].off = r->offset;
        runs[0].len = r->len;
        runs[0].hole = false;
    }
    for (int i = 0; i < nruns; i++) {
        if (runs[i].hole)
            continue;
        int rc = backend_read(e, runs[i].off, r->buf + (runs[i].off - r->offset), runs[i].len);
        if (rc < 0)
            return send_error_reply(c, r, -rc);
    }
    for (int i = 0; i < nruns; i++) {
        uint16_t flags = i == nruns - 1 ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t p[12];
        put_be64p(p, runs[i].off);
        if (runs[i].hole) {
            put_be32p(p + 8, runs[i].len);
            add_chunk(r, flags, NBD_REPLY_TYPE_OFFSET_HOLE, p, 12, NULL, 0);
        } else {
            add_chunk(r, flags, NBD_REPLY_TYPE_OFFSET_DATA, p, 8, r->buf + (runs[i].off - r->offset), runs[i].len);
        }
    }
    return reply_send(c, r);
}

/* One context's extents over r's range into ext (its id, then length/flags
 * pairs); the payload's length, or -errno. */
static int status_extents_of(struct nbd_conn *c, struct vbd_node *n, struct nbd_req *r, uint32_t id, uint8_t *ext)
{
    const char *bitmap = id >= META_BITMAP ? c->exp->bitmaps[id - META_BITMAP] : NULL;
    uint32_t maxext = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_MAX_EXTENTS;
    uint32_t next = 0;
    uint64_t pos = r->offset, end = r->offset + r->len;
    /* past the last extent that fits, runs with its flags still extend it
     * (QEMU's nbd_extent_array_add): REQ_ONE's extent is the whole run */
    while (pos < end) {
        uint64_t pnum;
        int depth = 0;
        int st = bitmap ? nbd_export_bitmap_status(c->exp, id - META_BITMAP, pos, end - pos, &pnum)
                        : vbd_node_co_block_status_above(n, NULL, true, pos, end - pos, &pnum, NULL, NULL, &depth);
        if (st < 0)
            return st;
        if (pnum == 0)
            break;
        uint32_t flags;
        if (bitmap)
            flags = st ? 1 : 0; /* NBD_STATE_DIRTY */
        else if (id == META_ALLOCATION)
            flags = ((st & VBD_BS_DATA) ? 0 : NBD_STATE_HOLE) | ((st & VBD_BS_ZERO) ? NBD_STATE_ZERO : 0);
        else
            flags = (st & VBD_BS_ALLOCATED) ? (uint32_t)depth + 1 : 0;
        if (next && get_be32p(ext + 4 + 8 * (next - 1) + 4) == flags)
            put_be32p(ext + 4 + 8 * (next - 1), get_be32p(ext + 4 + 8 * (next - 1)) + (uint32_t)pnum);
        else if (next == maxext)
            break;
        else {
            put_be32p(ext + 4 + 8 * next, (uint32_t)pnum);
            put_be32p(ext + 4 + 8 * next + 4, flags);
            next++;
        }
        pos += pnum;
    }
    put_be32p(ext, id);
    return (int)(4 + 8 * next);
}

static int status_extents(struct nbd_conn *c, struct nbd_req *r, uint32_t id, uint8_t *ext)
{
    /* held past the drain gate: a job's end may drop the node otherwise */
    struct vbd_node *n = vbd_backend_co_node_get(c->exp->be);
    int rc = status_extents_of(c, n, r, id, ext);
    vbd_backend_node_put(c->exp->be);
    return rc;
}

/* One chunk per selected context, in the order they were listed (QEMU's):
 * base:allocation, qemu:allocation-depth, the bitmaps. They go out
 * NBD_STATUS_BATCH at a time; the last carries the DONE flag. An error
 * after some went out ends the reply with an error chunk. */
static int handle_block_status(struct nbd_conn *c, struct nbd_req *r)
{
    if (!c->structured || !c->meta_count)
        return send_error_reply(c, r, EINVAL);
    size_t per_ctx = 4 + 8 * NBD_MAX_EXTENTS;
    if (!r->ext && !(r->ext = malloc(NBD_STATUS_BATCH * per_ctx)))
        return send_error_reply(c, r, ENOMEM);
    uint32_t total = c->meta_count, done = 0, nbitmaps = c->exp->nbitmaps, batch = 0;
    for (uint32_t id = META_ALLOCATION; id < META_BITMAP + nbitmaps; id++) {
        bool on = id == META_ALLOCATION ? c->meta_alloc : id == META_DEPTH ? c->meta_depth
                                                                           : c->meta_bitmaps[id - META_BITMAP];
        if (!on)
            continue;
        uint8_t *ext = r->ext + batch * per_ctx;
        int len = status_extents(c, r, id, ext);
        if (len < 0)
            return send_error_reply(c, r, -len);
        done++;
        add_chunk(r, done == total ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, NULL, 0, ext, (uint32_t)len);
        if (++batch == NBD_STATUS_BATCH || done == total) {
            int rc = reply_send(c, r);
            if (rc < 0 || done == total)
                return rc;
            batch = 0;
        }
    }
    return send_error_reply(c, r, EIO); /* not reached: meta_count counts the contexts selected */
}

static void request_done(struct nbd_conn *c, struct nbd_req *r)
{
    if (r->counted)
        c->inflight_bytes -= r->len;
    r->counted = false;
    if (c->buf_bytes > NBD_MAX_KEPT_BYTES && r->cap > 65536) {
        c->buf_bytes -= r->cap;
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    r->next = c->free_slots;
    c->free_slots = r;
    c->inflight--;
    vbd_co_queue_wake_one(&c->slot_q);
    if (!c->inflight)
        vbd_co_queue_wake_all(&c->drain_q);
}

static void request_co(void *opaque)
{
    struct nbd_req *r = opaque;
    struct nbd_conn *c = r->c;
    struct nbd_export *e = c->exp;
    int rc = 0;
    /* checked before the backend only to answer with the spec's error
     * (EINVAL, ENOSPC for writes and write zeroes; a trim past the end is
     * EINVAL, as qemu-nbd and nbdkit answer): the rule is the library's own */
    bool bad_range = vbd_request_check(vbd_backend_size(e->be), r->offset, r->len) < 0;
    switch (r->type) {
    case NBD_CMD_READ:
        rc = bad_range ? send_error_reply(c, r, EINVAL) : handle_read(c, r);
        break;
    case NBD_CMD_WRITE: {
        if (!e->writable) {
            rc = send_error_reply(c, r, EPERM);
            break;
        }
        if (bad_range) {
            rc = send_error_reply(c, r, ENOSPC);
            break;
        }
        struct iovec one;
        struct vbd_qiov q;
        vbd_qiov_init_buf(&q, &one, r->buf, r->len);
        int err = vbd_backend_co_pwritev(e->be, r->offset, r->len, &q, (r->flags & NBD_CMD_FLAG_FUA) ? VBD_REQ_FUA : 0);
        if (err < 0)
            nbd_export_io_error(e, true, err);
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_FLUSH: {
        int err = vbd_backend_co_flush(e->be);
        if (err < 0)
            nbd_export_io_error(e, true, err);
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES: {
        if (!e->writable) {
            rc = send_error_reply(c, r, EPERM);
            break;
        }
        if (bad_range) {
            rc = send_error_reply(c, r, r->type == NBD_CMD_TRIM ? EINVAL : ENOSPC);
            break;
        }
        int err;
        if (r->type == NBD_CMD_TRIM) {
            err = vbd_backend_co_pdiscard(e->be, r->offset, r->len);
            if (err == 0 && (r->flags & NBD_CMD_FLAG_FUA))
                err = vbd_backend_co_flush(e->be);
        } else {
            unsigned f = (r->flags & NBD_CMD_FLAG_NO_HOLE) ? 0 : VBD_REQ_MAY_UNMAP;
            if (r->flags & NBD_CMD_FLAG_FUA)
                f |= VBD_REQ_FUA;
            if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
                f |= VBD_REQ_NO_FALLBACK;
            err = vbd_backend_co_pwrite_zeroes(e->be, r->offset, r->len, f);
        }
        if (err < 0 && err != -ENOTSUP)
            nbd_export_io_error(e, true, err);
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_CACHE:
        rc = bad_range ? send_error_reply(c, r, EINVAL) : send_ok(c, r); /* the host page cache does this */
        break;
    case NBD_CMD_BLOCK_STATUS:
        rc = bad_range || !r->len ? send_error_reply(c, r, EINVAL) : handle_block_status(c, r);
        break;
    default:
        rc = send_error_reply(c, r, EINVAL);
    }
    if (rc < 0 && !c->closing) {
        c->closing = true;
        vbd_chan_shutdown(&c->ch, SHUT_RDWR);
    }
    request_done(c, r);
}

/* The NBD spec: with NBD_FLAG_SEND_FUA advertised (always, as QEMU) a
 * server MUST accept FUA on every command, ignoring it where nothing is
 * written (libnbd and the kernel client have set it on flushes); DF only
 * with structured replies, where it is advertised (qemu-nbd: EINVAL). */
static bool flags_valid(const struct nbd_conn *c, uint16_t type, uint16_t flags)
{
    static const uint16_t allowed[] = {
        [NBD_CMD_READ] = NBD_CMD_FLAG_DF,
        [NBD_CMD_WRITE] = 0,
        [NBD_CMD_DISC] = 0,
        [NBD_CMD_FLUSH] = 0,
        [NBD_CMD_TRIM] = 0,
        [NBD_CMD_CACHE] = 0,
        [NBD_CMD_WRITE_ZEROES] = NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        [NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_REQ_ONE,
    };
    if (type > NBD_CMD_BLOCK_STATUS)
        return true; /* unknown commands get EINVAL in request_co */
    uint16_t ok = allowed[type] | NBD_CMD_FLAG_FUA;
    if (!c->structured)
        ok &= ~NBD_CMD_FLAG_DF;
    return !(flags & ~ok);
}

static void flusher_start(struct nbd_conn *c)
{
    c->flush_stop = false;
    c->flusher_running = true;
    vbd_co_wake(vbd_co_create(flusher_co, c));
}

/* Waits until the flusher has sent what was queued and ended. */
static void flusher_stop(struct nbd_conn *c)
{
    c->flush_stop = true;
    vbd_co_queue_wake_all(&c->flush_q);
    while (c->flusher_running)
        vbd_co_queue_wait(&c->flusher_exit_q);
}

/* The home loop of the export's node now: past the backend's gate, as a
 * job's end may swap the root and drop the old one. */
static struct vbd_loop *node_loop(struct nbd_conn *c)
{
    struct vbd_loop *l = vbd_node_home_loop(vbd_backend_co_node_get(c->exp->be));
    vbd_backend_node_put(c->exp->be);
    return l;
}

/* The connections whose transmission runs on this thread (its loop): a
 * node move reaches the idle ones here (nbd_export_node_moved). Linked
 * on arrival, unlinked before leaving: only this thread touches it.
 * noinline: a coroutine that moved between threads must not reuse a
 * thread-local's address computed on the old one. */
static _Thread_local struct nbd_conn *served_here;

static __attribute__((noinline)) void served_link(struct nbd_conn *c)
{
    c->served_next = served_here;
    served_here = c;
}

static __attribute__((noinline)) void served_unlink(struct nbd_conn *c)
{
    for (struct nbd_conn **pp = &served_here; *pp; pp = &(*pp)->served_next)
        if (*pp == c) {
            *pp = c->served_next;
            return;
        }
}

/* Main loop: serve_loop becomes `to` (an iothread is held while the
 * connection runs there: object-del refuses it, its loop must outlive our
 * coroutines and socket waits). settled: where the node lives now (not a
 * loop it left while the connection was on its way), or as close as it
 * gets; a mover waiting for it hears of it. */
static void serve_set(struct nbd_conn *c, struct vbd_loop *to, bool settled)
{
    if (c->serve_loop != c->ctl_loop)
        vbd_iothread_release(c->serve_loop);
    c->serve_loop = to;
    if (settled)
        c->homed_gen = c->kick_gen;
    vbd_co_queue_wake_all(&srv.rehome_q);
}

/* From the main loop: the connection's coroutine goes to serve on `to`;
 * false if that is no iothread any more (it serves from the main loop). */
static bool serve_on(struct nbd_conn *c, struct vbd_loop *to)
{
    const char *id = vbd_iothread_id(to);
    struct vbd_loop *held = id ? vbd_iothread_acquire(id) : NULL;
    bool gone = id && held != to;
    if (gone)
        to = c->ctl_loop; /* not an iothread any more: serve from the main loop */
    serve_set(c, to, gone || to == vbd_node_home_loop(vbd_backend_node(c->exp->be)));
    vbd_co_move_to(to);
    served_link(c);
    return !gone;
}

/* The export's node moved to another loop (x-blockdev-set-iothread, an
 * export that took it to its iothread, a block-export-add iothread=): the
 * connection follows it between two requests, so that its requests run
 * where the node lives instead of hopping there and back (they hop
 * meanwhile: the backend and io.c take every request to the node's home
 * loop, whatever loop it comes from). The queues, the slots and the send
 * lock are one loop's (coroutine.h): the requests in flight finish and
 * the flusher ends before the coroutine leaves; it passes the main loop,
 * which counts the iothreads' users, and starts the flusher again on the
 * new loop. The batch slice is the old thread's: it is given back.
 * False: the node's loop is no iothread any more (serve_on). */
static bool follow_node(struct nbd_conn *c)
{
    if (c->batching)
        batch_stop(c);
    while (c->inflight)
        vbd_co_queue_wait(&c->drain_q);
    flusher_stop(c);
    served_unlink(c);
    vbd_co_move_to(c->ctl_loop);
    bool there = serve_on(c, node_loop(c));
    flusher_start(c);
    return there;
}

/* On loop (the mover's coroutine hopped there): every connection served
 * here looks at its node's loop before its next header, and one waiting
 * idle for a header stops waiting to do so now. */
static __attribute__((noinline)) void kick_served_here(void)
{
    for (struct nbd_conn *c = served_here; c; c = c->served_next) {
        vbd_co_poll_wait_cancel(&c->idle_wait); /* latched: seen before the next header */
    }
}

/* Kicked by this move (gen), it has not settled since, and it serves
 * elsewhere than `to`: still to follow. */
static bool conn_following(const struct nbd_conn *c, const struct nbd_export *e, const struct vbd_loop *to,
                           uint64_t gen)
{
    return c->exp == e && c->serve_loop && !c->closing && c->kick_gen == gen && c->homed_gen != gen &&
           c->serve_loop != to;
}

static void move_wait_over(void *arg)
{
    *(bool *)arg = true;
    vbd_co_queue_wake_all(&srv.rehome_q);
}

/* The mover (x-blockdev-set-iothread, an export's move) returns after its
 * clients moved, as qsd's does (its drained section moves every client of
 * the node's AioContext at once): an idle connection would otherwise hold
 * the old iothread until its client's next request, and object-del of it
 * right after the move was refused ("in use by 1 export"). The mover goes
 * to each loop that serves some of e's connections and kicks them there
 * (served_here: only that thread walks its list), then waits on the main
 * loop, where each connection settles (serve_set). A connection busy with
 * a request that does not end (a client that reads no replies) is not
 * waited for past NBD_MOVE_WAIT_NS: it follows after that request. */
void nbd_export_node_moved(struct nbd_export *e)
{
    assert(vbd_thread_is_main() && vbd_in_co());
    struct vbd_loop *main_loop = vbd_loop_current();
    struct vbd_loop *to = vbd_node_home_loop(vbd_backend_node(e->be));
    uint64_t gen = ++srv.kick_gen;
    struct vbd_loop **loops = NULL; /* where they serve: the node's old loop, the main loop */
    int nloops = 0;
    for (struct nbd_conn *c = srv.conns; c; c = c->next) {
        if (c->exp != e || !c->serve_loop || c->closing || c->serve_loop == to)
            continue;
        c->kick_gen = gen;
        int i = 0;
        while (i < nloops && loops[i] != c->serve_loop)
            i++;
        if (i == nloops) {
            loops = vbd_xrealloc(loops, sizeof(*loops) * (size_t)(nloops + 1));
            loops[nloops++] = c->serve_loop;
        }
    }
    for (int i = 0; i < nloops; i++) {
        /* held while we are there (the connections there may leave meanwhile) */
        const char *id = vbd_iothread_id(loops[i]);
        struct vbd_loop *held = id ? vbd_iothread_acquire(id) : NULL;
        if (id && held != loops[i])
            continue;
        vbd_co_move_to(loops[i]);
        kick_served_here();
        vbd_co_move_to(main_loop);
        if (held)
            vbd_iothread_release(held);
    }
    free(loops);
    bool over = false;
    struct vbd_timer limit = {.fn = move_wait_over, .arg = &over};
    vbd_timer_arm(&limit, vbd_clock_ns() + NBD_MOVE_WAIT_NS);
    for (;;) {
        bool waiting = false;
        for (struct nbd_conn *c = srv.conns; c && !waiting; c = c->next)
            waiting = conn_following(c, e, to, gen);
        if (!waiting || over)
            break;
        vbd_co_queue_wait(&srv.rehome_q);
    }
    vbd_timer_cancel(&limit);
}

void nbd_transmission(struct nbd_conn *c)
{
    for (int i = 0; i < NBD_SLOTS; i++) {
        c->slots[i].c = c;
        c->slots[i].next = c->free_slots;
        c->free_slots = &c->slots[i];
    }
    c->out = malloc(sizeof(struct iovec) * NBD_OUT_IOV);
    c->out_spare = malloc(sizeof(struct iovec) * NBD_OUT_IOV);
    c->rbuf = c->ch.tls ? NULL : malloc(NBD_RBUF);
    if (!c->out || !c->out_spare) {
        free(c->out);
        free(c->out_spare);
        free(c->rbuf);
        return;
    }
    c->batch_ns = NBD_BATCH_MIN_NS;
    c->poll_ns = NBD_POLL_NS;
    c->batch_reqs = NBD_BATCH_REQS;
    c->batch_probe = 64; /* the first requests show the sizes batches are made of */
    c->out_gen = 1;
    /* served where the node lives: its requests run there without a hop */
    c->ctl_loop = c->serve_loop = vbd_loop_current();
    serve_on(c, node_loop(c));
    flusher_start(c);
    while (!c->closing) {
        uint8_t h[28];
        /* between requests, when the next header is not read ahead
         * already (a look at the node's loop costs the gate's two atomics) */
        if (c->rpos == c->rlen || vbd_poll_wait_cancelled(&c->idle_wait)) {
            vbd_poll_wait_rearm(&c->idle_wait);
            /* looked at again on arrival: a move meanwhile may have found
             * the connection on its way, not yet where a kick reaches it */
            while (node_loop(c) != c->serve_loop && follow_node(c))
                ;
        }
        int rc = conn_recv(c, h, 28, true);
        if (rc == -ECANCELED)
            continue; /* kicked by a node move while idle (nbd_export_node_moved) */
        if (rc < 0)
            break;
        if (get_be32p(h) != NBD_REQUEST_MAGIC) {
            vbd_warn("nbd: bad request magic 0x%08x, closing the connection", get_be32p(h));
            break;
        }
        while (!c->free_slots)
            vbd_co_queue_wait(&c->slot_q);
        struct nbd_req *r = c->free_slots;
        c->free_slots = r->next;
        c->inflight++;
        r->flags = get_be16p(h + 4);
        r->type = get_be16p(h + 6);
        r->cookie = get_be64p(h + 8);
        r->offset = get_be64p(h + 16);
        r->len = get_be32p(h + 24);
        if (r->type == NBD_CMD_DISC) {
            request_done(c, r);
            break;
        }
        bool needs_buf = r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE;
        if (needs_buf && r->len > NBD_MAX_REQUEST) {
            if (r->type == NBD_CMD_WRITE) {
                /* its payload cannot be skipped safely: the spec lets us close */
                vbd_warn("nbd: write of %u bytes exceeds the maximum %u, closing", r->len, NBD_MAX_REQUEST);
                request_done(c, r);
                break;
            }
            send_error_reply(c, r, EINVAL);
            request_done(c, r);
            continue;
        }
        while (needs_buf && c->inflight_bytes && c->inflight_bytes + r->len > NBD_MAX_INFLIGHT_BYTES)
            vbd_co_queue_wait(&c->slot_q);
        if (needs_buf && r->cap < r->len) {
            free(r->buf);
            c->buf_bytes -= r->cap;
            r->cap = r->len < 65536 ? 65536 : r->len;
            r->buf = vbd_alloc_aligned(4096, r->cap);
            c->buf_bytes += r->cap;
        }
        if (r->type == NBD_CMD_WRITE && conn_recv(c, r->buf, r->len, false) < 0) {
            request_done(c, r);
            break;
        }
        batch_count(c, r);
        if (!flags_valid(c, r->type, r->flags)) {
            send_error_reply(c, r, EINVAL);
            request_done(c, r);
            continue;
        }
        /* run on the next iteration: requests read in one go are submitted together */
        r->counted = r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE;
        if (r->counted)
            c->inflight_bytes += r->len;
        vbd_co_wake(vbd_co_create(request_co, r));
    }
    c->closing = true;
    if (c->batching)
        batch_stop(c);
    while (c->inflight)
        vbd_co_queue_wait(&c->drain_q);
    flusher_stop(c);
    for (int i = 0; i < NBD_SLOTS; i++) {
        free(c->slots[i].buf);
        free(c->slots[i].ext);
    }
    free(c->out);
    free(c->out_spare);
    free(c->rbuf);
    /* the connection ends where it began: the server's lists are the main loop's */
    served_unlink(c);
    vbd_co_move_to(c->ctl_loop);
    serve_set(c, c->ctl_loop, true);
}
