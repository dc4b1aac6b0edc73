/* The backend's drained sections and root swaps (vbd_backend_co_drain_begin,
 * vbd_backend_set_root), with writers on the main loop and on two
 * iothreads: while drained, no request is inside the old root and none
 * reaches it; waiting requests go on with the new root; requests over a
 * root that is not multi-loop run on the main loop, the others where they
 * came from. */
#include "unit.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct counts {
    atomic_int inside, total, violations;
    atomic_bool closed; /* set by the test while this node must see nothing */
};
static struct counts count_a, count_b;
static struct vbd_node *node_a, *node_b;
static pthread_t main_thread;

static int counting_write(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned f)
{
    (void)off, (void)bytes, (void)q, (void)qoff, (void)f;
    struct counts *c = n == node_a ? &count_a : &count_b;
    if (atomic_load(&c->closed))
        atomic_fetch_add(&c->violations, 1);
    if (!(n->drv->caps & VBD_DRV_CAP_MULTI_LOOP) && !pthread_equal(pthread_self(), main_thread))
        atomic_fetch_add(&c->violations, 1);
    atomic_fetch_add(&c->inside, 1);
    atomic_fetch_add(&c->total, 1);
    vbd_co_sleep_ns(20000); /* stay in flight a while, as real I/O does */
    atomic_fetch_sub(&c->inside, 1);
    return 0;
}

static const struct vbd_driver multi_loop_driver = {
    .name = "null-co", .kind = VBD_DRV_PROTOCOL, .caps = VBD_DRV_CAP_MULTI_LOOP, .co_pwritev = counting_write,
};
static const struct vbd_driver home_loop_driver = {
    .name = "null-co", .kind = VBD_DRV_PROTOCOL, .co_pwritev = counting_write,
};

static struct vbd_node *open_counting(const struct vbd_driver *drv)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("null-co"));
    json_object_object_add(o, "size", json_object_new_int64(1 << 20));
    struct vbd_node *n = vbd_open(NULL, o, VBD_OPEN_RDWR, &err);
    if (!n) {
        fprintf(stderr, "open: %s\n", err->msg);
        exit(1);
    }
    n->drv = drv; /* the generic layer only looks at the table from now on */
    return n;
}

#define WRITERS_PER_LOOP 4
#define WRITES 300
struct writer {
    struct vbd_backend *be;
    struct vbd_loop *loop; /* where its requests come from */
    int errors, misplaced;
    atomic_int *done;
};

static void writer_co(void *opaque)
{
    struct writer *w = opaque;
    struct vbd_loop *home = vbd_loop_current();
    vbd_co_move_to(w->loop);
    uint8_t buf[512] = {0};
    for (int i = 0; i < WRITES; i++) {
        struct iovec v;
        struct vbd_qiov q;
        vbd_qiov_init_buf(&q, &v, buf, sizeof(buf));
        if (vbd_backend_co_pwritev(w->be, (uint64_t)(i % 64) * 512, 512, &q, 0) < 0)
            w->errors++;
        if (vbd_loop_current() != w->loop) /* a request comes back to its own loop */
            w->misplaced++;
    }
    vbd_co_move_to(home);
    atomic_fetch_add(w->done, 1);
}

struct run {
    struct vbd_backend *be;
    struct writer w[3 * WRITERS_PER_LOOP];
    atomic_int done;
    int swaps, leaks_into_old, inside_when_drained;
};

static void swapper_co(void *opaque)
{
    struct run *r = opaque;
    int n = 3 * WRITERS_PER_LOOP;
    for (int i = 0; i < n; i++)
        vbd_co_enter(vbd_co_create(writer_co, &r->w[i]));
    while (atomic_load(&r->done) < n) {
        vbd_co_sleep_ns(1000000);
        struct vbd_node *old = vbd_backend_node(r->be), *next = old == node_a ? node_b : node_a;
        struct counts *oc = old == node_a ? &count_a : &count_b;
        vbd_backend_co_drain_begin(r->be);
        if (atomic_load(&oc->inside))
            r->inside_when_drained++;
        atomic_store(&oc->closed, true);
        int total = atomic_load(&oc->total);
        vbd_co_sleep_ns(500000); /* requests arrive at the closed gate meanwhile */
        struct vbd_error *err = NULL;
        CHECK_EQ(vbd_backend_set_root(r->be, next, &err), 0);
        vbd_backend_drain_end(r->be);
        if (atomic_load(&oc->total) != total)
            r->leaks_into_old++;
        atomic_store(&oc->closed, false);
        r->swaps++;
    }
}

UNIT_TEST(drain_and_swap_root_under_writers_on_three_loops)
{
    main_thread = pthread_self();
    struct vbd_error *err = NULL;
    for (int i = 0; i < 2; i++) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(i ? "t1" : "t0"));
        CHECK_EQ(vbd_iothread_add(o, &err), 0);
        json_object_put(o);
    }
    /* a multi-loop root first (requests stay on their loops), then one that
     * is not (they hop to the main loop), and back */
    node_a = open_counting(&multi_loop_driver);
    node_b = open_counting(&home_loop_driver);
    struct vbd_backend_opts bo = {.name = "t"};
    struct run *r = calloc(1, sizeof(*r));
    r->be = vbd_backend_new(node_a, &bo, &err);
    CHECK(r->be != NULL);
    struct vbd_loop *loops[3] = {vbd_loop_current(), vbd_iothread_loop("t0"), vbd_iothread_loop("t1")};
    for (int i = 0; i < 3 * WRITERS_PER_LOOP; i++)
        r->w[i] = (struct writer){.be = r->be, .loop = loops[i / WRITERS_PER_LOOP], .done = &r->done};
    vbd_co_run_sync(swapper_co, r);
    int errors = 0, misplaced = 0;
    for (int i = 0; i < 3 * WRITERS_PER_LOOP; i++) {
        errors += r->w[i].errors;
        misplaced += r->w[i].misplaced;
    }
    CHECK_EQ(errors, 0);
    CHECK_EQ(misplaced, 0);
    CHECK_EQ(r->inside_when_drained, 0);
    CHECK_EQ(r->leaks_into_old, 0);
    CHECK_EQ(atomic_load(&count_a.violations) + atomic_load(&count_b.violations), 0);
    CHECK_EQ(atomic_load(&count_a.total) + atomic_load(&count_b.total), 3 * WRITERS_PER_LOOP * WRITES);
    CHECK(r->swaps >= 2);
    printf("  %d swaps; %d writes reached A, %d reached B\n", r->swaps, atomic_load(&count_a.total), atomic_load(&count_b.total));
    vbd_backend_free(r->be);
    free(r);
    vbd_node_unref(node_a);
    vbd_node_unref(node_b);
    vbd_iothread_stop_all();
}

struct swap {
    struct vbd_backend *be;
    struct vbd_node *to;
    int rc;
    struct vbd_error *err;
};
static void swap_co(void *p)
{
    struct swap *a = p;
    a->rc = vbd_backend_co_replace_root(a->be, a->to, &a->err);
}

UNIT_TEST(set_root_refuses_a_read_only_root_for_a_writer)
{
    struct vbd_error *err = NULL;
    struct vbd_node *rw = vbd_open(NULL, json_tokener_parse("{\"driver\": \"null-co\"}"), VBD_OPEN_RDWR, &err);
    struct vbd_node *ro = vbd_open(NULL, json_tokener_parse("{\"driver\": \"null-co\"}"), 0, &err);
    struct vbd_backend_opts bo = {.name = "t"};
    struct vbd_backend *be = vbd_backend_new(rw, &bo, &err);
    CHECK(be != NULL);
    struct swap a = {be, ro, 0, NULL};
    vbd_co_run_sync(swap_co, &a);
    CHECK_EQ(a.rc, -EACCES);
    CHECK(a.err && strstr(a.err->msg, "read-only"));
    CHECK(vbd_backend_node(be) == rw);
    vbd_error_free(a.err);
    vbd_backend_free(be);
    vbd_node_unref(rw);
    vbd_node_unref(ro);
}
