/* SPDX-License-Identifier: MIT */
/*
 * The virtio-blk device (virtio 1.x, 5.2) served over vhost-user, and the
 * `--export type=vhost-user-blk` export: its options, creation and
 * lifetime, and the vu_dev callbacks (features, config space, rings). The
 * requests themselves are in blk-request.c, merging in blk-merge.c and the
 * werror/rerror policy in blk-errors.c (see blk-internal.h).
 */
#include "blk-internal.h"

#include "vbd/bswap.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

extern const struct vbd_export_type vbd_export_type_vhost_user_blk;

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
    put_le64p(p + offsetof(struct virtio_blk_config, capacity), capacity_of(e));
    put_le32p(p + offsetof(struct virtio_blk_config, size_max), BLK_SIZE_MAX);
    put_le32p(p + offsetof(struct virtio_blk_config, seg_max), BLK_SEG_MAX);
    put_le32p(p + offsetof(struct virtio_blk_config, blk_size), e->lbs);
    int exp = 0;
    while ((e->lbs << exp) < e->pbs)
        exp++;
    c.physical_block_exp = (uint8_t)exp;
    put_le16p(p + offsetof(struct virtio_blk_config, min_io_size), (uint16_t)(e->pbs / e->lbs));
    /* one physical block, as qsd 7.2 says 1 (it has no physical-block-size):
     * the guest's optimal_io_size (lsblk -t's OPT-IO) is then qsd's, not 0 */
    put_le32p(p + offsetof(struct virtio_blk_config, opt_io_size), e->pbs / e->lbs);
    c.wce = vbd_backend_writethrough(e->be) ? 0 : 1;
    put_le16p(p + offsetof(struct virtio_blk_config, num_queues), e->num_queues);
    put_le32p(p + offsetof(struct virtio_blk_config, max_discard_sectors), BLK_MAX_DISCARD_SECTORS);
    put_le32p(p + offsetof(struct virtio_blk_config, max_discard_seg), 1);
    put_le32p(p + offsetof(struct virtio_blk_config, discard_sector_alignment), e->lbs / 512);
    put_le32p(p + offsetof(struct virtio_blk_config, max_write_zeroes_sectors), BLK_MAX_WRITE_ZEROES_SECTORS);
    put_le32p(p + offsetof(struct virtio_blk_config, max_write_zeroes_seg), 1);
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
/* rings                                                               */

/*
 * A kick takes at least BLK_KICK_BUDGET requests, then stops where the
 * avail index it last read ends and returns to the loop; what the driver
 * added meanwhile waits for the ring's poller, which the loop runs at the
 * start of every iteration and before it blocks, so nothing is left
 * behind. A kick that read the index again until the ring was empty never
 * ended while the driver refilled the ring as fast as we served it:
 * requests completed here (a null node, a page-cache read of a file) are
 * refilled before the next pop, and the loop's other ring waited
 * meanwhile. 2 queues, tmpfs file, 4K reads QD32: p99 2.2-5.0 ms (the
 * first ring's 1.2-3.3 ms, the second's 3.5-5.5) -> 0.5-1.2 ms, p99.9
 * 12-22 -> 2-4 ms, IOPS level (qsd 1.4-2.5 ms); null 2q 4K writes QD32 p99 70-344 ->
 * 39-70 us. Ending at every batch (no budget) cost 2q 64K reads of null
 * ~7 % (more loop iterations, so more bottom-half signals that wake the
 * driver); at 32 ~3 %, at 64 none (RESULTS.md 2026-12-05, vu11). The stop
 * rearms as an empty ring does: with EVENT_IDX a driver that is not told
 * the new avail_event does not kick, and a loop that slept then woke only
 * for its next timer (200 ms stalls without it).
 */
#define BLK_KICK_BUDGET 64
/*
 * ... or, once it has taken BLK_KICK_TIMED requests, at the first batch end
 * BLK_KICK_TIME_NS after the first batch end that counted them: 64 requests are ~20 us of 4K reads of a null node but
 * ~600 us of 64K reads of a tmpfs file (~9 us each, copied here), and the
 * other ring's requests waited for all of them (2 queues, 64K reads QD8:
 * p50 70 us, p99 0.8-1.2 ms against qsd's 0.4-0.6 ms). The clock is read
 * only by kicks that reach BLK_KICK_TIMED (none at QD1), at batch ends:
 * the statistics clock (a bare TSC read where the kernel's clock is the
 * TSC), not the vDSO's ordered read and sequence loop, for a budget of tens
 * of microseconds: 2q 64K reads QD8 read it at nearly every batch end.
 */
#define BLK_KICK_TIMED 8
#define BLK_KICK_TIME_NS 64000
static bool kick_spent(int popped, int budget, uint64_t *since)
{
    if (popped >= budget)
        return true;
    if (popped < BLK_KICK_TIMED)
        return false;
    uint64_t now = vbd_clock_stat_ns();
    if (!*since)
        *since = now;
    return now - *since >= BLK_KICK_TIME_NS;
}

/*
 * ... or, on a thread that serves more than one busy ring, at the first
 * batch end after BLK_KICK_SHARED_BUDGET requests: the other ring's
 * requests wait for the whole turn, and with 64 a turn of 4K reads of a
 * null node held them ~20 us, twice a ring's depth at QD32: 2 queues, 4K
 * reads QD32, p99 70-94 us (qsd 59-78) -> 55-70, 4K writes 51-55 -> 32-47,
 * 4K reads of a tmpfs file 344-475 -> 238-311, IOPS and CPU per request
 * level; 64K rows level (RESULTS.md 2026-12-06, vuperf16). A thread
 * whose other rings are idle keeps the budget of 64: ending its turn would
 * only cost it a loop iteration and a bottom-half signal. "Busy": this
 * thread's kicks moved from one ring to another within its last
 * BLK_KICK_SHARED_WINDOW kicks (a count, not a clock: nothing read per kick).
 */
#define BLK_KICK_SHARED_BUDGET 32
#define BLK_KICK_SHARED_WINDOW 4
static _Thread_local const struct vu_queue *kick_ring; /* compared, never followed */
static_assert(VU_MAX_IOV == 1040, "VU_MAX_IOV_TEXT names it");

static _Thread_local unsigned kicks, kicks_at_switch;

static bool kick_shared(const struct vu_queue *q)
{
    kicks++;
    if (kick_ring != q) {
        kick_ring = q;
        kicks_at_switch = kicks;
    }
    return kicks - kicks_at_switch < BLK_KICK_SHARED_WINDOW;
}

void blk_queue_kick(struct vu_queue *q)
{
    struct blk_queue *bq = q->dev_queue;
    if (!bq)
        return;
    int popped = 0;
    uint64_t since = 0;
    int budget = kick_shared(q) ? BLK_KICK_SHARED_BUDGET : BLK_KICK_BUDGET;
    for (;;) {
        while (vu_queue_can_process(q) && !LOAD(bq->e->stopped)) {
            struct blk_req *r = blk_req_alloc(bq);
            if (!r) {
                blk_batch_flush(bq);
                return; /* every descriptor is in flight: completions will make room */
            }
            const char *why = NULL;
            int rc = vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why);
            if (rc == -E2BIG) {
                /* retry with the large vector (rare: chains beyond seg_max) */
                q->vq.broken = false;
                r->elem.iov = blk_req_iov(r, VU_MAX_IOV);
                r->elem.iov_cap = r->elem.iov ? VU_MAX_IOV : 0;
                rc = r->elem.iov ? vu_vq_pop(&q->vq, &q->dev->mem, &r->elem, &why) : -EINVAL;
            }
            if (rc <= 0) {
                blk_req_release(r);
                blk_batch_flush(bq);
                if (rc == -E2BIG) /* past the largest vector (QEMU's libvhost-user stops at 1024) */
                    why = "too many segments in one request (over " VU_MAX_IOV_TEXT
                          ", counting a split where a buffer crosses memory regions)";
                if (rc < 0)
                    vu_queue_fail(q, why);
                goto rearm;
            }
            if (blk_req_decode(r))
                blk_dispatch(bq, r);
            popped++;
            if (vu_vq_batch_done(&q->vq) && kick_spent(popped, budget, &since)) {
                /* the driver's next request must kick us (EVENT_IDX:
                 * avail_event published) if the loop sleeps before its
                 * poller looks again; what is pending now it finds */
                blk_batch_flush(bq);
                if (vu_queue_can_process(q) && !LOAD(bq->e->stopped))
                    vu_queue_rearm(q);
                return;
            }
        }
        blk_batch_flush(bq);
        return;
    rearm:
        if (!vu_queue_can_process(q) || LOAD(bq->e->stopped) || !vu_queue_rearm(q))
            return;
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
    struct blk_req *r = blk_req_alloc(bq);
    if (!r)
        return;
    r->elem.iov = blk_req_iov(r, VU_MAX_IOV);
    r->elem.iov_cap = VU_MAX_IOV;
    const char *why = NULL;
    if (!r->elem.iov || vu_vq_map_chain(&q->vq, &q->dev->mem, head, &r->elem, &why) < 0) {
        blk_req_release(r);
        vu_queue_fail(q, why ? why : "out of memory");
        return;
    }
    if (blk_req_decode(r))
        blk_submit(bq, r);
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
    memset(loops, 0, sizeof(*loops) * VU_MAX_QUEUES);
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
        loops[i] = vbd_iothread_acquire(name); /* object-del refuses it while we use it */
        if (!loops[i]) {
            vbd_error_setf(err, ENOENT, "vhost-user-blk export '%s': no iothread '%s' (create it with --object "
                           "iothread,id=%s first)", id, name, name);
            rc = -ENOENT;
        }
    }
    json_object_put(v);
    if (rc == 0)
        *nloops = (int)n;
    else
        for (size_t i = 0; i < n && loops[i]; i++)
            vbd_iothread_release(loops[i]);
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
    struct vbd_loop *loops[VU_MAX_QUEUES];
    int nloops = 0, has_nq = 0;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "node-name", &node, err) < 0 ||
        vbd_opt_take_str(opts, "addr.type", &atype, err) < 0 || vbd_opt_take_str(opts, "addr.path", &path, err) < 0 ||
        vbd_opt_take_bool(opts, "writable", &writable, err) < 0 ||
        (has_nq = vbd_opt_take_u64(opts, "num-queues", &nq, err)) < 0 ||
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
    if (take_iothreads(opts, id, loops, &nloops, err) < 0)
        goto fail;
    if (atype && strcmp(atype, "unix")) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': addr.type must be 'unix', not '%s'", id, atype);
        goto fail;
    }
    /* QEMU 7.2's checks (check_block_size, then the queues), in its words;
     * 0 is its "unset" */
    if (lbs && (lbs < 512 || lbs > (2u << 20))) {
        vbd_error_setf(err, EINVAL, "Property %s.logical-block-size doesn't take value %llu (minimum: 512, maximum: "
                       "2097152)", id, (unsigned long long)lbs);
        goto fail;
    }
    if (lbs && !power_of_two(lbs)) {
        vbd_error_setf(err, EINVAL, "Property %s.logical-block-size doesn't take value '%llu', it's not a power of 2",
                       id, (unsigned long long)lbs);
        goto fail;
    }
    if (has_nq && nq == 0) { /* vbd's own 0 is "one per vCPU", not asked for */
        vbd_error_setf(err, EINVAL, "num-queues must be greater than 0");
        goto fail;
    }
    if (nq > VU_MAX_QUEUES) {
        vbd_error_setf(err, EINVAL, "vhost-user-blk export '%s': num-queues=%llu is more than %d", id,
                       (unsigned long long)nq, VU_MAX_QUEUES);
        goto fail;
    }
    /* the backend's limits (vbd_backend_new): 64 KiB at most, said here */
    if ((lbs != 512 && lbs != 4096) || (pbs && (!power_of_two(pbs) || pbs < lbs || pbs > 65536))) {
        vbd_error_setf(err, EINVAL,
                       "vhost-user-blk export '%s': logical-block-size must be 512 or 4096 and physical-block-size "
                       "a power of two >= it, at most 65536",
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
    if (vbd_node_size(n) % lbs) {
        vbd_error_setf(err, EINVAL,
                       "vhost-user-blk export '%s': the size of node '%s' (%llu) is not a multiple of the logical "
                       "block size %llu",
                       id, node, (unsigned long long)vbd_node_size(n), (unsigned long long)lbs);
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
        .serial = serial ? serial : BLK_DEFAULT_SERIAL,
    };
    e->be = vbd_backend_new(n, &bo, err);
    if (!e->be) {
        /* e goes too (it leaked when the backend refused a block size
         * the check above let through) */
        vbd_error_prepend(err, "vhost-user-blk export '%s': ", id);
        free(e);
        e = NULL;
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
    e->arm_bh.fn = blk_arm_bh;
    e->arm_bh.arg = e;
    e->kick_bh.fn = blk_kick_bh;
    e->kick_bh.arg = e;
    e->retry_ns = retry_ms * 1000000ull;
    e->retry_timer.fn = blk_retry_timer_cb;
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
    for (int i = 0; i < nloops; i++)
        vbd_iothread_release(loops[i]);
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
    for (int i = 0; i < e->nloops; i++)
        vbd_iothread_release(e->loops[i]);
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

/* block-export-del (either mode, as qsd 7.2, whose connected front end
 * holds no reference on the export, so mode=safe finds it unused): cut the
 * front end off now; shutdown() then waits for the requests in flight and
 * cancels the stopped ones. No .in_use: a connected front end never makes
 * the command fail. */
static void blk_export_disconnect(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    if (e->dev.conn_fd >= 0)
        shutdown(e->dev.conn_fd, SHUT_RDWR);
}

/* SIGUSR1 (the daemon's 'cont'): retry stopped requests now. */
static void blk_export_cont(struct vbd_export *base)
{
    blk_resume((struct blk_export *)base, false);
}

static struct vbd_backend *blk_export_backend(struct vbd_export *base)
{
    return ((struct blk_export *)base)->be;
}

/* With rings on iothreads, the graph can live on the first ring's: the
 * requests of that ring then run where they arrive, the other rings' hop. */
static struct vbd_loop *blk_export_request_loop(struct vbd_export *base)
{
    struct blk_export *e = (struct blk_export *)base;
    return e->nloops ? e->loops[0] : NULL;
}

const struct vbd_export_type vbd_export_type_vhost_user_blk = {
    .type = "vhost-user-blk",
    .create = blk_export_create,
    .shutdown = blk_export_shutdown,
    .free = blk_export_free,
    .disconnect = blk_export_disconnect,
    .query = blk_export_query,
    .cont = blk_export_cont,
    .resized = blk_export_resized,
    .backend = blk_export_backend,
    .request_loop = blk_export_request_loop,
};
