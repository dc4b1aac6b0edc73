/* Fuzz target: arbitrary bytes as a parallels image file. Opened read-only
 * (for check): every byte read, mapped, checked; then opened read-write:
 * writes that allocate clusters, a flush, a close; then checked with
 * repair. Each step fails cleanly or succeeds, never crashes, never reads
 * or writes outside buffers. Inputs without a parallels magic get a valid
 * header (4 KiB clusters, 256 KiB disk) in front, so that they become the
 * BAT and the data. */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vbd_node *open_image(const char *path, unsigned flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("parallels"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    struct vbd_node *n = vbd_open(NULL, o, flags, &err);
    vbd_error_free(err);
    return n;
}

static void check(struct vbd_node *n, unsigned fix)
{
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    n->drv->co_check(n, &r, fix, &err);
    vbd_error_free(err);
}

struct job {
    const char *path;
    bool small_clusters; /* allocation writes a whole cluster: write only when they are small */
};

static void run_co(void *arg)
{
    struct job *j = arg;
    const char *path = j->path;
    struct vbd_node *n = open_image(path, VBD_OPEN_CHECK);
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
        if (vbd_node_co_block_status(n, true, off, limit - off, &pnum, &map, &file) < 0 || !pnum)
            break;
        off += pnum;
    }
    check(n, 0);
    vbd_node_unref(n);

    n = open_image(path, VBD_OPEN_RDWR);
    if (n) {
        memset(buf, 0xa5, 65536);
        if (j->small_clusters && n->size) {
            uint64_t offs[] = {0, 5000, n->size / 2, n->size - 1};
            for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
                uint64_t len = n->size - offs[i] < 9000 ? n->size - offs[i] : 9000;
                if (vbd_node_co_pwrite(n, offs[i], buf, len, 0) < 0)
                    break;
            }
            vbd_node_co_flush(n);
        }
        vbd_node_unref(n);
    }
    n = open_image(path, VBD_OPEN_RDWR | VBD_OPEN_CHECK);
    if (n) {
        check(n, VBD_CHECK_FIX_ERRORS | VBD_CHECK_FIX_LEAKS);
        vbd_node_unref(n);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-parallels-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    static const uint8_t hdr[64] = {
        'W', 'i', 't', 'h', 'o', 'u', 'F', 'r', 'e', 'S', 'p', 'a', 'c', 'E', 'x', 't',
        2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, /* version 2, 16 heads, 8 sectors a cluster */
        64, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,             /* 64 BAT entries, 512 sectors */
        0, 0, 0, 0, 1, 0, 0, 0,                          /* not in use, data at sector 1 */
    };
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    struct job j = {path, true};
    if (size < 16 || (memcmp(data, "WithouFreSpacExt", 16) && memcmp(data, "WithoutFreeSpace", 16)))
        fwrite(hdr, 1, sizeof(hdr), f);
    else
        j.small_clusters = size >= 32 && data[30] == 0 && data[31] == 0 && data[29] < 8; /* tracks < 2048: < 1 MiB */
    fwrite(data, 1, size, f);
    fclose(f);
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
