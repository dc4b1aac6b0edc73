/* Fuzz target: arbitrary bytes as a Bochs growing image. Opened
 * read-write (must be refused), then read-only: read every byte of the
 * disk, map it; each step fails cleanly or succeeds, never crashes or
 * touches memory outside buffers. Inputs without the Bochs header get a
 * valid one (v1 or v2 by the first byte; 64 extents of 4 KiB) in front,
 * so that mutations reach the catalog, the bitmaps and the sectors. */
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

static struct vbd_node *open_as(const char *path, unsigned flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("bochs"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    struct vbd_node *n = vbd_open(NULL, o, flags | VBD_OPEN_NO_BACKING, &err);
    vbd_error_free(err);
    return n;
}

static void run_co(void *arg)
{
    struct job *j = arg;
    struct vbd_node *n = open_as(j->path, VBD_OPEN_RDWR);
    if (n) {
        fprintf(stderr, "a bochs image opened read-write\n");
        abort();
    }
    n = open_as(j->path, 0);
    if (!n)
        return;
    uint8_t *buf = malloc(65536);
    uint64_t limit = n->size < (64u << 20) ? n->size : (64u << 20); /* bounded work per input */
    for (uint64_t off = 0; off < limit; off += 65536) {
        uint64_t len = limit - off < 65536 ? limit - off : 65536;
        if (vbd_node_co_pread(n, off, buf, len) < 0)
            break;
    }
    if (limit > 1000)
        vbd_node_co_pread(n, 1000 - 7, buf, 5000 < limit - 993 ? 5000 : limit - 993); /* unaligned */
    for (uint64_t off = 0; off < limit;) {
        uint64_t pnum = 0, map = 0;
        struct vbd_node *file = NULL;
        int depth = 0;
        if (vbd_node_co_block_status_above(n, NULL, true, off, limit - off, &pnum, &map, &file, &depth) < 0 || !pnum)
            break;
        off += pnum;
    }
    free(buf);
    vbd_node_unref(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-bochs-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    if (size < 512 || memcmp(data, "Bochs Virtual HD Image", 22)) {
        uint8_t h[512] = {0};
        bool v1 = size && (data[0] & 1);
        memcpy(h, "Bochs Virtual HD Image", 22);
        memcpy(h + 32, "Redolog", 7);
        memcpy(h + 48, "Growing", 7);
        uint32_t w[5] = {v1 ? 0x10000u : 0x20000u, 512, 64, 512, 4096};
        for (int i = 0; i < 5; i++)
            for (int b = 0; b < 4; b++)
                h[64 + 4 * i + b] = (uint8_t)(w[i] >> (8 * b));
        uint64_t disk = 64 * 4096;
        for (int b = 0; b < 8; b++)
            h[(v1 ? 84 : 88) + b] = (uint8_t)(disk >> (8 * b));
        fwrite(h, 1, sizeof(h), f);
    }
    fwrite(data, 1, size, f);
    fclose(f);
    struct job j = {path};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
