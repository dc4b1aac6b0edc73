/* Fuzz target: arbitrary bytes as a cloop image. Opened read-write (must
 * be refused), then read-only: read every byte of the disk, map it (the
 * scaffold: fuzz-image.c). Inputs without the cloop preamble get one, with
 * 4 KiB blocks: by the first byte either the input as the block count,
 * offset table and data (mutations reach the table checks), or the input
 * cut into blocks each zlib-compressed behind a valid table, the first
 * block's stream then damaged by the input's second byte (mutations reach
 * inflate). */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char magic[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

static void compressed_blocks(FILE *f, const uint8_t *data, size_t size)
{
    enum { BS = 4096 };
    uint32_t nb = (uint32_t)((size + BS - 1) / BS);
    uint8_t *blk = calloc(1, BS);
    uint8_t **z = calloc(nb, sizeof(*z));
    uLongf *zl = calloc(nb, sizeof(*zl));
    uint8_t w[8];
    fuzz_put_be(w, nb, 4);
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
        fuzz_put_be(w, off, 8);
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

static bool cloop_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    if (size >= sizeof(magic) - 1 && !memcmp(data, magic, sizeof(magic) - 1)) {
        fwrite(data, 1, size, f);
        return true;
    }
    uint8_t h[128] = {0};
    memcpy(h, magic, sizeof(magic) - 1);
    fwrite(h, 1, sizeof(h), f);
    uint8_t bs[4];
    fuzz_put_be(bs, 4096, 4);
    fwrite(bs, 1, 4, f);
    if (size < 2 || !(data[0] & 1))
        fwrite(data, 1, size, f);
    else
        compressed_blocks(f, data, size);
    return true;
}

static const struct fuzz_image cloop = {
    .driver = "cloop",
    .read_only = true,
    .unaligned_read = true,
    .synth = cloop_synth,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&cloop, data, size);
}
