/* Fuzz target: arbitrary bytes as a dmg (UDIF) image. Opened read-write
 * (must be refused), then read-only: read every byte of the disk, map it
 * (the scaffold: fuzz-image.c). Inputs without a "koly" trailer become an
 * image whose data fork is the input and whose one mish block (in the
 * resource fork, or base64 in an XML plist, by the first byte) has the
 * input as its chunk entries: mutations reach the chunk table checks and
 * the zlib and bzip2 decoders. */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

static bool dmg_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    if (size >= 512 && !memcmp(data + size - 512, "koly", 4)) {
        fwrite(data, 1, size, f);
        return true;
    }
    fwrite(data, 1, size, f); /* the data fork */
    uint8_t m[204] = {0};
    memcpy(m, "mish", 4);
    fuzz_put_be(m + 4, 1, 4);
    fuzz_put_be(m + 0x10, 4096, 8);
    fuzz_put_be(m + 200, (uint32_t)(size / 40), 4);
    uint8_t k[512] = {0};
    memcpy(k, "koly", 4);
    fuzz_put_be(k + 4, 4, 4);
    fuzz_put_be(k + 8, 512, 4);
    fuzz_put_be(k + 0x20, size, 8);
    fuzz_put_be(k + 0x1ec, 4096, 8);
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
        fuzz_put_be(k + 0xd8, meta, 8);
        fuzz_put_be(k + 0xe0, (uint64_t)(ftell(f) - a), 8);
    } else {
        uint8_t r[260] = {0};
        uint64_t len = 204 + size;
        fuzz_put_be(r, 256, 4);
        fuzz_put_be(r + 8, len + 4, 4);
        fuzz_put_be(r + 256, len, 4);
        fwrite(r, 1, sizeof(r), f);
        fwrite(m, 1, sizeof(m), f);
        fwrite(data, 1, size, f);
        fuzz_put_be(k + 0x28, meta, 8);
        fuzz_put_be(k + 0x30, 260 + len, 8);
    }
    fwrite(k, 1, sizeof(k), f);
    return true;
}

static const struct fuzz_image dmg = {
    .driver = "dmg",
    .read_only = true,
    .unaligned_read = true,
    .synth = dmg_synth,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&dmg, data, size);
}
