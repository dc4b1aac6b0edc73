/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user protocol, back-end side (QEMU docs/interop/vhost-user.rst):
 * one front end at a time on a unix socket (we listen, or we connect),
 * the memory table, the rings, the inflight region. The device on top
 * (virtio-blk) plugs in through vu_dev_ops.
 */
#ifndef VBD_VHOST_USER_H
#define VBD_VHOST_USER_H

#include "virtqueue.h"

#include "vbd/coroutine.h"
#include "vbd/vhost-user-protocol.h"
#include "vbd/loop.h"

#include <stdbool.h>
#include <stdint.h>

#define VU_MAX_QUEUES 64
#define VU_CONFIG_MAX 256

struct vu_dev;

/*
 * Threads: the message loop runs on the device's control loop (dev->loop).
 * Each ring belongs to one loop (q->loop: an iothread, or the control
 * loop): its kick watch, its requests, its interrupts and everything that
 * reads or changes the ring run there. The message handler reaches a ring
 * by moving its coroutine onto the ring's loop (vu_queue_enter) and back,
 * and waits there for the ring to go idle; the memory table changes only
 * while every ring is quiescent. Handlers hold dev->lock (a control-loop
 * mutex) so that the device's own control work (retrying requests stopped
 * by an error policy) never runs while rings are being set up or torn down.
 */
struct vu_queue {
    struct vu_dev *dev;
    int index;
    struct vbd_loop *loop; /* the thread that owns this ring */
    struct vu_vq vq;
    uint64_t desc_qva, avail_qva, used_qva; /* as the front end gave them */
    bool addr_set, started, enabled;
    int kick_fd, call_fd, err_fd;
    struct vbd_fd_watch *kick_watch;
    struct vbd_poller poller; /* registered on q->loop while started */
    bool polled, notify_off;  /* notify_off: kicks suppressed while the loop polls */
    unsigned inflight_reqs; /* popped, not yet pushed */
    struct vbd_co_queue idle; /* on q->loop: waits for inflight_reqs == 0 */
    bool notify_pending;
    bool signalled;       /* this iteration's first interrupt went out */
    uint16_t unsignalled; /* completions pushed since the last interrupt (or while held) */
    bool notify_held;     /* completions of one merged request are being pushed */
    struct vbd_bh notify_bh;
    void *dev_queue; /* the device's per-queue state */
    /* Dirty logging for a migration, read on q->loop only (set there by
     * the message handler): the front end's log while VHOST_F_LOG_ALL is on
     * and a log is mapped, else NULL; the eventfd to kick after each
     * logged request (SET_LOG_FD, or -1). The used ring's logging is
     * q->vq.used_log. */
    uint8_t *log;
    uint64_t log_size;
    int log_call_fd;
    bool log_warned;      /* a write beyond the log was reported */
    bool log_used_asked;  /* SET_VRING_ADDR's VHOST_VRING_F_LOG, with its log_guest_addr: */
    uint64_t log_used_gpa;
};

struct vu_dev_ops {
    uint64_t (*features)(struct vu_dev *dev);
    void (*features_set)(struct vu_dev *dev, uint64_t features);
    /* fills cfg[0..len) of the device's config space */
    void (*get_config)(struct vu_dev *dev, uint8_t *cfg, uint32_t len);
    int (*set_config)(struct vu_dev *dev, uint32_t offset, const uint8_t *data, uint32_t len);
    /* a ring was started (its size known): set up per-queue state */
    int (*queue_start)(struct vu_queue *q);
    void (*queue_stop)(struct vu_queue *q);
    /* resubmit a request that was in flight when the previous back end died */
    void (*queue_resubmit)(struct vu_queue *q, uint16_t head);
    /* the guest kicked (or the ring became enabled): pop and process */
    void (*queue_kick)(struct vu_queue *q);
    /* the ring is about to stop: complete requests the device holds back
     * (stopped by an error policy), or the wait for quiescence never ends */
    void (*queue_cancel)(struct vu_queue *q);
};

struct vu_dev {
    const struct vu_dev_ops *ops;
    const char *name; /* for log lines: "vhost-user-blk export 'ID'" */
    char *path;
    bool server;
    int listen_fd, conn_fd;
    bool accept_lacking; /* accept is short of fds or memory (vbd_co_accept_backoff) */
    struct vbd_co *conn_co;
    struct vbd_co *accept_co;
    bool stopping, accept_done, conn_done;
    /* the session's message loop has ended: it waits for its requests in
     * flight, then goes (conn_done); a front end that connects meanwhile
     * waits for that (accept_co) */
    bool conn_ending;
    struct vbd_co_queue idle;
    struct vbd_loop *loop;                   /* the control loop (set by vu_dev_start) */
    struct vbd_loop *const *queue_loops;     /* ring i runs on queue_loops[i % n]; none: dev->loop */
    int nqueue_loops;
    struct vbd_co_mutex lock;                /* held by message handlers (control loop only) */
    uint16_t max_queues;
    uint64_t features, protocol_features;
    bool features_acked;
    bool owned; /* SET_OWNER seen on this connection */
    struct vu_mem mem;
    int mem_fds[VU_MAX_MEM_REGIONS];
    bool mem_changing; /* read by ring threads (atomically) */
    struct vu_queue *queues[VU_MAX_QUEUES];
    void *inflight_base;
    size_t inflight_size;
    int inflight_fd;
    uint16_t inflight_queue_size;
    uint16_t inflight_num_queues;
    int backend_req_fd;
    /* the dirty log (SET_LOG_BASE): mapping, and the bitmap in it */
    void *log_map;
    size_t log_map_len;
    uint8_t *log;
    uint64_t log_size;
    int log_call_fd; /* SET_LOG_FD, or -1 */
    void *opaque; /* the device */
};

/* Starts listening (server) or connecting (client) on dev->path. */
int vu_dev_start(struct vu_dev *dev, struct vbd_error **err);
/* Coroutine context: disconnects, waits for in-flight requests, closes the socket. */
void vu_dev_stop(struct vu_dev *dev);

/* Coroutine context: continue on q's loop; returns the loop to go back to
 * with vu_queue_leave. */
struct vbd_loop *vu_queue_enter(struct vu_queue *q);
void vu_queue_leave(struct vbd_loop *prev);

/* Request accounting for the device: call on pop/push so that
 * GET_VRING_BASE and memory table changes can wait for quiescence.
 * Inline, as vu_queue_can_process: both run per request (a call each was
 * most of their cost). */
static inline void vu_queue_req_start(struct vu_queue *q)
{
    q->inflight_reqs++;
}
/* The ring is empty: ask for a kick at the next entry (or, while the loop
 * polls the ring, suppress kicks). True when entries arrived meanwhile. */
bool vu_queue_rearm(struct vu_queue *q);
/* Publishes a used element and schedules the (batched) interrupt. len: the
 * used length (bytes written into the chain); moved: the bytes the request
 * read or wrote on the device, which the signal rule weighs (0: none). */
void vu_queue_complete(struct vu_queue *q, uint16_t head, uint32_t len, uint64_t moved);
/* Around completions pushed back to back (a merged request's): they share
 * one interrupt, sent at the release if none went out in this iteration
 * yet (else the bottom half's). No yield in between. */
void vu_queue_hold_notify(struct vu_queue *q);
void vu_queue_release_notify(struct vu_queue *q);
/* The device wrote into these guest buffers (segments from the ring's
 * chain): while a migration logs writes (q->log set: test it first, the
 * hot path's only cost), marks their pages in the dirty log. On q's loop;
 * atomic ORs only. Then vu_queue_log_kick tells the front end (SET_LOG_FD's
 * eventfd, if it gave one), once per request as libvhost-user. */
void vu_queue_log_write(struct vu_queue *q, const struct iovec *iov, int n);
void vu_queue_log_kick(struct vu_queue *q);
/* A malformed ring: log once, stop processing the queue until reset. */
void vu_queue_fail(struct vu_queue *q, const char *why);
static inline bool vu_queue_can_process(const struct vu_queue *q)
{
    return q->started && q->enabled && !q->vq.broken && !__atomic_load_n(&q->dev->mem_changing, __ATOMIC_RELAXED) &&
           __atomic_load_n(&q->dev->conn_fd, __ATOMIC_RELAXED) >= 0;
}
bool vu_has_feature(const struct vu_dev *dev, unsigned bit);
/* Tells the front end that the config space changed (a resize): sends
 * VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the back-end channel. Returns 0,
 * 1 when no front end is connected, -ENOTSUP when it gave us no back-end
 * channel (BACKEND_REQ not negotiated), or a send error. */
int vu_dev_config_changed(struct vu_dev *dev);

#endif
