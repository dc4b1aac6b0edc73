/* SPDX-License-Identifier: MIT */
/*
 * vbd-img bench.
 */
#include "img.h"

struct bench {
    struct vbd_node *n;
    bool write;
    uint64_t bufsize, step, offset, image_size;
    int64_t count, issued, completed;
    int64_t flush_interval;
    bool drain;
    int in_flight;
    int error;
    struct vbd_co_queue done_q, drain_q;
    bool flushing;
    int workers;
};

static void bench_worker(void *opaque)
{
    struct bench *b = opaque;
    uint8_t *buf = vbd_alloc_aligned(4096, b->bufsize);
    memset(buf, 0, b->bufsize);
    struct iovec one = {buf, b->bufsize};
    struct vbd_qiov q = {&one, 1, b->bufsize};
    extern int bench_pattern;
    if (bench_pattern >= 0)
        memset(buf, bench_pattern, b->bufsize);
    while (!b->error && b->issued < b->count) {
        while (b->flushing)
            vbd_co_queue_wait(&b->drain_q);
        if (b->issued >= b->count)
            break;
        uint64_t off = b->offset;
        /* as qemu-img bench: wrap modulo the image size, so a large
         * step gives a strided pseudo-random pattern; a request that
         * then runs past the end fails (qemu-img's block backend: EIO) */
        b->offset = b->image_size ? (b->offset + b->step) % b->image_size : 0;
        b->issued++;
        b->in_flight++;
        int rc = off > b->image_size || b->image_size - off < b->bufsize ? -EIO
                 : b->write ? vbd_node_co_pwritev(b->n, off, b->bufsize, &q, 0, 0)
                            : vbd_node_co_preadv(b->n, off, b->bufsize, &q, 0, 0);
        b->in_flight--;
        if (rc < 0) {
            b->error = rc;
            break;
        }
        b->completed++;
        if (b->flush_interval && b->completed % b->flush_interval == 0) {
            if (b->drain) {
                b->flushing = true;
                while (b->in_flight)
                    vbd_co_queue_wait(&b->done_q);
            }
            int r = vbd_node_co_flush(b->n);
            b->flushing = false;
            vbd_co_queue_wake_all(&b->drain_q);
            if (r < 0) {
                b->error = r;
                break;
            }
        }
        if (b->flushing && !b->in_flight)
            vbd_co_queue_wake_all(&b->done_q);
    }
    free(buf);
    b->workers--;
    vbd_co_queue_wake_all(&b->done_q);
    vbd_co_queue_wake_all(&b->drain_q);
}

int bench_pattern = -1;

/* qemu-img bench's counts (qemu_strtoul): a whole number in C's bases, no
 * size suffix, at most max ("-1" is ULONG_MAX: too large) */
static bool bench_count(const char *s, unsigned long max, int64_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (end == s || *end || errno || v > max)
        return false;
    *out = (int64_t)v;
    return true;
}

int verb_bench(int argc, char **argv)
{
    const char *fmt = NULL, *cache = "writeback", *aio = NULL;
    int64_t count = 75000, depth = 64, bufsize = 4096, step = 0, offset = 0, flush_interval = 0;
    bool write = false, force = false, no_drain = false, image_opts = false, native = false;
    /* (no --object: qemu-img 7.2's bench has none) */
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"pattern", required_argument, NULL, OPT_PATTERN},
                                       {"flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL},
                                       {"no-drain", no_argument, NULL, OPT_NO_DRAIN}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", lo, NULL)) != -1) {
        switch (c) {
        /* each value checked as qemu-img 7.2 checks it, as it is met */
        case 'c':
            if (!bench_count(optarg, INT_MAX, &count)) {
                vbd_error_report("Invalid request count specified");
                return 1;
            }
            break;
        case 'd':
            /* 0 too: qemu-img 7.2 then waits for ever for requests it never sends */
            if (!bench_count(optarg, INT_MAX, &depth) || !depth) {
                vbd_error_report("Invalid queue depth specified");
                return 1;
            }
            break;
        case 'f': fmt = optarg; break;
        case 'n': native = true; break; /* qemu-img: native AIO (refused by the file without -t none) */
        case 'i':
            if (tool_aio_flags(optarg, &(unsigned){0}) < 0)
                return 1;
            aio = optarg;
            break;
        case 'o': if ((offset = img_cvtnum("offset", optarg, 0, INT64_MAX)) < 0) return 1; break;
        case 'q': break; /* qemu-img 7.2 bench prints its lines with -q too */
        case 's': if ((bufsize = img_cvtnum("buffer size", optarg, 0, INT_MAX)) < 0) return 1; break;
        case 'S': if ((step = img_cvtnum("step_size", optarg, 0, INT_MAX)) < 0) return 1; break;
        case 't': {
            enum vbd_cache_mode mode;
            if (vbd_cache_mode_parse(optarg, &mode) < 0) {
                vbd_error_report("Invalid cache mode"); /* bench's words (other verbs name the value) */
                return 1;
            }
            cache = optarg;
            break;
        }
        case 'w': write = true; break;
        case 'U': force = true; break;
        case OPT_PATTERN: {
            int64_t v;
            if (!bench_count(optarg, 0xff, &v)) {
                vbd_error_report("Invalid pattern byte specified");
                return 1;
            }
            bench_pattern = (int)v;
            break;
        }
        case OPT_FLUSH_INTERVAL:
            if (!bench_count(optarg, INT_MAX, &flush_interval)) {
                vbd_error_report("Invalid flush interval specified");
                return 1;
            }
            break;
        case OPT_NO_DRAIN: no_drain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [--no-drain] [-i aio] [-n]\n"
                   "                     [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
                   "Run COUNT sequential requests (step -S, default the buffer size) with DEPTH in flight; same options as qemu-img bench.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return 1;
    }
    /* --pattern with reads is taken (qemu-img fills its read buffers with it) */
    if (!write && flush_interval) {
        vbd_error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if (flush_interval && flush_interval < depth) {
        vbd_error_report("Flush interval can't be smaller than depth");
        return 1;
    }
    unsigned flags = (write ? VBD_OPEN_RDWR : 0) | (force ? VBD_OPEN_FORCE_SHARE : 0);
    if (tool_aio_flags(aio, &flags) < 0)
        return 1;
    if (native || (aio && !strcmp(aio, "native")))
        flags |= VBD_OPEN_AIO_NATIVE; /* the file node refuses it without -t none, as qemu-img's */
    struct vbd_node *n = tool_open(argv[optind], fmt, image_opts, flags, cache, NULL);
    if (!n)
        return 1;
    struct bench b = {.n = n, .write = write, .bufsize = bufsize, .step = step ? step : bufsize, .offset = offset,
                      .image_size = n->size, .count = count, .flush_interval = flush_interval, .drain = !no_drain};
    printf("Sending %lld %s requests, %lld bytes each, %lld in parallel (starting at offset %lld, step size %lld)\n",
           (long long)count, write ? "write" : "read", (long long)bufsize, (long long)depth, (long long)offset,
           (long long)b.step);
    if (flush_interval)
        printf("Sending flush every %lld requests\n", (long long)flush_interval);
    uint64_t t0 = vbd_clock_ns();
    b.workers = (int)(depth < count ? depth : count);
    int nw = b.workers;
    for (int i = 0; i < nw; i++)
        vbd_co_wake(vbd_co_create(bench_worker, &b));
    while (b.workers)
        vbd_co_queue_wait(&b.done_q);
    double secs = (vbd_clock_ns() - t0) / 1e9;
    int rc = 0;
    if (b.error) {
        vbd_error_report("Failed request: %s", strerror(-b.error));
        rc = 1;
    } else {
        printf("Run completed in %3.3f seconds.\n", secs);
    }
    vbd_node_unref(n);
    return rc;
}
