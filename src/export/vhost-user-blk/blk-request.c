/* SPDX-License-Identifier: MIT */
/* virtio-blk requests (virtio 1.x, 5.2), free of the vhost-user transport:
 * a popped chain is decoded into header, payload and status byte, run
 * against the backend and completed (or parked by the error policy). */
#include "blk-internal.h"

#include <errno.h>
#include <linux/virtio_blk.h>
#include <stdlib.h>
#include <string.h>

struct iovec *blk_req_iov(struct blk_req *r, int cap)
{
    if (cap <= BLK_INLINE_IOV)
        return r->iov_inline;
    if (!r->iov_heap)
        r->iov_heap = malloc(sizeof(struct iovec) * VU_MAX_IOV);
    return r->iov_heap;
}

/* Copies n bytes off the front of the readable segments (the header may be
 * split across descriptors anyhow) and drops them from the list. */
static bool take_front(struct iovec **iov, int *n, void *dst, size_t len)
{
    uint8_t *d = dst;
    while (len) {
        if (*n == 0)
            return false;
        size_t c = (*iov)->iov_len < len ? (*iov)->iov_len : len;
        memcpy(d, (*iov)->iov_base, c);
        d += c;
        len -= c;
        (*iov)->iov_base = (uint8_t *)(*iov)->iov_base + c;
        (*iov)->iov_len -= c;
        if ((*iov)->iov_len == 0) {
            (*iov)++;
            (*n)--;
        }
    }
    return true;
}

static uint8_t status_of(int err)
{
    return err == -ENOTSUP ? VIRTIO_BLK_S_UNSUPP : err < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

/* Checked before the backend so that a malformed request fails with IOERR
 * and is not subject to werror/rerror; the range rule is the library's. */
bool blk_range_ok(struct blk_export *e, uint64_t sector, uint64_t bytes)
{
    if (sector > (UINT64_MAX >> 9))
        return false;
    uint64_t off = sector << 9;
    /* lbs: 512 or 4096 (blk.c), a mask and not two divisions */
    return vbd_request_check(vbd_backend_size(e->be), off, bytes) == 0 && ((off | bytes) & (e->lbs - 1)) == 0;
}

static int do_discard_zeroes(struct blk_export *e, uint32_t type, struct iovec *iov, int n, bool *io)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (total == 0 || total % 16)
        return -EINVAL;
    if (total / 16 > 1)
        return -ENOTSUP; /* max_discard_seg = max_write_zeroes_seg = 1 */
    uint8_t seg[16];
    size_t got = 0;
    for (int i = 0; i < n && got < 16; i++) { /* read, not consumed: a retried request reads it again */
        size_t c = iov[i].iov_len < 16 - got ? iov[i].iov_len : 16 - got;
        memcpy(seg + got, iov[i].iov_base, c);
        got += c;
    }
    uint64_t sector;
    uint32_t num, flags;
    memcpy(&sector, seg, 8);
    memcpy(&num, seg + 8, 4);
    memcpy(&flags, seg + 12, 4);
    uint32_t max = type == VIRTIO_BLK_T_DISCARD ? BLK_MAX_DISCARD_SECTORS : BLK_MAX_WRITE_ZEROES_SECTORS;
    if (num > max || !blk_range_ok(e, sector, (uint64_t)num << 9))
        return -EINVAL;
    if (type == VIRTIO_BLK_T_DISCARD) {
        if (flags)
            return -ENOTSUP; /* virtio 5.2.6.2: unmap is not a discard flag */
        if (!e->discard)
            return -ENOTSUP;
        return vbd_backend_co_pdiscard(e->be, sector << 9, (uint64_t)num << 9);
    }
    if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
        return -ENOTSUP;
    unsigned f = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) && e->discard ? VBD_REQ_MAY_UNMAP : 0;
    *io = true;
    return vbd_backend_co_pwrite_zeroes(e->be, sector << 9, (uint64_t)num << 9, f);
}

void blk_req_release(struct blk_req *r)
{
    struct blk_queue *bq = r->bq;
    r->next_free = bq->free_list;
    bq->free_list = r;
}

/* Splits a popped chain into header, payload and status byte. Malformed
 * chains break the queue; false is returned after the descriptor was given
 * back. */
bool blk_req_decode(struct blk_req *r)
{
    struct blk_queue *bq = r->bq;
    struct iovec *out = r->elem.iov, *in = r->elem.iov + r->elem.out_num;
    int nout = r->elem.out_num, nin = r->elem.in_num;
    uint8_t hdr[16];

    /* the status byte is the last writable byte; find it first */
    uint8_t *status = NULL;
    while (nin > 0 && in[nin - 1].iov_len == 0)
        nin--;
    if (nin > 0) {
        struct iovec *last = &in[nin - 1];
        status = (uint8_t *)last->iov_base + last->iov_len - 1;
        if (--last->iov_len == 0)
            nin--;
    }
    bool have_hdr = false;
    if (status && nout > 0 && out->iov_len >= sizeof(hdr)) {
        /* the whole header in the first segment (every driver's request):
         * take_front's work with a copy of constant size, not a call */
        memcpy(hdr, out->iov_base, sizeof(hdr));
        out->iov_base = (uint8_t *)out->iov_base + sizeof(hdr);
        out->iov_len -= sizeof(hdr);
        if (out->iov_len == 0) {
            out++;
            nout--;
        }
        have_hdr = true;
    } else if (status) {
        have_hdr = take_front(&out, &nout, hdr, sizeof(hdr));
    }
    if (!have_hdr) {
        vu_queue_fail(bq->q, status ? "request without a complete header" : "request without a status byte");
        /* give the descriptor back so the guest's accounting stays sane */
        vu_queue_req_start(bq->q);
        vu_queue_complete(bq->q, r->elem.head, 0, 0);
        blk_req_release(r);
        return false;
    }
    memcpy(&r->type, hdr, 4);
    /* The legacy barrier bit (virtio 5.2.6.3) is ignored, as QEMU's
     * virtio-blk and qemu-storage-daemon ignore it: a legacy driver on a
     * transitional device may set it on a read, write or flush (Linux's did
     * on barrier requests before 2.6.37), and such requests failed UNSUPP. */
    r->type &= ~(uint32_t)VIRTIO_BLK_T_BARRIER;
    memcpy(&r->sector, hdr + 8, 8);
    r->status = status;
    r->out = out;
    r->nout = nout;
    r->in = in;
    r->nin = nin;
    r->range_ok = false;
    /* the chain walk summed the segments: less the header and the status byte */
    r->in_bytes = r->elem.in_bytes - 1;
    r->out_bytes = r->elem.out_bytes - sizeof(hdr);
    return true;
}

/* Runs the request's I/O. *io says whether an error came from the backend
 * (those are subject to werror/rerror; malformed requests are not). */
int blk_req_run(struct blk_req *r, uint32_t *used_len, bool *io)
{
    struct blk_export *e = r->bq->e;
    bool range_checked = r->range_ok;
    r->range_ok = false;
    *used_len = 0;
    *io = false;
    switch (r->type) {
    case VIRTIO_BLK_T_IN: {
        if (!range_checked && !blk_range_ok(e, r->sector, r->in_bytes))
            return -EINVAL;
        struct vbd_qiov qiov = {.iov = r->in, .niov = r->nin, .size = r->in_bytes}; /* summed by blk_req_decode */
        *io = true;
        int err = vbd_backend_co_preadv(e->be, r->sector << 9, r->in_bytes, &qiov, 0);
        if (err >= 0)
            *used_len = (uint32_t)r->in_bytes;
        return err;
    }
    case VIRTIO_BLK_T_OUT: {
        if (!e->writable)
            return -EROFS;
        if (!range_checked && !blk_range_ok(e, r->sector, r->out_bytes))
            return -EINVAL;
        struct vbd_qiov qiov = {.iov = r->out, .niov = r->nout, .size = r->out_bytes};
        *io = true;
        return vbd_backend_co_pwritev(e->be, r->sector << 9, r->out_bytes, &qiov, 0);
    }
    case VIRTIO_BLK_T_FLUSH:
        *io = true;
        return vbd_backend_co_flush(e->be);
    case VIRTIO_BLK_T_GET_ID: {
        char id[VIRTIO_BLK_ID_BYTES] = {0};
        const char *serial = vbd_backend_serial(e->be);
        strncpy(id, serial ? serial : "", sizeof(id));
        size_t n = r->in_bytes < sizeof(id) ? r->in_bytes : sizeof(id);
        size_t done = 0;
        for (int i = 0; i < r->nin && done < n; i++) {
            size_t c = r->in[i].iov_len < n - done ? r->in[i].iov_len : n - done;
            memcpy(r->in[i].iov_base, id + done, c);
            done += c;
        }
        *used_len = (uint32_t)n;
        return 0;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        if (!e->writable)
            return -EROFS;
        return do_discard_zeroes(e, r->type, r->out, r->nout, io);
    default:
        return -ENOTSUP;
    }
}

const char *blk_type_name(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN: return "read";
    case VIRTIO_BLK_T_OUT: return "write";
    case VIRTIO_BLK_T_FLUSH: return "flush";
    case VIRTIO_BLK_T_DISCARD: return "discard";
    case VIRTIO_BLK_T_WRITE_ZEROES: return "write-zeroes";
    default: return "request";
    }
}

/* A migration logs our writes into guest memory: the request's writable
 * buffers (a read's data, GET_ID's) and its status byte, all of them
 * whatever the request wrote (more pages marked than written costs the
 * migration a page's copy; one missed loses the guest's data). Before the
 * used element is pushed, so the front end never finds the request done
 * in a page its log does not mark. */
void blk_req_log(struct blk_req *r)
{
    struct iovec status = {r->status, 1};
    vu_queue_log_write(r->bq->q, r->in, r->nin);
    vu_queue_log_write(r->bq->q, &status, 1);
    vu_queue_log_kick(r->bq->q);
}

void blk_req_finish(struct blk_req *r, int err, uint32_t used_len, bool io)
{
    struct blk_queue *bq = r->bq;
    struct blk_export *e = bq->e;
    /* a ring that is stopping waits for its requests: they cannot be parked then */
    if (err < 0 && io && blk_error_stops(e, r->type, err) && vu_queue_can_process(bq->q)) {
        uint32_t type = r->type;
        blk_park(r, err);
        /* after the park: whoever sees the event and resumes finds the export stopped */
        blk_io_error_event(e, type, err, "stop");
        return;
    }
    if (err < 0 && io)
        blk_io_error_event(e, r->type, err, "report");
    if (r->retrying) {
        r->retrying = false;
        if (ADD(e->nretrying, -1) == 0 && !LOAD(e->stopped) && XCHG(e->stop_reported, false)) {
            if (err >= 0)
                vbd_info("%s: the stopped requests went through after %llu retries; the device runs again", e->name,
                         (unsigned long long)LOAD(e->retries));
            STORE(e->retries, 0);
        }
    }
    if (err < 0 && err != -ENOTSUP)
        vbd_debug("%s: %s at sector %llu failed: %s", e->name, blk_type_name(r->type), (unsigned long long)r->sector,
                  strerror(-err));
    *r->status = status_of(err);
    if (__builtin_expect(bq->q->log != NULL, 0))
        blk_req_log(r);
    vu_queue_complete(bq->q, r->elem.head, used_len + 1, io ? r->in_bytes + r->out_bytes : 0);
    blk_req_release(r);
}

void blk_req_co(void *arg)
{
    struct blk_req *r = arg;
    uint32_t used_len;
    bool io;
    int err = blk_req_run(r, &used_len, &io);
    blk_req_finish(r, err, used_len, io);
}

/* A read or write that the backend completes inline (a null-co node)
 * needs no coroutine: it is run and finished here, as blk_req_co would. */
static bool blk_req_try_inline(struct blk_req *r)
{
    struct blk_export *e = r->bq->e;
    bool write = r->type == VIRTIO_BLK_T_OUT;
    if ((!write && r->type != VIRTIO_BLK_T_IN) || !vbd_backend_root_inline(e->be))
        return false;
    size_t bytes = write ? r->out_bytes : r->in_bytes;
    /* refusals are blk_req_run's, in a coroutine (range_ok stays for its run) */
    if ((write && !e->writable) || (!r->range_ok && !blk_range_ok(e, r->sector, bytes)))
        return false;
    struct vbd_qiov qiov = {.iov = write ? r->out : r->in, .niov = write ? r->nout : r->nin, .size = bytes};
    int err;
    if (!vbd_backend_rw_inline(e->be, write, r->sector << 9, bytes, &qiov, &err))
        return false;
    blk_req_finish(r, err, !write && err >= 0 ? (uint32_t)bytes : 0, true);
    return true;
}

void blk_submit(struct blk_queue *bq, struct blk_req *r)
{
    vu_queue_req_start(bq->q);
    if (blk_req_try_inline(r))
        return;
    struct vbd_co *co = vbd_co_create(blk_req_co, r);
    vbd_co_enter(co); /* runs until its first I/O wait: submissions of one kick go out together */
}

struct blk_req *blk_req_alloc(struct blk_queue *bq)
{
    struct blk_req *r = bq->free_list;
    if (r) {
        bq->free_list = r->next_free;
        r->elem.iov = r->iov_inline;
        r->elem.iov_cap = BLK_INLINE_IOV;
    }
    return r;
}
