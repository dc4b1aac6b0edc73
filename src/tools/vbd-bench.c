/* SPDX-License-Identifier: MIT */
/*
 * vbd-bench: a vhost-user-blk front end that drives a back end (vbd-daemon,
 * qemu-storage-daemon, ...) the way a VM would, without a VM: N queues of
 * depth D, random or sequential reads/writes, flushes, a verify mode, and
 * IOPS, bandwidth and latency percentiles.
 */
#include "../vhost-client/vhost_client.h"

#include <errno.h>
#include <getopt.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage_text[] =
    "Usage: vbd-bench --vhost-user SOCKET [options]\n"
    "Drive a vhost-user-blk back end like a VM would and measure it.\n"
    "\n"
    "  --vhost-user SOCKET  the back end's unix socket\n"
    "  -q, --queues N       virtqueues (default 1)\n"
    "  -d, --depth N        requests in flight per queue (default 32, at most 340)\n"
    "  -b, --block-size N   bytes per request, multiple of 512 (default 4096; k/M suffixes)\n"
    "  -w, --workload W     read, write, randread, randwrite, randrw[:PERCENT_READ] (default randread)\n"
    "  -t, --time S         run for S seconds (default 5)\n"
    "  -n, --count N        stop after N requests instead\n"
    "  --size BYTES         use only the first BYTES of the disk (k/M/G suffixes)\n"
    "  --flush-every N      send a flush after every N writes (per queue)\n"
    "  --verify             write a pattern over the region, read it back and check every byte\n"
    "  --poll               busy-poll the used rings instead of waiting for interrupts\n"
    "  --mem MB             guest memory size (default: what the queues need, at least 64)\n"
    "  --json               print the result as JSON\n"
    "  -h, --help\n"
    "\n"
    "Exit status: 0 success, 1 I/O errors or verify mismatch, 2 bad usage or connection failure.\n";

enum op { OP_READ, OP_WRITE, OP_FLUSH };

struct slot {
    int q;
    uint16_t head;
    struct virtio_blk_outhdr *hdr;
    uint8_t *status;
    uint8_t *buf;
    uint64_t off;
    enum op op;
    uint64_t start_ns;
    bool busy;
};

struct bench {
    struct vhc c;
    int queues, depth;
    uint32_t bs;
    bool rand, mixed, write_only, verify, poll, json;
    int read_pct;
    double seconds;
    uint64_t count, size, flush_every;
    struct slot *slots;
    uint64_t issued, done, errors, bytes;
    uint64_t seq_off;
    uint64_t writes_since_flush[VHC_MAX_QUEUES];
    uint64_t hist[512];
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

static double percentile_us(const struct bench *b, double pct)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i < 512; i++)
        total += b->hist[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(total * pct / 100.0);
    if (want >= total)
        want = total - 1;
    for (int i = 0; i < 512; i++) {
        acc += b->hist[i];
        if (acc > want)
            return bucket_mid_us(i);
    }
    return 0;
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

static void submit(struct bench *b, struct slot *s)
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
    s->hdr->type = op == OP_READ ? VIRTIO_BLK_T_IN : op == OP_WRITE ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_FLUSH;
    s->hdr->ioprio = 0;
    s->hdr->sector = s->off / 512;
    *s->status = 0xff;
    uint16_t h = s->head;
    vhc_set_desc(&b->c, s->q, h, vhc_gpa(&b->c, s->hdr), 16, VRING_DESC_F_NEXT, op == OP_FLUSH ? h + 2 : h + 1);
    if (op != OP_FLUSH) {
        if (op == OP_WRITE && b->verify)
            fill_pattern(s->buf, s->off, b->bs);
        vhc_set_desc(&b->c, s->q, h + 1, vhc_gpa(&b->c, s->buf), b->bs,
                     VRING_DESC_F_NEXT | (op == OP_READ ? VRING_DESC_F_WRITE : 0), h + 2);
    }
    vhc_set_desc(&b->c, s->q, h + 2, vhc_gpa(&b->c, s->status), 1, VRING_DESC_F_WRITE, 0);
    s->busy = true;
    s->start_ns = now_ns();
    vhc_offer(&b->c, s->q, h);
}

static void complete(struct bench *b, struct slot *s, uint64_t t)
{
    s->busy = false;
    b->hist[bucket(t - s->start_ns)]++;
    if (*s->status != VIRTIO_BLK_S_OK) {
        if (b->errors++ == 0)
            fprintf(stderr, "vbd-bench: %s at offset %llu failed with status %u\n",
                    s->op == OP_READ ? "read" : s->op == OP_WRITE ? "write" : "flush", (unsigned long long)s->off,
                    *s->status);
        return;
    }
    if (s->op == OP_FLUSH)
        return;
    b->done++;
    b->bytes += b->bs;
    if (b->verify && s->op == OP_READ) {
        uint64_t bad = check_pattern(s->buf, s->off, b->bs);
        if (bad && b->mismatches++ == 0)
            b->first_bad = bad - 1;
    }
}

/* Runs until the work is done (or the time is up) and every slot is idle. */
static void run_phase(struct bench *b, uint64_t deadline)
{
    int nslots = b->queues * b->depth;
    for (int q = 0; q < b->queues; q++) {
        for (int i = 0; i < b->depth && more_work(b); i++)
            submit(b, &b->slots[q * b->depth + i]);
        vhc_kick(&b->c, q);
    }
    for (;;) {
        int busy = 0;
        bool progress = false;
        uint64_t t = now_ns();
        bool stop = deadline && t >= deadline;
        for (int q = 0; q < b->queues; q++) {
            uint32_t id, len;
            bool resubmitted = false;
            while (vhc_used(&b->c, q, &id, &len)) {
                if (id % 3 || id / 3 >= (uint32_t)b->depth) {
                    fprintf(stderr, "vbd-bench: the back end returned a descriptor we never offered (%u)\n", id);
                    b->errors++;
                    continue;
                }
                struct slot *s = &b->slots[q * b->depth + id / 3];
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
        if (!progress && !b->poll && vhc_wait(&b->c, 1000) == 0 && deadline && now_ns() > deadline + 10000000000ull) {
            fprintf(stderr, "vbd-bench: %d requests got no answer for 10 s, giving up\n", busy);
            b->errors += (uint64_t)busy;
            return;
        }
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
    enum { O_VU = 256, O_SIZE, O_FLUSH, O_VERIFY, O_POLL, O_MEM, O_JSON };
    static const struct option lo[] = {{"vhost-user", required_argument, NULL, O_VU},
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
                                       {"mem", required_argument, NULL, O_MEM},
                                       {"json", no_argument, NULL, O_JSON},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int opt;
    bool ok = true;
    while ((opt = getopt_long(argc, argv, "q:d:b:w:t:n:h", lo, NULL)) != -1) {
        switch (opt) {
        case O_VU: sock = optarg; break;
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
        case O_MEM: mem_mb = parse_size(optarg, &ok); break;
        case O_JSON: b.json = true; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'vbd-bench --help' for more information.\n"); return 2;
        }
        if (!ok) {
            fprintf(stderr, "vbd-bench: invalid value '%s' for option '%s'\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (!sock || optind < argc) {
        fprintf(stderr, "vbd-bench: %s\n", sock ? "unexpected argument" : "--vhost-user SOCKET is required");
        return 2;
    }
    uint16_t ring = 8;
    while (ring < 3 * b.depth)
        ring *= 2;
    size_t need = (size_t)b.queues * ((size_t)b.depth * (b.bs + 4096) + 3 * 65536) + (1 << 20);
    size_t mem = mem_mb ? mem_mb << 20 : need < (64u << 20) ? (64u << 20) : need;
    char err[512];
    if (vhc_open(&b.c, sock, b.queues, ring, mem, err, sizeof(err)) < 0) {
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
        vhc_set_no_interrupt(&b.c, q, b.poll);
        for (int i = 0; i < b.depth; i++) {
            struct slot *s = &b.slots[q * b.depth + i];
            s->q = q;
            s->head = (uint16_t)(3 * i);
            s->hdr = vhc_alloc(&b.c, 64, 64);
            s->status = (uint8_t *)s->hdr + 16;
            s->buf = vhc_alloc(&b.c, b.bs, 4096);
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
        run_phase(&b, 0);
    } else {
        run_phase(&b, b.count ? 0 : t0 + (uint64_t)(b.seconds * 1e9));
    }
    double secs = (now_ns() - t0) / 1e9;
    double iops = b.done / secs, mbs = b.bytes / secs / 1e6;
    double p50 = percentile_us(&b, 50), p99 = percentile_us(&b, 99), p999 = percentile_us(&b, 99.9);
    if (b.json)
        printf("{\"workload\": \"%s\", \"block-size\": %u, \"queues\": %d, \"depth\": %d, \"seconds\": %.3f, "
               "\"requests\": %llu, \"iops\": %.0f, \"mb-per-s\": %.1f, \"lat-us\": {\"p50\": %.1f, \"p99\": %.1f, "
               "\"p99.9\": %.1f}, \"errors\": %llu, \"verify-mismatches\": %llu}\n",
               b.verify ? "verify" : b.workload, b.bs, b.queues, b.depth, secs, (unsigned long long)b.done, iops, mbs,
               p50, p99, p999, (unsigned long long)b.errors, (unsigned long long)b.mismatches);
    else
        printf("vbd-bench: %s bs=%u queues=%d depth=%d: %llu requests in %.2fs\n"
               "  IOPS %.0f  MB/s %.1f  latency us: p50 %.1f  p99 %.1f  p99.9 %.1f  errors %llu\n",
               b.verify ? "verify" : b.workload, b.bs, b.queues, b.depth, (unsigned long long)b.done, secs, iops, mbs,
               p50, p99, p999, (unsigned long long)b.errors);
    if (b.verify && b.mismatches)
        fprintf(stderr, "vbd-bench: verify: %llu blocks differ, the first at byte offset %llu\n",
                (unsigned long long)b.mismatches, (unsigned long long)b.first_bad);
    else if (b.verify && !b.errors)
        printf("  verify: %llu bytes written and read back identical\n", (unsigned long long)b.size);
    vhc_close(&b.c);
    free(b.slots);
    return b.errors || b.mismatches ? 1 : 0;
}
