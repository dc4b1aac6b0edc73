/* SPDX-License-Identifier: MIT */
#ifndef VBD_COROUTINE_H
#define VBD_COROUTINE_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Stackful coroutines, one thread each at a time. Request and driver code
 * reads straight: a driver waits by yielding (vbd_co_yield), never by blocking.
 *
 * Coroutine objects come from a per-thread free list (stacks reused, so the
 * hot path does no mmap and takes no page faults after warm-up).
 * Switching is a few instructions on x86-64/aarch64 (own assembly), with a
 * ucontext fallback elsewhere. Builds with ASan annotate every switch.
 */
struct vbd_co;
typedef void vbd_co_fn(void *arg);

/* QEMU's size: a read of an unallocated range recurses once per image of
 * the backing chain (chains of hundreds are opened by qemu-io). Only what
 * a coroutine touches is resident. Sanitizer builds multiply it (their
 * frames are several times larger). */
#define VBD_CO_STACK_DEFAULT (1024 * 1024)

/* Create a coroutine that runs fn(arg) when first entered. Never fails
 * (aborts on out-of-memory at pool growth time). */
struct vbd_co *vbd_co_create(vbd_co_fn *fn, void *arg);
/* Run co until it yields or finishes; returns to the caller afterwards.
 * A finished coroutine is recycled automatically. Must not be called on
 * a coroutine that is running (the caller's chain). */
void vbd_co_enter(struct vbd_co *co);
/* Suspend the current coroutine, return to whoever entered it. */
void vbd_co_yield(void);
/* NULL when not in a coroutine. */
struct vbd_co *vbd_co_self(void);
static inline bool vbd_in_co(void) { return vbd_co_self() != NULL; }

/* Queue co to be entered by its loop on that loop's next iteration (never
 * re-enters the caller: DESIGN.md pattern 6). Thread-safe: a coroutine
 * belongs to the loop it last ran on; waking it from another thread
 * schedules it there. */
void vbd_co_wake(struct vbd_co *co);

struct vbd_loop;
/* Move the current coroutine to another thread's loop: yields here and
 * resumes there. No-op if loop is the current one. This is how a request
 * that arrives on one queue thread runs on the thread that owns a node
 * whose driver is not VBD_DRV_CAP_MULTI_LOOP (qcow2), and comes back. */
void vbd_co_move_to(struct vbd_loop *loop);

/* Frees the calling thread's pool of finished coroutines (a thread that
 * exits calls it last: the pool lives in thread-local storage). */
void vbd_co_thread_cleanup(void);

/* Wait queue of coroutines (FIFO). Not thread-safe: one loop only. The
 * same holds for the mutex and the rwlock below: coroutine locks, not
 * thread locks; every user of one runs on one loop (a node's, on its home
 * loop). Not checked: they are on request paths (qcow2's s->lock). */
struct vbd_co_queue {
    struct vbd_co *head, *tail;
};
#define VBD_CO_QUEUE_INIT { NULL, NULL }
void vbd_co_queue_wait(struct vbd_co_queue *q);   /* yields until woken */
bool vbd_co_queue_wake_one(struct vbd_co_queue *q); /* via vbd_co_wake */
void vbd_co_queue_wake_all(struct vbd_co_queue *q);
static inline bool vbd_co_queue_empty(const struct vbd_co_queue *q) { return q->head == NULL; }

struct vbd_co_mutex {
    bool locked;
    struct vbd_co_queue waiters;
};
#define VBD_CO_MUTEX_INIT { false, VBD_CO_QUEUE_INIT }
void vbd_co_mutex_lock(struct vbd_co_mutex *m);
void vbd_co_mutex_unlock(struct vbd_co_mutex *m);

/* Readers/writer lock for coroutines (writers preferred). */
struct vbd_co_rwlock {
    int readers;
    bool writer;
    int writers_waiting;
    struct vbd_co_queue rq, wq;
};
#define VBD_CO_RWLOCK_INIT { 0, false, 0, VBD_CO_QUEUE_INIT, VBD_CO_QUEUE_INIT }
void vbd_co_rwlock_rdlock(struct vbd_co_rwlock *l);
void vbd_co_rwlock_wrlock(struct vbd_co_rwlock *l);
void vbd_co_rwlock_unlock(struct vbd_co_rwlock *l);

/* Run fn(arg) in a new coroutine on the current thread's loop and drive the
 * loop (the calling thread's) until it finishes. For tools and tests that start outside any
 * coroutine. If already in a coroutine, calls fn directly. */
void vbd_co_run_sync(vbd_co_fn *fn, void *arg);

/* What a coroutine started by vbd_co_call carries for its callee, under a
 * key: each user defines one static key of its own, so a value is only
 * ever read back by the code that stored it (another key reads NULL). */
struct vbd_co_key {
    const char *what; /* names the user, for a debugger */
};

/* From a coroutine: run fn(arg) to its end on a coroutine of its own (a
 * fresh stack), the caller yielding until it is done. For recursion whose
 * depth the input decides (an image's backing chain): each level gets a
 * whole stack instead of a share of the first. Inside fn,
 * vbd_co_local(key) returns value (the recursion's context, e.g. the chain
 * opened so far); with any other key, or outside such a call, NULL. */
void vbd_co_call(vbd_co_fn *fn, void *arg, const struct vbd_co_key *key, void *value);
void *vbd_co_local(const struct vbd_co_key *key);

#endif
