/* Fuzz target: arbitrary bytes as a cloop image. Opened read-write (must
 * be refused), then read-only: read every byte of the disk, map it; each
 * step fails cleanly or succeeds, never crashes or touches memory outside
 * buffers. Inputs without the cloop preamble get one, with 4 KiB blocks:
 * by the first byte either the input as the block count, offset table and
 * data (mutations reach the table checks), or the input cut into blocks
 * each zlib-compressed behind a valid table, the first block's stream
 * then damaged by the input's second byte (mutations reach inflate). */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct job {
    const char *path;
};

static struct vbd_node *open_as(const char *path, unsigned flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("cloop"));
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
        fprintf(stderr, "a cloop image opened read-write\n");
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

static const char magic[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-cloop-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    if (size >= sizeof(magic) - 1 && !memcmp(data, magic, sizeof(magic) - 1)) {
        fwrite(data, 1, size, f);
    } else {
        uint8_t h[128] = {0};
        memcpy(h, magic, sizeof(magic) - 1);
        fwrite(h, 1, sizeof(h), f);
        uint8_t bs[4];
        put_be(bs, 4096, 4);
        fwrite(bs, 1, 4, f);
        if (size < 2 || !(data[0] & 1)) {
            fwrite(data, 1, size, f);
        } else {
            enum { BS = 4096 };
            uint32_t nb = (uint32_t)((size + BS - 1) / BS);
            uint8_t *blk = calloc(1, BS);
            uint8_t **z = calloc(nb, sizeof(*z));
            uLongf *zl = calloc(nb, sizeof(*zl));
            uint8_t w[8];
            put_be(w, nb, 4);
            fwrite(w, 1, 4, f);
            uint64_t off = 136 + 8 * ((uint64_t)nb + 1);
            for (uint32_t i = 0; i < nb; i++) {
                size_t n = size - (size_t)i * BS < BS ? size - (size_t)i * BS : BS;
                memset(blk, 0, BS);
                memcpy(blk, data + (size_t)i * BS, n);
                zl[i] = compressBound(BS);
                z[i] = malloc(zl[i]);
                compress(z[i], &zl[i], blk, BS);
            }
            if (zl[0] > 4)
                z[0][2 + data[1] % (zl[0] - 2)] ^= data[1] & 0x80 ? 0 : data[1]; /* often valid, sometimes damaged */
            for (uint32_t i = 0; i <= nb; i++) {
                put_be(w, off, 8);
                fwrite(w, 1, 8, f);
                if (i < nb)
                    off += zl[i];
            }
            for (uint32_t i = 0; i < nb; i++) {
                fwrite(z[i], 1, zl[i], f);
                free(z[i]);
            }
            free(z);
            free(zl);
            free(blk);
        }
    }
    fclose(f);
    struct job j = {path};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
