/* Fuzz target: arbitrary bytes as a VMDK image or descriptor file. Open it
 * read-only, read every byte of the disk, map it and run check; then open
 * it read-write, write across grain boundaries (allocating grains and
 * grain tables) and read back: each step must fail cleanly or succeed,
 * never crash, never touch memory out of bounds. The file lives alone in
 * a private directory, with one flat extent file beside it, so extent
 * lines can name only those (anything else is refused as an escape).
 * An input with the sparse magic or a descriptor's "#"/"version=" start is
 * used as it is; any other gets a valid small sparse header (4 KiB grains,
 * 64-entry tables, four of them): its first byte chooses whether the
 * next bytes overwrite one header field, or its bytes become grain
 * table entries (mostly valid, some zeroed, some past the end, some
 * compressed-stream flags), the rest grain data. */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GRAIN 4096u
#define CAP_SECTORS 2048u /* 1 MiB */
#define GTES 64u
#define GRAIN_SECTOR 8u

struct job {
    const char *path;
};

static struct vbd_node *open_vmdk(const char *path, unsigned flags)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("vmdk"));
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
    struct vbd_node *n = open_vmdk(j->path, VBD_OPEN_NO_BACKING | VBD_OPEN_CHECK);
    if (!n)
        return;
    uint8_t *buf = malloc(65536);
    uint64_t limit = n->size < (16u << 20) ? n->size : (16u << 20); /* bounded work per input */
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
    struct vbd_image_info info = {0};
    if (vbd_node_get_info(n, &info, &err) == 0)
        json_object_put(info.format_specific);
    vbd_error_free(err);
    err = NULL;
    if (n->drv->co_check) {
        FILE *saved = stderr; /* check reports on stderr, as qemu-img's */
        stderr = fopen("/dev/null", "w");
        n->drv->co_check(n, &r, 0, &err);
        fclose(stderr);
        stderr = saved;
    }
    vbd_error_free(err);
    vbd_node_unref(n);

    n = open_vmdk(j->path, VBD_OPEN_NO_BACKING | VBD_OPEN_RDWR);
    if (n) {
        memset(buf, 0xa5, 65536);
        const uint64_t offs[] = {GRAIN - 1000, 300 * (uint64_t)GRAIN + 7, 100, (uint64_t)GTES * GRAIN - 10};
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
            if (offs[i] >= n->size)
                continue;
            uint64_t len = n->size - offs[i] < 9000 ? n->size - offs[i] : 9000;
            if (vbd_node_co_pwrite(n, offs[i], buf, len, 0) < 0 || vbd_node_co_pread(n, offs[i], buf + 16384, len) < 0)
                break;
            if (memcmp(buf, buf + 16384, len))
                abort(); /* a write that succeeded must read back */
            if (vbd_node_co_pwrite_zeroes(n, offs[i] & ~(uint64_t)(GRAIN - 1), GRAIN, 0) < 0)
                break;
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
static void put_le64(uint8_t *p, uint64_t v)
{
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[64], path[96], flat[96];
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        snprintf(dir, sizeof(dir), "/tmp/vbd-fuzz-vmdk-%d", (int)getpid());
        mkdir(dir, 0700);
        snprintf(path, sizeof(path), "%s/f.vmdk", dir);
        snprintf(flat, sizeof(flat), "%s/x-flat.vmdk", dir);
        ready = 1;
    }
    if (size > (4u << 20))
        return 0;
    FILE *ff = fopen(flat, "wb");
    if (!ff)
        return 0;
    fclose(ff);
    if (truncate(flat, 65536) < 0)
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    bool raw = size >= 4 && (!memcmp(data, "KDMV", 4) || !memcmp(data, "COWD", 4) || data[0] == '#' ||
                             !memcmp(data, "vers", 4));
    if (raw) {
        fwrite(data, 1, size, f);
    } else {
        /* header, descriptor (sector 1), GD (sector 2), four GTs (sectors 3-6), grains from sector 8 */
        static uint8_t img[GRAIN_SECTOR * 512];
        memset(img, 0, sizeof(img));
        memcpy(img, "KDMV", 4);
        put_le32(img + 4, 2);
        put_le32(img + 8, 0x3 | 0x4);
        put_le64(img + 12, CAP_SECTORS);
        put_le64(img + 20, GRAIN / 512);
        put_le64(img + 28, 1);
        put_le64(img + 36, 1);
        put_le32(img + 44, GTES);
        put_le64(img + 48, 2); /* the redundant GD is the same table: writes keep both in step */
        put_le64(img + 56, 2);
        put_le64(img + 64, GRAIN_SECTOR);
        const char *desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                           "createType=\"monolithicSparse\"\n";
        memcpy(img + 512, desc, strlen(desc));
        for (uint32_t i = 0; i < 4; i++)
            put_le32(img + 1024 + 4 * i, 3 + i);
        size_t used = 0;
        if (size >= 2 && (data[0] & 1)) { /* one lying header field */
            static const uint8_t fields[] = {4, 8, 12, 20, 28, 36, 44, 48, 56, 64, 77};
            used = size - 2 < 8 ? size - 2 : 8;
            memcpy(img + fields[data[1] % sizeof(fields)], data + 2, used);
            used += 2;
        } else if (size) { /* grain table entries: allocated grains, holes, zeroed, past the end */
            used = size - 1 < 4 * GTES ? size - 1 : 4 * GTES;
            uint32_t next = GRAIN_SECTOR;
            for (size_t i = 0; i < used; i++) {
                uint8_t b = data[1 + i];
                uint32_t e = b >= 0xf0 ? 1 : b >= 0x80 ? 0 : b == 0x7f ? 0xfffffff0u : b == 0x7e ? 3 : next;
                if (e == next)
                    next += GRAIN / 512;
                put_le32(img + 3 * 512 + 4 * (i / GTES) * 128 + 4 * (i % GTES), e);
            }
            if (data[0] & 2) /* a compressed stream: grains are markers and deflate data */
                put_le32(img + 8, 0x3 | 0x4 | 0x30000), img[77] = 1, put_le32(img + 4, 3);
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
