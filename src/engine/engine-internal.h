/* SPDX-License-Identifier: MIT */
#ifndef VBD_ENGINE_INTERNAL_H
#define VBD_ENGINE_INTERNAL_H

#include "vbd/coroutine.h"
#include "vbd/loop.h"

/* Enter every coroutine on the loop's ready list (called by the loop). */
void vbd_co_run_ready(struct vbd_loop *loop);
bool vbd_loop_has_ready(struct vbd_loop *loop);
/* Put co on loop's ready list; loop must be the calling thread's loop. */
void vbd_loop_push_ready(struct vbd_loop *loop, struct vbd_co *co);

/* Thread pool: job->fn runs on a worker; then job->done_bh is scheduled on
 * job->loop. */
struct vbd_pool_job {
    long (*fn)(void *arg);
    void *arg;
    long ret;
    struct vbd_loop *loop;
    struct vbd_bh done_bh;
    struct vbd_pool_job *next;
};
void vbd_pool_submit(struct vbd_pool_job *job);

#endif
