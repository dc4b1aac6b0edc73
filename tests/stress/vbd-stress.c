/* SPDX-License-Identifier: MIT */
/*
 * vbd-stress: a model-based (fsx-like) stress test of a block device. N
 * coroutines issue random reads, writes (aligned and not, inside a
 * subcluster, inside a cluster, across cluster boundaries, many clusters),
 * write-zeroes (with and without MAY_UNMAP), discards and flushes,
 * concentrated on a few hot clusters so that requests meet on the same
 * cluster all the time. An in-memory shadow records what every byte must
 * contain; every read is checked against it.
 *
 * The rule that keeps the expected content well defined: requests in flight
 * never share a byte, except reads with reads. Mutations DO share clusters
 * (and subclusters): that is where allocation, COW and refcount bugs live.
 * A discard leaves each byte "old, zero or backing" (what a format may
 * legally return); the first read pins it to what it saw.
 *
 * Targets: an image opened in this process through vbd's library, an NBD
 * export (several connections, through vbd's nbd client), or a vhost-user-blk
 * export (several queues, through src/vhost-client), or both exports of one
 * node at once (--nbd and --vhost-user: the workers alternate between them,
 * one model for both, so requests from the two meet on the same clusters;
 * the final read-back goes through each). At the end the whole
 * device is read back and checked, flushed, and the shadow is written out
 * as a raw file for `qemu-img compare`.
 *
 * Overlap mode (--overlap): writes, write-zeroes and discards in flight
 * may share bytes with each other too (reads still have their bytes to
 * themselves). A byte then holds what one of the mutations that may have
 * landed last on it left: the one issued last on it, or one that was still
 * in flight on it when that one was issued (a mutation issued after
 * another completed supersedes it). A discard leaves zero, the backing
 * byte, or what the byte could hold at its issue. Nothing else: not a
 * superseded write's data, not a mix inside a word that none wrote. The
 * first read pins the byte to what it saw.
 *
 * Crash mode (--crash-ready, over NBD or vhost-user): the run goes on
 * until the server dies (the harness kills it with SIGKILL once the ready
 * file exists). Each byte remembers the last mutation issued on it; a mutation
 * is durable if it completed with FUA, or before the issue of a flush that
 * was acknowledged. At the end the shadow holds every byte's last value and
 * the mask (--mask-out, 0xff bytes) the bytes whose last mutation was not
 * durable: those may hold anything after the crash, every other byte must
 * be the shadow's. With --clean-stop the server is stopped, not killed
 * (SIGTERM: it finishes the requests in flight, flushes and closes the
 * image): every mutation that completed is durable.
 */
#include "../../src/tools/common.h"
#include "../../src/vhost-client/vhost_client.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
    "Usage: vbd-stress [OPTIONS] IMAGE                  (in this process, through vbd's library)\n"
    "       vbd-stress [OPTIONS] --nbd URI [--conns N]   (an NBD export, N connections)\n"
    "       vbd-stress [OPTIONS] --vhost-user SOCKET [--queues N]  (a vhost-user-blk export)\n"
    "       vbd-stress [OPTIONS] --vhost-user SOCKET [--queues N] --nbd URI [--conns N]\n"
    "                            (two exports of one node at once: workers alternate between them)\n"
    "Random overlapping I/O against a shadow model; exit 0 if every read matched.\n"
    "\n"
    "  --seed N             random seed (default: from the clock; always printed)\n"
    "  --ops N              stop after N requests (default 20000)\n"
    "  --seconds S          stop after S seconds instead (whichever comes first with --ops)\n"
    "  --qd N               coroutines with one request each in flight (default 16, at most 64)\n"
    "  --cluster-size N     cluster size of the image (default 64k): where the hot spots are\n"
    "  --subclusters        the image has extended L2 entries (32 subclusters per cluster)\n"
    "  --hot N              number of hot clusters (default 4)\n"
    "  --hot-move N         every N requests a pair of hot clusters moves elsewhere (fresh clusters to allocate)\n"
    "  --range BYTES        use only the first BYTES of the device (the rest may be resized meanwhile)\n"
    "  --touched-out FILE   one byte per 512-byte sector: 1 if a completed write, write-zeroes or discard touched it\n"
    "                       (what a dirty bitmap enabled for the whole run must have marked)\n"
    "  --init FILE          raw file with the image's content before the run (default: zeroes)\n"
    "  --backing FILE       raw file with the backing chain's content (a discard may expose it)\n"
    "  --shadow-out FILE    write the expected final content here (raw)\n"
    "  --no-discard         never discard (a target that does not support it)\n"
    "  --overlap            writes, write-zeroes and discards in flight may share bytes (each byte must end as\n"
    "                       one of the mutations that may have landed last on it left it); reads still may not\n"
"  --no-zeroes          never write zeroes (to tell which kind of request a failure needs)\n"
    "  --zero-heavy         half the requests write zeroes (with and without unmap) or discard\n"
    "  --compress           write some whole clusters with VBD_REQ_COMPRESSED (IMAGE only)\n"
    "  --write-once         every write and write-zeroes is one whole cluster, and a cluster takes one: a\n"
    "                       second is refused with EIO, changing nothing (a streamOptimized vmdk without\n"
    "                       zeroed grains: QEMU 7.2's rule); one refused before any went through counts\n"
    "                       as written before the run\n"
    "  --align N            every offset and length a multiple of N (vhost-user: at least 512)\n"
    "  -f, --format FMT     IMAGE's format (default: probed);  --image-opts: IMAGE is an option string\n"
    "  -t, --cache MODE     cache mode for IMAGE (default writeback);  -i, --aio MODE io_uring|threads\n"
    "  --crash-ready FILE   crash mode (--nbd or --vhost-user alone): create FILE after --crash-after\n"
    "                       requests, go on until the server dies, then write the shadow and --mask-out\n"
    "                       (no discards)\n"
    "  --crash-after N      requests before the ready file (default 400)\n"
    "  --mask-out FILE      crash mode: 0xff for each byte whose last mutation was not durable, else 0\n"
    "  --clean-stop         crash mode: the server is stopped cleanly, every completed mutation is durable\n"
    "  --reconnect-delay S  --nbd: reconnect for up to S seconds when the server drops a connection\n"
    "                       (the requests in flight are sent again: an export deleted and added back)\n"
    "  --points FILE        read at the end: lines 'TS TR RAW', a graph change (a snapshot) between\n"
    "                       CLOCK_MONOTONIC ns TS and TR and RAW the content it froze: each byte must be the last\n"
    "                       mutation completed before TS or one in flight meanwhile, none issued after TR\n"
    "                       (with --overlap: any not superseded before TS); needs --no-discard\n"
    "  --flush-marks        an access(2) of '/vbd-stress-flush/N/issue' just before flush N is sent and of\n"
    "                       '.../acked' just after it succeeded: in an strace of this process and the server\n"
    "                       together, what the server synced between them (flush-cover.sh)\n"
    "  --flush-pct P        P %% of the requests are flushes (default: 4 %% of the mix)\n"
    "  -v, --verbose        print every request\n"
    "SIGUSR1 ends the run as --ops does: the requests in flight complete, the checks follow.\n"
    "Exit status: 0 no mismatch, 1 mismatch or failed request, 2 bad usage or cannot connect.\n";

enum op { OP_READ, OP_WRITE, OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD, OP_FLUSH, OP__N };
static const char *const op_names[OP__N] = {"read", "write", "write-zeroes", "write-zeroes(unmap)", "discard", "flush"};

/* A byte the shadow does not pin down: it may be the old value, zero, or
 * the backing file's byte (after a discard). */
#define MAY_ZERO 1u
#define MAY_BACKING 2u

enum transport { T_LIB, T_NBD, T_VHOST };

struct worker {
    int id;
    int conn; /* NBD connection or vhost queue */
    bool vhost; /* this worker's requests go through the vhost-user export */
    uint16_t head;
    struct vbd_co *co;
    uint8_t *buf; /* max_len bytes (vhost: in guest memory) */
    struct virtio_blk_outhdr *hdr;
    uint8_t *status;
    struct virtio_blk_discard_write_zeroes *seg;
    bool busy; /* vhost: request on the ring */
    bool lost; /* vhost: the back end went away with the request on the ring */
    /* the byte range this worker's request owns while in flight */
    bool active, mutating;
    uint32_t ov_mut; /* --overlap: the mutation in flight (index into S.ov), 0: none */
    uint64_t off, len;
};

/* --overlap: a mutation, and where the ones that were in flight over it
 * at its issue are listed (S.ov_conc[conc .. conc+nconc)); a discard also
 * keeps, as runs, the mutation issued last on each of its bytes before it
 * (S.ov_runs[runs .. runs+nruns)): what the byte held may stay */
struct ov_mut {
    uint64_t off, len;
    uint32_t write_id; /* 0: write-zeroes or discard */
    bool discard;
    uint32_t nconc, nruns;
    size_t conc, runs;
    uint32_t seen; /* ov_may_be: the query (S.ov_query) that looked at it already */
};
struct ov_run {
    uint64_t from; /* device offset where the run starts */
    uint32_t prev; /* the mutation issued last on these bytes before the discard, 0: none */
};

/* The last mutations, to print the history of a byte on a mismatch. */
#define HISTORY 8192
struct hist {
    uint64_t seq;
    uint32_t id;
    enum op op;
    uint64_t off, len;
    uint64_t done_seq; /* 0: not completed */
};

/* Crash mode: what each mutation needs to tell whether it is durable. */
#define DURABLE_FUA (1ull << 63)
struct mutation {
    uint64_t done_at; /* S.clock at completion (| DURABLE_FUA); 0: not completed */
};

/* --points: one mutation's place and times (CLOCK_MONOTONIC ns; done 0: never completed) */
struct logged {
    uint64_t off, len, issue_ns, done_ns;
    uint32_t id; /* write: its data's id; 0: write-zeroes */
};

static struct {
    enum transport transport;
    const char *image, *nbd_uri, *vu_sock, *fmt, *cache, *aio, *init, *backing, *shadow_out;
    bool image_opts, subclusters, no_discard, no_zeroes, verbose, compress, zero_heavy, write_once;
    int qd, conns, nhot;
    int queues;  /* vhost-user queues */
    bool mixed;  /* --nbd and --vhost-user together */
    uint64_t hot_move;
    uint64_t range;          /* --range: the requests stay below it */
    const char *touched_out;
    uint8_t *touched;        /* per 512-byte sector: a mutation was issued on it */
    uint64_t seed, max_ops, cluster, subcluster, align, max_len;
    double seconds;

    struct vbd_backend *be[VHC_MAX_QUEUES];
    struct vbd_node *node[VHC_MAX_QUEUES];
    struct vhc vhc;
    bool vhc_discard, vhc_zeroes;
    struct vbd_poll_wait vhc_hup; /* vhost_watch's wait on the vhost-user socket */
    bool vhc_gone;                /* the back end closed the socket: no completion will come */
    bool vhc_watching;            /* vhost_watch runs */
    uint64_t size;

    uint8_t *exp, *fuzzy, *back;
    uint64_t *hot;
    struct worker w[64];
    struct vbd_co_queue changed;
    uint64_t rng, issued, completed, deadline;
    uint64_t counts[OP__N], collisions, waits, pinned, compressed_writes, compressed_refused, rewrites_refused;
    uint8_t *written;        /* --write-once: per cluster, a write or write-zeroes went through in this run */
    int running;
    bool failed, stop_reapers;
    struct vbd_co *main_co;
    struct hist hist[HISTORY];
    uint64_t seq;
    uint32_t next_write_id;

    /* crash mode */
    const char *crash_ready, *mask_out;
    uint64_t crash_after;
    bool ready_made, crashed, clean_stop;
    uint64_t clock;          /* advances at every issue and completion */
    uint64_t durable_point;  /* mutations completed before this are on disk (an acknowledged flush's issue) */
    uint32_t *last_mut;      /* per byte: index into muts of the last mutation issued on it, 0: none */
    struct mutation *muts;
    uint32_t nmuts, muts_cap;

    bool flush_marks; /* --flush-marks */
    uint64_t flush_marked;
    unsigned flush_pct; /* --flush-pct */

    /* --overlap */
    bool overlap;
    uint32_t *ov_last;   /* per byte: the mutation issued last on it (index into ov), 0: the byte is exp/fuzzy's */
    struct ov_mut *ov;
    uint32_t nov, ov_cap;
    uint32_t ov_query; /* byte_may_be's count: ov_may_be visits each mutation once per question */
    uint32_t *ov_conc;
    size_t nconc, conc_cap;
    struct ov_run *ov_runs;
    size_t nruns, runs_cap;
    uint64_t overlapped, ov_pinned;

    /* --points: every write and write-zeroes, in the order issued */
    uint64_t reconnect_delay;
    const char *points;
    struct logged *log;
    size_t nlog, log_cap;
} S = {.crash_after = 400, .qd = 16, .conns = 1, .nhot = 4, .max_ops = 20000, .cluster = 65536, .cache = "writeback", .align = 1};

static uint64_t rnd(void)
{
    /* splitmix64: good enough and trivially replayable from the seed */
    uint64_t z = (S.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

/* Write data: each 8-byte word of the device (aligned on the device, not on
 * the request) carries the id of the write and its own offset, so a
 * mismatch says which write's data landed where. */
#define WORD_MAGIC 0xA5C3A5C3A5C3A5C3ull
static uint64_t word_for(uint32_t id, uint64_t dev_off) { return (((uint64_t)id << 32) | (dev_off >> 3 & 0xffffffffu)) ^ WORD_MAGIC; }

static void fill(uint8_t *buf, uint64_t off, uint64_t len, uint32_t id)
{
    for (uint64_t i = 0; i < len;) {
        uint64_t word_off = (off + i) & ~7ull, v = word_for(id, word_off);
        uint64_t k = (off + i) - word_off;
        for (; k < 8 && i < len; k++, i++)
            buf[i] = (uint8_t)(v >> (8 * k));
    }
}

static void describe_word(const uint8_t *got, uint64_t got_off, uint64_t dev_off)
{
    uint64_t word_off = dev_off & ~7ull, v = 0;
    if (word_off < got_off)
        return;
    for (int k = 0; k < 8; k++)
        v |= (uint64_t)got[word_off - got_off + k] << (8 * k);
    v ^= WORD_MAGIC;
    uint32_t id = (uint32_t)(v >> 32);
    uint64_t at = (v & 0xffffffffu) << 3;
    if (id && id <= S.next_write_id)
        fprintf(stderr, "vbd-stress:   the word at %" PRIu64 " looks like write #%u's data for offset %" PRIu64 "%s\n",
                word_off, id, at, (at & 0xffffffffull << 3) == (word_off & 0xffffffffull << 3) ? " (its own place)" : " (MISPLACED)");
}

static void print_history(uint64_t byte)
{
    fprintf(stderr, "vbd-stress: the last mutations covering byte %" PRIu64 " (seq issued -> completed):\n", byte);
    int shown = 0;
    uint64_t first = S.seq > HISTORY ? S.seq - HISTORY : 0;
    for (uint64_t q = S.seq; q > first && shown < 12; q--) {
        struct hist *h = &S.hist[(q - 1) % HISTORY];
        if (byte >= h->off && byte < h->off + h->len) {
            fprintf(stderr, "vbd-stress:   #%" PRIu64 " -> %s%" PRIu64 " %s off=%" PRIu64 " len=%" PRIu64, h->seq,
                    h->done_seq ? "" : "(in flight)", h->done_seq, op_names[h->op], h->off, h->len);
            if (h->op == OP_WRITE)
                fprintf(stderr, " write #%u", h->id);
            fputc('\n', stderr);
            shown++;
        }
    }
}

static void fail_now(void)
{
    S.failed = true;
    vbd_co_queue_wake_all(&S.changed);
}

/* The byte as the model has it when no --overlap mutation is its last */
static bool settled_may_be(uint64_t b, uint8_t g)
{
    uint8_t fz = S.fuzzy[b];
    return g == S.exp[b] || ((fz & MAY_ZERO) && g == 0) || ((fz & MAY_BACKING) && g == S.back[b]);
}

/* --overlap: the mutation issued last on byte b before discard m */
static uint32_t ov_prev(const struct ov_mut *m, uint64_t b)
{
    size_t lo = 0, hi = m->nruns; /* the last run starting at or before b */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (S.ov_runs[m->runs + mid].from <= b)
            lo = mid;
        else
            hi = mid;
    }
    return S.ov_runs[m->runs + lo].prev;
}

static bool ov_may_be(uint32_t last, uint64_t b, uint8_t g);

/* May mutation m have left byte b as g? */
static bool ov_left(const struct ov_mut *m, uint64_t b, uint8_t g)
{
    if (!m->discard)
        return g == (m->write_id ? (uint8_t)(word_for(m->write_id, b & ~7ull) >> (8 * (b & 7))) : 0);
    if (g == 0 || (S.back && g == S.back[b]))
        return true;
    return ov_may_be(ov_prev(m, b), b, g); /* the discard did nothing there */
}

/* May byte b read as g, if mutation last was issued last on it (0: none
 * since the byte was pinned)? Its candidates: last, and the ones in flight
 * at last's issue that cover b (they may complete after it). */
static bool ov_may_be(uint32_t last, uint64_t b, uint8_t g)
{
    if (!last)
        return settled_may_be(b, g);
    struct ov_mut *l = &S.ov[last];
    /* Asked once per question: the candidates form a graph, not a tree (a
     * discard's "byte before it" is a mutation whose own candidates are
     * discards again, and many paths reach one mutation). Walked as a tree
     * it took exponential time: a data-file run of 25 s with --overlap spun
     * in the final read-back for over 10 minutes. A mutation seen already
     * for this (b, g) answered false (else the walk would have ended). */
    if (l->seen == S.ov_query)
        return false;
    l->seen = S.ov_query;
    if (ov_left(l, b, g))
        return true;
    for (uint32_t i = 0; i < l->nconc; i++) {
        const struct ov_mut *m = &S.ov[S.ov_conc[l->conc + i]];
        if (b >= m->off && b < m->off + m->len && ov_left(m, b, g))
            return true;
    }
    return false;
}

static void ov_print(uint32_t id, uint64_t b)
{
    const struct ov_mut *m = &S.ov[id];
    if (m->discard)
        fprintf(stderr, "vbd-stress:   candidate: discard off=%" PRIu64 " len=%" PRIu64 " (zero%s, or the byte before it)\n",
                m->off, m->len, S.back ? ", the backing byte" : "");
    else
        fprintf(stderr, "vbd-stress:   candidate: %s #%u off=%" PRIu64 " len=%" PRIu64 " leaves 0x%02x\n",
                m->write_id ? "write" : "write-zeroes", m->write_id, m->off, m->len,
                m->write_id ? (uint8_t)(word_for(m->write_id, b & ~7ull) >> (8 * (b & 7))) : 0);
}

/* May byte b read as g? */
static bool byte_may_be(uint64_t b, uint8_t g)
{
    if (!S.ov_last)
        return settled_may_be(b, g);
    if (++S.ov_query == 0) { /* wrapped: no mutation may look seen */
        for (uint32_t i = 0; S.ov && i <= S.nov; i++)
            S.ov[i].seen = 0;
        S.ov_query = 1;
    }
    return ov_may_be(S.ov_last[b], b, g);
}

/* Compares what a read returned with the model; pins bytes that were
 * uncertain. false (after printing the evidence) on a mismatch. */
static bool check_read(const uint8_t *got, uint64_t off, uint64_t len, const char *what)
{
    for (uint64_t i = 0; i < len; i++) {
        uint64_t b = off + i;
        uint8_t e = S.exp[b], g = got[i], fz = S.fuzzy[b];
        bool ov = S.ov_last && S.ov_last[b];
        if (g == e && !fz && !ov)
            continue;
        if (byte_may_be(b, g)) {
            if (ov) {
                S.ov_pinned += S.ov[S.ov_last[b]].nconc != 0;
                S.ov_last[b] = 0;
            } else {
                S.pinned++;
            }
            S.exp[b] = g;
            S.fuzzy[b] = 0;
            continue;
        }
        uint64_t nbad = 0;
        for (uint64_t j = i; j < len; j++)
            nbad += !byte_may_be(off + j, got[j]);
        if (ov) {
            fprintf(stderr,
                    "vbd-stress: MISMATCH seed=%" PRIu64 " (%s) %s off=%" PRIu64 " len=%" PRIu64 ": first bad byte at %" PRIu64
                    " (cluster %" PRIu64 " +%" PRIu64 "): got 0x%02x, none of the mutations that may have landed last on it"
                    " left that; %" PRIu64 " bad bytes in the request\n",
                    S.seed, S.image ? S.image : S.nbd_uri ? S.nbd_uri : S.vu_sock, what, off, len, b, b / S.cluster,
                    b % S.cluster, g, nbad);
            const struct ov_mut *l = &S.ov[S.ov_last[b]];
            ov_print(S.ov_last[b], b);
            for (uint32_t k = 0; k < l->nconc; k++)
                if (b >= S.ov[S.ov_conc[l->conc + k]].off && b < S.ov[S.ov_conc[l->conc + k]].off + S.ov[S.ov_conc[l->conc + k]].len)
                    ov_print(S.ov_conc[l->conc + k], b);
            describe_word(got, off, b);
            print_history(b);
            fail_now();
            return false;
        }
        fprintf(stderr,
                "vbd-stress: MISMATCH seed=%" PRIu64 " (%s) %s off=%" PRIu64 " len=%" PRIu64 ": first bad byte at %" PRIu64
                " (cluster %" PRIu64 " +%" PRIu64 "): expected 0x%02x%s%s, got 0x%02x; %" PRIu64 " bad bytes in the request\n",
                S.seed, S.image ? S.image : S.nbd_uri ? S.nbd_uri : S.vu_sock, what, off, len, b, b / S.cluster,
                b % S.cluster, e, fz & MAY_ZERO ? " or 0x00" : "", fz & MAY_BACKING ? " or the backing byte" : "", g, nbad);
        if (fz & MAY_BACKING)
            fprintf(stderr, "vbd-stress:   (backing byte 0x%02x)\n", S.back[b]);
        describe_word(got, off, b);
        print_history(b);
        fail_now();
        return false;
    }
    return true;
}

/* ---- transports ---- */

static int vhost_io(struct worker *w, enum op op, uint64_t off, uint64_t len)
{
    struct vhc *c = &S.vhc;
    int q = w->conn;
    uint16_t h = w->head;
    if (S.vhc_gone)
        return -ECONNRESET; /* as an NBD request on a closed connection */
    uint32_t type = op == OP_READ      ? VIRTIO_BLK_T_IN
                    : op == OP_WRITE   ? VIRTIO_BLK_T_OUT
                    : op == OP_FLUSH   ? VIRTIO_BLK_T_FLUSH
                    : op == OP_DISCARD ? VIRTIO_BLK_T_DISCARD
                                       : VIRTIO_BLK_T_WRITE_ZEROES;
    w->hdr->type = type;
    w->hdr->ioprio = 0;
    w->hdr->sector = op == OP_READ || op == OP_WRITE ? off / 512 : 0;
    *w->status = 0xff;
    vhc_set_desc(c, q, h, vhc_gpa(c, w->hdr), sizeof(*w->hdr), VRING_DESC_F_NEXT, h + 1);
    uint16_t last = h + 1;
    if (op == OP_READ || op == OP_WRITE) {
        vhc_set_desc(c, q, h + 1, vhc_gpa(c, w->buf), (uint32_t)len, VRING_DESC_F_NEXT | (op == OP_READ ? VRING_DESC_F_WRITE : 0),
                     h + 2);
        last = h + 2;
    } else if (op != OP_FLUSH) {
        w->seg->sector = off / 512;
        w->seg->num_sectors = (uint32_t)(len / 512);
        w->seg->flags = op == OP_ZERO_UNMAP ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
        vhc_set_desc(c, q, h + 1, vhc_gpa(c, w->seg), sizeof(*w->seg), VRING_DESC_F_NEXT, h + 2);
        last = h + 2;
    }
    vhc_set_desc(c, q, last, vhc_gpa(c, w->status), 1, VRING_DESC_F_WRITE, 0);
    w->busy = true;
    vhc_offer(c, q, h);
    vhc_kick(c, q);
    while (w->busy)
        vbd_co_yield(); /* the queue's reaper wakes us */
    if (w->lost) {
        w->lost = false;
        return -ECONNRESET;
    }
    return *w->status == VIRTIO_BLK_S_OK ? 0 : *w->status == VIRTIO_BLK_S_UNSUPP ? -ENOTSUP : -EIO;
}

/* One per vhost queue: waits for the queue's interrupt and wakes the
 * coroutines whose requests completed; once the back end is gone
 * (vhost_watch), after what it completed before it went, fails the
 * requests left on the ring. */
static void vhost_reaper(void *arg)
{
    int q = (int)(intptr_t)arg;
    while (!S.stop_reapers) {
        uint32_t id, len;
        while (vhc_used(&S.vhc, q, &id, &len)) {
            struct worker *found = NULL;
            for (int i = 0; i < S.qd; i++)
                if (S.w[i].vhost && S.w[i].conn == q && S.w[i].head == id && S.w[i].busy)
                    found = &S.w[i];
            if (!found) {
                fprintf(stderr, "vbd-stress: queue %d: the back end completed descriptor %u that is not in flight\n", q, id);
                fail_now();
                continue;
            }
            found->busy = false;
            vbd_co_wake(found->co);
        }
        for (int i = 0; i < S.qd && S.vhc_gone; i++) {
            struct worker *w = &S.w[i];
            if (w->vhost && w->conn == q && w->busy) {
                w->busy = false;
                w->lost = true;
                vbd_co_wake(w->co);
            }
        }
        if (S.stop_reapers)
            break;
        vbd_co_eventfd_wait(S.vhc.q[q].call_fd);
    }
    S.running--;
    vbd_co_queue_wake_all(&S.changed);
}

/* A dead back end signals no call eventfd: the requests on its rings
 * would wait forever. Its socket tells: the back end sends nothing on it
 * while the rings run (no message of ours waits for a reply), so it turns
 * readable only when the back end closes it (EOF; it died) or breaks the
 * protocol. Then the reapers fail what is left on the rings and new
 * requests fail at once, as the NBD client's do on a closed connection:
 * crash mode counts them as not durable. main_co cancels the wait at the
 * end of a run. */
static void vhost_watch(void *arg)
{
    (void)arg;
    int rc = vbd_co_poll_wait(&S.vhc_hup, S.vhc.sock, POLLIN);
    if (rc != -ECANCELED) {
        char byte;
        if (rc >= 0 && recv(S.vhc.sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
            fprintf(stderr, "vbd-stress: '%s' sent a message while the rings run\n", S.vu_sock);
            fail_now();
        } else if (!S.crash_ready) {
            fprintf(stderr, "vbd-stress: the vhost-user back end at '%s' closed its socket\n", S.vu_sock);
        }
        S.vhc_gone = true;
        for (int q = 0; q < S.queues; q++)
            eventfd_write(S.vhc.q[q].call_fd, 1); /* the reapers fail the requests on the rings */
    }
    S.vhc_watching = false;
    vbd_co_queue_wake_all(&S.changed);
}

/* --flush-marks: a syscall strace shows with its words, that fails
 * (ENOENT) and changes nothing: where a flush was sent and acknowledged in
 * the trace's order. A traced thread waits in each syscall until strace has
 * taken it, so what the trace lists before the issue mark happened before
 * the flush was sent, and what the server did before its reply is listed
 * before the acked mark. */
static void flush_mark(uint64_t n, const char *what)
{
    char path[64];
    snprintf(path, sizeof(path), "/vbd-stress-flush/%" PRIu64 "/%s", n, what);
    (void)access(path, F_OK);
}

static int io_once(struct worker *w, enum op op, uint64_t off, uint64_t len, unsigned flags);

static int do_io(struct worker *w, enum op op, uint64_t off, uint64_t len, unsigned flags)
{
    if (op != OP_FLUSH || !S.flush_marks)
        return io_once(w, op, off, len, flags);
    uint64_t n = ++S.flush_marked;
    flush_mark(n, "issue");
    int rc = io_once(w, op, off, len, flags);
    if (rc == 0)
        flush_mark(n, "acked");
    return rc;
}

static int io_once(struct worker *w, enum op op, uint64_t off, uint64_t len, unsigned flags)
{
    if (w->vhost)
        return vhost_io(w, op, off, len);
    struct vbd_backend *be = S.be[w->conn];
    struct iovec iov;
    struct vbd_qiov qiov;
    vbd_qiov_init_buf(&qiov, &iov, w->buf, len);
    switch (op) {
    case OP_READ: return vbd_backend_co_preadv(be, off, len, &qiov, 0);
    case OP_WRITE: return vbd_backend_co_pwritev(be, off, len, &qiov, flags);
    case OP_ZERO: return vbd_backend_co_pwrite_zeroes(be, off, len, flags);
    case OP_ZERO_UNMAP: return vbd_backend_co_pwrite_zeroes(be, off, len, flags | VBD_REQ_MAY_UNMAP);
    case OP_DISCARD: return vbd_backend_co_pdiscard(be, off, len);
    case OP_FLUSH: return vbd_backend_co_flush(be);
    default: return -EINVAL;
    }
}

/* ---- the generator ---- */

static bool overlaps(uint64_t a, uint64_t al, uint64_t b, uint64_t bl) { return a < b + bl && b < a + al; }

/* Does [off, off+len) conflict with a request in flight? Reads may share
 * bytes with reads; nothing else may share a byte (--overlap: mutations
 * may share bytes with each other, not with a read). */
static bool conflicts(const struct worker *self, uint64_t off, uint64_t len, bool mutating)
{
    for (int i = 0; i < S.qd; i++) {
        const struct worker *o = &S.w[i];
        if (o == self || !o->active)
            continue;
        if (!(mutating || o->mutating) || !overlaps(off, len, o->off, o->len))
            continue;
        if (S.overlap && mutating && o->mutating)
            continue;
        return true;
    }
    return false;
}

static void *grow(void *p, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return p;
    *cap = *cap ? 2 * *cap : 16384;
    p = realloc(p, *cap * size);
    if (!p) {
        fprintf(stderr, "vbd-stress: out of memory\n");
        exit(2);
    }
    return p;
}

/* --overlap: a mutation issued on [off, off+len): the last one issued on
 * its bytes, with the ones in flight over it now */
static uint32_t ov_note_issue(const struct worker *self, enum op op, uint64_t off, uint64_t len, uint32_t write_id)
{
    size_t cap = S.ov_cap;
    S.ov = grow(S.ov, (size_t)S.nov + 1, &cap, sizeof(*S.ov));
    S.ov_cap = (uint32_t)cap;
    uint32_t m = ++S.nov;
    S.ov[m] = (struct ov_mut){.off = off, .len = len, .write_id = write_id, .discard = op == OP_DISCARD, .conc = S.nconc,
                              .runs = S.nruns};
    if (op == OP_DISCARD)
        for (uint64_t b = off; b < off + len; b++)
            if (b == off || S.ov_last[b] != S.ov_last[b - 1]) {
                S.ov_runs = grow(S.ov_runs, S.nruns, &S.runs_cap, sizeof(*S.ov_runs));
                S.ov_runs[S.nruns++] = (struct ov_run){.from = b, .prev = S.ov_last[b]};
                S.ov[m].nruns++;
            }
    for (int i = 0; i < S.qd; i++) {
        const struct worker *o = &S.w[i];
        if (o == self || !o->active || !o->ov_mut || !overlaps(off, len, o->off, o->len))
            continue;
        S.ov_conc = grow(S.ov_conc, S.nconc, &S.conc_cap, sizeof(*S.ov_conc));
        S.ov_conc[S.nconc++] = o->ov_mut;
        S.ov[m].nconc++;
    }
    S.overlapped += S.ov[m].nconc != 0;
    for (uint64_t b = off; b < off + len; b++)
        S.ov_last[b] = m;
    return m;
}

/* Another request in flight touches one of the clusters of this one. */
static bool shares_cluster(const struct worker *self, uint64_t off, uint64_t len)
{
    uint64_t c0 = off / S.cluster, c1 = (off + len - 1) / S.cluster;
    for (int i = 0; i < S.qd; i++) {
        const struct worker *o = &S.w[i];
        if (o == self || !o->active || !o->mutating)
            continue;
        if (o->off / S.cluster <= c1 && c0 <= (o->off + o->len - 1) / S.cluster)
            return true;
    }
    return false;
}

/* Hot clusters (or pairs of neighbours) anywhere on the device. */
static void place_hot(int i)
{
    uint64_t nclusters = S.size / S.cluster;
    S.hot[i] = i % 2 && S.hot[i - 1] + 1 < nclusters ? S.hot[i - 1] + 1 : rnd_below(nclusters - 1);
}

static void pick_range(uint64_t *offp, uint64_t *lenp)
{
    uint64_t cs = S.cluster, sc = S.subcluster, off, len;
    uint64_t c = rnd_below(100) < 85 ? S.hot[rnd_below((uint64_t)S.nhot)] : rnd_below(S.size / cs);
    uint64_t base = c * cs;
    switch (rnd_below(8)) {
    case 0: { /* inside one subcluster (a cluster without extended L2), unaligned */
        uint64_t s = base + rnd_below(cs / sc) * sc, r = rnd_below(sc);
        off = s + r;
        len = 1 + rnd_below(sc - r);
        break;
    }
    case 1: { /* inside one cluster, unaligned */
        uint64_t r = rnd_below(cs);
        off = base + r;
        len = 1 + rnd_below(cs - r);
        break;
    }
    case 2: { /* 512-byte (or 4k) aligned inside one cluster */
        uint64_t a = cs >= 4096 && rnd_below(2) ? 4096 : 512, n = cs / a, r = rnd_below(n);
        off = base + r * a;
        len = (1 + rnd_below(n - r)) * a;
        break;
    }
    case 3: /* whole subclusters */ {
        uint64_t n = cs / sc, r = rnd_below(n);
        off = base + r * sc;
        len = (1 + rnd_below(n - r)) * sc;
        break;
    }
    case 4: /* one whole cluster */
        off = base;
        len = cs;
        break;
    case 5: { /* across a cluster boundary */
        uint64_t a = 1 + rnd_below(cs < 8192 ? cs : 8192), b = 1 + rnd_below(cs < 8192 ? cs : 8192);
        off = base + cs - (a > cs ? cs : a);
        len = a + b;
        break;
    }
    case 6: { /* several clusters */
        off = base + (rnd_below(2) ? rnd_below(cs) : 0);
        len = (1 + rnd_below(3)) * cs + (rnd_below(2) ? rnd_below(cs) : 0);
        break;
    }
    default: { /* small, anywhere in the hot cluster or its neighbour */
        off = base + rnd_below(2 * cs);
        len = 1 + rnd_below(4096);
        break;
    }
    }
    if (len > S.max_len)
        len = S.max_len;
    /* round to the transport's alignment */
    uint64_t a = S.align;
    off -= off % a;
    len = (len + a - 1) / a * a;
    if (off >= S.size)
        off = S.size - a;
    if (off + len > S.size)
        len = S.size - off;
    *offp = off;
    *lenp = len;
}

/* --write-once: the requests that write a whole cluster, once */
static bool fills_cluster(enum op op) { return op == OP_WRITE || op == OP_ZERO || op == OP_ZERO_UNMAP; }

static enum op pick_op(void)
{
    /* --flush-pct: that share of flushes, the rest in the usual mix */
    if (S.flush_pct && rnd_below(100) < S.flush_pct)
        return OP_FLUSH;
    uint64_t r = rnd_below(S.flush_pct ? 96 : 100);
    /* zero clusters and discards change metadata under the other requests:
     * half of them then (read 20, write 25, zeroes 20, unmapping zeroes 15,
     * discard 15, flush 5 %) */
    if (S.zero_heavy)
        r = r < 20 ? r : r < 45 ? r + 16 : r < 65 ? 71 + (r - 45) * 8 / 20 : r < 80 ? 79 + (r - 65) * 7 / 15
                                                                              : r < 95 ? 86 + (r - 80) * 10 / 15 : 96;
    if (r < 36)
        return OP_READ;
    if (r < 71)
        return OP_WRITE;
    if (r < 79)
        return S.no_zeroes ? OP_WRITE : OP_ZERO;
    if (r < 86)
        return S.no_zeroes ? OP_WRITE : OP_ZERO_UNMAP;
    if (r < 96)
        return S.no_discard ? OP_WRITE : OP_DISCARD;
    return OP_FLUSH;
}

/* SIGUSR1: stop issuing, as if --ops were reached (a harness ends the run
 * when what it waits for has happened under the requests: a job's end) */
static volatile sig_atomic_t stop_requested;
static void on_sigusr1(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static bool more(void)
{
    if (S.failed || S.crashed || S.issued >= S.max_ops || stop_requested)
        return false;
    return !S.deadline || vbd_clock_ns() < S.deadline;
}

static void apply(enum op op, const uint8_t *buf, uint64_t off, uint64_t len)
{
    switch (op) {
    case OP_WRITE:
        memcpy(S.exp + off, buf, len);
        memset(S.fuzzy + off, 0, len);
        break;
    case OP_ZERO:
    case OP_ZERO_UNMAP:
        memset(S.exp + off, 0, len);
        memset(S.fuzzy + off, 0, len);
        break;
    case OP_DISCARD:
        for (uint64_t i = 0; i < len; i++)
            S.fuzzy[off + i] |= MAY_ZERO | (S.back ? MAY_BACKING : 0);
        break;
    default: break;
    }
}

/* Crash mode: a new mutation on [off, off+len), the last one of its bytes. */
static uint32_t crash_note_issue(uint64_t off, uint64_t len)
{
    if (S.nmuts + 1 >= S.muts_cap) {
        S.muts_cap = S.muts_cap ? 2 * S.muts_cap : 65536;
        S.muts = realloc(S.muts, (size_t)S.muts_cap * sizeof(*S.muts));
        if (!S.muts) {
            fprintf(stderr, "vbd-stress: out of memory\n");
            exit(2);
        }
    }
    uint32_t m = ++S.nmuts;
    S.muts[m].done_at = 0;
    for (uint64_t i = 0; i < len; i++)
        S.last_mut[off + i] = m;
    S.clock++;
    return m;
}

static void crash_make_ready(void)
{
    int fd = open(S.crash_ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "vbd-stress: cannot create '%s': %s\n", S.crash_ready, strerror(errno));
        fail_now();
        return;
    }
    close(fd);
    S.ready_made = true;
    printf("vbd-stress: ready for the crash after %" PRIu64 " requests\n", S.issued);
}

static void worker_co(void *arg)
{
    struct worker *w = arg;
    while (more()) {
        enum op op = pick_op();
        uint64_t off = 0, len = 0;
        bool mutating = op != OP_READ && op != OP_FLUSH;
        if (op != OP_FLUSH) {
            int tries = 0;
            for (;;) {
                pick_range(&off, &len);
                if (S.write_once && fills_cluster(op)) {
                    off -= off % S.cluster;
                    len = S.size - off < S.cluster ? S.size - off : S.cluster;
                }
                if (!conflicts(w, off, len, mutating))
                    break;
                if (++tries < 8)
                    continue;
                /* everything we picked is busy: wait for a completion */
                S.waits++;
                vbd_co_queue_wait(&S.changed);
                if (!more())
                    goto out;
                tries = 0;
            }
        }
        uint64_t id = ++S.issued;
        if (S.hot_move && id % S.hot_move == 0) {
            /* formats that never free a block allocate only on fresh ground: move a pair there */
            int i = (int)(id / S.hot_move % (uint64_t)((S.nhot + 1) / 2)) * 2;
            place_hot(i);
            if (i + 1 < S.nhot)
                place_hot(i + 1);
        }
        S.counts[op]++;
        if (op != OP_FLUSH && shares_cluster(w, off, len))
            S.collisions++;
        w->active = op != OP_FLUSH;
        w->mutating = mutating;
        w->ov_mut = 0;
        w->off = off;
        w->len = len;
        struct hist *h = NULL;
        uint32_t write_id = 0;
        unsigned flags = 0;
        if (op == OP_WRITE) {
            write_id = ++S.next_write_id;
            fill(w->buf, off, len, write_id);
            if (!w->vhost && rnd_below(8) == 0)
                flags |= VBD_REQ_FUA;
            /* a whole cluster may be stored compressed: the compressed
             * allocation path meets the others on the hot clusters too.
             * One cluster at a time: a compressed write over an allocated
             * cluster fails (as QEMU's) and a longer one could have
             * written its other clusters before failing */
            if (S.compress && off % S.cluster == 0 && len == S.cluster && rnd_below(3) == 0) {
                flags = VBD_REQ_COMPRESSED;
                S.compressed_writes++;
            }
        }
        if (S.overlap && mutating)
            w->ov_mut = ov_note_issue(w, op, off, len, write_id);
        uint32_t mut = 0;
        uint64_t flush_issued_at = 0;
        if (S.crash_ready) {
            if (mutating)
                mut = crash_note_issue(off, len);
            else if (op == OP_FLUSH)
                flush_issued_at = ++S.clock;
            if (!S.ready_made && S.issued >= S.crash_after)
                crash_make_ready();
        }
        if (mutating) {
            h = &S.hist[S.seq % HISTORY];
            *h = (struct hist){.seq = ++S.seq, .id = write_id, .op = op, .off = off, .len = len};
        }
        if (S.verbose)
            printf("#%" PRIu64 " w%d %s off=%" PRIu64 " len=%" PRIu64 "\n", id, w->id, op_names[op], off, len);
        size_t logged = SIZE_MAX;
        if (S.points && mutating) {
            if (S.nlog == S.log_cap) {
                S.log_cap = S.log_cap ? 2 * S.log_cap : 16384;
                S.log = realloc(S.log, S.log_cap * sizeof(*S.log));
                if (!S.log) {
                    fprintf(stderr, "vbd-stress: out of memory\n");
                    exit(2);
                }
            }
            logged = S.nlog++;
            S.log[logged] = (struct logged){.off = off, .len = len, .id = write_id, .issue_ns = vbd_clock_ns()};
        }
        int rc = do_io(w, op, off, len, flags);
        if (logged != SIZE_MAX && rc == 0)
            S.log[logged].done_ns = vbd_clock_ns();
        if (h && h->seq == S.hist[(h->seq - 1) % HISTORY].seq)
            h->done_seq = ++S.completed;
        if (rc == -EIO && S.write_once && fills_cluster(op)) {
            /* the cluster holds data (from this run or from before it):
             * refused, nothing changed (the reads check it; in crash mode
             * the bytes' last mutation never completes: not checked) */
            S.rewrites_refused++;
            S.written[off / S.cluster] = 1;
        } else if (rc < 0 && S.ready_made) {
            /* the server is gone: the requests in flight and this one are not durable */
            if (!S.crashed)
                printf("vbd-stress: the server is gone (%s failed: %s) after %" PRIu64 " requests\n", op_names[op],
                       strerror(-rc), S.issued);
            S.crashed = true;
        } else if (rc == -EIO && (flags & VBD_REQ_COMPRESSED)) {
            /* as QEMU 7.2's qcow2: a compressed write into a cluster that
             * already has a host cluster fails and changes nothing (the
             * model keeps the old data; the reads check it did) */
            S.compressed_refused++;
        } else if (rc < 0) {
            fprintf(stderr, "vbd-stress: seed=%" PRIu64 ": %s off=%" PRIu64 " len=%" PRIu64 " failed: %s\n", S.seed,
                    op_names[op], off, len, strerror(-rc));
            fail_now();
        } else if (S.write_once && fills_cluster(op) && S.written[off / S.cluster]) {
            fprintf(stderr,
                    "vbd-stress: seed=%" PRIu64 ": %s off=%" PRIu64 " len=%" PRIu64
                    " went through, but cluster %" PRIu64 " holds data already (--write-once: it must be refused)\n",
                    S.seed, op_names[op], off, len, off / S.cluster);
            fail_now();
        } else if (op == OP_READ) {
            check_read(w->buf, off, len, "read");
        } else {
            /* at completion: in crash mode a request parked when the server died never ran */
            if (mutating)
                memset(S.touched + off / 512, 1, (off + len + 511) / 512 - off / 512);
            if (!w->ov_mut) /* --overlap: the byte's candidates say it */
                apply(op, w->buf, off, len);
            if (S.write_once && fills_cluster(op))
                S.written[off / S.cluster] = 1;
            if (mut)
                S.muts[mut].done_at = ++S.clock | (flags & VBD_REQ_FUA ? DURABLE_FUA : 0);
            if (flush_issued_at > S.durable_point)
                S.durable_point = flush_issued_at;
        }
        w->active = false;
        w->ov_mut = 0;
        vbd_co_queue_wake_all(&S.changed);
    }
out:
    S.running--;
    vbd_co_queue_wake_all(&S.changed);
}

/* ---- setup, final check, main ---- */

static int load_raw(const char *path, uint8_t *dst, uint64_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "vbd-stress: cannot open '%s': %s\n", path, strerror(errno));
        return -1;
    }
    uint64_t done = 0;
    while (done < size) {
        ssize_t n = pread(fd, dst + done, size - done, (off_t)done);
        if (n < 0) {
            fprintf(stderr, "vbd-stress: cannot read '%s': %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0)
            break; /* shorter file: the rest reads as zeroes */
        done += (uint64_t)n;
    }
    close(fd);
    return 0;
}

static int save_raw(const char *path, const uint8_t *src, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "vbd-stress: cannot create '%s': %s\n", path, strerror(errno));
        return -1;
    }
    uint64_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, src + done, size - done, (off_t)done);
        if (n <= 0) {
            fprintf(stderr, "vbd-stress: cannot write '%s': %s\n", path, n < 0 ? strerror(errno) : "short write");
            close(fd);
            return -1;
        }
        done += (uint64_t)n;
    }
    close(fd);
    return 0;
}

/* The byte at dev_off as mutation m leaves it. */
static uint8_t logged_byte(const struct logged *m, uint64_t dev_off)
{
    return m->id ? (uint8_t)(word_for(m->id, dev_off & ~7ull) >> (8 * (dev_off & 7))) : 0;
}

/*
 * --points: a graph change between TS and TR froze RAW (an external
 * snapshot's base, an internal snapshot). Each byte of RAW must be what
 * one of its mutations left (or the initial content) that may have been
 * the byte's value at the change: issued before TR (nothing newer than
 * the change), and not superseded before TS: a mutation is superseded
 * when another on the byte was issued after it completed and itself
 * completed before TS (that one landed later, and before the change).
 * The initial content is superseded by any mutation completed before TS.
 * Without --overlap the mutations of a byte form a sequence and this is
 * "the last one completed before TS, or one in flight across the
 * change"; with --overlap, mutations in flight together on a byte may
 * have landed in either order and both stay candidates until one
 * completed before the issue of a later one.
 * The times are taken before the request went out and after its reply
 * came back, so the window is if anything wider than the truth: no false
 * alarm. Returns the number of points that failed.
 */
static int check_points(void)
{
    FILE *f = fopen(S.points, "r");
    if (!f) {
        fprintf(stderr, "vbd-stress: cannot open '%s': %s\n", S.points, strerror(errno));
        return 1;
    }
    /* sup: per byte, 1 + the log index of the mutation issued last on it
     * among those completed before TS (the log is in issue order), 0: none */
    uint8_t *exp = malloc(S.size), *got = malloc(S.size), *ok = malloc(S.size);
    uint32_t *sup = malloc(S.size * sizeof(*sup));
    if (!exp || !got || !ok || !sup) {
        fprintf(stderr, "vbd-stress: no memory to check the points\n");
        fclose(f);
        free(exp);
        free(got);
        free(ok);
        free(sup);
        return 1;
    }
    int bad_points = 0, npoints = 0;
    unsigned long long ts, tr;
    char path[4096];
    while (fscanf(f, "%llu %llu %4095s", &ts, &tr, path) == 3) {
        npoints++;
        memset(exp, 0, S.size);
        memset(got, 0, S.size);
        memset(sup, 0, S.size * sizeof(*sup));
        if ((S.init && load_raw(S.init, exp, S.size) < 0) || load_raw(path, got, S.size) < 0) {
            bad_points++;
            continue;
        }
        uint64_t before = 0, window = 0, after = 0;
        for (size_t i = 0; i < S.nlog; i++) {
            const struct logged *m = &S.log[i];
            if (m->done_ns && m->done_ns < ts) {
                for (uint64_t b = m->off; b < m->off + m->len; b++) {
                    exp[b] = logged_byte(m, b); /* for the message: the one issued last of them */
                    sup[b] = (uint32_t)i + 1;
                }
                before++;
            }
        }
        for (uint64_t b = 0; b < S.size; b++)
            ok[b] = !sup[b] && exp[b] == got[b];
        for (size_t i = 0; i < S.nlog; i++) {
            const struct logged *m = &S.log[i];
            if (m->issue_ns > tr) {
                after++;
                continue;
            }
            if (!m->done_ns || m->done_ns >= ts)
                window++;
            for (uint64_t b = m->off; b < m->off + m->len; b++)
                if (!ok[b] && got[b] == logged_byte(m, b) &&
                    !(m->done_ns && sup[b] && m->done_ns < S.log[sup[b] - 1].issue_ns))
                    ok[b] = 1;
        }
        uint64_t nbad = 0, first = 0;
        for (uint64_t b = S.size; b-- > 0;)
            if (!ok[b]) {
                nbad++;
                first = b;
            }
        if (nbad) {
            bad_points++;
            fprintf(stderr,
                    "vbd-stress: POINT %s (change between %llu and %llu ns): %" PRIu64 " bytes neither the last mutation "
                    "before it nor one in flight across it, the first at %" PRIu64 ": expected 0x%02x, got 0x%02x\n",
                    path, ts, tr, nbad, first, exp[first], got[first]);
            describe_word(got, 0, first);
            for (size_t i = S.nlog; i-- > 0;) {
                const struct logged *m = &S.log[i];
                if (first >= m->off && first < m->off + m->len)
                    fprintf(stderr, "vbd-stress:   %s #%u off=%" PRIu64 " len=%" PRIu64 " issued %+lld ns, done %+lld ns from TS\n",
                            m->id ? "write" : "write-zeroes", m->id, m->off, m->len, (long long)(m->issue_ns - ts),
                            m->done_ns ? (long long)(m->done_ns - ts) : 0);
            }
        } else {
            printf("vbd-stress: point %s: %" PRIu64 " mutations before, %" PRIu64 " across, %" PRIu64 " after: ok\n", path,
                   before, window, after);
        }
    }
    fclose(f);
    free(exp);
    free(got);
    free(ok);
    free(sup);
    if (!npoints) {
        fprintf(stderr, "vbd-stress: no point in '%s'\n", S.points);
        return 1;
    }
    return bad_points;
}

struct run {
    int rc;
    char err[512];
};

static int open_targets(struct run *r)
{
    struct vbd_error *err = NULL;
    if (S.transport == T_LIB) {
        unsigned flags = VBD_OPEN_RDWR | VBD_OPEN_UNMAP;
        bool writethrough = false;
        if (tool_aio_flags(S.aio, &flags) < 0)
            return -1;
        S.node[0] = tool_open(S.image, S.fmt, S.image_opts, flags, S.cache, &writethrough);
        if (!S.node[0])
            return -1;
        S.conns = 1;
    } else if (S.transport == T_NBD) {
        for (int i = 0; i < S.conns; i++) {
            struct json_object *opts = json_object_new_object();
            json_object_object_add(opts, "driver", json_object_new_string("nbd"));
            if (S.reconnect_delay)
                json_object_object_add(opts, "reconnect-delay", json_object_new_int64((int64_t)S.reconnect_delay));
            S.node[i] = vbd_open(S.nbd_uri, opts, VBD_OPEN_RDWR | VBD_OPEN_UNMAP, &err);
            if (!S.node[i]) {
                snprintf(r->err, sizeof(r->err), "%s", err ? err->msg : "cannot connect");
                vbd_error_free(err);
                return -1;
            }
        }
    } else {
        return 0;
    }
    for (int i = 0; i < S.conns; i++) {
        struct vbd_backend_opts bo = {.discard_unmap = true};
        S.be[i] = vbd_backend_new(S.node[i], &bo, &err);
        if (!S.be[i]) {
            snprintf(r->err, sizeof(r->err), "%s", err ? err->msg : "cannot attach");
            vbd_error_free(err);
            return -1;
        }
    }
    S.size = S.node[0]->size;
    return 0;
}

static void close_targets(void)
{
    for (int i = 0; i < VHC_MAX_QUEUES; i++) {
        if (S.be[i])
            vbd_backend_free(S.be[i]);
        if (S.node[i])
            vbd_node_unref(S.node[i]);
        S.be[i] = NULL;
        S.node[i] = NULL;
    }
}

static void read_back(struct worker *w, const char *what)
{
    for (uint64_t off = 0; off < S.size && !S.failed; off += S.max_len) {
        uint64_t len = S.size - off < S.max_len ? S.size - off : S.max_len;
        int rc = do_io(w, OP_READ, off, len, 0);
        if (rc < 0) {
            fprintf(stderr, "vbd-stress: seed=%" PRIu64 ": %s off=%" PRIu64 " len=%" PRIu64 " failed: %s\n", S.seed, what,
                    off, len, strerror(-rc));
            fail_now();
            return;
        }
        check_read(w->buf, off, len, what);
    }
}

/* Reads the whole device back (pinning every uncertain byte), through each
 * transport when there are two (worker 0 is a vhost-user one, worker 1 an
 * NBD one), then flushes every queue and connection. */
static void final_check(void)
{
    read_back(&S.w[0], S.mixed ? "final read-back (vhost-user)" : "final read-back");
    if (S.mixed)
        read_back(&S.w[1], "final read-back (NBD)");
    for (int k = 0; k < (S.mixed ? 2 : 1) && !S.failed; k++) {
        bool vhost = S.w[k].vhost;
        for (int i = 0; i < (vhost ? S.queues : S.conns); i++) {
            /* the flush of queue i goes from a worker of that queue, with
             * its own header and status byte: one status byte written by
             * the iothreads of two queues in turn is ordered only through
             * this process, which ThreadSanitizer in the daemon cannot see */
            struct worker *w = &S.w[k];
            for (int j = 0; j < S.qd; j++)
                if (S.w[j].vhost == vhost && S.w[j].conn == i) {
                    w = &S.w[j];
                    break;
                }
            w->co = vbd_co_self(); /* the reaper wakes this pass, not the worker's finished coroutine */
            w->conn = i;
            int rc = do_io(w, OP_FLUSH, 0, 0, 0);
            if (rc < 0) {
                fprintf(stderr, "vbd-stress: seed=%" PRIu64 ": final flush failed: %s\n", S.seed, strerror(-rc));
                fail_now();
            }
        }
    }
}

static void open_co(void *arg)
{
    struct run *r = arg;
    if (open_targets(r) < 0)
        r->rc = 2;
}

static void close_co(void *arg) { close_targets(); }

static void main_co(void *arg)
{
    struct run *r = arg;
    if (S.vu_sock) {
        S.running += S.queues;
        for (int q = 0; q < S.queues; q++)
            vbd_co_wake(vbd_co_create(vhost_reaper, (void *)(intptr_t)q));
        S.vhc_watching = true;
        vbd_co_wake(vbd_co_create(vhost_watch, NULL));
    }
    S.running += S.qd;
    for (int i = 0; i < S.qd; i++)
        vbd_co_wake(S.w[i].co = vbd_co_create(worker_co, &S.w[i]));
    while (S.running > (S.vu_sock ? S.queues : 0))
        vbd_co_queue_wait(&S.changed);
    if (!S.failed && !S.crash_ready) {
        /* the final pass runs on worker 0's (and 1's) slot from this coroutine */
        S.w[0].co = vbd_co_self();
        if (S.mixed)
            S.w[1].co = vbd_co_self();
        final_check();
    }
    if (S.vu_sock) {
        S.stop_reapers = true;
        for (int q = 0; q < S.queues; q++)
            eventfd_write(S.vhc.q[q].call_fd, 1);
        vbd_co_poll_wait_cancel(&S.vhc_hup);
        while (S.running || S.vhc_watching)
            vbd_co_queue_wait(&S.changed);
    }
    r->rc = S.failed ? 1 : 0;
}

static uint64_t parse_num(const char *s, const char *opt)
{
    int64_t v = tool_cvtnum(s);
    if (v < 0) {
        fprintf(stderr, "vbd-stress: invalid value '%s' for %s\n", s, opt);
        exit(2);
    }
    return (uint64_t)v;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    vbd_log_set_prog("vbd-stress");
    struct sigaction sa = {.sa_handler = on_sigusr1, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    enum { O_SEED = 256, O_OPS, O_SECONDS, O_QD, O_CS, O_SUB, O_HOT, O_INIT, O_BACKING, O_SHADOW, O_NODISCARD, O_ALIGN,
           O_NBD, O_CONNS, O_VU, O_QUEUES, O_IMGOPTS, O_COMPRESS, O_NOZEROES, O_ZEROHEAVY, O_CRASHREADY, O_CRASHAFTER,
           O_MASKOUT, O_HOTMOVE, O_RANGE, O_TOUCHED, O_POINTS, O_RECONNECT, O_WRITEONCE, O_CLEANSTOP, O_OVERLAP,
           O_FLUSHMARKS, O_FLUSHPCT };
    static const struct option lo[] = {
        {"seed", required_argument, NULL, O_SEED},       {"ops", required_argument, NULL, O_OPS},
        {"seconds", required_argument, NULL, O_SECONDS}, {"qd", required_argument, NULL, O_QD},
        {"cluster-size", required_argument, NULL, O_CS}, {"subclusters", no_argument, NULL, O_SUB},
        {"hot", required_argument, NULL, O_HOT},         {"init", required_argument, NULL, O_INIT},
        {"backing", required_argument, NULL, O_BACKING}, {"shadow-out", required_argument, NULL, O_SHADOW},
        {"no-discard", no_argument, NULL, O_NODISCARD},  {"align", required_argument, NULL, O_ALIGN},
        {"nbd", required_argument, NULL, O_NBD},         {"conns", required_argument, NULL, O_CONNS},
        {"vhost-user", required_argument, NULL, O_VU},   {"queues", required_argument, NULL, O_QUEUES},
        {"image-opts", no_argument, NULL, O_IMGOPTS},    {"compress", no_argument, NULL, O_COMPRESS},
        {"no-zeroes", no_argument, NULL, O_NOZEROES},    {"format", required_argument, NULL, 'f'},
        {"zero-heavy", no_argument, NULL, O_ZEROHEAVY},    {"crash-ready", required_argument, NULL, O_CRASHREADY},
        {"crash-after", required_argument, NULL, O_CRASHAFTER}, {"mask-out", required_argument, NULL, O_MASKOUT},
        {"clean-stop", no_argument, NULL, O_CLEANSTOP},
        {"hot-move", required_argument, NULL, O_HOTMOVE},
        {"range", required_argument, NULL, O_RANGE},
        {"touched-out", required_argument, NULL, O_TOUCHED},
        {"points", required_argument, NULL, O_POINTS},
        {"reconnect-delay", required_argument, NULL, O_RECONNECT},
        {"write-once", no_argument, NULL, O_WRITEONCE},
        {"overlap", no_argument, NULL, O_OVERLAP},
        {"flush-marks", no_argument, NULL, O_FLUSHMARKS},
        {"flush-pct", required_argument, NULL, O_FLUSHPCT},
        {"cache", required_argument, NULL, 't'},         {"aio", required_argument, NULL, 'i'},
        {"verbose", no_argument, NULL, 'v'},             {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    bool have_seed = false, ops_given = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "f:t:i:vh", lo, NULL)) != -1) {
        switch (opt) {
        case O_SEED: S.seed = strtoull(optarg, NULL, 0); have_seed = true; break;
        case O_OPS: S.max_ops = parse_num(optarg, "--ops"); ops_given = true; break;
        case O_SECONDS: S.seconds = atof(optarg); break;
        case O_QD: S.qd = atoi(optarg); break;
        case O_CS: S.cluster = parse_num(optarg, "--cluster-size"); break;
        case O_SUB: S.subclusters = true; break;
        case O_HOT: S.nhot = atoi(optarg); break;
        case O_INIT: S.init = optarg; break;
        case O_BACKING: S.backing = optarg; break;
        case O_SHADOW: S.shadow_out = optarg; break;
        case O_NODISCARD: S.no_discard = true; break;
        case O_ALIGN: S.align = parse_num(optarg, "--align"); break;
        case O_NBD: S.nbd_uri = optarg; break;
        case O_CONNS: S.conns = atoi(optarg); break;
        case O_VU: S.vu_sock = optarg; break;
        case O_QUEUES: S.queues = atoi(optarg); break;
        case O_IMGOPTS: S.image_opts = true; break;
        case O_COMPRESS: S.compress = true; break;
        case O_WRITEONCE: S.write_once = true; break;
        case O_OVERLAP: S.overlap = true; break;
        case O_FLUSHMARKS: S.flush_marks = true; break;
        case O_FLUSHPCT:
            if ((S.flush_pct = (unsigned)parse_num(optarg, "--flush-pct")) > 100) {
                fprintf(stderr, "vbd-stress: invalid value '%s' for --flush-pct (a percentage)\n", optarg);
                return 2;
            }
            break;
        case O_NOZEROES: S.no_zeroes = true; break;
        case O_ZEROHEAVY: S.zero_heavy = true; break;
        case O_CRASHREADY: S.crash_ready = optarg; break;
        case O_CRASHAFTER: S.crash_after = parse_num(optarg, "--crash-after"); break;
        case O_MASKOUT: S.mask_out = optarg; break;
        case O_CLEANSTOP: S.clean_stop = true; break;
        case O_HOTMOVE: S.hot_move = parse_num(optarg, "--hot-move"); break;
        case O_RANGE: S.range = parse_num(optarg, "--range"); break;
        case O_TOUCHED: S.touched_out = optarg; break;
        case O_POINTS: S.points = optarg; break;
        case O_RECONNECT: S.reconnect_delay = parse_num(optarg, "--reconnect-delay"); break;
        case 'f': S.fmt = optarg; break;
        case 't': S.cache = optarg; break;
        case 'i': S.aio = optarg; break;
        case 'v': S.verbose = true; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fputs(usage_text, stderr); return 2;
        }
    }
    S.transport = S.nbd_uri ? T_NBD : S.vu_sock ? T_VHOST : T_LIB;
    S.mixed = S.nbd_uri && S.vu_sock;
    if (!S.queues)
        S.queues = S.transport == T_VHOST ? S.conns : 1; /* --conns alone was the queues of --vhost-user */
    if (S.transport == T_LIB)
        S.conns = 1;
    if (S.compress && S.transport != T_LIB) {
        fprintf(stderr, "vbd-stress: --compress needs an IMAGE opened in this process\n");
        return 2;
    }
    if (S.crash_ready && (S.transport == T_LIB || S.mixed)) {
        /* in process the crash would take the model with it */
        fprintf(stderr, "vbd-stress: --crash-ready needs --nbd or --vhost-user alone\n");
        return 2;
    }
    if (S.points && (!S.no_discard || S.crash_ready)) {
        /* a discard leaves a byte "old or zero": no single value to expect */
        fprintf(stderr, "vbd-stress: --points needs --no-discard (and no crash mode)\n");
        return 2;
    }
    if (S.overlap && (S.crash_ready || S.compress || S.write_once)) {
        /* a refused write (compressed, write-once) would stay a candidate of its bytes */
        fprintf(stderr, "vbd-stress: --overlap goes with none of --crash-ready, --compress, --write-once\n");
        return 2;
    }
    if (S.crash_ready)
        S.no_discard = true; /* the model of a crash has no "old or zero" bytes */
    if (S.transport == T_LIB) {
        if (optind != argc - 1) {
            fprintf(stderr, "vbd-stress: expected exactly one image (or --nbd / --vhost-user); see --help\n");
            return 2;
        }
        S.image = argv[optind];
    } else if (optind != argc) {
        fprintf(stderr, "vbd-stress: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (S.qd < 1 + S.mixed || S.qd > 64 || S.conns < 1 || S.conns > VHC_MAX_QUEUES || S.queues < 1 ||
        S.queues > VHC_MAX_QUEUES || S.nhot < 1 || S.nhot > 1024 ||
        S.cluster < 512 || (S.cluster & (S.cluster - 1)) || S.align < 1 || S.seconds < 0) {
        fprintf(stderr, "vbd-stress: --qd must be 1..64 (2..64 with two transports), --conns/--queues 1..%d, --hot 1..1024, "
                        "--cluster-size a power of two >= 512, --align >= 1\n",
                VHC_MAX_QUEUES);
        return 2;
    }
    if (S.vu_sock && S.align % 512)
        S.align = S.align < 512 ? 512 : (S.align + 511) / 512 * 512;
    S.subcluster = S.subclusters ? S.cluster / 32 : S.cluster;
    if (S.subcluster < S.align)
        S.subcluster = S.align;
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        S.seed = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
        S.seed %= 1000000000000ull;
    }
    S.rng = S.seed;
    S.max_len = 4 * S.cluster;
    if (S.max_len < 65536)
        S.max_len = 65536;
    if (S.max_len > (4u << 20))
        S.max_len = 4u << 20;
    if (S.seconds > 0) {
        S.deadline = vbd_clock_ns() + (uint64_t)(S.seconds * 1e9);
        if (!ops_given)
            S.max_ops = UINT64_MAX;
    }
    if (S.crash_ready && !ops_given)
        S.max_ops = UINT64_MAX; /* until the server dies */

    struct run r = {0};
    uint64_t vhost_size = 0;
    if (S.vu_sock) {
        uint16_t ring = 8;
        int nvw = S.mixed ? (S.qd + 1) / 2 : S.qd; /* workers on the vhost-user rings */
        int per_queue = (nvw + S.queues - 1) / S.queues;
        while (ring < 3 * per_queue)
            ring *= 2;
        size_t mem = (size_t)nvw * (S.max_len + 8192) + (size_t)S.queues * 3 * 65536 + (2u << 20);
        if (vhc_open(&S.vhc, S.vu_sock, S.queues, ring, mem, 0, r.err, sizeof(r.err)) < 0) {
            fprintf(stderr, "vbd-stress: %s\n", r.err);
            vhc_close(&S.vhc);
            return 2;
        }
        S.size = vhost_size = S.vhc.capacity * 512;
        S.vhc_discard = S.vhc.features & (1ull << VIRTIO_BLK_F_DISCARD);
        S.vhc_zeroes = S.vhc.features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
        if (!S.vhc_discard)
            S.no_discard = true;
        if (!S.vhc_zeroes || (S.vhc.features & (1ull << VIRTIO_BLK_F_RO))) {
            fprintf(stderr, "vbd-stress: '%s' is read-only or lacks write-zeroes\n", S.vu_sock);
            vhc_close(&S.vhc);
            return 2;
        }
    }
    for (int i = 0, nv = 0, nn = 0; i < S.qd; i++) {
        struct worker *w = &S.w[i];
        w->id = i;
        w->vhost = S.vu_sock && (!S.mixed || i % 2 == 0);
        if (w->vhost) {
            w->conn = nv % S.queues;
            w->head = (uint16_t)(3 * (nv / S.queues));
            nv++;
        } else {
            w->conn = nn++ % S.conns;
        }
        if (w->vhost) {
            w->hdr = vhc_alloc(&S.vhc, 64, 64);
            w->status = (uint8_t *)w->hdr + sizeof(*w->hdr);
            w->seg = (void *)((uint8_t *)w->hdr + 32);
            w->buf = vhc_alloc(&S.vhc, S.max_len, 4096);
            if (!w->hdr || !w->buf) {
                fprintf(stderr, "vbd-stress: guest memory too small\n");
                return 2;
            }
        } else {
            w->buf = vbd_alloc_aligned(4096, S.max_len);
        }
    }

    /* open first to learn the size, then set up the model, then run */
    if (S.transport != T_VHOST)
        vbd_co_run_sync(open_co, &r);
    int rc = 0;
    if (r.rc) {
        if (r.err[0])
            fprintf(stderr, "vbd-stress: %s\n", r.err);
        rc = 2;
        goto out;
    }
    if (S.mixed && S.size != vhost_size) {
        fprintf(stderr, "vbd-stress: the NBD export has %" PRIu64 " bytes, the vhost-user one %" PRIu64 "\n", S.size, vhost_size);
        rc = 2;
        goto out;
    }
    if (S.range && S.range < S.size)
        S.size = S.range;
    if (S.size < 2 * S.cluster || S.size % S.align) {
        fprintf(stderr, "vbd-stress: the device (%" PRIu64 " bytes) must hold at least two clusters of %" PRIu64 "\n",
                S.size, S.cluster);
        rc = 2;
        goto out;
    }
    S.exp = calloc(1, S.size);
    S.touched = calloc(1, (S.size + 511) / 512);
    S.fuzzy = calloc(1, S.size);
    if (S.write_once)
        S.written = calloc(1, S.size / S.cluster + 1);
    if (S.overlap && !(S.ov_last = calloc(S.size, sizeof(*S.ov_last)))) {
        fprintf(stderr, "vbd-stress: no memory for the overlap model of %" PRIu64 " bytes\n", S.size);
        rc = 2;
        goto out;
    }
    if (S.crash_ready && !(S.last_mut = calloc(S.size, sizeof(*S.last_mut)))) {
        fprintf(stderr, "vbd-stress: no memory for the crash model of %" PRIu64 " bytes\n", S.size);
        rc = 2;
        goto out;
    }
    if (S.backing) {
        S.back = calloc(1, S.size);
        if (load_raw(S.backing, S.back, S.size) < 0) {
            rc = 2;
            goto out;
        }
    }
    if (S.init && load_raw(S.init, S.exp, S.size) < 0) {
        rc = 2;
        goto out;
    }
    /* hot clusters: spread over the device, some of them neighbours so
     * that requests across a boundary meet requests inside either cluster */
    S.hot = calloc((size_t)S.nhot, sizeof(*S.hot));
    for (int i = 0; i < S.nhot; i++)
        place_hot(i);
    if (S.mixed)
        printf("vbd-stress: seed=%" PRIu64 " target=%s + %s size=%" PRIu64 " cluster=%" PRIu64 " subcluster=%" PRIu64
               " qd=%d queues=%d conns=%d\n",
               S.seed, S.vu_sock, S.nbd_uri, S.size, S.cluster, S.subcluster, S.qd, S.queues, S.conns);
    else
        printf("vbd-stress: seed=%" PRIu64 " target=%s size=%" PRIu64 " cluster=%" PRIu64 " subcluster=%" PRIu64 " qd=%d %s=%d\n",
               S.seed, S.image ? S.image : S.nbd_uri ? S.nbd_uri : S.vu_sock, S.size, S.cluster, S.subcluster, S.qd,
               S.transport == T_VHOST ? "queues" : "conns", S.transport == T_VHOST ? S.queues : S.conns);
    vbd_co_run_sync(main_co, &r);
    rc = r.rc;
    if (rc == 0 && S.crash_ready && !S.crashed) {
        fprintf(stderr, "vbd-stress: seed=%" PRIu64 ": crash mode, but the server answered all %" PRIu64 " requests\n",
                S.seed, S.issued);
        rc = 1;
    }
    if (rc == 0 && S.shadow_out && save_raw(S.shadow_out, S.exp, S.size) < 0)
        rc = 1;
    if (rc == 0 && S.points && check_points())
        rc = 1;
    if (rc == 0 && S.touched_out && save_raw(S.touched_out, S.touched, (S.size + 511) / 512) < 0)
        rc = 1;
    if (rc == 0 && S.crash_ready && S.mask_out) {
        /* reuse fuzzy as the mask: 0xff where the last mutation is not durable */
        uint64_t open_bytes = 0;
        for (uint64_t b = 0; b < S.size; b++) {
            uint32_t m = S.last_mut[b];
            uint64_t d = m ? S.muts[m].done_at : 0;
            bool durable = !m || (d & DURABLE_FUA) || (d && (S.clean_stop || d < S.durable_point));
            S.fuzzy[b] = durable ? 0 : 0xff;
            open_bytes += !durable;
        }
        printf("vbd-stress: crash: %" PRIu32 " mutations, %" PRIu64 " bytes not durable at the crash\n", S.nmuts,
               open_bytes);
        if (save_raw(S.mask_out, S.fuzzy, S.size) < 0)
            rc = 1;
    }
    printf("vbd-stress: %s: seed=%" PRIu64 " %" PRIu64 " ops (%" PRIu64 " reads, %" PRIu64 " writes, %" PRIu64
           " write-zeroes, %" PRIu64 " with unmap, %" PRIu64 " discards, %" PRIu64 " flushes, %" PRIu64 " compressed, %" PRIu64 " of them refused, %" PRIu64 " rewrites refused), %" PRIu64
           " met another request in flight on the same cluster, %" PRIu64 " uncertain bytes pinned\n",
           rc ? "FAILED" : "ok", S.seed, S.issued, S.counts[OP_READ], S.counts[OP_WRITE], S.counts[OP_ZERO],
           S.counts[OP_ZERO_UNMAP], S.counts[OP_DISCARD], S.counts[OP_FLUSH], S.compressed_writes, S.compressed_refused, S.rewrites_refused, S.collisions, S.pinned);
    if (S.overlap)
        printf("vbd-stress: overlap: %" PRIu64 " of %" PRIu32 " mutations were issued over another in flight on the same bytes, %" PRIu64
               " bytes read back where more than one could have landed last\n",
               S.overlapped, S.nov, S.ov_pinned);
out:
    if (S.transport != T_VHOST)
        vbd_co_run_sync(close_co, NULL);
    if (S.vu_sock)
        vhc_close(&S.vhc);
    for (int i = 0; i < S.qd; i++)
        if (!S.w[i].vhost)
            free(S.w[i].buf);
    free(S.exp);
    free(S.fuzzy);
    free(S.written);
    free(S.touched);
    free(S.last_mut);
    free(S.ov_last);
    free(S.ov);
    free(S.ov_conc);
    free(S.ov_runs);
    free(S.muts);
    free(S.log);
    free(S.back);
    free(S.hot);
    return rc;
}
