/* SPDX-License-Identifier: MIT */
/*
 * The virtio-blk device (virtio 1.x, 5.2) served over vhost-user, and the
 * `--export type=vhost-user-blk` export. Requests are coroutines that run
 * on the export's loop; their objects are preallocated per ring (one per
 * descriptor, so a full ring never waits for memory), and their iovecs
 * point straight into guest memory.
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

struct blk_export;

struct blk_req {
    struct blk_queue *bq;
    struct vu_elem elem;
    struct iovec iov_inline[BLK_INLINE_IOV];
    struct iovec *iov_heap;
    struct blk_req *next_free;
};

struct blk_queue {
    struct vu_queue *q;
    struct blk_export *e;
    struct blk_req *reqs;
    struct blk_req *free_list;
    uint16_t nreqs;
};

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
    uint64_t guest_features;
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

static void blk_get_config(struct vu_dev *dev, uint8_t *cfg, uint32_t len)
{
    struct blk_export *e = dev->opaque;
    struct virtio_blk_config c;
    memset(&c, 0, sizeof(c));
    uint8_t *p = (uint8_t *)&c;
    put_le64(p + offsetof(struct virtio_blk_config, capacity), vbd_backend_size(e->be) / 512);
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

static int do_discard_zeroes(struct blk_export *e, uint32_t type, struct iovec *iov, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (total == 0 || total % 16)
        return -EINVAL;
    if (total / 16 > 1)
        return -ENOTSUP; /* max_discard_seg = max_write_zeroes_seg = 1 */
    uint8_t seg[16];
    take_front(&iov, &n, seg, 16);
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
    return vbd_backend_co_pwrite_zeroes(e->be, sector << 9, (uint64_t)num << 9, f);
}

static void req_co(void *arg)
{
    struct blk_req *r = arg;
    struct blk_queue *bq = r->bq;
    struct blk_export *e = bq->e;
    struct iovec *out = r->elem.iov, *in = r->elem.iov + r->elem.out_num;
    int nout = r->elem.out_num, nin = r->elem.in_num;
    uint32_t used_len = 0;
    uint8_t hdr[16];
    int err = 0;

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
        vu_queue_complete(bq->q, r->elem.head, 0);
        goto done;
    }
    uint32_t type;
    uint64_t sector;
    memcpy(&type, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    size_t in_bytes = 0, out_bytes = 0;
    for (int i = 0; i < nin; i++)
        in_bytes += in[i].iov_len;
    for (int i = 0; i < nout; i++)
        out_bytes += out[i].iov_len;

    switch (type) {
    case VIRTIO_BLK_T_IN: {
        if (!range_ok(e, sector, in_bytes)) {
            err = -EINVAL;
            break;
        }
        struct vbd_qiov qiov;
        vbd_qiov_init(&qiov, in, nin);
        err = vbd_backend_co_preadv(e->be, sector << 9, in_bytes, &qiov, 0);
        if (err >= 0)
            used_len = (uint32_t)in_bytes;
        break;
    }
    case VIRTIO_BLK_T_OUT: {
        if (!e->writable) {
            err = -EROFS;
            break;
        }
        if (!range_ok(e, sector, out_bytes)) {
            err = -EINVAL;
            break;
        }
        struct vbd_qiov qiov;
        vbd_qiov_init(&qiov, out, nout);
        err = vbd_backend_co_pwritev(e->be, sector << 9, out_bytes, &qiov, 0);
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        err = vbd_backend_co_flush(e->be);
        break;
    case VIRTIO_BLK_T_GET_ID: {
        char id[VIRTIO_BLK_ID_BYTES] = {0};
        const char *serial = vbd_backend_serial(e->be);
        strncpy(id, serial ? serial : "", sizeof(id));
        size_t n = in_bytes < sizeof(id) ? in_bytes : sizeof(id);
        size_t done = 0;
        for (int i = 0; i < nin && done < n; i++) {
            size_t c = in[i].iov_len < n - done ? in[i].iov_len : n - done;
            memcpy(in[i].iov_base, id + done, c);
            done += c;
        }
        used_len = (uint32_t)n;
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        if (!e->writable) {
            err = -EROFS;
            break;
        }
        err = do_discard_zeroes(e, type, out, nout);
        break;
    default:
        err = -ENOTSUP;
    }
    if (err < 0 && err != -ENOTSUP)
        vbd_debug("%s: request type %u at sector %llu failed: %s", e->name, type, (unsigned long long)sector,
                  strerror(-err));
    *status = status_of(err);
    vu_queue_complete(bq->q, r->elem.head, used_len + 1);
done:
    r->next_free = bq->free_list;
    bq->free_list = r;
}

static void submit(struct blk_queue *bq, struct blk_req *r)
{
    vu_queue_req_start(bq->q);
    struct vbd_co *co = vbd_co_create(req_co, r);
    vbd_co_enter(co); /* runs until its first I/O wait: submissions of one kick go out together */
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
        while (vu_queue_can_process(q)) {
            struct blk_req *r = req_alloc(bq);
            if (!r)
                return; /* every descriptor is in flight: completions will make room */
            const char *why = NULL;
            int rc = vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why);
            if (rc == -EINVAL && !strcmp(why, "too many segments in one request")) {
                /* retry with the large vector (rare: chains beyond seg_max) */
                q->vq.broken = false;
                r->elem.iov = req_iov(r, VU_MAX_IOV);
                r->elem.iov_cap = r->elem.iov ? VU_MAX_IOV : 0;
                rc = r->elem.iov ? vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why) : -EINVAL;
            }
            if (rc <= 0) {
                r->next_free = bq->free_list;
                bq->free_list = r;
                if (rc < 0)
                    vu_queue_fail(q, why);
                goto rearm;
            }
            submit(bq, r);
        }
        return;
    rearm:
        if (!vu_queue_can_process(q) || !vu_vq_enable_notification(&q->vq))
            return;
    }
}

static int blk_queue_start(struct vu_queue *q)
{
    struct blk_export *e = q->dev->opaque;
    struct blk_queue *bq = q->dev_queue;
    if (bq && bq->nreqs != q->vq.num) {
        for (int i = 0; i < bq->nreqs; i++)
            free(bq->reqs[i].iov_heap);
        free(bq->reqs);
        free(bq);
        bq = NULL;
    }
    if (!bq) {
        bq = calloc(1, sizeof(*bq));
        if (!bq)
            return -ENOMEM;
        bq->reqs = calloc(q->vq.num, sizeof(*bq->reqs));
        if (!bq->reqs) {
            free(bq);
            return -ENOMEM;
        }
        bq->nreqs = q->vq.num;
    }
    bq->q = q;
    bq->e = e;
    bq->free_list = NULL;
    for (int i = bq->nreqs - 1; i >= 0; i--) {
        bq->reqs[i].bq = bq;
        bq->reqs[i].next_free = bq->free_list;
        bq->free_list = &bq->reqs[i];
    }
    q->dev_queue = bq;
    return 0;
}

static void blk_queue_stop(struct vu_queue *q)
{
    struct blk_queue *bq = q->dev_queue;
    if (!bq)
        return;
    for (int i = 0; i < bq->nreqs; i++)
        free(bq->reqs[i].iov_heap);
    free(bq->reqs);
    free(bq);
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
        r->next_free = bq->free_list;
        bq->free_list = r;
        vu_queue_fail(q, why ? why : "out of memory");
        return;
    }
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
};

/* ------------------------------------------------------------------ */
/* the export                                                          */

static bool power_of_two(uint64_t v)
{
    return v && !(v & (v - 1));
}

static struct vbd_export *blk_export_create(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL, *node = NULL, *atype = NULL, *path = NULL, *iothread = NULL, *serial = NULL;
    bool writable = false, writethrough = false, server = true, has_wt = false;
    uint64_t nq = 0, lbs = 512, pbs = 0;
    struct blk_export *e = NULL;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "node-name", &node, err) < 0 ||
        vbd_opt_take_str(opts, "addr.type", &atype, err) < 0 || vbd_opt_take_str(opts, "addr.path", &path, err) < 0 ||
        vbd_opt_take_bool(opts, "writable", &writable, err) < 0 ||
        vbd_opt_take_u64(opts, "num-queues", &nq, err) < 0 ||
        vbd_opt_take_u64(opts, "logical-block-size", &lbs, err) < 0 ||
        vbd_opt_take_u64(opts, "physical-block-size", &pbs, err) < 0 ||
        vbd_opt_take_str(opts, "iothread", &iothread, err) < 0 || vbd_opt_take_str(opts, "serial", &serial, err) < 0 ||
        vbd_opt_take_bool(opts, "server", &server, err) < 0)
        goto fail;
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
    free(iothread);
    free(serial);
    return &e->base;
fail:
    free(id);
    free(node);
    free(atype);
    free(path);
    free(iothread);
    free(serial);
    return NULL;
}

static void blk_export_shutdown(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    if (vbd_in_co()) {
        vu_dev_stop(&e->dev);
        vbd_backend_co_flush(e->be);
    }
}

static void blk_export_free(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
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
    return o;
}

const struct vbd_export_type vbd_export_type_vhost_user_blk = {
    .type = "vhost-user-blk",
    .create = blk_export_create,
    .shutdown = blk_export_shutdown,
    .free = blk_export_free,
    .query = blk_export_query,
};
