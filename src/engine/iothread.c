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

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct iothread {
    char *id;
    pthread_t thread;
    pid_t tid;
    struct vbd_loop *loop;
    volatile bool stop;
    uint64_t poll_max_ns;
    bool poll_set;
    /* QEMU's other knobs: kept for qom-get/query-iothreads, our loop's own rules apply */
    uint64_t poll_grow, poll_shrink, aio_max_batch, pool_min, pool_max;
    int users; /* exports running rings on it: object-del refuses while > 0 */
    int nodes; /* nodes whose home loop it is (vbd_node_co_set_home): likewise */
    struct vbd_bh poll_bh; /* qom-set poll-max-ns: applied on the thread itself */
    uint64_t poll_new;
    bool poll_bh_pending;
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
    t->tid = (pid_t)syscall(SYS_gettid);
    t->loop = loop;
    sem_post(&t->ready);
    vbd_loop_run(loop, &t->stop);
    /* the loop itself is freed by the joiner: it may still be kicking it */
    vbd_co_thread_cleanup();
    return NULL;
}

int vbd_iothread_add(struct json_object *opts, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    char *id = NULL;
    uint64_t tune[5] = {0, 0, 0, 0, 64}, poll_max_ns = VBD_LOOP_POLL_MAX_NS_DEFAULT;
    bool poll_set = vbd_opt_get(opts, "poll-max-ns") != NULL;
    /* QEMU's other polling and batching knobs: accepted, our own rules apply */
    static const char *const tuning[] = {"poll-grow", "poll-shrink", "aio-max-batch", "thread-pool-min",
                                         "thread-pool-max"};
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_u64(opts, "poll-max-ns", &poll_max_ns, err) < 0) {
        free(id);
        return -EINVAL;
    }
    for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
        if (vbd_opt_take_u64(opts, tuning[i], &tune[i], err) < 0) {
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
    t->poll_grow = tune[0];
    t->poll_shrink = tune[1];
    t->aio_max_batch = tune[2];
    t->pool_min = tune[3];
    t->pool_max = tune[4];
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
    struct iothread **tail = &iothreads; /* creation order, as query-iothreads lists them */
    while (*tail)
        tail = &(*tail)->next;
    *tail = t;
    return 0;
}

static struct iothread *find(const char *id)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    for (struct iothread *t = iothreads; t; t = t->next)
        if (!strcmp(t->id, id))
            return t;
    return NULL;
}

struct vbd_loop *vbd_iothread_acquire(const char *id)
{
    struct iothread *t = find(id);
    if (!t)
        return NULL;
    t->users++;
    return t->loop;
}

void vbd_iothread_release(struct vbd_loop *loop)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    for (struct iothread *t = iothreads; t; t = t->next)
        if (t->loop == loop && t->users > 0) {
            t->users--;
            return;
        }
}

static struct iothread *by_loop(struct vbd_loop *loop)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    for (struct iothread *t = iothreads; t; t = t->next)
        if (t->loop == loop)
            return t;
    return NULL;
}

void vbd_iothread_node_hold(struct vbd_loop *loop)
{
    struct iothread *t = by_loop(loop);
    if (t)
        t->nodes++;
}

void vbd_iothread_node_release(struct vbd_loop *loop)
{
    struct iothread *t = by_loop(loop);
    if (t && t->nodes > 0)
        t->nodes--;
}

const char *vbd_iothread_id(struct vbd_loop *loop)
{
    struct iothread *t = by_loop(loop);
    return t ? t->id : NULL;
}

static void join_and_free(struct iothread *t)
{
    __atomic_store_n(&t->stop, true, __ATOMIC_RELEASE);
    vbd_loop_kick(t->loop);
    pthread_join(t->thread, NULL);
    vbd_loop_free(t->loop);
    sem_destroy(&t->ready);
    free(t->id);
    free(t);
}

int vbd_iothread_remove(const char *id, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    for (struct iothread **pp = &iothreads; *pp; pp = &(*pp)->next) {
        struct iothread *t = *pp;
        if (strcmp(t->id, id))
            continue;
        if (t->users) {
            vbd_error_setf(err, EBUSY, "iothread '%s' is in use by %d export%s", id, t->users,
                           t->users == 1 ? "" : "s");
            return -EBUSY;
        }
        if (t->nodes) {
            vbd_error_setf(err, EBUSY, "iothread '%s' is the home of %d block node%s (x-blockdev-set-iothread them "
                           "back to null first)", id, t->nodes, t->nodes == 1 ? "" : "s");
            return -EBUSY;
        }
        *pp = t->next;
        /* a poll-max-ns change may still be scheduled on the loop: the loop runs it before it stops */
        join_and_free(t);
        return 0;
    }
    vbd_error_setf(err, ENOENT, "object '%s' not found", id);
    return -ENOENT;
}

bool vbd_iothread_info(const char *id, struct vbd_iothread_info *info)
{
    struct iothread *t = find(id);
    if (!t)
        return false;
    *info = (struct vbd_iothread_info){.id = t->id,
                                       .thread_id = t->tid,
                                       .poll_max_ns = t->poll_max_ns,
                                       .poll_grow = t->poll_grow,
                                       .poll_shrink = t->poll_shrink,
                                       .aio_max_batch = t->aio_max_batch,
                                       .thread_pool_min = t->pool_min,
                                       .thread_pool_max = t->pool_max,
                                       .users = t->users};
    return true;
}

const char *vbd_iothread_next(const char *prev)
{
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    struct iothread *t = prev ? find(prev) : NULL;
    t = prev ? (t ? t->next : NULL) : iothreads;
    return t ? t->id : NULL;
}

static void apply_poll_max_ns(void *arg)
{
    struct iothread *t = arg;
    __atomic_store_n(&t->poll_bh_pending, false, __ATOMIC_RELEASE);
    vbd_loop_set_poll_max_ns(t->loop, __atomic_load_n(&t->poll_new, __ATOMIC_ACQUIRE));
}

int vbd_iothread_set(const char *id, const char *prop, uint64_t value)
{
    struct iothread *t = find(id);
    if (!t)
        return -ENOENT;
    if (!strcmp(prop, "poll-max-ns")) {
        t->poll_max_ns = value;
        t->poll_set = true;
        __atomic_store_n(&t->poll_new, value, __ATOMIC_RELEASE);
        t->poll_bh.fn = apply_poll_max_ns;
        t->poll_bh.arg = t;
        /* the loop's own thread reads its poll time without locks: change it there (once
         * scheduled, the bh reads the newest value) */
        if (!__atomic_exchange_n(&t->poll_bh_pending, true, __ATOMIC_ACQ_REL))
            vbd_loop_schedule_bh(t->loop, &t->poll_bh);
    } else if (!strcmp(prop, "poll-grow")) {
        t->poll_grow = value;
    } else if (!strcmp(prop, "poll-shrink")) {
        t->poll_shrink = value;
    } else if (!strcmp(prop, "aio-max-batch")) {
        t->aio_max_batch = value;
    } else {
        return -EINVAL;
    }
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
    assert(vbd_thread_is_main()); /* the list is the main thread's */
    while (iothreads) {
        struct iothread *t = iothreads;
        iothreads = t->next;
        join_and_free(t);
    }
}
