/* Fuzz target: arbitrary bytes as a Bochs growing image. Opened
 * read-write (must be refused), then read-only: read every byte of the
 * disk, map it (the scaffold: fuzz-image.c). Inputs without the Bochs
 * header get a valid one (v1 or v2 by the first byte; 64 extents of 4 KiB)
 * in front, so that mutations reach the catalog, the bitmaps and the
 * sectors. */
#include "fuzz-image.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool bochs_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    if (size < 512 || memcmp(data, "Bochs Virtual HD Image", 22)) {
        uint8_t h[512] = {0};
        bool v1 = size && (data[0] & 1);
        memcpy(h, "Bochs Virtual HD Image", 22);
        memcpy(h + 32, "Redolog", 7);
        memcpy(h + 48, "Growing", 7);
        uint32_t w[5] = {v1 ? 0x10000u : 0x20000u, 512, 64, 512, 4096};
        for (int i = 0; i < 5; i++)
            put_le32p(h + 64 + 4 * i, w[i]);
        put_le64p(h + (v1 ? 84 : 88), 64 * 4096);
        fwrite(h, 1, sizeof(h), f);
    }
    fwrite(data, 1, size, f);
    return true;
}

static const struct fuzz_image bochs = {
    .driver = "bochs",
    .read_only = true,
    .unaligned_read = true,
    .synth = bochs_synth,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&bochs, data, size);
}
