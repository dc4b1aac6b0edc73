/* The file driver's size across loops: writes past the end on an iothread
 * raise it (a format appending clusters) while the main loop refreshes it
 * (SIGHUP, block_resize's and reopen's refresh of every node). A refresh
 * must never put back a size older than a write that had completed: the
 * format would then see its file shorter than what it has just written. */
#include "unit.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"

#include <fcntl.h>
#include <json-c/json.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define GROWTHS 10000
#define STEP 4096

struct growth {
    struct vbd_node *file;
    struct vbd_loop *where;  /* the iothread's loop: the writes run there */
    atomic_uint_fast64_t end; /* published after each write (and its grow) is done */
    atomic_bool done, home;
    int errors;
};

static void grower_co(void *opaque)
{
    struct growth *g = opaque;
    struct vbd_loop *home = vbd_loop_current();
    vbd_co_move_to(g->where);
    uint8_t buf[512];
    memset(buf, 0x5a, sizeof(buf));
    for (uint64_t i = 1; i <= GROWTHS; i++) {
        /* the last 512 bytes of the next 4 KiB: the file ends at i * STEP */
        if (vbd_node_co_pwrite(g->file, i * STEP - sizeof(buf), buf, sizeof(buf), 0) < 0)
            g->errors++;
        atomic_store(&g->end, i * STEP);
    }
    atomic_store(&g->done, true);
    vbd_co_move_to(home);
    atomic_store(&g->home, true);
}

struct refresher {
    struct growth *g;
    int refreshes, stale, errors;
    uint64_t worst_behind;
};

static void refresher_co(void *opaque)
{
    struct refresher *r = opaque;
    struct growth *g = r->g;
    vbd_co_enter(vbd_co_create(grower_co, g));
    while (!atomic_load(&g->done)) {
        struct vbd_error *err = NULL;
        if (vbd_node_refresh_size(g->file, &err) < 0) {
            r->errors++;
            vbd_error_free(err);
        }
        r->refreshes++;
        /* every write published before this look ended inside the file the
         * node says it has: read the size after the published end */
        uint64_t end = atomic_load(&g->end), size = vbd_node_size(g->file);
        if (size < end) {
            r->stale++;
            if (end - size > r->worst_behind)
                r->worst_behind = end - size;
        }
    }
    while (!atomic_load(&g->home))
        vbd_co_sleep_ns(1000000); /* the grower's way back to this loop */
}

UNIT_TEST(file_size_refresh_on_main_loop_keeps_growth_from_iothread)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string("grow0"));
    CHECK_EQ(vbd_iothread_add(o, &err), 0);
    json_object_put(o);
    char path[4096];
    snprintf(path, sizeof(path), "%s/grow.raw", unit_tmpdir());
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    CHECK(fd >= 0);
    close(fd);
    struct json_object *fo = json_object_new_object();
    json_object_object_add(fo, "driver", json_object_new_string("file"));
    json_object_object_add(fo, "filename", json_object_new_string(path));
    struct growth *g = calloc(1, sizeof(*g));
    g->file = vbd_open(NULL, fo, VBD_OPEN_RDWR, &err);
    CHECK(g->file != NULL);
    if (!g->file) {
        fprintf(stderr, "  %s\n", err ? err->msg : "?");
        vbd_error_free(err);
        free(g);
        vbd_iothread_stop_all();
        return;
    }
    g->where = vbd_iothread_loop("grow0");
    struct refresher r = {.g = g};
    vbd_co_run_sync(refresher_co, &r);
    CHECK_EQ(g->errors, 0);
    CHECK_EQ(r.errors, 0);
    CHECK_EQ(r.stale, 0);
    CHECK_EQ(vbd_node_size(g->file), (uint64_t)GROWTHS * STEP);
    printf("  %d refreshes beside %d growing writes; %d saw the size behind a finished write (worst %llu bytes)\n",
           r.refreshes, GROWTHS, r.stale, (unsigned long long)r.worst_behind);
    vbd_node_unref(g->file);
    free(g);
    vbd_iothread_stop_all();
}
