/* SPDX-License-Identifier: MIT */
/* werror/rerror=stop|enospc: a failed request is parked on its ring, every
 * ring stops popping, and the parked requests are retried from the control
 * loop (retry-interval timer, or SIGUSR1 through the daemon). */
#include "blk-internal.h"

#include <assert.h>
#include <errno.h>
#include <linux/virtio_blk.h>
#include <string.h>

/* werror/rerror: should this failure stop the device (blk_park the request)? */
bool blk_error_stops(struct blk_export *e, uint32_t type, int err)
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

/* QMP's BLOCK_IO_ERROR, where the policy decided: "stop" (parked) or
 * "report" (the guest gets VIRTIO_BLK_S_IOERR). On the request's ring loop. */
void blk_io_error_event(struct blk_export *e, uint32_t type, int err, const char *action)
{
    vbd_export_io_error_event(e->id, vbd_backend_node(e->be)->node_name, type != VIRTIO_BLK_T_IN, err, action);
}

static void on_control_loop(struct blk_export *e, bool *pending, struct vbd_bh *bh)
{
    if (!__atomic_exchange_n(pending, true, __ATOMIC_ACQ_REL))
        vbd_loop_schedule_bh(e->dev.loop, bh);
}

/* On the request's ring loop. */
void blk_park(struct blk_req *r, int err)
{
    struct blk_queue *bq = r->bq;
    struct blk_export *e = bq->e;
    if (r->retrying) {
        r->retrying = false;
        ADD(e->nretrying, -1);
    }
    if (!XCHG(e->stop_reported, true))
        vbd_error_report("%s: %s at sector %llu failed: %s; %s=%s: the device stops and the request is retried %s",
                         e->name, blk_type_name(r->type), (unsigned long long)r->sector, strerror(-err),
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
void blk_resume(struct blk_export *e, bool kick_all)
{
    if (!LOAD(e->stopped) && !kick_all)
        return;
    /* the device lock and the retry timer are the control loop's: a taker on
     * a ring's loop would share the lock's wait queue between two threads */
    assert(vbd_loop_is_current(e->dev.loop));
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
                vbd_co_enter(vbd_co_create(blk_req_co, r));
            }
            if (vu_queue_can_process(q) && !LOAD(e->stopped))
                blk_queue_kick(q);
        }
        vu_queue_leave(prev);
    }
    assert(vbd_loop_is_current(e->dev.loop)); /* back from the last ring's loop */
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

void blk_retry_timer_cb(void *arg)
{
    start_resume(arg, false);
}

void blk_arm_bh(void *arg)
{
    struct blk_export *e = arg;
    STORE(e->arm_pending, false);
    if (LOAD(e->stopped) && !e->dev.stopping && !e->retry_timer.armed)
        vbd_timer_arm(&e->retry_timer, vbd_clock_ns() + e->retry_ns);
}

void blk_kick_bh(void *arg)
{
    struct blk_export *e = arg;
    STORE(e->kick_pending, false);
    if (!e->dev.stopping)
        start_resume(e, true);
}

/* The ring is about to stop (GET_VRING_BASE, reset, disconnect): parked
 * requests of this queue cannot wait any longer, they fail. On the ring's
 * loop. */
void blk_queue_cancel(struct vu_queue *q)
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
        if (q->log)
            blk_req_log(r);
        vu_queue_complete(q, r->elem.head, 1, 0);
        blk_req_release(r);
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
