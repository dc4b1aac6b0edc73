/* Fuzz target: arbitrary bytes as a VHD (vpc) image file. Open it
 * read-write, read every byte of the disk, map it, write a few sectors
 * (allocating blocks) and read them back (the scaffold: fuzz-image.c);
 * closed and reopened read-only, the image must read as it did (the
 * scaffold's persist). Inputs that do not start with a footer get a valid
 * dynamic footer and header (16 MiB, 2 MiB blocks) in front, so that
 * mutations reach the BAT and the blocks; checksums of inputs that do are
 * fixed unless their in_saved_state byte is set, so that mutations get
 * past them. An input whose first byte ends in binary 11 makes that
 * wrapper a differencing image whose parent locator entries are the
 * input's first bytes too; differencing images are opened read-only. */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fix_checksum(uint8_t *p, size_t len, size_t at)
{
    uint32_t sum = 0;
    fuzz_put_be(p + at, 0, 4);
    for (size_t i = 0; i < len; i++)
        sum += p[i];
    fuzz_put_be(p + at, ~sum, 4);
}

static void vpc_inspect(struct fuzz_job *j, struct vbd_node *n)
{
    if (j->tag) /* a differencing image: opened read-only, without its parent */
        return;
    static const uint64_t offs[] = {1000, (3u << 20) + 1000, (6u << 20) + 1000, (9u << 20) + 1000,
                                    (12u << 20) + 1000, (15u << 20) + 1000};
    fuzz_image_write_back(j, n, offs, sizeof(offs) / sizeof(offs[0]), 5000, 0);
}

static bool vpc_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    bool diff = false;
    if (size < 1536 || memcmp(data, "conectix", 8)) {
        uint8_t hdr[1536] = {0};
        diff = size && (data[0] & 3) == 3;
        memcpy(hdr, "conectix", 8);
        fuzz_put_be(hdr + 8, 2, 4);
        fuzz_put_be(hdr + 12, 0x00010000, 4);
        fuzz_put_be(hdr + 16, 512, 8);          /* dynamic header right after */
        memcpy(hdr + 28, "qem2", 4);            /* size from current_size */
        fuzz_put_be(hdr + 40, 16u << 20, 8);
        fuzz_put_be(hdr + 48, 16u << 20, 8);
        fuzz_put_be(hdr + 56, 0xffff10ffu, 4);  /* CHS maximum */
        fuzz_put_be(hdr + 60, diff ? 4 : 3, 4); /* differencing or dynamic */
        fix_checksum(hdr, 512, 64);
        uint8_t *d = hdr + 512;
        memcpy(d, "cxsparse", 8);
        fuzz_put_be(d + 8, UINT64_MAX, 8);
        fuzz_put_be(d + 16, 1536, 8);           /* the input is the BAT and what follows */
        fuzz_put_be(d + 24, 0x00010000, 4);
        fuzz_put_be(d + 28, 8, 4);
        fuzz_put_be(d + 32, 2u << 20, 4);
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
    j->tag = diff;
    j->open_flags = diff ? 0 : VBD_OPEN_RDWR;
    return true;
}

static const struct fuzz_image vpc = {
    .driver = "vpc",
    .persist = true, /* the writes' BAT and bitmaps are on disk as in memory */
    .synth = vpc_synth,
    .inspect = vpc_inspect,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&vpc, data, size);
}
