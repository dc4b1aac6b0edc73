/* SPDX-License-Identifier: MIT */
/*
 * vbd-bench: a vhost-user-blk front end that drives a back end (vbd-daemon,
 * qemu-storage-daemon, ...) the way a VM would, without a VM: N queues of
 * depth D, random or sequential reads/writes, flushes, a verify mode, and
 * IOPS, bandwidth and latency percentiles. With --nbd it drives an NBD
 * server the same way (a connection per queue, through vbd's nbd client
 * driver), so one tool compares vhost-user and NBD back ends.
 */
#include "../vhost-client/vhost_client.h"

#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage_text[] =
    "Usage: vbd-bench --vhost-user SOCKET [options]\n"
    "       vbd-bench --nbd URI [options]\n"
    "Drive a vhost-user-blk back end like a VM would, or an NBD server, and measure it.\n"
    "\n"
    "  --vhost-user SOCKET  the back end's unix socket\n"
    "  --nbd URI            an NBD export: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH\n"
    "                       (one connection per queue, through vbd's nbd client)\n"
    "  -q, --queues N       virtqueues, or NBD connections (default 1)\n"
    "  -d, --depth N        requests in flight per queue (default 32, at most 340)\n"
    "  -b, --block-size N   bytes per request, multiple of 512 (default 4096; k/M suffixes)\n"
    "  -w, --workload W     read, write, randread, randwrite, randrw[:PERCENT_READ] (default randread)\n"
    "  -t, --time S         run for S seconds (default 5)\n"
    "  -n, --count N        stop after N requests instead\n"
    "  --size BYTES         use only the first BYTES of the disk (k/M/G suffixes)\n"
    "  --flush-every N      send a flush after every N writes (per queue)\n"
    "  --verify             write a pattern over the region, read it back and check every byte\n"
    "  --poll               busy-poll the used rings instead of waiting for interrupts\n"
    "  --segments N         vhost-user: each request's data in N descriptors of equal size, not one,\n"
    "                       apart in guest memory, as a Linux guest sends pages that are not\n"
    "                       contiguous (e.g. -b 64k --segments 16: sixteen 4 KiB segments; default 1)\n"
    "  --no-event-idx       do not negotiate VIRTIO_RING_F_EVENT_IDX: no interrupt suppression\n"
    "                       while draining, a kick per batch unless the back end sets NO_NOTIFY\n"
    "                       (vbd-bench's behaviour before 2026-12-04; default: as a Linux guest)\n"
    "  --mem MB             guest memory size (default: what the queues need, at least 64)\n"
    "  --json               print the result as JSON\n"
    "  -h, --help\n"
    "\n"
    "Exit status: 0 success, 1 I/O errors or verify mismatch, 2 bad usage or connection failure.\n";

enum op { OP_READ, OP_WRITE, OP_FLUSH };

struct slot {
    struct bench *b;
    int q;
    uint16_t head;
    struct virtio_blk_outhdr *hdr;
    uint8_t *status;
    uint8_t *buf;
    uint64_t off;
    enum op op;
    uint64_t start_ns;
    uint64_t waits_at_submit; /* b->waits when it went out */
    bool busy;
    int result; /* NBD: 0 or -errno */
};

struct bench {
    struct vhc c;
    const char *nbd_uri;
    struct vbd_node *nodes[VHC_MAX_QUEUES]; /* NBD: one connection per queue */
    uint64_t deadline;
    int running;
    bool broken; /* the back end broke the ring: nothing more can run on it */
    struct vbd_co *waiter;
    int queues, depth;
    uint32_t bs;
    int segs;            /* data descriptors per request (--segments) */
    uint32_t seg_stride; /* guest bytes from one segment's start to the next's: a page apart */
    bool rand, mixed, write_only, verify, poll, json, no_event_idx;
    int read_pct;
    double seconds;
    uint64_t count, size, flush_every;
    struct slot *slots;
    uint64_t issued, done, errors, bytes;
    uint64_t lost_wakeups; /* waits that timed out with completions in a ring */
    uint64_t seq_off;
    uint64_t writes_since_flush[VHC_MAX_QUEUES];
    uint64_t hist[512];
    /* per queue: which ring a tail comes from (the JSON's "per-queue") */
    uint64_t qhist[VHC_MAX_QUEUES][512];
    uint64_t qmax_ns[VHC_MAX_QUEUES];
    /*
     * Whose a tail is (vhost-user): a request that saw the client wait for
     * an interrupt was not done when the last such wait began (the client
     * drains the rings and looks again after enabling interrupts before it
     * waits), so its latency splits into the time before that wait (the
     * back end had not completed it: its order or its speed), the wait
     * (where it completed, or after; then the signal and the wake-up) and
     * the time after it (reaping, or the back end still at it while the
     * client was awake). Summed per latency bucket, so that a band of
     * percentiles can be split. A request that never saw the client wait
     * counts whole as "before".
     */
    uint64_t waits, wait_start_ns, wait_ns;
    uint64_t wait_hist[512];
    uint64_t lat_sum[VHC_MAX_QUEUES][512], before_sum[VHC_MAX_QUEUES][512], last_wait_sum[VHC_MAX_QUEUES][512];
    uint64_t rng;
    int phase; /* verify: 0 write, 1 read */
    uint64_t mismatches, first_bad;
    const char *workload;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(struct bench *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

/* log-linear histogram: 8 sub-buckets per power of two (~12% wide) */
static int bucket(uint64_t ns)
{
    if (ns < 16)
        return (int)ns;
    int e = 63 - __builtin_clzll(ns);
    return 16 + (e - 4) * 8 + (int)((ns >> (e - 3)) & 7);
}

static double bucket_mid_us(int idx)
{
    if (idx < 16)
        return idx / 1000.0;
    int e = (idx - 16) / 8 + 4, sub = (idx - 16) % 8;
    double lo = (double)((uint64_t)(8 + sub) << (e - 3)), hi = (double)((uint64_t)(9 + sub) << (e - 3));
    return (lo + hi) / 2 / 1000.0;
}

static double hist_percentile_us(const uint64_t *hist, double pct)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i < 512; i++)
        total += hist[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(total * pct / 100.0);
    if (want >= total)
        want = total - 1;
    for (int i = 0; i < 512; i++) {
        acc += hist[i];
        if (acc > want)
            return bucket_mid_us(i);
    }
    return 0;
}

/* The requests of queue q from its lo to its hi percentile's bucket (the
 * hi bucket left out unless it is lo's): their mean latency split into
 * before the client's last wait, the wait, and after it (us, out[3]). */
static void latency_split_us(const struct bench *b, int q, double lo, double hi, double *out)
{
    uint64_t total = 0, acc = 0, n = 0, lat = 0, before = 0, wait = 0;
    int from = -1, to = -1;
    for (int i = 0; i < 512; i++)
        total += b->qhist[q][i];
    for (int i = 0; i < 512; i++) {
        acc += b->qhist[q][i];
        if (from < 0 && acc > (uint64_t)(total * lo / 100.0))
            from = i;
        if (to < 0 && acc > (uint64_t)(total * hi / 100.0))
            to = i;
    }
    for (int i = from < 0 ? 512 : from; i < 512 && (i < to || i == from); i++) {
        n += b->qhist[q][i];
        lat += b->lat_sum[q][i];
        before += b->before_sum[q][i];
        wait += b->last_wait_sum[q][i];
    }
    n = n ? n : 1;
    out[0] = before / 1000.0 / n;
    out[1] = wait / 1000.0 / n;
    out[2] = lat > before + wait ? (lat - before - wait) / 1000.0 / n : 0;
}

static double percentile_us(const struct bench *b, double pct)
{
    return hist_percentile_us(b->hist, pct);
}

static void fill_pattern(uint8_t *buf, uint64_t off, uint32_t len)
{
    for (uint32_t i = 0; i < len; i += 8) {
        uint64_t v = (off + i) * 0x9E3779B97F4A7C15ull ^ 0x7662642d62656e63ull;
        memcpy(buf + i, &v, 8);
    }
}

static uint64_t check_pattern(const uint8_t *buf, uint64_t off, uint32_t len)
{
    for (uint32_t i = 0; i < len; i += 8) {
        uint64_t v = (off + i) * 0x9E3779B97F4A7C15ull ^ 0x7662642d62656e63ull, got;
        memcpy(&got, buf + i, 8);
        if (got != v)
            return off + i + 1;
    }
    return 0;
}

static bool more_work(struct bench *b)
{
    if (b->verify)
        return b->issued < b->size / b->bs;
    return b->count ? b->issued < b->count : true;
}

/* The next request of the workload for slot s: op and offset. */
static void pick(struct bench *b, struct slot *s)
{
    enum op op;
    uint64_t blocks = b->size / b->bs;
    if (b->flush_every && b->writes_since_flush[s->q] >= b->flush_every) {
        op = OP_FLUSH;
        b->writes_since_flush[s->q] = 0;
    } else {
        if (b->verify)
            op = b->phase == 0 ? OP_WRITE : OP_READ;
        else if (b->mixed)
            op = (int)(rnd(b) % 100) < b->read_pct ? OP_READ : OP_WRITE;
        else
            op = b->write_only ? OP_WRITE : OP_READ;
        if (b->rand && !b->verify)
            s->off = (rnd(b) % blocks) * b->bs;
        else {
            s->off = b->seq_off;
            b->seq_off += b->bs;
            if (b->seq_off + b->bs > b->size)
                b->seq_off = 0;
        }
        b->issued++;
        if (op == OP_WRITE)
            b->writes_since_flush[s->q]++;
    }
    s->op = op;
    if (op == OP_WRITE && b->verify)
        for (int k = 0; k < b->segs; k++)
            fill_pattern(s->buf + (size_t)k * b->seg_stride, s->off + (uint64_t)k * (b->bs / b->segs), b->bs / b->segs);
}

static void submit(struct bench *b, struct slot *s)
{
    pick(b, s);
    enum op op = s->op;
    s->hdr->type = op == OP_READ ? VIRTIO_BLK_T_IN : op == OP_WRITE ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_FLUSH;
    s->hdr->ioprio = 0;
    s->hdr->sector = s->off / 512;
    *s->status = 0xff;
    uint16_t h = s->head, st = (uint16_t)(h + 1 + b->segs); /* header, segments, status */
    vhc_set_desc(&b->c, s->q, h, vhc_gpa(&b->c, s->hdr), 16, VRING_DESC_F_NEXT, op == OP_FLUSH ? st : h + 1);
    if (op != OP_FLUSH) {
        uint32_t seg = b->bs / (uint32_t)b->segs;
        for (int k = 0; k < b->segs; k++)
            vhc_set_desc(&b->c, s->q, (uint16_t)(h + 1 + k), vhc_gpa(&b->c, s->buf + (size_t)k * b->seg_stride), seg,
                         VRING_DESC_F_NEXT | (op == OP_READ ? VRING_DESC_F_WRITE : 0), (uint16_t)(h + 2 + k));
    }
    vhc_set_desc(&b->c, s->q, st, vhc_gpa(&b->c, s->status), 1, VRING_DESC_F_WRITE, 0);
    s->busy = true;
    s->start_ns = now_ns();
    s->waits_at_submit = b->waits;
    vhc_offer(&b->c, s->q, h);
}

static void complete(struct bench *b, struct slot *s, uint64_t t)
{
    s->busy = false;
    uint64_t lat = t - s->start_ns;
    b->hist[bucket(lat)]++;
    b->qhist[s->q][bucket(lat)]++;
    bool waited = b->waits != s->waits_at_submit;
    b->lat_sum[s->q][bucket(lat)] += lat;
    b->before_sum[s->q][bucket(lat)] += waited ? b->wait_start_ns - s->start_ns : lat;
    b->last_wait_sum[s->q][bucket(lat)] += waited ? b->wait_ns : 0;
    if (lat > b->qmax_ns[s->q])
        b->qmax_ns[s->q] = lat;
    bool failed = b->nbd_uri ? s->result < 0 : *s->status != VIRTIO_BLK_S_OK;
    if (failed) {
        if (b->errors++ == 0) {
            const char *what = s->op == OP_READ ? "read" : s->op == OP_WRITE ? "write" : "flush";
            if (b->nbd_uri)
                fprintf(stderr, "vbd-bench: %s at offset %llu failed: %s\n", what, (unsigned long long)s->off,
                        strerror(-s->result));
            else
                fprintf(stderr, "vbd-bench: %s at offset %llu failed with status %u\n", what,
                        (unsigned long long)s->off, *s->status);
        }
        return;
    }
    if (s->op == OP_FLUSH)
        return;
    b->done++;
    b->bytes += b->bs;
    if (b->verify && s->op == OP_READ) {
        uint32_t seg = b->bs / (uint32_t)b->segs;
        for (int k = 0; k < b->segs; k++) {
            uint64_t bad = check_pattern(s->buf + (size_t)k * b->seg_stride, s->off + (uint64_t)k * seg, seg);
            if (bad && b->mismatches++ == 0)
                b->first_bad = bad - 1;
        }
    }
}

/* Runs until the work is done (or the time is up) and every slot is idle. */
enum { LOST_WAKEUP_MS = 30000, NO_ANSWER_S = 120 };

static void run_phase(struct bench *b, uint64_t deadline)
{
    int nslots = b->queues * b->depth;
    for (int q = 0; q < b->queues; q++) {
        for (int i = 0; i < b->depth && more_work(b); i++)
            submit(b, &b->slots[q * b->depth + i]);
        vhc_kick(&b->c, q);
    }
    /* With EVENT_IDX, as Linux's virtblk_done: interrupts off while a ring
     * is drained, on again before sleeping (vhc_enable_interrupt re-checks
     * the ring: a completion pushed while they were off is drained, not
     * waited for). Without, the ring asks for every signal (old mode). */
    bool irq_ctl = b->c.event_idx;
    for (;;) {
        int busy = 0;
        bool progress = false;
        uint64_t t = now_ns();
        bool stop = deadline && t >= deadline;
        for (int q = 0; q < b->queues; q++) {
            uint32_t id, len;
            bool resubmitted = false;
            int got;
            if (irq_ctl)
                vhc_disable_interrupt(&b->c, q);
            while ((got = vhc_used(&b->c, q, &id, &len)) != 0) {
                if (got < 0) {
                    fprintf(stderr, "vbd-bench: queue %d: the back end moved the used index past the ring's size\n", q);
                    for (int i = 0; i < nslots; i++)
                        b->errors += b->slots[i].busy;
                    b->broken = true;
                    return;
                }
                uint32_t per = (uint32_t)b->segs + 2; /* descriptors per slot */
                if (id % per || id / per >= (uint32_t)b->depth) {
                    fprintf(stderr, "vbd-bench: the back end returned a descriptor we never offered (%u)\n", id);
                    b->errors++;
                    continue;
                }
                struct slot *s = &b->slots[q * b->depth + id / per];
                if (!s->busy) {
                    fprintf(stderr, "vbd-bench: the back end completed request %u twice\n", id);
                    b->errors++;
                    continue;
                }
                complete(b, s, now_ns()); /* not t: a request resubmitted in this pass may already be done */
                progress = true;
                if (!stop && more_work(b)) {
                    submit(b, s);
                    resubmitted = true;
                }
            }
            if (resubmitted)
                vhc_kick(&b->c, q);
        }
        for (int i = 0; i < nslots; i++)
            busy += b->slots[i].busy;
        if (!busy)
            return;
        if (irq_ctl && !b->poll) {
            /* a guest halts once its handler has re-enabled interrupts and
             * found nothing; it does not look at the rings again first */
            bool pending = false;
            for (int q = 0; q < b->queues; q++)
                pending |= vhc_enable_interrupt(&b->c, q);
            if (pending)
                continue;
            progress = false;
        }
        if (progress || b->poll)
            continue;
        b->wait_start_ns = now_ns();
        int woke = vhc_wait(&b->c, 1000);
        b->wait_ns = now_ns() - b->wait_start_ns;
        b->waits++;
        b->wait_hist[bucket(b->wait_ns)]++;
        if (woke > 0)
            continue;
        /* A second without an interrupt. Completions in a ring that are
         * still not signalled LOST_WAKEUP_MS later are a lost wake-up (the
         * back end did not signal what we asked for, or our side of the
         * EVENT_IDX handshake is wrong), not a slow device: the back end
         * signals right after it publishes. Counted, and fails the run.
         * (The wait was 1 s: a back end preempted between its publish and
         * its signal waits longer than that on a loaded host, a nice 19
         * one behind busy nice 0 tasks for seconds; a signal never sent
         * leaves the ring waiting for good, which any bound catches.) */
        for (int q = 0; q < b->queues; q++)
            if (__atomic_load_n(&((struct vring_used *)b->c.q[q].used)->idx, __ATOMIC_ACQUIRE) != b->c.q[q].last_used) {
                if (vhc_wait(&b->c, LOST_WAKEUP_MS) == 0 && b->lost_wakeups++ == 0)
                    fprintf(stderr, "vbd-bench: queue %d: completions waited %d s for an interrupt that never came\n", q,
                            LOST_WAKEUP_MS / 1000);
                break;
            }
        /* requests still out this long after the run's time are lost (a
         * throttled back end takes its time with a full ring: 256 requests
         * at 50 IOPS are 5 s, more on a loaded host) */
        if (deadline && now_ns() > deadline + NO_ANSWER_S * 1000000000ull) {
            fprintf(stderr, "vbd-bench: %d requests got no answer for %d s, giving up\n", busy, NO_ANSWER_S);
            b->errors += (uint64_t)busy;
            return;
        }
    }
}

/* NBD: each slot is a coroutine that runs requests back to back on its
 * queue's connection; the connection pipelines the slots' requests. */
static void nbd_slot_co(void *arg)
{
    struct slot *s = arg;
    struct bench *b = s->b;
    struct vbd_node *n = b->nodes[s->q];
    while (more_work(b) && !(b->deadline && now_ns() >= b->deadline)) {
        pick(b, s);
        s->busy = true;
        s->start_ns = now_ns();
        if (s->op == OP_FLUSH) {
            s->result = vbd_node_co_flush(n);
        } else {
            struct iovec iov = {s->buf, b->bs};
            struct vbd_qiov qiov;
            vbd_qiov_init(&qiov, &iov, 1);
            s->result = s->op == OP_READ ? vbd_node_co_preadv(n, s->off, b->bs, &qiov, 0, 0)
                                         : vbd_node_co_pwritev(n, s->off, b->bs, &qiov, 0, 0);
        }
        complete(b, s, now_ns());
    }
    if (--b->running == 0 && b->waiter)
        vbd_co_wake(b->waiter);
}

static void nbd_run_phase(struct bench *b, uint64_t deadline)
{
    b->deadline = deadline;
    b->running = b->queues * b->depth;
    b->waiter = vbd_co_self();
    for (int i = 0; i < b->queues * b->depth; i++)
        vbd_co_wake(vbd_co_create(nbd_slot_co, &b->slots[i]));
    while (b->running)
        vbd_co_yield();
    b->waiter = NULL;
}

struct nbd_open_args {
    struct bench *b;
    bool writable;
    int rc;
    char err[512];
};

static void nbd_open_co(void *arg)
{
    struct nbd_open_args *a = arg;
    struct bench *b = a->b;
    for (int q = 0; q < b->queues; q++) {
        struct vbd_error *err = NULL;
        struct json_object *opts = json_object_new_object();
        json_object_object_add(opts, "driver", json_object_new_string("nbd"));
        b->nodes[q] = vbd_open(b->nbd_uri, opts, a->writable ? VBD_OPEN_RDWR : 0, &err);
        if (!b->nodes[q]) {
            snprintf(a->err, sizeof(a->err), "%s", err ? err->msg : "cannot connect");
            vbd_error_free(err);
            a->rc = -1;
            return;
        }
    }
}

static void nbd_close_co(void *arg)
{
    struct bench *b = arg;
    for (int q = 0; q < b->queues; q++)
        if (b->nodes[q])
            vbd_node_unref(b->nodes[q]);
}

static void nbd_bench_co(void *arg)
{
    struct bench *b = arg;
    uint64_t t0 = now_ns();
    if (b->verify) {
        b->phase = 0;
        nbd_run_phase(b, 0);
        b->phase = 1;
        b->issued = 0;
        b->seq_off = 0;
        nbd_run_phase(b, 0);
    } else {
        nbd_run_phase(b, b->count ? 0 : t0 + (uint64_t)(b->seconds * 1e9));
    }
}

static uint64_t parse_size(const char *s, bool *ok)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    uint64_t mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    }
    *ok = !errno && !*end && *s && s[0] != '-';
    return v * mul;
}

static void report(struct bench *b, double secs)
{
    double iops = b->done / secs, mbs = b->bytes / secs / 1e6;
    double p50 = percentile_us(b, 50), p99 = percentile_us(b, 99), p999 = percentile_us(b, 99.9);
    if (b->json)
        printf("{\"workload\": \"%s\", \"block-size\": %u, \"queues\": %d, \"depth\": %d, \"seconds\": %.3f, "
               "\"requests\": %llu, \"iops\": %.0f, \"mb-per-s\": %.1f, \"lat-us\": {\"p50\": %.1f, \"p99\": %.1f, "
               "\"p99.9\": %.1f}, \"errors\": %llu, \"verify-mismatches\": %llu, \"lost-wakeups\": %llu%s",
               b->verify ? "verify" : b->workload, b->bs, b->queues, b->depth, secs, (unsigned long long)b->done, iops, mbs,
               p50, p99, p999, (unsigned long long)b->errors, (unsigned long long)b->mismatches,
               (unsigned long long)b->lost_wakeups,
               b->nbd_uri ? "" : b->c.event_idx ? ", \"event-idx\": true" : ", \"event-idx\": false");
    if (b->json) {
        /* each queue's own latency: whether a tail is one ring's (starved) or both rings' */
        printf(", \"per-queue\": [");
        for (int q = 0; q < b->queues; q++) {
            uint64_t n = 0;
            for (int i = 0; i < 512; i++)
                n += b->qhist[q][i];
            printf("%s{\"requests\": %llu, \"p50\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f, \"max\": %.1f", q ? ", " : "",
                   (unsigned long long)n, hist_percentile_us(b->qhist[q], 50), hist_percentile_us(b->qhist[q], 99),
                   hist_percentile_us(b->qhist[q], 99.9), b->qmax_ns[q] / 1000.0);
            if (!b->nbd_uri) {
                /* [before the last wait, the wait, after] in us: the requests
                 * up to p50, and those from p99 to p99.9 (beyond it: stalls) */
                double all[3], tail[3];
                latency_split_us(b, q, 0, 50, all);
                latency_split_us(b, q, 99, 99.9, tail);
                printf(", \"split-p0-p50\": [%.1f, %.1f, %.1f], \"split-p99-p99.9\": [%.1f, %.1f, %.1f]", all[0], all[1], all[2],
                       tail[0], tail[1], tail[2]);
            }
            printf("}");
        }
        printf("]");
        if (!b->nbd_uri)
            printf(", \"waits\": {\"count\": %llu, \"p50\": %.1f, \"p99\": %.1f}", (unsigned long long)b->waits,
                   hist_percentile_us(b->wait_hist, 50), hist_percentile_us(b->wait_hist, 99));
        printf("}\n");
    } else
        printf("vbd-bench: %s bs=%u queues=%d depth=%d: %llu requests in %.2fs\n"
               "  IOPS %.0f  MB/s %.1f  latency us: p50 %.1f  p99 %.1f  p99.9 %.1f  errors %llu\n",
               b->verify ? "verify" : b->workload, b->bs, b->queues, b->depth, (unsigned long long)b->done, secs, iops, mbs,
               p50, p99, p999, (unsigned long long)b->errors);
    if (b->verify && b->mismatches)
        fprintf(stderr, "vbd-bench: verify: %llu blocks differ, the first at byte offset %llu\n",
                (unsigned long long)b->mismatches, (unsigned long long)b->first_bad);
    else if (b->verify && !b->errors)
        printf("  verify: %llu bytes written and read back identical\n", (unsigned long long)b->size);
}

static int nbd_main(struct bench *b)
{
    vbd_log_set_prog("vbd-bench");
    bool writable = b->verify || b->write_only || b->mixed || b->flush_every;
    struct nbd_open_args a = {.b = b, .writable = writable};
    vbd_co_run_sync(nbd_open_co, &a);
    if (a.rc < 0) {
        fprintf(stderr, "vbd-bench: %s\n", a.err);
        vbd_co_run_sync(nbd_close_co, b);
        return 2;
    }
    uint64_t disk = b->nodes[0]->size;
    if (!b->size || b->size > disk)
        b->size = b->verify && disk > (64u << 20) ? (64u << 20) : disk;
    b->size -= b->size % b->bs;
    if (b->size < b->bs) {
        fprintf(stderr, "vbd-bench: block size %u does not fit the export (%llu bytes)\n", b->bs,
                (unsigned long long)disk);
        vbd_co_run_sync(nbd_close_co, b);
        return 2;
    }
    b->slots = calloc((size_t)b->queues * b->depth, sizeof(*b->slots));
    for (int q = 0; q < b->queues; q++)
        for (int i = 0; i < b->depth; i++) {
            struct slot *s = &b->slots[q * b->depth + i];
            s->b = b;
            s->q = q;
            s->buf = aligned_alloc(4096, (b->bs + 4095) / 4096 * 4096);
            memset(s->buf, 0, b->bs);
        }
    uint64_t t0 = now_ns();
    vbd_co_run_sync(nbd_bench_co, b);
    report(b, (now_ns() - t0) / 1e9);
    vbd_co_run_sync(nbd_close_co, b);
    for (int i = 0; i < b->queues * b->depth; i++)
        free(b->slots[i].buf);
    free(b->slots);
    return b->errors || b->mismatches ? 1 : 0;
}

/* The long name of the option getopt_long returned as VAL (every option
 * with a value has one): argv[optind - 1] is the value itself after "-b 0". */
static const char *option_name(const struct option *lo, int val)
{
    for (; lo->name; lo++)
        if (lo->val == val)
            return lo->name;
    return "?";
}

int main(int argc, char **argv)
{
    static struct bench b;
    const char *sock = NULL;
    b.queues = 1;
    b.depth = 32;
    b.bs = 4096;
    b.rand = true;
    b.seconds = 5;
    b.workload = "randread";
    b.rng = 0x2545F4914F6CDD1Dull;
    uint64_t mem_mb = 0;
    enum { O_VU = 256, O_NBD, O_SIZE, O_FLUSH, O_VERIFY, O_POLL, O_NO_EVENT_IDX, O_MEM, O_JSON, O_SEGS };
    static const struct option lo[] = {{"vhost-user", required_argument, NULL, O_VU},
                                       {"nbd", required_argument, NULL, O_NBD},
                                       {"queues", required_argument, NULL, 'q'},
                                       {"depth", required_argument, NULL, 'd'},
                                       {"block-size", required_argument, NULL, 'b'},
                                       {"workload", required_argument, NULL, 'w'},
                                       {"time", required_argument, NULL, 't'},
                                       {"count", required_argument, NULL, 'n'},
                                       {"size", required_argument, NULL, O_SIZE},
                                       {"flush-every", required_argument, NULL, O_FLUSH},
                                       {"verify", no_argument, NULL, O_VERIFY},
                                       {"poll", no_argument, NULL, O_POLL},
                                       {"no-event-idx", no_argument, NULL, O_NO_EVENT_IDX},
                                       {"segments", required_argument, NULL, O_SEGS},
                                       {"mem", required_argument, NULL, O_MEM},
                                       {"json", no_argument, NULL, O_JSON},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int opt;
    bool ok = true;
    while ((opt = getopt_long(argc, argv, "q:d:b:w:t:n:h", lo, NULL)) != -1) {
        switch (opt) {
        case O_VU: sock = optarg; break;
        case O_NBD: b.nbd_uri = optarg; break;
        case 'q': b.queues = atoi(optarg); ok = b.queues >= 1 && b.queues <= VHC_MAX_QUEUES; break;
        case 'd': b.depth = atoi(optarg); ok = b.depth >= 1 && b.depth <= 340; break;
        case 'b': b.bs = (uint32_t)parse_size(optarg, &ok); ok = ok && b.bs && b.bs % 512 == 0 && b.bs <= (4u << 20); break;
        case 'w': {
            b.workload = optarg;
            const char *w = optarg;
            b.rand = !strncmp(w, "rand", 4);
            if (b.rand)
                w += 4;
            if (!strcmp(w, "read"))
                b.write_only = false;
            else if (!strcmp(w, "write"))
                b.write_only = true;
            else if (b.rand && !strncmp(w, "rw", 2) && (w[2] == 0 || w[2] == ':')) {
                b.mixed = true;
                b.read_pct = w[2] ? atoi(w + 3) : 50;
                ok = b.read_pct >= 0 && b.read_pct <= 100;
            } else
                ok = false;
            break;
        }
        case 't': b.seconds = atof(optarg); ok = b.seconds > 0; break;
        case 'n': b.count = parse_size(optarg, &ok); break;
        case O_SIZE: b.size = parse_size(optarg, &ok); break;
        case O_FLUSH: b.flush_every = parse_size(optarg, &ok); break;
        case O_VERIFY: b.verify = true; break;
        case O_POLL: b.poll = true; break;
        case O_NO_EVENT_IDX: b.no_event_idx = true; break;
        case O_SEGS: b.segs = atoi(optarg); ok = b.segs >= 1 && b.segs <= 128; break;
        case O_MEM: mem_mb = parse_size(optarg, &ok); break;
        case O_JSON: b.json = true; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'vbd-bench --help' for more information.\n"); return 2;
        }
        if (!ok) {
            fprintf(stderr, "vbd-bench: invalid value '%s' for option '--%s'\n", optarg, option_name(lo, opt));
            return 2;
        }
    }
    if (!(sock || b.nbd_uri) || (sock && b.nbd_uri) || optind < argc) {
        fprintf(stderr, "vbd-bench: %s\n",
                optind < argc ? "unexpected argument" : "one of --vhost-user SOCKET or --nbd URI is required");
        return 2;
    }
    if (b.nbd_uri && b.segs) {
        fprintf(stderr, "vbd-bench: --segments is for --vhost-user only\n");
        return 2;
    }
    if (!b.segs)
        b.segs = 1;
    b.seg_stride = b.bs; /* one segment: the buffer itself */
    if (b.nbd_uri)
        return nbd_main(&b);
    if (b.bs % (uint32_t)b.segs || (b.segs > 1 && (b.bs / (uint32_t)b.segs) % 512)) {
        fprintf(stderr, "vbd-bench: --segments %d does not split %u bytes into multiples of 512\n", b.segs, b.bs);
        return 2;
    }
    if ((b.segs + 2) * b.depth > 32768) {
        fprintf(stderr, "vbd-bench: --segments %d at depth %d needs more than 32768 descriptors per ring\n", b.segs,
                b.depth);
        return 2;
    }
    /* more than one: each in its own pages with a page between, so no two
     * are adjacent in guest memory */
    if (b.segs > 1)
        b.seg_stride = (b.bs / (uint32_t)b.segs + 4095) / 4096 * 4096 + 4096;
    uint32_t ring = 8;
    while (ring < (uint32_t)(b.segs + 2) * (uint32_t)b.depth)
        ring *= 2;
    size_t buf_len = (size_t)b.segs * b.seg_stride;
    size_t need = (size_t)b.queues * ((size_t)b.depth * (buf_len + 4096) + 3 * 65536 + (size_t)ring * 32) + (1 << 20);
    size_t mem = mem_mb ? mem_mb << 20 : need < (64u << 20) ? (64u << 20) : need;
    char err[512];
    if (vhc_open(&b.c, sock, b.queues, (uint16_t)ring, mem, b.no_event_idx ? 0 : VHC_EVENT_IDX, err, sizeof(err)) < 0) {
        fprintf(stderr, "vbd-bench: %s\n", err);
        vhc_close(&b.c);
        return 2;
    }
    uint64_t disk = b.c.capacity * 512;
    if (!b.size || b.size > disk)
        b.size = b.verify && disk > (64u << 20) ? (64u << 20) : disk;
    b.size -= b.size % b.bs;
    bool ro = b.c.features & (1ull << VIRTIO_BLK_F_RO);
    if (b.size < b.bs || b.bs % b.c.blk_size) {
        fprintf(stderr, "vbd-bench: block size %u does not fit the device (%llu bytes, %u-byte blocks)\n", b.bs,
                (unsigned long long)disk, b.c.blk_size);
        vhc_close(&b.c);
        return 2;
    }
    if (ro && (b.verify || b.write_only || b.mixed)) {
        fprintf(stderr, "vbd-bench: the device is read-only; use a read workload\n");
        vhc_close(&b.c);
        return 2;
    }
    if (b.flush_every && !(b.c.features & (1ull << VIRTIO_BLK_F_FLUSH)))
        b.flush_every = 0;
    b.slots = calloc((size_t)b.queues * b.depth, sizeof(*b.slots));
    for (int q = 0; q < b.queues; q++) {
        if (b.poll || !b.c.event_idx)
            vhc_set_no_interrupt(&b.c, q, b.poll);
        for (int i = 0; i < b.depth; i++) {
            struct slot *s = &b.slots[q * b.depth + i];
            s->q = q;
            s->head = (uint16_t)((b.segs + 2) * i);
            s->hdr = vhc_alloc(&b.c, 64, 64);
            s->status = (uint8_t *)s->hdr + 16;
            s->buf = vhc_alloc(&b.c, buf_len, 4096);
            if (!s->hdr || !s->buf) {
                fprintf(stderr, "vbd-bench: guest memory too small (use --mem)\n");
                return 2;
            }
        }
    }
    uint64_t t0 = now_ns();
    if (b.verify) {
        b.phase = 0;
        run_phase(&b, 0);
        b.phase = 1;
        b.issued = 0;
        b.seq_off = 0;
        if (!b.broken)
            run_phase(&b, 0);
    } else {
        run_phase(&b, b.count ? 0 : t0 + (uint64_t)(b.seconds * 1e9));
    }
    report(&b, (now_ns() - t0) / 1e9);
    vhc_close(&b.c);
    free(b.slots);
    return b.errors || b.mismatches || b.lost_wakeups ? 1 : 0;
}


