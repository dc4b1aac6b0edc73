/* Fuzz target: arbitrary bytes as a VDI image file. Open it read-only, read
 * every byte of the disk, map it and run check; then open it read-write,
 * write across block boundaries (allocating blocks) and read back (the
 * scaffold: fuzz-image.c); on an image its check finds clean nothing but
 * the written bytes may change, before and after a reopen. An input without the VDI signature gets a valid
 * header: its first byte chooses whether the input's next 64 bytes
 * overwrite the header's offsets and counts, or its bytes become block map
 * entries (mostly valid, distinct indexes, so that allocated blocks are
 * reached; sometimes a duplicate or one past the end), the rest data. */
#include "fuzz-image.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BLOCKS 8u
#define BLOCK (1u << 20)

static void vdi_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_RDWR);
    if (n) {
        static const uint64_t offs[] = {BLOCK - 1000, 3 * (uint64_t)BLOCK + 7, 100};
        fuzz_image_write_isolated(j, n, offs, sizeof(offs) / sizeof(offs[0]), 5000, true);
    }
}

static bool vdi_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    if (size >= 0x44 && data[0x40] == 0x7f && data[0x41] == 0x10 && data[0x42] == 0xda && data[0x43] == 0xbe) {
        fwrite(data, 1, size, f);
        return true;
    }
    /* a dynamic 64 MiB image: header, block map at 512, data at 1024 */
    static uint8_t img[1024];
    memset(img, 0, sizeof(img));
    put_le32p(img + 0x40, 0xbeda107f);
    put_le32p(img + 0x44, 0x00010001);
    put_le32p(img + 0x48, 0x180);
    put_le32p(img + 0x4c, 1);
    put_le32p(img + 0x154, 512);
    put_le32p(img + 0x158, 1024);
    put_le32p(img + 0x168, 512);
    put_le32p(img + 0x170, BLOCKS * BLOCK);
    put_le32p(img + 0x178, BLOCK);
    put_le32p(img + 0x180, BLOCKS);
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
            put_le32p(img + 512 + 4 * i, e);
        }
        put_le32p(img + 0x184, allocated > BLOCKS ? BLOCKS : allocated);
        used++;
    }
    fwrite(img, 1, sizeof(img), f);
    fwrite(data + used, 1, size - used, f);
    return true;
}

static const struct fuzz_image vdi = {
    .driver = "vdi",
    .check = true,
    .synth = vdi_synth,
    .after = vdi_after,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&vdi, data, size);
}
