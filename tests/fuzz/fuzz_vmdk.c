/* Fuzz target: arbitrary bytes as a VMDK image or descriptor file. Open it
 * read-only, read every byte of the disk, map it and run check; then open
 * it read-write, write across grain boundaries (allocating grains and
 * grain tables) and read back: each step must fail cleanly or succeed,
 * never crash, never touch memory out of bounds (the scaffold: fuzz-image.c). The file lives alone in
 * a private directory, with one flat extent file beside it, so extent
 * lines can name only those (anything else is refused as an escape).
 * An input with the sparse magic or a descriptor's "#"/"version=" start is
 * used as it is; any other gets a valid small sparse header (4 KiB grains,
 * 64-entry tables, four of them): its first byte chooses whether the
 * next bytes overwrite one header field, or its bytes become grain
 * table entries (mostly valid, some zeroed, some past the end, some
 * compressed-stream flags), the rest grain data. */
#include "fuzz-image.h"

#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GRAIN 4096u
#define CAP_SECTORS 2048u /* 1 MiB */
#define GTES 64u
#define GRAIN_SECTOR 8u

static void vmdk_inspect(struct fuzz_job *j, struct vbd_node *n)
{
    (void)j;
    struct vbd_image_info info = {0};
    struct vbd_error *err = NULL;
    if (vbd_node_get_info(n, &info, &err) == 0)
        json_object_put(info.format_specific);
    vbd_error_free(err);
}

static void vmdk_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_RDWR);
    if (n) {
        static const uint64_t offs[] = {GRAIN - 1000, 300 * (uint64_t)GRAIN + 7, 100, (uint64_t)GTES * GRAIN - 10};
        fuzz_image_write_back(j, n, offs, sizeof(offs) / sizeof(offs[0]), 9000, GRAIN);
        fuzz_image_unref_compare(j, n);
    }
}

static bool vmdk_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    char flat[128];
    snprintf(flat, sizeof(flat), "%s/x-flat.vmdk", j->dir);
    FILE *ff = fopen(flat, "wb");
    if (!ff)
        return false;
    fclose(ff);
    if (truncate(flat, 65536) < 0)
        return false;
    bool raw = size >= 4 && (!memcmp(data, "KDMV", 4) || !memcmp(data, "COWD", 4) || data[0] == '#' ||
                             !memcmp(data, "vers", 4));
    if (raw) {
        fwrite(data, 1, size, f);
    } else {
        /* header, descriptor (sector 1), GD (sector 2), four GTs (sectors 3-6), grains from sector 8 */
        static uint8_t img[GRAIN_SECTOR * 512];
        memset(img, 0, sizeof(img));
        memcpy(img, "KDMV", 4);
        put_le32p(img + 4, 2);
        put_le32p(img + 8, 0x3 | 0x4);
        put_le64p(img + 12, CAP_SECTORS);
        put_le64p(img + 20, GRAIN / 512);
        put_le64p(img + 28, 1);
        put_le64p(img + 36, 1);
        put_le32p(img + 44, GTES);
        put_le64p(img + 48, 2); /* the redundant GD is the same table: writes keep both in step */
        put_le64p(img + 56, 2);
        put_le64p(img + 64, GRAIN_SECTOR);
        const char *desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                           "createType=\"monolithicSparse\"\n";
        memcpy(img + 512, desc, strlen(desc));
        for (uint32_t i = 0; i < 4; i++)
            put_le32p(img + 1024 + 4 * i, 3 + i);
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
                put_le32p(img + 3 * 512 + 4 * (i / GTES) * 128 + 4 * (i % GTES), e);
            }
            if (data[0] & 2) /* a compressed stream: grains are markers and deflate data */
                put_le32p(img + 8, 0x3 | 0x4 | 0x30000), img[77] = 1, put_le32p(img + 4, 3);
            used++;
        }
        fwrite(img, 1, sizeof(img), f);
        fwrite(data + used, 1, size - used, f);
    }
    return true;
}

static const struct fuzz_image vmdk = {
    .driver = "vmdk",
    .max_read = 16u << 20,
    .check = true,
    .quiet_check = true,
    .private_dir = true,
    .synth = vmdk_synth,
    .inspect = vmdk_inspect,
    .after = vmdk_after,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&vmdk, data, size);
}
