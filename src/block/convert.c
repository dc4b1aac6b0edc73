/* SPDX-License-Identifier: MIT */
/*
 * imageops: convert's copy loop, the concatenation of several sources into
 * one target, by several coroutines at once.
 */
#include "imageops-internal.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* An extent of a mapped source (see vbd_convert_source_mapped), in the
 * concatenation's offsets: its block status, and where its data is read
 * (rnode at rmap; NULL: through the source). */
struct convert_ext {
    uint64_t start, end;
    int si, st;
    struct vbd_node *rnode;
    uint64_t rmap;
};

/* Extents mapped at a time: 4096 x 40 bytes. Each window ends in a
 * barrier (the workers finish, the caller maps the next), so it is sized
 * for a few per image: a converted 2 GiB image with 512 data extents
 * needs one. */
#define CONVERT_WINDOW 4096

struct convert {
    struct vbd_node *const *src;
    int nsrc;
    uint64_t *src_start; /* offset of each source in the concatenation; [nsrc] = total */
    uint64_t total;
    struct vbd_node *dst;
    const struct vbd_copy_opts *o;
    struct vbd_imageops_ctl *ctl;
    uint64_t next; /* next offset to hand out */
    uint64_t next_write_seq, seq;
    int error;
    struct vbd_error *err; /* the first failure's */
    unsigned running;
    struct vbd_co_queue order_q, done_q;
    /* block status may yield (nbd): without it, workers would claim the same offset */
    struct vbd_co_mutex claim_lock;
    /* With threads (o->threads > 1), one worker per thread: claims, errors
     * and the end are under this lock instead (block status of a
     * multi-loop chain does not yield, so it is never held across one). */
    bool threaded;
    pthread_mutex_t thread_lock;
    /* The extent the last block status described, in source bs_src's offsets:
     * asked once for the whole rest of the source and handed out chunk by
     * chunk (on tmpfs each SEEK_DATA/SEEK_HOLE scans the page cache, asking
     * per chunk made the lseeks the convert's main cost). Only the claiming
     * worker reads it, under claim_lock. */
    int bs_src;
    uint64_t bs_start, bs_end;
    int bs_status;
    /* Threaded with a source that is not multi-loop (a qcow2 image): the
     * caller's loop, the source's home, maps [next, win_end) into win
     * while no worker runs, and the workers claim from win without block
     * status (which would hop to that loop under thread_lock). */
    bool mapped;
    struct convert_ext *win;
    unsigned win_n, win_i;
    uint64_t win_end;
    /* Threaded to a target that is not multi-loop (a new qcow2 image): its
     * metadata stays on its home loop, where each worker takes its turn
     * (next_write_seq, in claim order unless out_of_order: clusters are
     * allocated in guest order, as qemu-img's sequential writes lay them
     * out) to write zeroes and place its data (vbd_node_co_write_prepare);
     * the data is written to the image's file from the worker's own
     * thread, then linked back on the home loop (the L2 entries after the
     * data, as a write on the home loop does). */
    bool split;
    struct vbd_loop *dst_home;
    /* Threaded from mapped sources (qcow2) into a target that is not
     * split (raw): the workers' writes into the target take this lock.
     * The writes into one tmpfs file serialize on its inode lock anyway,
     * where the waiter spins in the kernel for as long as the other copies
     * its chunk: from a qcow2 source, whose chunks are read in a fraction
     * of a write's time, that spin was a fifth of the convert's CPU (perf,
     * tmpfs qcow2->raw, 2026-12-06). Here the waiter sleeps: CPU -21 %,
     * wall level. From a raw source the other worker mostly reads and
     * scans (its written zeroes too) and the wake-up after a sleep cost
     * more wall than the spin (round 16's A/B); a split (qcow2) target
     * measured CPU -10 %, wall +9 % (ranges overlapping): no lock there. */
    bool write_serial;
    pthread_mutex_t write_lock;
    /* In order on one loop into a chain without metadata (raw over a file
     * or device) whose writes wait for a disk (O_DIRECT, not inline): the
     * turn is passed on as a chunk's write is submitted, not when it
     * completes. The writes still reach the kernel in guest order, what
     * qemu-img's in-order writes are for (a thin target's allocation), but
     * up to -m of them are in flight instead of one: a write no longer
     * waits for the completion of the one before, its wake-up of this loop
     * and the next submission (two or three thread wake-ups per MiB, each
     * a run-queue wait on a busy host). Not into qcow2 and the like: their
     * clusters are placed as the writes come, in qemu-img's order only
     * one at a time. */
    bool submit_order;
};

/* A split convert's claim that goes nowhere near the target's home loop
 * (zeroes on a target that reads as zeroes): it takes no turn. */
#define NO_TURN UINT64_MAX

/* One block status request covers at most this much: nbd and the drivers'
 * own limits are far below 2^63, and a bounded extent bounds the work a
 * driver does walking its tables for one answer. */
#define BS_QUERY_MAX (1ull << 30)

static void convert_fail(struct convert *cv, int rc, struct vbd_error *err)
{
    /* atomic: a threaded worker looks at it before its write, outside the lock */
    if (!cv->error)
        __atomic_store_n(&cv->error, rc, __ATOMIC_RELAXED);
    vbd_error_propagate(&cv->err, err);
}

/* The source that holds concatenation offset off. */
static int source_index(const struct convert *cv, uint64_t off)
{
    int si = 0;
    while (si + 1 < cv->nsrc && off >= cv->src_start[si + 1])
        si++;
    return si;
}

/* Whether the data of an extent with block status st, which layer depth
 * of src's backing chain defines, is the bytes of file at its map: a data
 * range (not zero: a zero cluster's map may hold old bytes; not
 * compressed) of a qcow2 or raw layer (vbd's qcow2 has no encryption),
 * no filter on the way (reading the file would bypass it), the file
 * readable on any loop. */
static bool read_direct(struct vbd_node *src, int st, int depth, struct vbd_node *file)
{
    unsigned want = VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    if ((st & (want | VBD_BS_ZERO | VBD_BS_COMPRESSED)) != want || !file)
        return false;
    struct vbd_node *p = src;
    for (int d = 0; p && p->drv->kind != VBD_DRV_FILTER && d < depth; d++)
        p = p->backing;
    if (!p || p->drv->kind == VBD_DRV_FILTER)
        return false;
    bool plain = p->drv->kind == VBD_DRV_PROTOCOL || !strcmp(p->drv->name, "qcow2") || !strcmp(p->drv->name, "raw");
    return plain && vbd_node_chain_multi_loop(file);
}

/* Where block status stops: the whole chain, or with a target that has a
 * backing file (qemu-img -B) the source's top layer only, so that what the
 * top does not define is left to the target's backing file (qemu-img's
 * BLK_BACKING_FILE). */
static struct vbd_node *status_base(const struct convert *cv, struct vbd_node *src)
{
    return cv->o->target_has_backing ? vbd_node_skip_filters(src)->backing : NULL;
}

/* Map the next window of a mapped convert (on the caller's loop, no
 * worker running): [next, win_end) as at most CONVERT_WINDOW extents,
 * block status once per extent as the unmapped claim asks it. */
/* a block status that failed, in qemu-img convert's words (the source's offset) */
static void status_error(struct vbd_error **err, int rc, uint64_t soff)
{
    vbd_error_setf(err, -rc, "error while reading block status at offset %llu: %s", (unsigned long long)soff,
                   strerror(-rc));
}

static void convert_map_window(struct convert *cv)
{
    cv->win_n = cv->win_i = 0;
    uint64_t pos = cv->next;
    while (cv->win_n < CONVERT_WINDOW && pos < cv->total) {
        int si = source_index(cv, pos);
        struct vbd_node *src = cv->src[si], *file = NULL;
        uint64_t soff = pos - cv->src_start[si], src_size = cv->src_start[si + 1] - cv->src_start[si];
        uint64_t q = src_size - soff < BS_QUERY_MAX ? src_size - soff : BS_QUERY_MAX;
        uint64_t pnum = 0, map = 0;
        int depth = 0;
        int st = vbd_node_co_block_status_above(src, status_base(cv, src), true, soff, q, &pnum, &map, &file, &depth);
        if (st < 0) {
            struct vbd_error *err = NULL;
            status_error(&err, st, soff);
            convert_fail(cv, st, err);
            break;
        }
        if (pnum == 0 || pnum > q)
            pnum = q;
        struct convert_ext e = {.start = pos, .end = pos + pnum, .si = si, .st = st};
        if (read_direct(src, st, depth, file)) {
            e.rnode = file;
            e.rmap = map;
        }
        /* qcow2 answers one L2 table at a time: contiguous clusters become one extent again */
        struct convert_ext *last = cv->win_n ? &cv->win[cv->win_n - 1] : NULL;
        if (last && last->si == e.si && last->st == e.st && last->rnode == e.rnode &&
            (!e.rnode || last->rmap + (last->end - last->start) == e.rmap))
            last->end = e.end;
        else
            cv->win[cv->win_n++] = e;
        pos += pnum;
    }
    cv->win_end = pos;
}

/* Claim the next range to copy: *off in the concatenation, *src_node and
 * *soff the source and its offset, *rnode and *roff where it is read (a
 * mapped source's file, else the same), *len bytes, *zero if it reads as
 * zeroes, *leave if it is not written at all (the target's backing file
 * has it; *zero is set too). 0 when there is nothing left (or the copy failed, or a mapped
 * window is done), 1 with a range. */
static int convert_claim(struct convert *cv, uint64_t *off, struct vbd_node **src_node, uint64_t *soff,
                         struct vbd_node **rnode, uint64_t *roff, uint64_t *len, bool *zero, bool *leave, uint64_t *seq)
{
    struct vbd_error *err = NULL;
    if (cv->error || cv->next >= cv->total)
        return 0;
    if (cv->mapped && cv->next >= cv->win_end)
        return 0;
    *off = cv->next;
    int rc = imageops_check_cancel(cv->ctl, cv->dst, *off, &err);
    if (rc < 0) {
        convert_fail(cv, rc, err);
        return 0;
    }
    int si = source_index(cv, *off);
    struct vbd_node *src = cv->src[si];
    *soff = *off - cv->src_start[si];
    uint64_t src_size = cv->src_start[si + 1] - cv->src_start[si];
    uint64_t chunk = cv->o->chunk_size, cluster = cv->o->cluster_size;
    uint64_t l = src_size - *soff < chunk ? src_size - *soff : chunk;
    uint64_t pnum = 0;
    int st;
    *rnode = src;
    *roff = *soff;
    if (cv->mapped) {
        while (cv->win[cv->win_i].end <= *off)
            cv->win_i++;
        const struct convert_ext *e = &cv->win[cv->win_i];
        st = e->st;
        pnum = e->end - *off;
        if (e->rnode) {
            *rnode = e->rnode;
            *roff = e->rmap + (*off - e->start);
        }
    } else if (cv->bs_src == si && *soff >= cv->bs_start && *soff < cv->bs_end) {
        st = cv->bs_status;
        pnum = cv->bs_end - *soff;
    } else {
        uint64_t q = src_size - *soff < BS_QUERY_MAX ? src_size - *soff : BS_QUERY_MAX;
        st = vbd_node_co_block_status_above(src, status_base(cv, src), true, *soff, q, &pnum, NULL, NULL, NULL);
        /* --salvage: a quarter of the range again, down to one sector, read as data then */
        while (st < 0 && cv->o->salvage && q > 512) {
            q = (q / 512 + 3) / 4 * 512;
            st = vbd_node_co_block_status_above(src, status_base(cv, src), true, *soff, q, &pnum, NULL, NULL, NULL);
        }
        if (st < 0 && cv->o->salvage) {
            if (!cv->o->quiet)
                vbd_warn("error while reading block status at offset %llu: %s", (unsigned long long)*soff,
                         strerror(-st));
            st = VBD_BS_DATA | VBD_BS_ALLOCATED;
            pnum = q;
        }
        if (st < 0) {
            /* two statements: the order in which arguments are evaluated is unspecified, err may be read first */
            status_error(&err, st, *soff);
            convert_fail(cv, st, err);
            return 0;
        }
        if (pnum == 0 || pnum > q)
            pnum = q;
        cv->bs_src = si;
        cv->bs_start = *soff;
        cv->bs_end = *soff + pnum;
        cv->bs_status = st;
    }
    if (pnum > l) {
        pnum = l;
        /* Cut by the chunk size, not by the extent: end on a target cluster
         * boundary, so that a zero extent is written as whole zero clusters
         * (qemu-img writes it in one request). Cut anywhere, the cluster
         * under the cut got zeroes in two partial writes, each over the
         * other's old data (-n into an image of data), and became a data
         * cluster of zeroes where qemu-img's is a zero cluster. */
        uint64_t end = *off + l, align = cv->o->cluster_size;
        if (align && end % align && end - end % align > *off)
            pnum = end - end % align - *off;
    }
    /* qemu-img -B treats zeroes before and after the end of the target's
     * backing file apart: the claim ends there */
    uint64_t tbs = cv->o->target_backing_size;
    if (cv->o->target_has_backing && *off < tbs && pnum > tbs - *off)
        pnum = tbs - *off;
    /* Without zero detection (-S 0) the target is fully allocated, as
     * qemu-img's: ranges that read as zeroes are read and written as data. */
    *zero = cv->o->zero_detect && ((st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED));
    /* Left to the target's backing file (qemu-img -B's BLK_BACKING_FILE):
     * what the source's top layer does not define, and zeroes past the
     * backing file's end (the target reads zeroes there anyway). A top
     * without a backing file defines zeroes where it allocates nothing:
     * those are written (left, the backing file's data showed through). */
    *leave = cv->o->target_has_backing &&
             (!(st & (VBD_BS_ZERO | VBD_BS_DATA)) || ((st & VBD_BS_ZERO) && *off >= tbs));
    if (*leave)
        *zero = true;
    if (cv->o->write_flags & VBD_REQ_COMPRESSED) {
        /* compressed clusters are written whole (off stays cluster aligned): a zero
         * run shorter than a cluster is read with the data around it */
        if (pnum >= cluster) {
            pnum -= pnum % cluster;
        } else {
            pnum = l < cluster ? l : cluster;
            *zero = false;
        }
    }
    cv->next = *off + pnum;
    *src_node = src;
    *len = pnum;
    *seq = cv->split && ((*zero && cv->o->target_is_zero) || *leave) ? NO_TURN : cv->seq++;
    return 1;
}

/* qemu-img convert -p's total (its allocated sectors): the bytes the copy
 * will read and write as data, found by claiming every range as the
 * workers will, before any copy (the claims start over after). Its
 * errors are the copy's: block status that fails, --salvage's warnings
 * (qemu-img's walk warns too). */
static int convert_count_data(struct convert *cv, uint64_t *data)
{
    uint64_t off, soff, roff, len, seq;
    struct vbd_node *src, *rnode;
    bool zero, leave;
    while (convert_claim(cv, &off, &src, &soff, &rnode, &roff, &len, &zero, &leave, &seq))
        if (!zero)
            *data += len;
    cv->next = 0;
    cv->seq = 0;
    cv->bs_src = -1;
    return cv->error;
}

static void claim_lock(struct convert *cv)
{
    if (cv->threaded)
        pthread_mutex_lock(&cv->thread_lock);
    else
        vbd_co_mutex_lock(&cv->claim_lock);
}

static void claim_unlock(struct convert *cv)
{
    if (cv->threaded)
        pthread_mutex_unlock(&cv->thread_lock);
    else
        vbd_co_mutex_unlock(&cv->claim_lock);
}

/* A worker and the loop it copies on (NULL: the caller's). */
struct convert_worker {
    struct convert *cv;
    struct vbd_loop *loop;
    struct vbd_split_write *sw; /* split: the data placed by one turn */
    int *swrc;                  /* and its writes' results */
    unsigned nsw;
    /* split: the data of the worker's last turn, written, linked at its
     * next turn or its end (see split_write); an array of nsw, swapped
     * with sw */
    struct vbd_split_write *written;
    unsigned nwritten;
    uint64_t written_chunk; /* their chunk's offset, which a failed link names */
};

/* A failed write of the chunk at off: qemu-img's words, which name the
 * chunk's offset in the target whatever part of it failed (the first
 * error reported; the ones after it are its consequences). */
static int write_error(struct vbd_error **err, int rc, uint64_t off)
{
    if (!*err)
        vbd_error_setf(err, -rc, "error while writing at byte %llu: %s", (unsigned long long)off, strerror(-rc));
    return rc;
}

/* On the target's home loop: link the data the worker's last turn placed
 * and the worker has written since (w->written). */
static int split_link_written(struct convert_worker *w, struct vbd_error **err)
{
    struct convert *cv = w->cv;
    int rc = 0;
    for (unsigned i = 0; i < w->nwritten; i++) {
        int crc = vbd_node_co_write_commit(cv->dst, &w->written[i], 0);
        if (crc < 0 && rc == 0)
            rc = write_error(err, crc, w->written_chunk);
    }
    w->nwritten = 0;
    return rc;
}

/* A split convert's write of a chunk read into buf (see struct convert):
 * its turn on the target's home loop, the data written from here, linked
 * there at the worker's next turn (or its end). Linked at once, each chunk
 * cost two round trips to the home loop (a wake-up of its thread and one
 * of this one each way); the link waits a chunk now, holding its clusters'
 * range (nothing else touches them: chunks do not overlap) and its L2
 * entries unwritten (the range reads as before until then, as before the
 * link; the L2 table itself was placed at the turn, so the layout is the
 * same). A data write that fails is given back at once, as before. */
static int split_write(struct convert_worker *w, uint64_t off, uint64_t len, bool zero, const uint8_t *buf,
                       const uint64_t *runs, unsigned nruns, bool first_zero, uint64_t seq, struct vbd_error **err)
{
    struct convert *cv = w->cv;
    if (seq == NO_TURN)
        return 0;
    struct vbd_loop *here = vbd_loop_current();
    vbd_co_move_to(cv->dst_home);
    int rc = split_link_written(w, err);
    if (!cv->o->out_of_order)
        while (cv->next_write_seq != seq && !__atomic_load_n(&cv->error, __ATOMIC_RELAXED))
            vbd_co_queue_wait(&cv->order_q);
    unsigned nt = 0;
    if (rc < 0) {
        /* reported; the turn is passed on below */
    } else if (__atomic_load_n(&cv->error, __ATOMIC_RELAXED)) {
        rc = -ECANCELED; /* the first error is reported */
    } else if (zero) {
        rc = imageops_write_zeroes(cv->dst, off, len, cv->o, NULL);
        if (rc < 0)
            write_error(err, rc, off);
    } else {
        uint64_t pos = 0;
        for (unsigned i = 0; i < nruns && rc == 0; i++) {
            uint64_t end = pos + runs[i];
            if ((i % 2 == 0) == first_zero) {
                rc = imageops_write_zeroes(cv->dst, off + pos, runs[i], cv->o, NULL);
                pos = end;
            }
            while (rc == 0 && pos < end) {
                /* room for a chunk's runs and then some: past that, the rest is written here */
                uint64_t normal = end - pos;
                if (nt < w->nsw) {
                    struct vbd_split_write *t = &w->sw[nt];
                    rc = vbd_node_co_write_prepare(cv->dst, off + pos, end - pos, t);
                    if (rc < 0)
                        break;
                    if (t->len) {
                        nt++;
                        pos += t->len;
                        continue;
                    }
                    normal = t->normal;
                }
                rc = vbd_node_co_pwrite(cv->dst, off + pos, buf + pos, normal, 0);
                if (rc == 0)
                    pos += normal;
            }
            if (rc < 0)
                write_error(err, rc, off);
        }
    }
    if (!cv->o->out_of_order && cv->next_write_seq == seq) {
        cv->next_write_seq++;
        vbd_co_queue_wake_all(&cv->order_q);
    }
    if (!nt) {
        vbd_co_move_to(here);
        return rc;
    }
    vbd_co_move_to(here);
    int *wrc = w->swrc;
    for (unsigned i = 0; i < nt; i++) {
        struct vbd_split_write *t = &w->sw[i];
        wrc[i] = -ECANCELED;
        if (rc == 0) {
            struct iovec one;
            struct vbd_qiov q;
            vbd_qiov_init_buf(&q, &one, (void *)(buf + (t->off - off)), t->len);
            wrc[i] = vbd_node_co_pwritev(t->file, t->host, t->len, &q, 0, 0);
            if (wrc[i] < 0)
                rc = write_error(err, wrc[i], off);
        }
    }
    if (rc == 0) {
        /* linked at the next turn: this turn's array becomes the written one */
        struct vbd_split_write *t = w->written;
        w->written = w->sw;
        w->sw = t;
        w->nwritten = nt;
        w->written_chunk = off;
        return 0;
    }
    vbd_co_move_to(cv->dst_home);
    for (unsigned i = 0; i < nt; i++) {
        struct vbd_split_write *t = &w->sw[i];
        int crc = vbd_node_co_write_commit(cv->dst, t, wrc[i]);
        if (crc < 0 && rc == 0)
            rc = write_error(err, crc, off);
    }
    vbd_co_move_to(here);
    return rc;
}

/* --salvage: [off, off + len) of src again, sector by sector; a sector
 * that cannot be read reads as zeroes (warned about unless quiet) */
static int salvage_read(struct convert *cv, struct vbd_node *src, uint64_t off, uint8_t *buf, uint64_t len)
{
    for (uint64_t done = 0; done < len; done += 512) {
        uint64_t n = len - done < 512 ? len - done : 512;
        int rc = vbd_node_co_pread(src, off + done, buf + done, n);
        if (rc < 0) {
            if (!cv->o->quiet)
                vbd_warn("error while reading offset %llu: %s", (unsigned long long)(off + done), strerror(-rc));
            memset(buf + done, 0, n);
        }
    }
    return 0;
}

static void convert_worker(void *opaque)
{
    struct convert_worker *w = opaque;
    struct convert *cv = w->cv;
    struct vbd_loop *home = vbd_loop_current();
    if (w->loop)
        vbd_co_move_to(w->loop);
    /* A threaded worker is its thread's only one: its read is made on this
     * thread too, so the chunk stays in this CPU's cache from the read
     * through the zero scan to the write (read on a pool thread and written
     * here, every byte crossed vCPUs: tmpfs raw->raw 0.236 -> 0.198 s in a
     * two-thread prototype, 2026-12-05). */
    unsigned rflags = cv->threaded ? VBD_REQ_INLINE : 0;
    uint8_t *buf = vbd_alloc_transfer_buffer(cv->o->chunk_size);
    uint64_t *runs = imageops_runs_new(cv->o);
    if (cv->split) {
        w->nsw = (unsigned)imageops_runs_max(cv->o, cv->o->chunk_size) + 4;
        w->sw = vbd_xcalloc(w->nsw, sizeof(*w->sw));
        w->written = vbd_xcalloc(w->nsw, sizeof(*w->written));
        w->swrc = vbd_xcalloc(w->nsw, sizeof(*w->swrc));
    }
    for (;;) {
        uint64_t off = 0, soff = 0, roff = 0, len = 0, seq = 0;
        struct vbd_node *src, *rnode;
        bool zero = false, leave = false;
        claim_lock(cv);
        int claimed = convert_claim(cv, &off, &src, &soff, &rnode, &roff, &len, &zero, &leave, &seq);
        claim_unlock(cv);
        if (!claimed)
            break;
        struct vbd_error *err = NULL;
        int rc = 0;
        unsigned nruns = 0;
        bool first_zero = false;
        if (!zero) {
            struct iovec one;
            struct vbd_qiov q;
            vbd_qiov_init_buf(&q, &one, buf, len);
            rc = vbd_node_co_preadv(rnode, roff, len, &q, 0, rflags);
            if (rc < 0 && cv->o->salvage)
                rc = salvage_read(cv, rnode, roff, buf, len);
            if (rc < 0) /* qemu-img's words: the chunk's offset in the target */
                vbd_error_setf(&err, -rc, "error while reading at byte %llu: %s", (unsigned long long)off,
                               strerror(-rc));
        }
        /* Zeroes are looked for before this worker waits for its turn: the
         * scan then overlaps the write of the chunk before, instead of
         * lengthening the chain of in-order writes. */
        if (!zero && rc == 0)
            nruns = imageops_zero_runs(buf, len, cv->o, runs, &first_zero);
        bool in_turn = !cv->o->out_of_order && !cv->threaded;
        if (in_turn)
            while (cv->next_write_seq != seq && !cv->error)
                vbd_co_queue_wait(&cv->order_q);
        /* the next worker runs once this one has submitted and yields (a wake-up only queues it) */
        if (in_turn && cv->submit_order) {
            cv->next_write_seq++;
            vbd_co_queue_wake_all(&cv->order_q);
            in_turn = false;
        }
        if (rc == 0 && cv->split) {
            rc = split_write(w, off, len, zero, buf, runs, nruns, first_zero, seq, &err);
        } else if (rc == 0 && !leave && !__atomic_load_n(&cv->error, __ATOMIC_RELAXED)) {
            /* NULL: the error is named in qemu-img's words below */
            if (cv->write_serial)
                pthread_mutex_lock(&cv->write_lock);
            rc = zero ? imageops_write_zeroes(cv->dst, off, len, cv->o, NULL)
                      : imageops_write_runs(cv->dst, off, buf, runs, nruns, first_zero, cv->o, NULL);
            if (cv->write_serial)
                pthread_mutex_unlock(&cv->write_lock);
            if (rc < 0)
                write_error(&err, rc, off);
        }
        if (in_turn) {
            cv->next_write_seq++;
            vbd_co_queue_wake_all(&cv->order_q);
        }
        if (rc == 0)
            rc = imageops_advance(cv->ctl, cv->dst, off, zero && cv->o->progress_data_only ? 0 : len,
                                  leave || (zero && cv->o->target_is_zero) ? 0 : len, &err);
        if (rc < 0) {
            claim_lock(cv);
            convert_fail(cv, rc, err);
            claim_unlock(cv);
            break;
        }
    }
    free(runs);
    vbd_free_transfer_buffer(buf, cv->o->chunk_size);
    vbd_co_move_to(home);
    /* split: home is the target's (vbd_co_convert) */
    if (w->nwritten) {
        struct vbd_error *err = NULL;
        int rc = split_link_written(w, &err);
        if (rc < 0) {
            claim_lock(cv);
            convert_fail(cv, rc, err);
            claim_unlock(cv);
        }
    }
    free(w->sw);
    free(w->written);
    free(w->swrc);
    w->sw = w->written = NULL;
    if (--cv->running == 0)
        vbd_co_queue_wake_all(&cv->done_q);
    vbd_co_queue_wake_all(&cv->order_q);
}

/* A loop thread of a threaded convert: runs until stop. */
struct convert_thread {
    pthread_t thread;
    struct vbd_loop *loop; /* NULL if it could not make one */
    sem_t ready;
    bool stop;
};

static void *convert_thread_main(void *arg)
{
    struct convert_thread *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the caller's business */
    /* named as the iothreads are ("iot-ID"): top -H and tests tell them apart */
    pthread_setname_np(pthread_self(), "vbd-convert");
    struct vbd_error *err = NULL;
    t->loop = vbd_loop_new(0, 0, &err);
    vbd_error_free(err);
    sem_post(&t->ready);
    if (!t->loop)
        return NULL;
    vbd_loop_run(t->loop, &t->stop);
    vbd_co_thread_cleanup();
    return NULL;
}

/* Start n - 1 loop threads (fewer if some fail: the copy then uses those
 * there are); returns how many started. */
static unsigned threads_start(struct convert_thread *t, unsigned n)
{
    unsigned started = 0;
    for (unsigned i = 0; i + 1 < n; i++) {
        sem_init(&t[started].ready, 0, 0);
        t[started].stop = false;
        t[started].loop = NULL;
        if (pthread_create(&t[started].thread, NULL, convert_thread_main, &t[started]) != 0) {
            sem_destroy(&t[started].ready);
            break;
        }
        while (sem_wait(&t[started].ready) < 0)
            ;
        if (!t[started].loop) {
            pthread_join(t[started].thread, NULL);
            sem_destroy(&t[started].ready);
            break;
        }
        started++;
    }
    return started;
}

static void threads_stop(struct convert_thread *t, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        __atomic_store_n(&t[i].stop, true, __ATOMIC_RELEASE);
        vbd_loop_kick(t[i].loop);
        pthread_join(t[i].thread, NULL);
        vbd_loop_free(t[i].loop);
        sem_destroy(&t[i].ready);
    }
}

/* Every node of n's chain read-only and locked against other writers. */
static bool chain_stable(struct vbd_node *n)
{
    for (; n; n = n->file) {
        if (!n->read_only || (n->open_flags & (VBD_OPEN_RDWR | VBD_OPEN_FORCE_SHARE)))
            return false;
        if (n->backing && !chain_stable(n->backing))
            return false;
    }
    return true;
}

bool vbd_convert_source_mapped(struct vbd_node *src)
{
    return chain_stable(src);
}

int vbd_co_convert(struct vbd_node *const *src, int nsrc, struct vbd_node *dst, const struct vbd_copy_opts *opts,
                   struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    struct vbd_copy_opts o;
    int rc = imageops_opts(opts, &o, err);
    if (rc < 0)
        return rc;
    if ((o.write_flags & VBD_REQ_COMPRESSED) && !(dst->supported_write_flags & VBD_REQ_COMPRESSED)) {
        vbd_error_setf(err, ENOTSUP, "Compression not supported for this file format");
        return -ENOTSUP;
    }
    struct convert cv = {.src = src, .nsrc = nsrc, .dst = dst, .o = &o, .ctl = ctl, .bs_src = -1};
    cv.src_start = vbd_xcalloc((size_t)nsrc + 1, sizeof(uint64_t));
    for (int i = 0; i < nsrc; i++) {
        cv.src_start[i] = cv.total;
        cv.total += vbd_node_size(src[i]);
    }
    cv.src_start[nsrc] = cv.total;
    if (vbd_node_size(dst) < cv.total) {
        vbd_error_setf(err, EINVAL, "Output image is too small (%llu < %llu bytes)",
                       (unsigned long long)vbd_node_size(dst), (unsigned long long)cv.total);
        free(cv.src_start);
        return -EINVAL;
    }
    if (ctl && o.progress_data_only) {
        uint64_t data = 0;
        if (convert_count_data(&cv, &data) < 0) {
            vbd_error_propagate(err, cv.err);
            free(cv.src_start);
            return cv.error;
        }
        imageops_add_total(ctl, data);
    } else {
        imageops_add_total(ctl, cv.total);
    }
    unsigned nworkers = o.parallel, nthreads = 0;
    struct convert_thread *threads = NULL;
    /* A claim under thread_lock must not hop to a home loop (the loop there
     * may be blocked on the lock): multi-loop chains, or sources mapped
     * before the claims, checked here. */
    bool dst_any_loop = vbd_node_chain_multi_loop(dst);
    /* the turns' queue is this loop's: the target's home has to be it */
    bool split = !dst_any_loop && !o.write_flags && vbd_node_can_split_writes(dst) &&
                 vbd_node_home_loop(dst) == vbd_loop_current();
    bool can_thread = o.threads > 1 && !o.salvage && !(ctl && ctl->chunk_done) && (dst_any_loop || split);
    bool mapped = false;
    for (int i = 0; i < nsrc && can_thread; i++) {
        if (vbd_node_chain_multi_loop(src[i]))
            continue;
        can_thread = vbd_convert_source_mapped(src[i]);
        mapped = true;
    }
    if (can_thread) {
        unsigned want = o.threads < o.parallel ? o.threads : o.parallel;
        /* Mapped, every worker gets a thread of its own: this loop maps the
         * windows and runs the hops of reads that go through the source (a
         * compressed cluster), which a worker here, whose I/O never yields,
         * would hold off until the window's end. Split, the same for the
         * target's turns. */
        bool own = mapped || split;
        unsigned n = own ? want + 1 : want;
        threads = vbd_xcalloc(n, sizeof(*threads));
        nthreads = threads_start(threads, n);
        if (nthreads) {
            cv.threaded = true;
            cv.mapped = mapped;
            cv.split = split;
            cv.dst_home = vbd_node_home_loop(dst);
            pthread_mutex_init(&cv.thread_lock, NULL);
            cv.write_serial = mapped && !split;
            pthread_mutex_init(&cv.write_lock, NULL);
            nworkers = own ? nthreads : nthreads + 1;
        }
    }
    cv.submit_order = !cv.threaded && !o.out_of_order && dst_any_loop && !vbd_node_writes_inline(dst);
    if (cv.mapped)
        cv.win = vbd_xcalloc(CONVERT_WINDOW, sizeof(*cv.win));
    struct convert_worker *workers = vbd_xcalloc(nworkers, sizeof(*workers));
    do {
        if (cv.mapped) {
            convert_map_window(&cv);
            if (cv.error)
                break;
        }
        cv.running = nworkers;
        /* Last to first: a threaded worker's I/O never yields, so the one that
         * stays on this loop must start after the others have left it. */
        for (unsigned i = nworkers; i-- > 0;) {
            workers[i].cv = &cv;
            workers[i].loop = !cv.threaded                ? NULL
                              : cv.mapped || cv.split ? threads[i].loop
                              : i                     ? threads[i - 1].loop
                                                      : NULL;
            vbd_co_wake(vbd_co_create(convert_worker, &workers[i]));
        }
        while (cv.running)
            vbd_co_queue_wait(&cv.done_q);
    } while (cv.mapped && !cv.error && cv.next < cv.total);
    threads_stop(threads, nthreads);
    if (cv.threaded) {
        pthread_mutex_destroy(&cv.thread_lock);
        pthread_mutex_destroy(&cv.write_lock);
    }
    free(threads);
    free(cv.win);
    free(workers);
    free(cv.src_start);
    vbd_error_propagate(err, cv.err);
    return cv.error;
}
