/* SPDX-License-Identifier: MIT */
/*
 * Shared by the files of the vhost-user-blk export (not a public header):
 * blk.c (the export's options, creation and lifetime, the vu_dev callbacks),
 * blk-request.c (virtio-blk requests: decode, run, finish), blk-merge.c
 * (batching and merging adjacent requests) and blk-errors.c (the
 * werror/rerror policy: park, retry, resume). Requests are coroutines that
 * run on their ring's loop (an iothread, or the daemon's main loop); their
 * objects are preallocated per ring (one per descriptor, so a full ring
 * never waits for memory), and their iovecs point straight into guest
 * memory.
 */
#ifndef VBD_VHOST_USER_BLK_INTERNAL_H
#define VBD_VHOST_USER_BLK_INTERNAL_H

#include "vhost-user.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

extern const struct vbd_export_type vbd_export_type_vhost_user_blk;

#define BLK_INLINE_IOV 260 /* seg_max (254) + header, status and region splits */
#define BLK_SEG_MAX 254
#define BLK_SIZE_MAX (1u << 20)
/* qsd 7.2's limits (its VIRTIO_BLK_MAX_DISCARD_SECTORS and
 * VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS, 16 MiB each): a guest moved from qsd
 * sees the same discard_max_bytes and write_zeroes_max_bytes */
#define BLK_MAX_DISCARD_SECTORS 32768u
#define BLK_MAX_WRITE_ZEROES_SECTORS 32768u
/* What GET_ID answers without serial=: qsd 7.2's answer for every
 * vhost-user-blk export (it has no serial option), so a guest moved from
 * qsd keeps its /dev/disk/by-id/virtio-vhost_user_blk */
#define BLK_DEFAULT_SERIAL "vhost_user_blk"
#define BLK_DEFAULT_QUEUES 16

/* Request merging (as QEMU's virtio_blk_submit_multireq): at most this many
 * requests are sorted at once, and a merged request has at most this many
 * segments (IOV_MAX: one preadv/pwritev) and bytes. */
#define BLK_MERGE_MAX_REQS 32
#define BLK_MERGE_MAX_IOV 1024
#define BLK_MERGE_MAX_BYTES (4u << 20)
#define BLK_MERGE_POOL 16 /* merged requests in flight per queue; beyond, requests go down one by one */
/* A request this large goes down on its own: its per-request cost is small
 * beside its data, and a merged batch completes as a unit, so the front end
 * refills in lock-step (null-co and the page cache: 64K sequential reads at
 * QD8 were slower merged than not). */
#define BLK_MERGE_ALONE_BYTES (64u << 10)

struct blk_export;

struct blk_req {
    struct blk_queue *bq;
    struct vu_elem elem;
    /* decoded from the chain (blk_req_decode) */
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
    /* blk_dispatch found the range good (blk_range_ok) in this kick: the
     * run that follows at once (inline, or the coroutine's first run) need
     * not check it again; that run clears it, so a retry checks afresh */
    bool range_ok;
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

/* blk-request.c */
struct iovec *blk_req_iov(struct blk_req *r, int cap);
bool blk_range_ok(struct blk_export *e, uint64_t sector, uint64_t bytes);
void blk_req_release(struct blk_req *r);
bool blk_req_decode(struct blk_req *r);
int blk_req_run(struct blk_req *r, uint32_t *used_len, bool *io);
const char *blk_type_name(uint32_t type);
void blk_req_finish(struct blk_req *r, int err, uint32_t used_len, bool io);
/* while a migration logs (q->log): marks what the request wrote into guest memory */
void blk_req_log(struct blk_req *r);
void blk_req_co(void *arg);
void blk_submit(struct blk_queue *bq, struct blk_req *r);
struct blk_req *blk_req_alloc(struct blk_queue *bq);

/* blk-merge.c: a decoded request joins the batch or goes down at once;
 * blk_batch_flush submits the batch (before anything else is submitted and at
 * the end of a kick). */
void blk_batch_submit(struct blk_queue *bq);
/* inline: mostly the batch is empty (big and random requests go down at
 * once), and a call saved its registers before it looked (~20 instructions) */
static inline void blk_batch_flush(struct blk_queue *bq)
{
    if (bq->nbatch)
        blk_batch_submit(bq);
}
void blk_dispatch(struct blk_queue *bq, struct blk_req *r);

/* blk-errors.c */
bool blk_error_stops(struct blk_export *e, uint32_t type, int err);
void blk_park(struct blk_req *r, int err);
void blk_io_error_event(struct blk_export *e, uint32_t type, int err, const char *action);
void blk_resume(struct blk_export *e, bool kick_all);
void blk_retry_timer_cb(void *arg);
void blk_arm_bh(void *arg);
void blk_kick_bh(void *arg);
void blk_queue_cancel(struct vu_queue *q);

/* blk.c */
void blk_queue_kick(struct vu_queue *q);

#endif
