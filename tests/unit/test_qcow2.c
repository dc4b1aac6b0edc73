/* qcow2's request serialisation, with a backing node that holds a read
 * until the test lets it go. */
#include "unit.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <unistd.h>

#define SIZE (1 << 20)
#define CLUSTER 65536

/* The backing: a read parks until released, then returns gate_pattern as
 * it is at that moment (the source's data when the read reaches it). */
static struct vbd_co_queue gate_q = VBD_CO_QUEUE_INIT;
static bool gate_parked, gate_open;
static int gate_pattern = 0x11;

static int gate_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned f)
{
    (void)n, (void)off, (void)f;
    gate_parked = true;
    while (!gate_open)
        vbd_co_queue_wait(&gate_q);
    gate_parked = false;
    vbd_iov_memset(q->iov, q->niov, qoff, gate_pattern, bytes);
    return 0;
}

static const struct vbd_driver gate_driver = {
    .name = "null-co", .kind = VBD_DRV_PROTOCOL, .co_preadv = gate_preadv,
};

struct scenario {
    char dir[32], path[64];
    struct vbd_node *gate, *fl;
    uint8_t rbuf[CLUSTER], wbuf[CLUSTER];
    int read_rc, write_rc;
    bool set_up, read_done, write_done, closed;
};

static void set_up(void *opaque)
{
    struct scenario *s = opaque;
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "size", json_object_new_int64(SIZE));
    if (vbd_image_co_create("qcow2", s->path, o, &err) < 0)
        fprintf(stderr, "create: %s\n", err ? err->msg : "?");
    json_object_put(o);
    o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("null-co"));
    json_object_object_add(o, "node-name", json_object_new_string("gate"));
    json_object_object_add(o, "size", json_object_new_int64(SIZE));
    s->gate = vbd_open(NULL, o, 0, &err);
    if (s->gate)
        s->gate->drv = &gate_driver;
    o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("qcow2"));
    json_object_object_add(o, "node-name", json_object_new_string("fl"));
    json_object_object_add(o, "backing", json_object_new_string("gate"));
    s->fl = s->gate ? vbd_open(s->path, o, VBD_OPEN_RDWR, &err) : NULL;
    if (!s->fl)
        fprintf(stderr, "open: %s\n", err ? err->msg : "?");
    s->set_up = true;
}

static void reader(void *opaque)
{
    struct scenario *s = opaque;
    s->read_rc = vbd_node_co_pread(s->fl, 0, s->rbuf, CLUSTER);
    s->read_done = true;
}

static void writer(void *opaque)
{
    struct scenario *s = opaque;
    memset(s->wbuf, 0x22, CLUSTER);
    s->write_rc = vbd_node_co_pwrite(s->fl, 0, s->wbuf, CLUSTER, 0);
    /* a backup's copy-before-write into fl is done: the guest's write to
     * the source, which waited for it, lands now */
    gate_pattern = 0x33;
    s->write_done = true;
}

static void reread_and_close(void *opaque)
{
    struct scenario *s = opaque;
    s->read_rc = vbd_node_co_pread(s->fl, 0, s->rbuf, CLUSTER);
    vbd_node_unref(s->fl);
    vbd_node_unref(s->gate);
    s->closed = true;
}

static void run_while(bool *flag, bool want)
{
    while (*flag != want)
        vbd_loop_run_once(vbd_loop_current(), -1);
}

/* A fleecing image's read that falls through to its backing (the backup's
 * source) and a write allocating the same cluster (the backup's
 * copy-before-write, after which the guest's write lands in the source):
 * the write must wait until the backing's data is read, or the read
 * returns the guest's newer data instead of the point in time. */
UNIT_TEST(allocating_write_waits_for_a_read_through_to_the_backing)
{
    struct scenario s = {.dir = "/tmp/vbd-unit-qcow2.XXXXXX"};
    CHECK(mkdtemp(s.dir) != NULL);
    snprintf(s.path, sizeof(s.path), "%s/fl.qcow2", s.dir);
    vbd_co_enter(vbd_co_create(set_up, &s));
    run_while(&s.set_up, true);
    CHECK(s.fl != NULL);
    if (!s.fl)
        return;
    vbd_co_enter(vbd_co_create(reader, &s));
    run_while(&gate_parked, true); /* fl mapped the cluster: unallocated, read from the backing */
    vbd_co_enter(vbd_co_create(writer, &s));
    /* Give the write every chance to finish (it needs its file I/O and
     * the metadata update): it must not while the read is held. A fixed
     * bound, but only the old, wrong behaviour depends on it: a correct
     * write waits for the read however long this runs. */
    uint64_t until = vbd_clock_ns() + 1000000000ull;
    while (!s.write_done && vbd_clock_ns() < until)
        vbd_loop_run_once(vbd_loop_current(), 50000000);
    CHECK(!s.write_done);
    gate_open = true;
    vbd_co_queue_wake_all(&gate_q);
    run_while(&s.read_done, true);
    run_while(&s.write_done, true);
    CHECK_EQ(s.read_rc, 0);
    CHECK_EQ(s.write_rc, 0);
    CHECK_EQ(s.rbuf[0], 0x11); /* the backing as it was when the write came */
    CHECK_EQ(s.rbuf[CLUSTER - 1], 0x11);
    vbd_co_enter(vbd_co_create(reread_and_close, &s));
    run_while(&s.closed, true);
    CHECK_EQ(s.read_rc, 0);
    CHECK_EQ(s.rbuf[0], 0x22);
    CHECK_EQ(s.rbuf[CLUSTER - 1], 0x22);
    unlink(s.path);
    rmdir(s.dir);
}
