/* SPDX-License-Identifier: MIT */
/*
 * The virtio-blk device (virtio 1.x, 5.2) served over vhost-user, and the
 * `--export type=vhost-user-blk` export. Requests are coroutines that run
 * on their ring's loop (an iothread, or the daemon's main loop); their
 * objects are preallocated per ring (one per descriptor, so a full ring
 * never waits for memory), and their iovecs point straight into guest
 * memory.
 */
#include "vhost-user.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const struct vbd_export_type vbd_export_type_vhost_user_blk;

#define BLK_INLINE_IOV 260 /* seg_max (254) + header, status and region splits */
#define BLK_SEG_MAX 254
#define BLK_SIZE_MAX (1u << 20)
#define BLK_MAX_DISCARD_SECTORS (32u << 11) /* 32 MiB */
#define BLK_DEFAULT_QUEUES 16

/* Request merging (as QEMU's virtio_blk_submit_multireq): at most this many
 * requests are sorted at once, and a merged request has at most this many
 * segments (IOV_MAX: one preadv/pwritev) and bytes. */
#define BLK_MERGE_MAX_REQS 32
#define BLK_MERGE_MAX_IOV 1024
#define BLK_MERGE_MAX_BYTES (4u << 20)
#define BLK_MERGE_POOL 16 /* merged requests in flight per queue; beyond, requests go down one by one */

struct blk_export;

struct blk_req {
    struct blk_queue *bq;
    struct vu_elem elem;
    /* decoded from the chain (req_decode) */
    uint32_t type;
    uint64_t sector;
    uint8_t *status;
    struct iovec *out, *in; /* payload after the header / before the status byte */
    int nout, nin;
    size_t out_bytes, in_bytes;
    struct iovec iov_inline[BLK_INLINE_IOV];
    struct iovec *iov_heap;
    struct blk_req *next_free; /* also: the parked list */
    bool retrying;             /* re-run after a stop */
};

struct blk_merge {
    struct blk_queue *bq;
    bool write;
    uint64_t off;
    int niov, nreqs;
    struct blk_req *reqs[BLK_MERGE_MAX_REQS];
    struct blk_merge *next_free;
    struct iovec iov[BLK_MERGE_MAX_IOV];
};

struct blk_queue {
    struct vu_queue *q;
    struct blk_export *e;
    struct blk_req *reqs;
    struct blk_req *free_list;
    uint16_t nreqs;
    /* requests popped in this kick that may be merged */
    struct blk_req *batch[BLK_MERGE_MAX_REQS];
    int nbatch;
    bool batch_write;
    uint64_t batch_end; /* byte after the last batched request */
    struct blk_merge *merges;
    struct blk_merge *merge_free;
    uint64_t merged_reqs, merged_groups;
    /* requests stopped by werror/rerror=stop, waiting for a retry */
    struct blk_req *parked, **parked_tail;
};

/* Export state that the rings' threads share */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define XCHG(x, v) __atomic_exchange_n(&(x), (v), __ATOMIC_ACQ_REL)
#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_ACQ_REL)

enum blk_err_action { BLK_ERR_REPORT, BLK_ERR_STOP, BLK_ERR_ENOSPC };

struct blk_export {
    struct vbd_export base;
    struct vu_dev dev;
    char *id;
    char name[128];
    struct vbd_backend *be;
    bool writable;
    uint16_t num_queues;
    uint32_t lbs, pbs;
    bool discard;
    bool merge;
    uint64_t guest_features;
    uint64_t capacity; /* sectors, as last told to the front end */
    /* werror/rerror=stop|enospc: a failed request waits on its ring's parked
     * list and every ring stops popping. The rings may run on several
     * threads (atomics below); the retry timer and the retries are driven
     * from the control loop (blk_resume), which visits each ring's loop. */
    enum blk_err_action werror, rerror;
    bool stopped;
    bool stop_reported; /* one error line per episode, not one per retry */
    int nparked, nretrying;
    uint64_t retries;
    uint64_t retry_ns; /* 0: only on SIGUSR1 */
    struct vbd_timer retry_timer; /* control loop */
    struct vbd_bh arm_bh, kick_bh; /* a ring asks the control loop to arm the timer / look at every ring */
    bool arm_pending, kick_pending;
    int resumers; /* blk_resume coroutines not finished */
    /* iothread=: the rings are spread over these loops (none: the control loop) */
    struct vbd_loop *loops[VU_MAX_QUEUES];
    int nloops;
};

/* ------------------------------------------------------------------ */
/* config space and features                                           */

static uint64_t blk_features(struct vu_dev *dev)
{
    struct blk_export *e = dev->opaque;
    uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                 (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
                 (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_CONFIG_WCE) |
                 (1ull << VIRTIO_BLK_F_MQ);
    if (!e->writable)
        f |= 1ull << VIRTIO_BLK_F_RO;
    else {
        f |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
        if (e->discard)
            f |= 1ull << VIRTIO_BLK_F_DISCARD;
    }
    return f;
}

static void blk_features_set(struct vu_dev *dev, uint64_t features)
{
    struct blk_export *e = dev->opaque;
    e->guest_features = features;
    /* a driver that cannot see CONFIG_WCE relies on a write-through cache only
     * if it also lacks FLUSH; with FLUSH it flushes itself (virtio 5.2.5.1) */
    if (!(features & (1ull << VIRTIO_BLK_F_FLUSH)))
        vbd_backend_set_writethrough(e->be, true);
}

static void put_le16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}
static void put_le32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}
static void put_le64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* In 512-byte sectors, whole logical blocks only. */
static uint64_t capacity_of(struct blk_export *e)
{
    return vbd_backend_size(e->be) / e->lbs * e->lbs / 512;
}

static void blk_get_config(struct vu_dev *dev, uint8_t *cfg, uint32_t len)
{
    struct blk_export *e = dev->opaque;
    struct virtio_blk_config c;
    memset(&c, 0, sizeof(c));
    uint8_t *p = (uint8_t *)&c;
    put_le64(p + offsetof(struct virtio_blk_config, capacity), capacity_of(e));
    put_le32(p + offsetof(struct virtio_blk_config, size_max), BLK_SIZE_MAX);
    put_le32(p + offsetof(struct virtio_blk_config, seg_max), BLK_SEG_MAX);
    put_le32(p + offsetof(struct virtio_blk_config, blk_size), e->lbs);
    int exp = 0;
    while ((e->lbs << exp) < e->pbs)
        exp++;
    c.physical_block_exp = (uint8_t)exp;
    put_le16(p + offsetof(struct virtio_blk_config, min_io_size), (uint16_t)(e->pbs / e->lbs));
    put_le32(p + offsetof(struct virtio_blk_config, opt_io_size), 0);
    c.wce = vbd_backend_writethrough(e->be) ? 0 : 1;
    put_le16(p + offsetof(struct virtio_blk_config, num_queues), e->num_queues);
    put_le32(p + offsetof(struct virtio_blk_config, max_discard_sectors), BLK_MAX_DISCARD_SECTORS);
    put_le32(p + offsetof(struct virtio_blk_config, max_discard_seg), 1);
    put_le32(p + offsetof(struct virtio_blk_config, discard_sector_alignment), e->lbs / 512);
    put_le32(p + offsetof(struct virtio_blk_config, max_write_zeroes_sectors), BLK_MAX_DISCARD_SECTORS);
    put_le32(p + offsetof(struct virtio_blk_config, max_write_zeroes_seg), 1);
    c.write_zeroes_may_unmap = e->discard ? 1 : 0;
    memcpy(cfg, &c, sizeof(c) < len ? sizeof(c) : len);
}

static int blk_set_config(struct vu_dev *dev, uint32_t offset, const uint8_t *data, uint32_t len)
{
    struct blk_export *e = dev->opaque;
    uint32_t wce = offsetof(struct virtio_blk_config, wce);
    if (offset <= wce && offset + len > wce) {
        if (!(e->guest_features & (1ull << VIRTIO_BLK_F_CONFIG_WCE))) {
            vbd_warn("%s: the guest wrote 'wce' without negotiating CONFIG_WCE; ignored", e->name);
            return -EINVAL;
        }
        bool writeback = data[wce - offset] != 0;
        vbd_backend_set_writethrough(e->be, !writeback);
        vbd_info("%s: the guest switched the cache to %s", e->name, writeback ? "write back" : "write through");
        return 0;
    }
    return -EINVAL; /* every other field is read-only */
}

/* ------------------------------------------------------------------ */
/* requests                                                            */

static struct iovec *req_iov(struct blk_req *r, int cap)
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

static bool range_ok(struct blk_export *e, uint64_t sector, uint64_t bytes)
{
    uint64_t size = vbd_backend_size(e->be);
    if (sector > (UINT64_MAX >> 9))
        return false;
    uint64_t off = sector << 9;
    return off <= size && bytes <= size - off && off % e->lbs == 0 && bytes % e->lbs == 0;
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
    if (num > BLK_MAX_DISCARD_SECTORS || !range_ok(e, sector, (uint64_t)num << 9))
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

static void req_release(struct blk_req *r)
{
    struct blk_queue *bq = r->bq;
    r->next_free = bq->free_list;
    bq->free_list = r;
}

/* Splits a popped chain into header, payload and status byte. Malformed
 * chains break the queue; false is returned after the descriptor was given
 * back. */
static bool req_decode(struct blk_req *r)
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
    if (!status || !take_front(&out, &nout, hdr, sizeof(hdr))) {
        vu_queue_fail(bq->q, status ? "request without a complete header" : "request without a status byte");
        /* give the descriptor back so the guest's accounting stays sane */
        vu_queue_req_start(bq->q);
        vu_queue_complete(bq->q, r->elem.head, 0);
        req_release(r);
        return false;
    }
    memcpy(&r->type, hdr, 4);
    memcpy(&r->sector, hdr + 8, 8);
    r->status = status;
    r->out = out;
    r->nout = nout;
    r->in = in;
    r->nin = nin;
    r->in_bytes = r->out_bytes = 0;
    for (int i = 0; i < nin; i++)
        r->in_bytes += in[i].iov_len;
    for (int i = 0; i < nout; i++)
        r->out_bytes += out[i].iov_len;
    return true;
}

/* Runs the request's I/O. *io says whether an error came from the backend
 * (those are subject to werror/rerror; malformed requests are not). */
static int req_run(struct blk_req *r, uint32_t *used_len, bool *io)
{
    struct blk_export *e = r->bq->e;
    *used_len = 0;
    *io = false;
    switch (r->type) {
    case VIRTIO_BLK_T_IN: {
        if (!range_ok(e, r->sector, r->in_bytes))
            return -EINVAL;
        struct vbd_qiov qiov;
        vbd_qiov_init(&qiov, r->in, r->nin);
        *io = true;
        int err = vbd_backend_co_preadv(e->be, r->sector << 9, r->in_bytes, &qiov, 0);
        if (err >= 0)
            *used_len = (uint32_t)r->in_bytes;
        return err;
    }
    case VIRTIO_BLK_T_OUT: {
        if (!e->writable)
            return -EROFS;
        if (!range_ok(e, r->sector, r->out_bytes))
            return -EINVAL;
        struct vbd_qiov qiov;
        vbd_qiov_init(&qiov, r->out, r->nout);
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

static const char *type_name(uint32_t type)
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

/* werror/rerror: should this failure stop the device (park the request)? */
static bool error_stops(struct blk_export *e, uint32_t type, int err)
{
    enum blk_err_action a;
    if (type == VIRTIO_BLK_T_IN)
        a = e->rerror;
    else if (type == VIRTIO_BLK_T_OUT || type == VIRTIO_BLK_T_FLUSH || type == VIRTIO_BLK_T_WRITE_ZEROES)
        a = e->werror;
    else
        return false;
    return a == BLK_ERR_STOP || (a == BLK_ERR_ENOSPC && err == -ENOSPC);
}

static void on_control_loop(struct blk_export *e, bool *pending, struct vbd_bh *bh)
{
    if (!__atomic_exchange_n(pending, true, __ATOMIC_ACQ_REL))
        vbd_loop_schedule_bh(e->dev.loop, bh);
}

/* On the request's ring loop. */
static void park(struct blk_req *r, int err)
{
    struct blk_queue *bq = r->bq;
    struct blk_export *e = bq->e;
    if (r->retrying) {
        r->retrying = false;
        ADD(e->nretrying, -1);
    }
    if (!XCHG(e->stop_reported, true))
        vbd_error_report("%s: %s at sector %llu failed: %s; %s=%s: the device stops and the request is retried %s",
                         e->name, type_name(r->type), (unsigned long long)r->sector, strerror(-err),
                         r->type == VIRTIO_BLK_T_IN ? "rerror" : "werror",
                         (r->type == VIRTIO_BLK_T_IN ? e->rerror : e->werror) == BLK_ERR_STOP ? "stop" : "enospc",
                         e->retry_ns ? "every retry-interval and on SIGUSR1" : "on SIGUSR1");
    STORE(e->stopped, true);
    r->next_free = NULL;
    *bq->parked_tail = r;
    bq->parked_tail = &r->next_free;
    ADD(e->nparked, 1);
    if (e->retry_ns)
        on_control_loop(e, &e->arm_pending, &e->arm_bh);
}

static void req_finish(struct blk_req *r, int err, uint32_t used_len, bool io)
{
    struct blk_queue *bq = r->bq;
    struct blk_export *e = bq->e;
    /* a ring that is stopping waits for its requests: they cannot be parked then */
    if (err < 0 && io && error_stops(e, r->type, err) && vu_queue_can_process(bq->q)) {
        park(r, err);
        return;
    }
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
        vbd_debug("%s: %s at sector %llu failed: %s", e->name, type_name(r->type), (unsigned long long)r->sector,
                  strerror(-err));
    *r->status = status_of(err);
    vu_queue_complete(bq->q, r->elem.head, used_len + 1);
    req_release(r);
}

static void req_co(void *arg)
{
    struct blk_req *r = arg;
    uint32_t used_len;
    bool io;
    int err = req_run(r, &used_len, &io);
    req_finish(r, err, used_len, io);
}

static void submit(struct blk_queue *bq, struct blk_req *r)
{
    vu_queue_req_start(bq->q);
    struct vbd_co *co = vbd_co_create(req_co, r);
    vbd_co_enter(co); /* runs until its first I/O wait: submissions of one kick go out together */
}

/* One backend request for several adjacent guest requests. */
static void merged_co(void *arg)
{
    struct blk_merge *m = arg;
    struct blk_queue *bq = m->bq;
    struct blk_export *e = bq->e;
    struct vbd_qiov qiov;
    vbd_qiov_init(&qiov, m->iov, m->niov);
    int err = m->write ? vbd_backend_co_pwritev(e->be, m->off, qiov.size, &qiov, 0)
                       : vbd_backend_co_preadv(e->be, m->off, qiov.size, &qiov, 0);
    for (int i = 0; i < m->nreqs; i++) {
        struct blk_req *r = m->reqs[i];
        if (err >= 0) {
            req_finish(r, 0, m->write ? 0 : (uint32_t)r->in_bytes, true);
        } else {
            /* find out which part failed: each request on its own, with its own error policy */
            uint32_t used_len;
            bool io;
            int rc = req_run(r, &used_len, &io);
            req_finish(r, rc, used_len, io);
        }
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
static void batch_flush(struct blk_queue *bq)
{
    int n = bq->nbatch;
    bq->nbatch = 0;
    if (n == 0)
        return;
    if (n == 1) {
        submit(bq, bq->batch[0]);
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
                submit(bq, bq->batch[i]);
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
static void dispatch(struct blk_queue *bq, struct blk_req *r)
{
    struct blk_export *e = bq->e;
    bool write = r->type == VIRTIO_BLK_T_OUT;
    bool mergeable = (r->type == VIRTIO_BLK_T_IN || (write && e->writable)) && e->merge;
    if (mergeable) {
        int k;
        size_t bytes;
        req_data(r, &k, &bytes);
        mergeable = bytes > 0 && k <= BLK_MERGE_MAX_IOV && range_ok(e, r->sector, bytes);
    }
    if (!mergeable) {
        batch_flush(bq);
        submit(bq, r);
        return;
    }
    /* only a request that continues the previous one waits for company:
     * random I/O goes down at once instead of in lock-step with its kick */
    int k;
    size_t bytes;
    req_data(r, &k, &bytes);
    if (bq->nbatch == BLK_MERGE_MAX_REQS ||
        (bq->nbatch && (bq->batch_write != write || (r->sector << 9) != bq->batch_end)))
        batch_flush(bq);
    bq->batch_write = write;
    bq->batch_end = (r->sector << 9) + bytes;
    bq->batch[bq->nbatch++] = r;
}

static struct blk_req *req_alloc(struct blk_queue *bq)
{
    struct blk_req *r = bq->free_list;
    if (r) {
        bq->free_list = r->next_free;
        r->elem.iov = r->iov_inline;
        r->elem.iov_cap = BLK_INLINE_IOV;
    }
    return r;
}

static void blk_queue_kick(struct vu_queue *q)
{
    struct blk_queue *bq = q->dev_queue;
    if (!bq)
        return;
    for (;;) {
        while (vu_queue_can_process(q) && !LOAD(bq->e->stopped)) {
            struct blk_req *r = req_alloc(bq);
            if (!r) {
                batch_flush(bq);
                return; /* every descriptor is in flight: completions will make room */
            }
            const char *why = NULL;
            int rc = vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why);
            if (rc == -E2BIG) {
                /* retry with the large vector (rare: chains beyond seg_max) */
                q->vq.broken = false;
                r->elem.iov = req_iov(r, VU_MAX_IOV);
                r->elem.iov_cap = r->elem.iov ? VU_MAX_IOV : 0;
                rc = r->elem.iov ? vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why) : -EINVAL;
            }
            if (rc <= 0) {
                req_release(r);
                batch_flush(bq);
                if (rc < 0)
                    vu_queue_fail(q, why);
                goto rearm;
            }
            if (req_decode(r))
                dispatch(bq, r);
        }
        batch_flush(bq);
        return;
    rearm:
        if (!vu_queue_can_process(q) || LOAD(bq->e->stopped) || !vu_queue_rearm(q))
            return;
    }
}

/* On the ring's loop: its parked requests, the list emptied. */
static struct blk_req *take_parked(struct blk_queue *bq)
{
    struct blk_req *list = bq->parked;
    bq->parked = NULL;
    bq->parked_tail = &bq->parked;
    return list;
}

/* Control loop, in a coroutine: retries the parked requests (timer, or
 * SIGUSR1 through the daemon) and lets the rings run again; kick_all: look
 * at every ring even if nothing was stopped (a ring's cancel restarted the
 * device). Each ring is visited on its own loop, under the device lock so
 * that no ring is set up or torn down meanwhile. */
static void blk_resume(struct blk_export *e, bool kick_all)
{
    if (!LOAD(e->stopped) && !kick_all)
        return;
    vbd_co_mutex_lock(&e->dev.lock);
    if (XCHG(e->stopped, false)) {
        vbd_timer_cancel(&e->retry_timer);
        ADD(e->retries, 1);
        vbd_debug("%s: retrying %d stopped request(s)", e->name, LOAD(e->nparked));
    } else if (!kick_all) {
        vbd_co_mutex_unlock(&e->dev.lock);
        return;
    }
    for (int i = 0; i < VU_MAX_QUEUES; i++) {
        struct vu_queue *q = e->dev.queues[i];
        if (!q || !q->started)
            continue;
        struct vbd_loop *prev = vu_queue_enter(q);
        struct blk_queue *bq = q->dev_queue;
        if (bq) {
            struct blk_req *list = take_parked(bq);
            while (list) {
                struct blk_req *r = list;
                list = r->next_free;
                ADD(e->nparked, -1);
                r->retrying = true;
                ADD(e->nretrying, 1);
                vbd_co_enter(vbd_co_create(req_co, r));
            }
            if (vu_queue_can_process(q) && !LOAD(e->stopped))
                blk_queue_kick(q);
        }
        vu_queue_leave(prev);
    }
    vbd_co_mutex_unlock(&e->dev.lock);
}

static void resume_co(void *arg)
{
    struct blk_export *e = arg;
    blk_resume(e, false);
    ADD(e->resumers, -1);
}

static void resume_kick_all_co(void *arg)
{
    struct blk_export *e = arg;
    blk_resume(e, true);
    ADD(e->resumers, -1);
}

static void start_resume(struct blk_export *e, bool kick_all)
{
    ADD(e->resumers, 1);
    vbd_co_wake(vbd_co_create(kick_all ? resume_kick_all_co : resume_co, e));
}

static void retry_timer_cb(void *arg)
{
    start_resume(arg, false);
}

static void arm_bh(void *arg)
{
    struct blk_export *e = arg;
    STORE(e->arm_pending, false);
    if (LOAD(e->stopped) && !e->dev.stopping && !e->retry_timer.armed)
        vbd_timer_arm(&e->retry_timer, vbd_clock_ns() + e->retry_ns);
}

static void kick_bh(void *arg)
{
    struct blk_export *e = arg;
    STORE(e->kick_pending, false);
    if (!e->dev.stopping)
        start_resume(e, true);
}

/* The ring is about to stop (GET_VRING_BASE, reset, disconnect): parked
 * requests of this queue cannot wait any longer, they fail. On the ring's
 * loop. */
static void blk_queue_cancel(struct vu_queue *q)
{
    struct blk_queue *bq = q->dev_queue;
    if (!bq)
        return;
    struct blk_export *e = bq->e;
    int cancelled = 0;
    struct blk_req *list = take_parked(bq);
    while (list) {
        struct blk_req *r = list;
        list = r->next_free;
        cancelled++;
        *r->status = VIRTIO_BLK_S_IOERR;
        vu_queue_complete(q, r->elem.head, 1);
        req_release(r);
    }
    if (!cancelled)
        return;
    vbd_warn("%s: queue %d stops with %d stopped request(s): they fail with an I/O error", e->name, q->index,
             cancelled);
    if (ADD(e->nparked, -cancelled) == 0 && XCHG(e->stopped, false)) {
        /* nothing waits any more: the device runs again, and the other
         * rings must look at requests that arrived while it was stopped */
        STORE(e->stop_reported, false);
        STORE(e->retries, 0);
        on_control_loop(e, &e->kick_pending, &e->kick_bh);
    }
}

static void queue_state_free(struct blk_queue *bq)
{
    for (int i = 0; i < bq->nreqs; i++)
        free(bq->reqs[i].iov_heap);
    free(bq->reqs);
    free(bq->merges);
    free(bq);
}

static int blk_queue_start(struct vu_queue *q)
{
    struct blk_export *e = q->dev->opaque;
    struct blk_queue *bq = q->dev_queue;
    if (bq && bq->nreqs != q->vq.num) {
        queue_state_free(bq);
        bq = NULL;
    }
    if (!bq) {
        bq = calloc(1, sizeof(*bq));
        if (!bq)
            return -ENOMEM;
        bq->reqs = calloc(q->vq.num, sizeof(*bq->reqs));
        bq->merges = e->merge ? calloc(BLK_MERGE_POOL, sizeof(*bq->merges)) : NULL;
        if (!bq->reqs || (e->merge && !bq->merges)) {
            free(bq->reqs);
            free(bq);
            return -ENOMEM;
        }
        bq->nreqs = q->vq.num;
    }
    bq->q = q;
    bq->e = e;
    bq->free_list = NULL;
    bq->nbatch = 0;
    bq->parked = NULL;
    bq->parked_tail = &bq->parked;
    for (int i = bq->nreqs - 1; i >= 0; i--) {
        bq->reqs[i].bq = bq;
        bq->reqs[i].next_free = bq->free_list;
        bq->free_list = &bq->reqs[i];
    }
    bq->merge_free = NULL;
    for (int i = 0; bq->merges && i < BLK_MERGE_POOL; i++) {
        bq->merges[i].bq = bq;
        bq->merges[i].next_free = bq->merge_free;
        bq->merge_free = &bq->merges[i];
    }
    q->dev_queue = bq;
    return 0;
}

static void blk_queue_stop(struct vu_queue *q)
{
    struct blk_queue *bq = q->dev_queue;
    if (!bq)
        return;
    struct blk_export *e = bq->e;
    if (bq->merged_groups)
        vbd_debug("%s: queue %d: %llu requests went down merged into %llu", e->name, q->index,
                  (unsigned long long)bq->merged_reqs, (unsigned long long)bq->merged_groups);
    queue_state_free(bq);
    q->dev_queue = NULL;
}

static void blk_queue_resubmit(struct vu_queue *q, uint16_t head)
{
    struct blk_queue *bq = q->dev_queue;
    struct blk_req *r = req_alloc(bq);
    if (!r)
        return;
    r->elem.iov = req_iov(r, VU_MAX_IOV);
    r->elem.iov_cap = VU_MAX_IOV;
    const char *why = NULL;
    if (!r->elem.iov || vu_vq_map_chain(&q->vq, &q->dev->mem, head, &r->elem, &why) < 0) {
        req_release(r);
        vu_queue_fail(q, why ? why : "out of memory");
        return;
    }
    if (req_decode(r))
        submit(bq, r);
}

static const struct vu_dev_ops blk_ops = {
    .features = blk_features,
    .features_set = blk_features_set,
    .get_config = blk_get_config,
    .set_config = blk_set_config,
    .queue_start = blk_queue_start,
    .queue_stop = blk_queue_stop,
    .queue_resubmit = blk_queue_resubmit,
    .queue_kick = blk_queue_kick,
    .queue_cancel = blk_queue_cancel,
};

/* ------------------------------------------------------------------ */
/* the export                                                          */

static bool power_of_two(uint64_t v)
{
    return v && !(v & (v - 1));
}

static int parse_err_action(const char *s, bool write, enum blk_err_action *a)
{
    if (!strcmp(s, "report"))
        *a = BLK_ERR_REPORT;
    else if (!strcmp(s, "stop"))
        *a = BLK_ERR_STOP;
    else if (write && !strcmp(s, "enospc"))
        *a = BLK_ERR_ENOSPC;
    else
        return -EINVAL;
    return 0;
}

/* iothread=ID, or a list (iothread.0=A,iothread.1=B or a JSON array) that
 * the rings are spread over, ring i on the (i mod n)th: QEMU's forms. */
static int take_iothreads(struct json_object *opts, const char *id, struct vbd_loop **loops, int *nloops,
                          struct vbd_error **err)
{
    struct json_object *v = vbd_opt_take_obj(opts, "iothread");
    *nloops = 0;
    if (!v)
        return 0;
    int rc = 0;
    size_t n = 0;
    if (json_object_is_type(v, json_type_array))
        n = json_object_array_length(v);
    else if (json_object_is_type(v, json_type_object))
        n = (size_t)json_object_object_length(v);
    else
        n = 1;
    if (n == 0 || n > VU_MAX_QUEUES) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': iothread: between 1 and %d iothreads", id,
                       VU_MAX_QUEUES);
        rc = -EINVAL;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct json_object *item = v;
        char key[16];
        snprintf(key, sizeof(key), "%zu", i);
        if (json_object_is_type(v, json_type_array))
            item = json_object_array_get_idx(v, i);
        else if (json_object_is_type(v, json_type_object) && !json_object_object_get_ex(v, key, &item))
            item = NULL;
        if (!item || !json_object_is_type(item, json_type_string)) {
            vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': iothread: expected an iothread id or a list "
                           "iothread.0=ID,iothread.1=ID,...", id);
            rc = -EINVAL;
            break;
        }
        const char *name = json_object_get_string(item);
        loops[i] = vbd_iothread_loop(name);
        if (!loops[i]) {
            vbd_error_setf(err, ENOENT, "vhost-user-blk export '%s': no iothread '%s' (create it with --object "
                           "iothread,id=%s first)", id, name, name);
            rc = -ENOENT;
        }
    }
    json_object_put(v);
    if (rc == 0)
        *nloops = (int)n;
    return rc;
}

static struct vbd_export *blk_export_create(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL, *node = NULL, *atype = NULL, *path = NULL, *serial = NULL;
    char *werror = NULL, *rerror = NULL;
    bool writable = false, writethrough = false, server = true, has_wt = false, merge = true;
    enum blk_err_action wact = BLK_ERR_REPORT, ract = BLK_ERR_REPORT;
    uint64_t nq = 0, lbs = 512, pbs = 0, retry_ms = 1000;
    struct blk_export *e = NULL;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "node-name", &node, err) < 0 ||
        vbd_opt_take_str(opts, "addr.type", &atype, err) < 0 || vbd_opt_take_str(opts, "addr.path", &path, err) < 0 ||
        vbd_opt_take_bool(opts, "writable", &writable, err) < 0 ||
        vbd_opt_take_u64(opts, "num-queues", &nq, err) < 0 ||
        vbd_opt_take_u64(opts, "logical-block-size", &lbs, err) < 0 ||
        vbd_opt_take_u64(opts, "physical-block-size", &pbs, err) < 0 ||
        vbd_opt_take_str(opts, "serial", &serial, err) < 0 ||
        vbd_opt_take_bool(opts, "server", &server, err) < 0 || vbd_opt_take_bool(opts, "merge", &merge, err) < 0 ||
        vbd_opt_take_str(opts, "werror", &werror, err) < 0 || vbd_opt_take_str(opts, "rerror", &rerror, err) < 0 ||
        vbd_opt_take_u64(opts, "retry-interval", &retry_ms, err) < 0)
        goto fail;
    if (retry_ms > 3600000) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': retry-interval=%llu: at most 3600000 ms (0: only on "
                       "SIGUSR1)", id ? id : "", (unsigned long long)retry_ms);
        goto fail;
    }
    if (werror && parse_err_action(werror, true, &wact) < 0) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': werror=%s: expected report, stop or enospc",
                       id ? id : "", werror);
        goto fail;
    }
    if (rerror && parse_err_action(rerror, false, &ract) < 0) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': rerror=%s: expected report or stop", id ? id : "",
                       rerror);
        goto fail;
    }
    if (vbd_opt_get(opts, "writethrough")) {
        has_wt = true;
        if (vbd_opt_take_bool(opts, "writethrough", &writethrough, err) < 0)
            goto fail;
    }
    if (!id || !node || !path) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export: '%s' is required",
                       !id ? "id" : !node ? "node-name" : "addr.path");
        goto fail;
    }
    struct vbd_loop *loops[VU_MAX_QUEUES];
    int nloops;
    if (take_iothreads(opts, id, loops, &nloops, err) < 0)
        goto fail;
    if (atype && strcmp(atype, "unix")) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': addr.type must be 'unix', not '%s'", id, atype);
        goto fail;
    }
    if (nq > VU_MAX_QUEUES) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': num-queues=%llu is more than %d", id,
                       (unsigned long long)nq, VU_MAX_QUEUES);
        goto fail;
    }
    if ((lbs != 512 && lbs != 4096) || (pbs && (!power_of_two(pbs) || pbs < lbs || pbs > (1u << 20)))) {
        vbd_error_setf(err, EINVAL,
                       "vhost-user-blk export '%s': logical-block-size must be 512 or 4096 and physical-block-size "
                       "a power of two >= it",
                       id);
        goto fail;
    }
    struct vbd_node *n = vbd_node_find(node);
    if (!n) {
        vbd_error_setf(err, ENOENT, "vhost-user-blk export '%s': no node named '%s'", id, node);
        goto fail;
    }
    if (writable && n->read_only) {
        vbd_error_setf(err, EROFS, "vhost-user-blk export '%s': node '%s' is read-only (use writable=off)", id, node);
        goto fail;
    }
    if (n->size % lbs) {
        vbd_error_setf(err, EINVAL,
                       "vhost-user-blk export '%s': the size of node '%s' (%llu) is not a multiple of the logical "
                       "block size %llu",
                       id, node, (unsigned long long)n->size, (unsigned long long)lbs);
        goto fail;
    }
    e = calloc(1, sizeof(*e));
    e->base.type = &vbd_export_type_vhost_user_blk;
    snprintf(e->name, sizeof(e->name), "vhost-user-blk export '%s'", id);
    struct vbd_backend_opts bo = {
        .read_only = !writable,
        .writethrough = has_wt ? writethrough : false,
        .logical_block_size = (uint32_t)lbs,
        .physical_block_size = (uint32_t)(pbs ? pbs : lbs),
        .discard_unmap = (n->open_flags & VBD_OPEN_UNMAP) != 0,
        .name = id,
        .serial = serial ? serial : id,
    };
    e->be = vbd_backend_new(n, &bo, err);
    if (!e->be) {
        vbd_error_prepend(err, "vhost-user-blk export '%s': ", id);
        goto fail;
    }
    e->id = id;
    id = NULL;
    e->writable = writable;
    e->num_queues = nq ? (uint16_t)nq : 1;
    e->lbs = (uint32_t)lbs;
    e->pbs = (uint32_t)(pbs ? pbs : lbs);
    e->discard = bo.discard_unmap;
    e->merge = merge;
    e->werror = wact;
    e->rerror = ract;
    memcpy(e->loops, loops, sizeof(loops[0]) * (size_t)nloops);
    e->nloops = nloops;
    e->dev.queue_loops = e->loops;
    e->dev.nqueue_loops = nloops;
    e->arm_bh.fn = arm_bh;
    e->arm_bh.arg = e;
    e->kick_bh.fn = kick_bh;
    e->kick_bh.arg = e;
    e->retry_ns = retry_ms * 1000000ull;
    e->retry_timer.fn = retry_timer_cb;
    e->retry_timer.arg = e;
    e->capacity = vbd_backend_size(e->be) / 512;
    e->dev.ops = &blk_ops;
    e->dev.name = e->name;
    e->dev.path = path;
    path = NULL;
    e->dev.server = server;
    /* QEMU asks for one queue per vCPU unless told num-queues=: without an
     * explicit limit we accept up to 16 */
    e->dev.max_queues = nq ? (uint16_t)nq : BLK_DEFAULT_QUEUES;
    e->dev.opaque = e;
    if (vu_dev_start(&e->dev, err) < 0) {
        vbd_backend_free(e->be);
        free(e->dev.path);
        free(e->id);
        free(e);
        e = NULL;
        goto fail;
    }
    free(node);
    free(atype);
    free(serial);
    free(werror);
    free(rerror);
    return &e->base;
fail:
    free(werror);
    free(rerror);
    free(id);
    free(node);
    free(atype);
    free(path);
    free(serial);
    return NULL;
}

static void blk_export_shutdown(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    vbd_timer_cancel(&e->retry_timer);
    if (vbd_in_co()) {
        vu_dev_stop(&e->dev);
        /* what the rings asked the control loop to do must be done before e goes */
        while (LOAD(e->arm_pending) || LOAD(e->kick_pending) || LOAD(e->resumers))
            vbd_co_sleep_ns(1000000);
        vbd_timer_cancel(&e->retry_timer);
        vbd_backend_co_flush(e->be);
    }
}

static void blk_export_free(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    vbd_timer_cancel(&e->retry_timer);
    vbd_backend_free(e->be);
    free(e->dev.path);
    free(e->id);
    free(e);
}

static struct json_object *blk_export_query(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("vhost-user-blk"));
    json_object_object_add(o, "id", json_object_new_string(e->id));
    json_object_object_add(o, "node-name", json_object_new_string(vbd_backend_node(e->be)->node_name));
    json_object_object_add(o, "shutting-down", json_object_new_boolean(e->dev.stopping));
    json_object_object_add(o, "stopped", json_object_new_boolean(LOAD(e->stopped)));
    json_object_object_add(o, "stopped-requests", json_object_new_int(LOAD(e->nparked)));
    return o;
}

/* SIGHUP: the node's size was re-read; a new capacity goes to the front
 * end with a config change notification (QEMU then re-reads the config and
 * interrupts the guest, which updates /sys/block/vda/size). */
static void blk_export_resized(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    uint64_t cap = capacity_of(e);
    if (cap == e->capacity)
        return;
    vbd_info("%s: capacity %llu -> %llu sectors", e->name, (unsigned long long)e->capacity, (unsigned long long)cap);
    e->capacity = cap;
    int rc = vu_dev_config_changed(&e->dev);
    if (rc == -ENOTSUP)
        vbd_warn("%s: the front end gave no back-end channel (BACKEND_REQ): the guest sees the new size only after "
                 "the device is reset",
                 e->name);
}

/* SIGUSR1 (the daemon's 'cont'): retry stopped requests now. */
static void blk_export_cont(struct vbd_export *base)
{
    blk_resume((struct blk_export *)base, false);
}

const struct vbd_export_type vbd_export_type_vhost_user_blk = {
    .type = "vhost-user-blk",
    .create = blk_export_create,
    .shutdown = blk_export_shutdown,
    .free = blk_export_free,
    .query = blk_export_query,
    .cont = blk_export_cont,
    .resized = blk_export_resized,
};
