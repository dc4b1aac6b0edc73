/* Fuzz target: arbitrary bytes as a qcow2 image file. Open it (read-only),
 * read every byte of the disk, map it, list snapshots and run check: each
 * must fail cleanly or succeed, never crash, never read outside buffers.
 * Inputs shorter than a header get a valid 64 KiB-cluster header prefix so
 * that mutations reach the tables. */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct job {
    const char *path;
};

static void run_co(void *arg)
{
    struct job *j = arg;
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("qcow2"));
    json_object_object_add(o, "l2-cache-size", json_object_new_string("256k"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(j->path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    json_object_object_add(o, "backing", NULL); /* never follow a backing name from the input */
    struct vbd_node *n = vbd_open(NULL, o, VBD_OPEN_NO_BACKING | VBD_OPEN_CHECK, &err);
    vbd_error_free(err);
    if (!n)
        return;
    uint8_t *buf = malloc(65536);
    uint64_t limit = n->size < (64u << 20) ? n->size : (64u << 20); /* bounded work per input */
    for (uint64_t off = 0; off < limit; off += 65536) {
        uint64_t len = limit - off < 65536 ? limit - off : 65536;
        if (vbd_node_co_pread(n, off, buf, len) < 0)
            break;
    }
    for (uint64_t off = 0; off < limit;) {
        uint64_t pnum = 0, map = 0;
        struct vbd_node *file = NULL;
        int depth = 0;
        if (vbd_node_co_block_status_above(n, NULL, true, off, limit - off, &pnum, &map, &file, &depth) < 0 || !pnum)
            break;
        off += pnum;
    }
    struct vbd_snapshot_info *sn = NULL;
    if (n->drv->snapshot_list && n->drv->snapshot_list(n, &sn) >= 0)
        free(sn);
    struct vbd_check_result r = {0};
    err = NULL;
    if (n->drv->co_check)
        n->drv->co_check(n, &r, 0, &err);
    vbd_error_free(err);
    free(buf);
    vbd_node_unref(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-qcow2-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    /* a valid v3 header (64 KiB clusters, 16 MiB disk) under the input when it is short */
    static const uint8_t hdr[112] = {
        'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, /* version 3, no backing */
        0, 0, 0, 0, 0, 0, 0, 16,                                 /* cluster_bits 16 */
        0, 0, 0, 0, 1, 0, 0, 0,                                  /* size 16 MiB */
        0, 0, 0, 0, 0, 0, 0, 1,                                  /* crypt 0, l1_size 1 */
        0, 0, 0, 0, 0, 3, 0, 0,                                  /* l1 at 0x30000 */
        0, 0, 0, 0, 0, 1, 0, 0,                                  /* reftable at 0x10000 */
        0, 0, 0, 1, 0, 0, 0, 0,                                  /* 1 cluster, 0 snapshots */
        0, 0, 0, 0, 0, 0, 0, 0,                                  /* snapshots offset */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,          /* incompat, compat */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 112,        /* autoclear, refcount_order 4, hlen */
    };
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    if (size < sizeof(hdr) || memcmp(data, "QFI\xfb", 4)) {
        fwrite(hdr, 1, sizeof(hdr), f);
        fseek(f, 4 * 65536 - 1, SEEK_SET);
        fputc(0, f);
        fseek(f, 0x30000, SEEK_SET); /* the input becomes the L1 table and what follows */
    }
    fwrite(data, 1, size, f);
    fclose(f);
    struct job j = {path};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
