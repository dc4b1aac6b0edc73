/* SPDX-License-Identifier: MIT */
/*
 * Stackful coroutines. The switch saves only callee-saved registers (a
 * handful of instructions, no syscall: ucontext's swapcontext costs a
 * sigprocmask each way). Stacks are mmap'd once with a guard page and kept
 * on a per-thread free list.
 */
#include "engine-internal.h"
#include "vbd/error.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VBD_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define VBD_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define VBD_TSAN 1
#endif
#ifdef VBD_TSAN
/* ThreadSanitizer must know each stack switch, or it sees one thread's
 * accesses jump between stacks and coroutines moving between threads as
 * races. */
#include <sanitizer/tsan_interface.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#define VBD_ASAN 1
#endif
#ifdef VBD_ASAN
#include <sanitizer/asan_interface.h>
#endif
#if defined(VBD_ASAN) || defined(VBD_TSAN)
#define CO_STACK_SIZE (4 * VBD_CO_STACK_DEFAULT) /* instrumented frames */
#else
#define CO_STACK_SIZE VBD_CO_STACK_DEFAULT
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

struct co_ctx {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    void *stack_bottom;
    size_t stack_size;
    void *fake_stack;
    void *tsan_fiber;
};

struct vbd_co {
    struct co_ctx ctx;
    vbd_co_fn *fn;
    void *arg;
    struct co_ctx *caller;      /* context to return to on yield */
    struct vbd_co *caller_co;   /* coroutine that entered us (NULL: loop/main) */
    struct vbd_co *next;        /* ready list / wait queue / free list */
    struct vbd_loop *loop;      /* loop it belongs to (last ran on) */
    struct vbd_loop *move_to;   /* pending vbd_co_move_to target */
    struct vbd_bh wake_bh;      /* cross-thread wake */
    const struct vbd_co_key *local_key; /* vbd_co_call's context for the callee, */
    void *local;                        /* readable with this key only */
    void *mem;                  /* mmap'd region incl. guard page */
    size_t mem_size;
    bool finished;
    bool scheduled;
};

#define CO_POOL_MAX 256

struct co_thread {
    struct co_ctx main_ctx;     /* the thread's own stack */
    struct vbd_co *current;
    struct vbd_co *free_list;
    int free_count;
};
static __thread struct co_thread co_thr;

#if defined(__x86_64__)
/* vbd_co_switch(save_sp, new_sp): push callee-saved registers, store rsp,
 * load the other stack, pop, return into it. */
void vbd_co_switch(void **save_sp, void *new_sp);
__asm__(".text\n"
        ".globl vbd_co_switch\n"
        ".type vbd_co_switch,@function\n"
        "vbd_co_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size vbd_co_switch, .-vbd_co_switch\n");
#endif

static void co_switch(struct co_ctx *from, struct co_ctx *to, bool from_finished)
{
#ifdef VBD_TSAN
    if (!from->tsan_fiber)
        from->tsan_fiber = __tsan_get_current_fiber(); /* a thread's own stack */
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
#ifdef VBD_ASAN
    if (from_finished)
        from->fake_stack = NULL;
    __sanitizer_start_switch_fiber(from_finished ? NULL : &from->fake_stack, to->stack_bottom, to->stack_size);
#endif
#if defined(__x86_64__)
    vbd_co_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
#ifdef VBD_ASAN
    const void *old_bottom;
    size_t old_size;
    __sanitizer_finish_switch_fiber(from->fake_stack, &old_bottom, &old_size);
    if (!co_thr.main_ctx.stack_bottom && !co_thr.current) {
        co_thr.main_ctx.stack_bottom = (void *)old_bottom;
        co_thr.main_ctx.stack_size = old_size;
    }
#endif
    (void)from_finished;
}

static void co_entry(void)
{
    struct vbd_co *co = co_thr.current;
#ifdef VBD_ASAN
    const void *old_bottom;
    size_t old_size;
    __sanitizer_finish_switch_fiber(NULL, &old_bottom, &old_size);
    if (!co_thr.main_ctx.stack_bottom && !co->caller_co) {
        co_thr.main_ctx.stack_bottom = (void *)old_bottom;
        co_thr.main_ctx.stack_size = old_size;
    }
#endif
    for (;;) {
        co->fn(co->arg);
        co->finished = true;
        /* co_thr is re-read: the coroutine may have moved threads. */
        co = co_thr.current;
        co_switch(&co->ctx, co->caller, true);
        /* Recycled: entered again with a new fn. */
        co = co_thr.current;
    }
}

#if !defined(__x86_64__)
static void co_entry_uc(void) { co_entry(); }
#endif

static void co_free(struct vbd_co *co)
{
#ifdef VBD_TSAN
    __tsan_destroy_fiber(co->ctx.tsan_fiber);
#endif
#ifdef VBD_ASAN
    /* the redzones of the frames it ran stay in the shadow after munmap: a
     * later mmap at the same address (another coroutine's stack, once an
     * iothread that ran coroutines has exited) would trip over them */
    ASAN_UNPOISON_MEMORY_REGION(co->mem, co->mem_size);
#endif
    munmap(co->mem, co->mem_size);
    free(co);
}

static struct vbd_co *co_alloc(void)
{
    struct vbd_co *co = calloc(1, sizeof(*co));
    if (!co)
        abort();
    long page = sysconf(_SC_PAGESIZE);
    co->mem_size = CO_STACK_SIZE + page;
    co->mem = mmap(NULL, co->mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (co->mem == MAP_FAILED) {
        fprintf(stderr, "vbd: cannot allocate a coroutine stack: out of memory\n");
        abort();
    }
    mprotect(co->mem, page, PROT_NONE); /* guard page: overflow faults, not corrupts */
    co->ctx.stack_bottom = (char *)co->mem + page;
    co->ctx.stack_size = CO_STACK_SIZE;
#ifdef VBD_TSAN
    co->ctx.tsan_fiber = __tsan_create_fiber(0);
#endif
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)co->ctx.stack_bottom + co->ctx.stack_size) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;             /* fake return address of co_entry: keeps 16-byte ABI alignment */
    *--sp = (void *)co_entry; /* vbd_co_switch's ret lands here */
    for (int i = 0; i < 6; i++)
        *--sp = NULL;         /* rbp rbx r12-r15 */
    co->ctx.sp = sp;
#else
    getcontext(&co->ctx.uc);
    co->ctx.uc.uc_stack.ss_sp = co->ctx.stack_bottom;
    co->ctx.uc.uc_stack.ss_size = co->ctx.stack_size;
    co->ctx.uc.uc_link = NULL;
    makecontext(&co->ctx.uc, co_entry_uc, 0);
#endif
    return co;
}

struct vbd_co *vbd_co_create(vbd_co_fn *fn, void *arg)
{
    struct vbd_co *co = co_thr.free_list;
    if (co) {
        co_thr.free_list = co->next;
        co_thr.free_count--;
    } else {
        co = co_alloc();
    }
    co->fn = fn;
    co->arg = arg;
    co->next = NULL;
    co->finished = false;
    co->scheduled = false;
    co->move_to = NULL;
    co->caller_co = NULL;
    co->loop = NULL;
    co->local_key = NULL;
    co->local = NULL;
    return co;
}

static void co_release(struct vbd_co *co)
{
    if (co_thr.free_count < CO_POOL_MAX) {
        co->next = co_thr.free_list;
        co_thr.free_list = co;
        co_thr.free_count++;
    } else {
        co_free(co);
    }
}

void vbd_co_thread_cleanup(void)
{
    while (co_thr.free_list) {
        struct vbd_co *co = co_thr.free_list;
        co_thr.free_list = co->next;
        co_free(co);
    }
    co_thr.free_count = 0;
}

static void co_wake_bh(void *arg)
{
    struct vbd_co *co = arg;
    co->scheduled = false;
    vbd_co_enter(co);
}

void vbd_co_enter(struct vbd_co *co)
{
    struct vbd_co *self = co_thr.current;
    assert(!co->finished);
    co->caller = self ? &self->ctx : &co_thr.main_ctx;
    co->caller_co = self;
    co->loop = vbd_loop_current();
    co_thr.current = co;
    co_switch(co->caller, &co->ctx, false);
    co_thr.current = self;
    if (co->finished) {
        co_release(co);
    } else if (co->move_to) {
        /* Scheduled only now that co is off this thread's stack. */
        struct vbd_loop *target = co->move_to;
        co->move_to = NULL;
        co->loop = target;
        co->wake_bh.fn = co_wake_bh;
        co->wake_bh.arg = co;
        vbd_loop_schedule_bh(target, &co->wake_bh);
    }
}

void vbd_co_yield(void)
{
    struct vbd_co *self = co_thr.current;
    assert(self && "vbd_co_yield outside a coroutine");
    co_switch(&self->ctx, self->caller, false);
}

struct vbd_co *vbd_co_self(void)
{
    return co_thr.current;
}

void vbd_co_wake(struct vbd_co *co)
{
    if (co->scheduled)
        return;
    co->scheduled = true;
    struct vbd_loop *here = vbd_loop_current_or_null();
    if (co->loop && co->loop != here) {
        co->wake_bh.fn = co_wake_bh;
        co->wake_bh.arg = co;
        vbd_loop_schedule_bh(co->loop, &co->wake_bh);
    } else {
        vbd_loop_push_ready(vbd_loop_current(), co);
    }
}

/* Ready list: intrusive via co->next; owned by the loop but kept here. */
struct ready_list {
    struct vbd_co *head, *tail;
};
static __thread struct ready_list ready;

void vbd_loop_push_ready(struct vbd_loop *loop, struct vbd_co *co)
{
    (void)loop;
    co->next = NULL;
    if (ready.tail)
        ready.tail->next = co;
    else
        ready.head = co;
    ready.tail = co;
}

bool vbd_loop_has_ready(struct vbd_loop *loop)
{
    (void)loop;
    return ready.head != NULL;
}

void vbd_co_run_ready(struct vbd_loop *loop)
{
    /* Only the coroutines ready now: ones woken while running wait for the
     * next iteration, after their I/O has been submitted in one batch. */
    struct vbd_co *list = ready.head;
    ready.head = ready.tail = NULL;
    while (list) {
        struct vbd_co *co = list;
        list = co->next;
        co->next = NULL;
        co->scheduled = false;
        vbd_co_enter(co);
    }
    (void)loop;
}

void vbd_co_move_to(struct vbd_loop *loop)
{
    struct vbd_co *self = co_thr.current;
    assert(self);
    if (loop == vbd_loop_current())
        return;
    self->move_to = loop;
    vbd_co_yield();
}

/* ---- wait queues and locks ---- */

void vbd_co_queue_wait(struct vbd_co_queue *q)
{
    struct vbd_co *self = co_thr.current;
    assert(self);
    self->next = NULL;
    if (q->tail)
        q->tail->next = self;
    else
        q->head = self;
    q->tail = self;
    vbd_co_yield();
}

bool vbd_co_queue_wake_one(struct vbd_co_queue *q)
{
    struct vbd_co *co = q->head;
    if (!co)
        return false;
    q->head = co->next;
    if (!q->head)
        q->tail = NULL;
    co->next = NULL;
    vbd_co_wake(co);
    return true;
}

void vbd_co_queue_wake_all(struct vbd_co_queue *q)
{
    while (vbd_co_queue_wake_one(q))
        ;
}

void vbd_co_mutex_lock(struct vbd_co_mutex *m)
{
    while (m->locked)
        vbd_co_queue_wait(&m->waiters);
    m->locked = true;
}

void vbd_co_mutex_unlock(struct vbd_co_mutex *m)
{
    assert(m->locked);
    m->locked = false;
    vbd_co_queue_wake_one(&m->waiters);
}

void vbd_co_rwlock_rdlock(struct vbd_co_rwlock *l)
{
    while (l->writer || l->writers_waiting)
        vbd_co_queue_wait(&l->rq);
    l->readers++;
}

void vbd_co_rwlock_wrlock(struct vbd_co_rwlock *l)
{
    l->writers_waiting++;
    while (l->writer || l->readers)
        vbd_co_queue_wait(&l->wq);
    l->writers_waiting--;
    l->writer = true;
}

void vbd_co_rwlock_unlock(struct vbd_co_rwlock *l)
{
    if (l->writer)
        l->writer = false;
    else
        l->readers--;
    if (l->readers == 0 && !vbd_co_queue_empty(&l->wq))
        vbd_co_queue_wake_one(&l->wq);
    else if (!l->writers_waiting)
        vbd_co_queue_wake_all(&l->rq);
}

/* ---- run a coroutine to completion from plain code ---- */

struct run_sync {
    vbd_co_fn *fn;
    void *arg;
    bool done;
};

static void run_sync_entry(void *opaque)
{
    struct run_sync *rs = opaque;
    rs->fn(rs->arg);
    rs->done = true;
}

struct co_call {
    vbd_co_fn *fn;
    void *arg;
    bool done;
    struct vbd_co *waiter; /* set once the caller waits */
};

static void co_call_entry(void *opaque)
{
    struct co_call *c = opaque;
    c->fn(c->arg);
    c->done = true;
    if (c->waiter)
        vbd_co_wake(c->waiter);
}

void vbd_co_call(vbd_co_fn *fn, void *arg, const struct vbd_co_key *key, void *value)
{
    struct vbd_co *self = vbd_co_self();
    assert(self && "vbd_co_call outside a coroutine");
    struct co_call c = {fn, arg, false, NULL};
    struct vbd_co *co = vbd_co_create(co_call_entry, &c);
    co->local_key = key;
    co->local = value;
    vbd_co_enter(co);
    while (!c.done) {
        c.waiter = self;
        vbd_co_yield();
    }
}

void *vbd_co_local(const struct vbd_co_key *key)
{
    struct vbd_co *self = vbd_co_self();
    return self && key && self->local_key == key ? self->local : NULL;
}

void vbd_co_run_sync(vbd_co_fn *fn, void *arg)
{
    if (vbd_in_co()) {
        fn(arg);
        return;
    }
    struct vbd_loop *loop = vbd_loop_current();
    struct run_sync rs = {fn, arg, false};
    vbd_co_enter(vbd_co_create(run_sync_entry, &rs));
    while (!rs.done)
        vbd_loop_run_once(loop, -1);
}
