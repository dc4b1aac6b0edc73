/* SPDX-License-Identifier: MIT */
/* Request merging (as QEMU's virtio_blk_submit_multireq): adjacent reads or
 * writes popped in one kick go down as one backend request. */
#include "blk-internal.h"

#include <linux/virtio_blk.h>
#include <string.h>

/* One backend request for several adjacent guest requests. */
static void merged_co(void *arg)
{
    struct blk_merge *m = arg;
    struct blk_queue *bq = m->bq;
    struct blk_export *e = bq->e;
    struct vbd_qiov qiov;
    vbd_qiov_init(&qiov, m->iov, m->niov);
    uint64_t start = vbd_clock_stat_ns();
    int err = m->write ? vbd_backend_co_pwritev(e->be, m->off, qiov.size, &qiov, 0)
                       : vbd_backend_co_preadv(e->be, m->off, qiov.size, &qiov, 0);
    if (err >= 0) {
        vbd_backend_account_merged(e->be, m->write, (unsigned)m->nreqs - 1, start);
        /* finishing without an error neither yields nor parks */
        vu_queue_hold_notify(bq->q);
        for (int i = 0; i < m->nreqs; i++)
            blk_req_finish(m->reqs[i], 0, m->write ? 0 : (uint32_t)m->reqs[i]->in_bytes, true);
        vu_queue_release_notify(bq->q);
    }
    for (int i = 0; err < 0 && i < m->nreqs; i++) {
        /* find out which part failed: each request on its own, with its own error policy */
        struct blk_req *r = m->reqs[i];
        uint32_t used_len;
        bool io;
        r->range_ok = false; /* the group's I/O yielded: checked again */
        int rc = blk_req_run(r, &used_len, &io);
        blk_req_finish(r, rc, used_len, io);
    }
    m->next_free = bq->merge_free;
    bq->merge_free = m;
}

static void insertion_sort(struct blk_req **a, int n)
{
    for (int i = 1; i < n; i++) {
        struct blk_req *x = a[i];
        int j = i - 1;
        while (j >= 0 && a[j]->sector > x->sector) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = x;
    }
}

static struct iovec *req_data(struct blk_req *r, int *n, size_t *bytes)
{
    bool write = r->type == VIRTIO_BLK_T_OUT;
    *n = write ? r->nout : r->nin;
    *bytes = write ? r->out_bytes : r->in_bytes;
    return write ? r->out : r->in;
}

/* Sorts the batch by sector and submits runs of contiguous requests as one
 * backend request each (virtio_blk_submit_multireq's approach); everything
 * comes from preallocated per-queue arrays. */
void blk_batch_submit(struct blk_queue *bq)
{
    int n = bq->nbatch;
    bq->nbatch = 0;
    if (n == 0)
        return;
    if (n == 1) {
        blk_submit(bq, bq->batch[0]);
        return;
    }
    insertion_sort(bq->batch, n);
    for (int i = 0; i < n;) {
        int niov;
        size_t bytes, b;
        req_data(bq->batch[i], &niov, &bytes);
        uint64_t end = (bq->batch[i]->sector << 9) + bytes;
        int j = i + 1;
        while (j < n && (bq->batch[j]->sector << 9) == end) {
            int k;
            req_data(bq->batch[j], &k, &b);
            if (niov + k > BLK_MERGE_MAX_IOV || bytes + b > BLK_MERGE_MAX_BYTES)
                break;
            niov += k;
            bytes += b;
            end += b;
            j++;
        }
        struct blk_merge *m = j - i > 1 ? bq->merge_free : NULL;
        if (!m) {
            for (; i < j; i++)
                blk_submit(bq, bq->batch[i]);
            continue;
        }
        bq->merge_free = m->next_free;
        m->write = bq->batch_write;
        m->off = bq->batch[i]->sector << 9;
        m->niov = 0;
        m->nreqs = 0;
        for (; i < j; i++) {
            struct blk_req *r = bq->batch[i];
            int k;
            struct iovec *d = req_data(r, &k, &b);
            memcpy(m->iov + m->niov, d, sizeof(*d) * (size_t)k);
            m->niov += k;
            m->reqs[m->nreqs++] = r;
            vu_queue_req_start(bq->q);
        }
        bq->merged_reqs += (uint64_t)m->nreqs;
        bq->merged_groups++;
        vbd_co_enter(vbd_co_create(merged_co, m));
    }
}

/* A decoded request: reads and writes that can go down as they are join the
 * batch (one direction at a time), anything else flushes the batch first. */
void blk_dispatch(struct blk_queue *bq, struct blk_req *r)
{
    struct blk_export *e = bq->e;
    bool write = r->type == VIRTIO_BLK_T_OUT;
    bool mergeable = (r->type == VIRTIO_BLK_T_IN || (write && e->writable)) && e->merge;
    if (mergeable) {
        int k;
        size_t bytes;
        req_data(r, &k, &bytes);
        mergeable = bytes > 0 && bytes < BLK_MERGE_ALONE_BYTES && k <= BLK_MERGE_MAX_IOV &&
                    blk_range_ok(e, r->sector, bytes);
        r->range_ok = mergeable; /* its run follows in this kick (blk_submit, the batch's flush) */
    }
    if (!mergeable) {
        blk_batch_flush(bq);
        blk_submit(bq, r);
        return;
    }
    /* only a request that continues the previous one waits for company:
     * random I/O goes down at once instead of in lock-step with its kick */
    int k;
    size_t bytes;
    req_data(r, &k, &bytes);
    if (bq->nbatch == BLK_MERGE_MAX_REQS ||
        (bq->nbatch && (bq->batch_write != write || (r->sector << 9) != bq->batch_end)))
        blk_batch_flush(bq);
    bq->batch_write = write;
    bq->batch_end = (r->sector << 9) + bytes;
    bq->batch[bq->nbatch++] = r;
}
