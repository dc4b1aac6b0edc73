/* Fuzz target: arbitrary bytes as a VDI image file. Open it read-only, read
 * every byte of the disk, map it and run check; then open it read-write,
 * write across block boundaries (allocating blocks) and read back: each
 * step must fail cleanly or succeed, never crash, never touch memory out
 * of bounds. An input without the VDI signature gets a valid header: its
 * first byte chooses whether the input's next 64 bytes overwrite the
 * header's offsets and counts, or its bytes become block map entries (mostly
 * valid, distinct indexes, so that allocated blocks are reached; sometimes a
 * duplicate or one past the end), the rest data. */
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

#define BLOCKS 8u
#define BLOCK (1u << 20)

struct job {
    const char *path;
};

static struct vbd_node *open_vdi(const char *path, unsigned flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("vdi"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    struct vbd_node *n = vbd_open(NULL, o, flags, &err);
    vbd_error_free(err);
    return n;
}

static void run_co(void *arg)
{
    struct job *j = arg;
    struct vbd_node *n = open_vdi(j->path, VBD_OPEN_NO_BACKING | VBD_OPEN_CHECK);
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
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    if (n->drv->co_check)
        n->drv->co_check(n, &r, 0, &err);
    vbd_error_free(err);
    vbd_node_unref(n);

    n = open_vdi(j->path, VBD_OPEN_NO_BACKING | VBD_OPEN_RDWR);
    if (n) {
        memset(buf, 0xa5, 65536);
        const uint64_t offs[] = {BLOCK - 1000, 3 * (uint64_t)BLOCK + 7, 100};
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
            if (offs[i] >= n->size)
                continue;
            uint64_t len = n->size - offs[i] < 5000 ? n->size - offs[i] : 5000;
            if (vbd_node_co_pwrite(n, offs[i], buf, len, 0) < 0 || vbd_node_co_pread(n, offs[i], buf + 8192, len) < 0)
                break;
            if (memcmp(buf, buf + 8192, len))
                abort(); /* a write that succeeded must read back */
        }
        vbd_node_unref(n);
    }
    free(buf);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-vdi-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    if (size >= 0x44 && data[0x40] == 0x7f && data[0x41] == 0x10 && data[0x42] == 0xda && data[0x43] == 0xbe) {
        fwrite(data, 1, size, f);
    } else {
        /* a dynamic 64 MiB image: header, block map at 512, data at 1024 */
        static uint8_t img[1024];
        memset(img, 0, sizeof(img));
        put_le32(img + 0x40, 0xbeda107f);
        put_le32(img + 0x44, 0x00010001);
        put_le32(img + 0x48, 0x180);
        put_le32(img + 0x4c, 1);
        put_le32(img + 0x154, 512);
        put_le32(img + 0x158, 1024);
        put_le32(img + 0x168, 512);
        put_le32(img + 0x170, BLOCKS * BLOCK);
        put_le32(img + 0x178, BLOCK);
        put_le32(img + 0x180, BLOCKS);
        memset(img + 512, 0xff, 4 * BLOCKS);
        size_t used = 0;
        uint32_t allocated = 0;
        if (size && (data[0] & 1)) { /* lying offsets and counts */
            used = size - 1 < 64 ? size - 1 : 64;
            memcpy(img + 0x154, data + 1, used);
            used++;
        } else if (size) { /* a map of small indexes, duplicates and holes included */
            used = size - 1 < BLOCKS ? size - 1 : BLOCKS;
            for (size_t i = 0; i < used; i++) {
                uint8_t b = data[1 + i];
                uint32_t e = b >= 0xf0 ? 0xfffffffeu : b >= 0x80 ? 0xffffffffu : b == 0x7f ? BLOCKS : b == 0x7e ? 0 : allocated;
                if (e < 0xfffffffeu)
                    allocated++;
                put_le32(img + 512 + 4 * i, e);
            }
            put_le32(img + 0x184, allocated > BLOCKS ? BLOCKS : allocated);
            used++;
        }
        fwrite(img, 1, sizeof(img), f);
        fwrite(data + used, 1, size - used, f);
    }
    fclose(f);
    struct job j = {path};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
