/* SPDX-License-Identifier: MIT */
/*
 * iothreads (`--object iothread,id=X`, as in QEMU): a thread with its own
 * event loop. Exports put their queues on them (vhost-user-blk:
 * iothread=X, or a list the queues are spread over). They run until the
 * daemon has shut every export down, then stop and are joined.
 */
#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct iothread {
    char *id;
    pthread_t thread;
    struct vbd_loop *loop;
    volatile bool stop;
    uint64_t poll_max_ns;
    bool poll_set;
    sem_t ready;
    char failure[256];
    struct iothread *next;
};

static struct iothread *iothreads; /* main thread only */

static void *iothread_main(void *arg)
{
    struct iothread *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main loop's business */
    char name[16];
    snprintf(name, sizeof(name), "iot-%s", t->id);
    pthread_setname_np(pthread_self(), name);
    struct vbd_error *err = NULL;
    struct vbd_loop *loop = vbd_loop_new(0, 0, &err);
    if (!loop) {
        snprintf(t->failure, sizeof(t->failure), "%s", err ? err->msg : "cannot create its event loop");
        vbd_error_free(err);
        sem_post(&t->ready);
        return NULL;
    }
    if (t->poll_set)
        vbd_loop_set_poll_max_ns(loop, t->poll_max_ns);
    t->loop = loop;
    sem_post(&t->ready);
    vbd_loop_run(loop, &t->stop);
    /* the loop itself is freed by the joiner: it may still be kicking it */
    vbd_co_thread_cleanup();
    return NULL;
}

int vbd_iothread_add(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL;
    uint64_t ignored, poll_max_ns = 0;
    bool poll_set = vbd_opt_get(opts, "poll-max-ns") != NULL;
    /* QEMU's other polling and batching knobs: accepted, our own rules apply */
    static const char *const tuning[] = {"poll-grow", "poll-shrink", "aio-max-batch", "thread-pool-min",
                                         "thread-pool-max"};
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_u64(opts, "poll-max-ns", &poll_max_ns, err) < 0) {
        free(id);
        return -EINVAL;
    }
    for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
        if (vbd_opt_take_u64(opts, tuning[i], &ignored, err) < 0) {
            free(id);
            return -EINVAL;
        }
    if (!id || !*id) {
        vbd_error_setf(err, EINVAL, "--object iothread: 'id' is required");
        free(id);
        return -EINVAL;
    }
    if (vbd_iothread_loop(id)) {
        vbd_error_setf(err, EEXIST, "--object iothread: an iothread with id '%s' exists already", id);
        free(id);
        return -EEXIST;
    }
    struct iothread *t = vbd_xcalloc(1, sizeof(*t));
    t->id = id;
    t->poll_max_ns = poll_max_ns;
    t->poll_set = poll_set;
    sem_init(&t->ready, 0, 0);
    int rc = pthread_create(&t->thread, NULL, iothread_main, t);
    if (rc == 0)
        while (sem_wait(&t->ready) < 0 && errno == EINTR)
            ;
    if (rc != 0 || !t->loop) {
        vbd_error_setf(err, rc ? rc : EIO, "--object iothread,id=%s: cannot start the thread: %s", id,
                       rc ? strerror(rc) : t->failure);
        if (rc == 0)
            pthread_join(t->thread, NULL);
        sem_destroy(&t->ready);
        free(t->id);
        free(t);
        return -EIO;
    }
    t->next = iothreads;
    iothreads = t;
    return 0;
}

struct vbd_loop *vbd_iothread_loop(const char *id)
{
    for (struct iothread *t = iothreads; t; t = t->next)
        if (!strcmp(t->id, id))
            return t->loop;
    return NULL;
}

void vbd_iothread_stop_all(void)
{
    while (iothreads) {
        struct iothread *t = iothreads;
        iothreads = t->next;
        __atomic_store_n(&t->stop, true, __ATOMIC_RELEASE);
        vbd_loop_kick(t->loop);
        pthread_join(t->thread, NULL);
        vbd_loop_free(t->loop);
        sem_destroy(&t->ready);
        free(t->id);
        free(t);
    }
}
