/* Fuzz target: arbitrary bytes as a VHD (vpc) image file. Open it
 * read-write, read every byte of the disk, map it, write a few sectors
 * (allocating blocks): each must fail cleanly or succeed, never crash,
 * never touch memory outside buffers. Inputs that do not start with a
 * footer get a valid dynamic footer and header (16 MiB, 2 MiB blocks)
 * in front, so that mutations reach the BAT and the blocks; checksums of
 * inputs that do are fixed unless their in_saved_state byte is set, so
 * that mutations get past them. An input whose first byte ends in binary
 * 11 makes that wrapper a differencing image whose parent locator entries
 * are the input's first bytes too; differencing images are opened
 * read-only. */
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
    bool diff; /* a differencing image: opened read-only, without its parent */
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static void fix_checksum(uint8_t *p, size_t len, size_t at)
{
    uint32_t sum = 0;
    put_be32(p + at, 0);
    for (size_t i = 0; i < len; i++)
        sum += p[i];
    put_be32(p + at, ~sum);
}

static void run_co(void *arg)
{
    struct job *j = arg;
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("vpc"));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(j->path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    struct vbd_node *n = vbd_open(NULL, o, (j->diff ? 0 : VBD_OPEN_RDWR) | VBD_OPEN_NO_BACKING, &err);
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
    memset(buf, 0xa5, 65536);
    for (uint64_t off = 1000; off < limit && off < (16u << 20) && !j->diff; off += 3u << 20)
        vbd_node_co_pwrite(n, off, buf, limit - off < 5000 ? limit - off : 5000, 0);
    free(buf);
    vbd_node_unref(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(path, sizeof(path), "/tmp/vbd-fuzz-vpc-%d.img", (int)getpid());
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    bool diff = false;
    if (size < 1536 || memcmp(data, "conectix", 8)) {
        uint8_t hdr[1536] = {0};
        diff = size && (data[0] & 3) == 3;
        memcpy(hdr, "conectix", 8);
        put_be32(hdr + 8, 2);
        put_be32(hdr + 12, 0x00010000);
        put_be64(hdr + 16, 512);                /* dynamic header right after */
        memcpy(hdr + 28, "qem2", 4);            /* size from current_size */
        put_be64(hdr + 40, 16u << 20);
        put_be64(hdr + 48, 16u << 20);
        put_be32(hdr + 56, 0xffff10ffu);        /* CHS maximum */
        put_be32(hdr + 60, diff ? 4 : 3);       /* differencing or dynamic */
        fix_checksum(hdr, 512, 64);
        uint8_t *d = hdr + 512;
        memcpy(d, "cxsparse", 8);
        put_be64(d + 8, UINT64_MAX);
        put_be64(d + 16, 1536);                 /* the input is the BAT and what follows */
        put_be32(d + 24, 0x00010000);
        put_be32(d + 28, 8);
        put_be32(d + 32, 2u << 20);
        if (diff) {
            memcpy(d + 576, data, size < 192 ? size : 192); /* locator entries */
            d[65] = 'p';                                     /* the parent's name, UTF-16BE */
        }
        fix_checksum(d, 1024, 36);
        fwrite(hdr, 1, sizeof(hdr), f);
        fwrite(data, 1, size, f);
        if (size < 512) { /* the BAT's sector and the footer after it */
            static const uint8_t zeroes[1024];
            fwrite(zeroes, 1, 1024 - size, f);
        }
    } else {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        diff = copy[63] == 4 && !copy[60] && !copy[61] && !copy[62]; /* differencing: read-only */
        if (!copy[84]) {
            fix_checksum(copy, 512, 64);
            uint64_t dyn = 0;
            for (int i = 0; i < 8; i++)
                dyn = dyn << 8 | copy[16 + i];
            if (dyn <= size && size - dyn >= 1024)
                fix_checksum(copy + dyn, 1024, 36);
        }
        fwrite(copy, 1, size, f);
        free(copy);
    }
    fclose(f);
    struct job j = {path, diff};
    vbd_co_run_sync(run_co, &j);
    unlink(path);
    return 0;
}
