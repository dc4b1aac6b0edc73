/* SPDX-License-Identifier: MIT */
/*
 * One process-wide pool of worker threads for what io_uring cannot do (or
 * for aio=threads). Workers are started on demand up to POOL_MAX and park
 * on a condition variable; a finished job is handed back to the submitting
 * loop as a bottom half, so its coroutine resumes on its own thread.
 */
#include "engine-internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define POOL_MAX 16

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static struct vbd_pool_job *pool_head, *pool_tail;
static int pool_threads, pool_idle;

static void *pool_worker(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        while (!pool_head) {
            pool_idle++;
            pthread_cond_wait(&pool_cond, &pool_lock);
            pool_idle--;
        }
        struct vbd_pool_job *job = pool_head;
        pool_head = job->next;
        if (!pool_head)
            pool_tail = NULL;
        pthread_mutex_unlock(&pool_lock);
        job->ret = job->fn(job->arg);
        vbd_loop_schedule_bh(job->loop, &job->done_bh);
        pthread_mutex_lock(&pool_lock);
    }
    return NULL;
}

void vbd_pool_submit(struct vbd_pool_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&pool_lock);
    if (pool_tail)
        pool_tail->next = job;
    else
        pool_head = job;
    pool_tail = job;
    if (pool_idle == 0 && pool_threads < POOL_MAX) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&t, &attr, pool_worker, NULL) == 0)
            pool_threads++;
        else if (pool_threads == 0) {
            fprintf(stderr, "vbd: cannot start a worker thread\n");
            abort();
        }
        pthread_attr_destroy(&attr);
    }
    pthread_cond_signal(&pool_cond);
    pthread_mutex_unlock(&pool_lock);
}

static void pool_job_done(void *opaque)
{
    struct vbd_co *co = opaque;
    vbd_co_enter(co);
}

long vbd_co_run_in_thread(long (*fn)(void *arg), void *arg)
{
    struct vbd_pool_job job = {
        .fn = fn,
        .arg = arg,
        .loop = vbd_loop_current(),
        .done_bh = {.fn = pool_job_done, .arg = vbd_co_self()},
    };
    vbd_loop_io_begin(job.loop);
    vbd_pool_submit(&job);
    vbd_co_yield();
    vbd_loop_io_end(job.loop);
    return job.ret;
}
