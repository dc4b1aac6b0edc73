/* Fuzz target: arbitrary bytes as a dmg (UDIF) image. Opened read-write
 * (must be refused), then read-only: read every byte of the disk, map it;
 * each step fails cleanly or succeeds, never crashes or touches memory
 * outside buffers. Inputs without a "koly" trailer become an image whose
 * data fork is the input and whose one mish block (in the resource fork,
 * or base64 in an XML plist, by the first byte) has the input as its
 * chunk entries: mutations reach the chunk table checks and the zlib and
 * bzip2 decoders. */
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
    json_object_object_add(o, "driver", json_object_new_string("dmg"));
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
        fprintf(stderr, "a dmg image opened read-write\n");
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

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static void b64(FILE *f, const uint8_t *p, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        fputc(t[v >> 18 & 63], f);
        fputc(t[v >> 12 & 63], f);
        fputc(i + 1 < n ? t[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? t[v & 63] : '=', f);
        if (i % 48 == 45)
            fputs("\n\t", f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-dmg-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    if (size >= 512 && !memcmp(data + size - 512, "koly", 4)) {
        fwrite(data, 1, size, f);
    } else {
        fwrite(data, 1, size, f); /* the data fork */
        uint8_t m[204] = {0};
        memcpy(m, "mish", 4);
        put_be(m + 4, 1, 4);
        put_be(m + 0x10, 4096, 8);
        put_be(m + 200, (uint32_t)(size / 40), 4);
        uint8_t k[512] = {0};
        memcpy(k, "koly", 4);
        put_be(k + 4, 4, 4);
        put_be(k + 8, 512, 4);
        put_be(k + 0x20, size, 8);
        put_be(k + 0x1ec, 4096, 8);
        uint64_t meta = size;
        if (size && (data[0] & 1)) {
            long a = ftell(f);
            fputs("<plist><dict><key>blkx</key><array><dict><data>\n\t", f);
            uint8_t *mish = malloc(204 + size);
            memcpy(mish, m, 204);
            memcpy(mish + 204, data, size);
            b64(f, mish, 204 + size);
            free(mish);
            fputs("\n</data></dict></array></dict></plist>\n", f);
            put_be(k + 0xd8, meta, 8);
            put_be(k + 0xe0, (uint64_t)(ftell(f) - a), 8);
        } else {
            uint8_t r[260] = {0};
            uint64_t len = 204 + size;
            put_be(r, 256, 4);
            put_be(r + 8, len + 4, 4);
            put_be(r + 256, len, 4);
            fwrite(r, 1, sizeof(r), f);
            fwrite(m, 1, sizeof(m), f);
            fwrite(data, 1, size, f);
            put_be(k + 0x28, meta, 8);
            put_be(k + 0x30, 260 + len, 8);
        }
        fwrite(k, 1, sizeof(k), f);
    }
    fclose(f);
    struct job j = {path};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
