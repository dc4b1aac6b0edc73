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

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    /* The extent the last block status described, in source bs_src's offsets:
     * asked once for the whole rest of the source and handed out chunk by
     * chunk (on tmpfs each SEEK_DATA/SEEK_HOLE scans the page cache, asking
     * per chunk made the lseeks the convert's main cost). Only the claiming
     * worker reads it, under claim_lock. */
    int bs_src;
    uint64_t bs_start, bs_end;
    int bs_status;
};

/* One block status request covers at most this much: nbd and the drivers'
 * own limits are far below 2^63, and a bounded extent bounds the work a
 * driver does walking its tables for one answer. */
#define BS_QUERY_MAX (1ull << 30)

static void convert_fail(struct convert *cv, int rc, struct vbd_error *err)
{
    if (!cv->error)
        cv->error = rc;
    vbd_error_propagate(&cv->err, err);
}

/* Claim the next range to copy: *off in the concatenation, *src_node and
 * *soff where it is read, *len bytes, *zero if it reads as zeroes. 0 when
 * there is nothing left (or the copy failed), 1 with a range. */
static int convert_claim(struct convert *cv, uint64_t *off, struct vbd_node **src_node, uint64_t *soff, uint64_t *len,
                         bool *zero, uint64_t *seq)
{
    struct vbd_error *err = NULL;
    if (cv->error || cv->next >= cv->total)
        return 0;
    *off = cv->next;
    int rc = imageops_check_cancel(cv->ctl, cv->dst, *off, &err);
    if (rc < 0) {
        convert_fail(cv, rc, err);
        return 0;
    }
    int si = 0;
    while (si + 1 < cv->nsrc && *off >= cv->src_start[si + 1])
        si++;
    struct vbd_node *src = cv->src[si];
    *soff = *off - cv->src_start[si];
    uint64_t src_size = cv->src_start[si + 1] - cv->src_start[si];
    uint64_t chunk = cv->o->chunk_size, cluster = cv->o->cluster_size;
    uint64_t l = src_size - *soff < chunk ? src_size - *soff : chunk;
    uint64_t pnum = 0;
    int st;
    if (cv->bs_src == si && *soff >= cv->bs_start && *soff < cv->bs_end) {
        st = cv->bs_status;
        pnum = cv->bs_end - *soff;
    } else {
        uint64_t q = src_size - *soff < BS_QUERY_MAX ? src_size - *soff : BS_QUERY_MAX;
        st = vbd_node_co_block_status_above(src, NULL, true, *soff, q, &pnum, NULL, NULL, NULL);
        if (st < 0) {
            /* two statements: the order in which arguments are evaluated is unspecified, err may be read first */
            imageops_io_error(&err, st, "Could not read the allocation status of", src, *soff);
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
    if (pnum > l)
        pnum = l;
    *zero = (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED);
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
    *seq = cv->seq++;
    return 1;
}

static void convert_worker(void *opaque)
{
    struct convert *cv = opaque;
    uint8_t *buf = vbd_alloc_aligned(4096, cv->o->chunk_size);
    uint64_t *runs = imageops_runs_new(cv->o);
    for (;;) {
        uint64_t off, soff, len, seq;
        struct vbd_node *src;
        bool zero;
        vbd_co_mutex_lock(&cv->claim_lock);
        int claimed = convert_claim(cv, &off, &src, &soff, &len, &zero, &seq);
        vbd_co_mutex_unlock(&cv->claim_lock);
        if (!claimed)
            break;
        struct vbd_error *err = NULL;
        int rc = 0;
        unsigned nruns = 0;
        bool first_zero = false;
        if (!zero && (rc = vbd_node_co_pread(src, soff, buf, len)) < 0)
            imageops_io_error(&err, rc, "Could not read", src, soff);
        /* Zeroes are looked for before this worker waits for its turn: the
         * scan then overlaps the write of the chunk before, instead of
         * lengthening the chain of in-order writes. */
        if (!zero && rc == 0)
            nruns = imageops_zero_runs(buf, len, cv->o, runs, &first_zero);
        if (!cv->o->out_of_order)
            while (cv->next_write_seq != seq && !cv->error)
                vbd_co_queue_wait(&cv->order_q);
        if (rc == 0 && !cv->error)
            rc = zero ? imageops_write_zeroes(cv->dst, off, len, cv->o, &err)
                      : imageops_write_runs(cv->dst, off, buf, runs, nruns, first_zero, cv->o, &err);
        if (!cv->o->out_of_order) {
            cv->next_write_seq++;
            vbd_co_queue_wake_all(&cv->order_q);
        }
        if (rc == 0)
            rc = imageops_advance(cv->ctl, cv->dst, off, len, zero && cv->o->target_is_zero ? 0 : len, &err);
        if (rc < 0) {
            convert_fail(cv, rc, err);
            break;
        }
    }
    free(runs);
    free(buf);
    if (--cv->running == 0)
        vbd_co_queue_wake_all(&cv->done_q);
    vbd_co_queue_wake_all(&cv->order_q);
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
    imageops_add_total(ctl, cv.total);
    cv.running = o.parallel;
    for (unsigned i = 0; i < o.parallel; i++)
        vbd_co_wake(vbd_co_create(convert_worker, &cv));
    while (cv.running)
        vbd_co_queue_wait(&cv.done_q);
    free(cv.src_start);
    vbd_error_propagate(err, cv.err);
    return cv.error;
}
