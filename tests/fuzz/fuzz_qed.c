/* Fuzz target: arbitrary bytes as a qed image file. Open it read-only,
 * read every byte of the disk, map it and run check; then open it
 * read-write (a set need-check flag repairs the tables first) and write
 * across a few clusters: each must fail cleanly or succeed, never crash,
 * never touch memory outside buffers. Inputs not starting with the magic
 * get a valid header (4 KiB clusters, one-cluster tables, 16 MiB disk, L1
 * at 4 KiB whose first entry points at 8 KiB) and become the first L2
 * table and what follows it. */
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
    json_object_object_add(o, "driver", json_object_new_string("qed"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    json_object_object_add(o, "backing", NULL); /* never follow a backing name from the input */
    struct vbd_node *n = vbd_open(NULL, o, flags | VBD_OPEN_NO_BACKING, &err);
    vbd_error_free(err);
    return n;
}

static void run_co(void *arg)
{
    const char *path = arg;
    struct vbd_node *n = open_image(path, VBD_OPEN_CHECK);
    if (!n)
        return;
    uint8_t *buf = calloc(1, 65536);
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
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    n->drv->co_check(n, &r, 0, &err);
    vbd_error_free(err);
    vbd_node_unref(n);
    n = open_image(path, VBD_OPEN_RDWR | VBD_OPEN_NO_FLUSH); /* no fsync per input */
    if (n) {
        static const uint64_t offs[] = {0, 5000, 8191, 1u << 20, 3u << 21};
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
            if (offs[i] + 9000 <= n->size)
                vbd_node_co_pwrite(n, offs[i], buf, 9000, 0);
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
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-qed-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    static const uint8_t hdr[64] = {
        'Q', 'E', 'D', 0,                   /* magic */
        0, 0x10, 0, 0, 1, 0, 0, 0,          /* cluster_size 4096, table_size 1 */
        1, 0, 0, 0,                         /* header_size 1 cluster */
        0, 0, 0, 0, 0, 0, 0, 0,             /* features */
        0, 0, 0, 0, 0, 0, 0, 0,             /* compat features */
        0, 0, 0, 0, 0, 0, 0, 0,             /* autoclear features */
        0, 0x10, 0, 0, 0, 0, 0, 0,          /* L1 at 4096 */
        0, 0, 0, 1, 0, 0, 0, 0,             /* image size 16 MiB */
        0, 0, 0, 0, 0, 0, 0, 0,             /* no backing file */
    };
    static const uint8_t l1_entry[8] = {0, 0x20, 0, 0, 0, 0, 0, 0}; /* first L2 table at 8192 */
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    bool prefixed = size < sizeof(hdr) || memcmp(data, "QED", 4);
    if (prefixed) {
        fwrite(hdr, 1, sizeof(hdr), f);
        fseek(f, 4096, SEEK_SET);
        fwrite(l1_entry, 1, sizeof(l1_entry), f);
        fseek(f, 8192, SEEK_SET);
    }
    fwrite(data, 1, size, f);
    if (prefixed && size < 4 * 4096) { /* the whole L2 table and a few data clusters inside the file */
        fseek(f, 8192 + 4 * 4096 - 1, SEEK_SET);
        fputc(0, f);
    }
    fclose(f);
    vbd_co_run_sync(run_co, path);
    unlink(path);
    return 0;
}
