/* Fuzz target: arbitrary bytes as a qcow (version 1) image. Opened
 * read-write (must be refused), then read-only: read every byte of the
 * disk, map it (the scaffold: fuzz-image.c). Inputs without the qcow magic
 * get a header with the L1 table right after it: by the first byte either
 * the input's geometry (cluster_bits, l2_bits, size from its first bytes)
 * over the input's bytes as tables and data (mutations reach the table
 * and cluster bounds), or a valid image of 4 KiB clusters whose first
 * cluster is the input deflated, the stream then damaged by the input's
 * second byte (mutations reach inflate). Backing names are never followed. */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void header(FILE *f, uint64_t disk_size, unsigned cluster_bits, unsigned l2_bits)
{
    uint8_t h[48] = {'Q', 'F', 'I', 0xfb};
    fuzz_put_be(h + 4, 1, 4);
    fuzz_put_be(h + 24, disk_size, 8);
    h[32] = (uint8_t)cluster_bits;
    h[33] = (uint8_t)l2_bits;
    fuzz_put_be(h + 40, 48, 8); /* the L1 table */
    fwrite(h, 1, sizeof(h), f);
}

/* 4 KiB clusters, 512-entry L2 tables, a 64 KiB disk: L1 (1 entry) at 48,
 * the L2 table at 4096, the compressed first cluster at 8192. */
static void compressed_image(FILE *f, const uint8_t *data, size_t size)
{
    enum { CS = 4096 };
    uint8_t cluster[CS] = {0}, z[2 * CS], w[8];
    memcpy(cluster, data, size < CS ? size : CS);
    z_stream zs = {0};
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return;
    zs.next_in = cluster;
    zs.avail_in = CS;
    zs.next_out = z;
    zs.avail_out = sizeof(z);
    deflate(&zs, Z_FINISH);
    size_t zl = zs.total_out;
    deflateEnd(&zs);
    if (zl >= CS)
        zl = CS - 1; /* the size field holds cluster_bits bits: a cut stream, which inflate must refuse */
    if (zl > 4 && size > 1)
        z[data[1] % zl] ^= data[1] & 0x80 ? 0 : data[1]; /* often valid, sometimes damaged */
    header(f, 64 << 10, 12, 9);
    fuzz_put_be(w, 4096, 8);
    fwrite(w, 1, 8, f);
    uint8_t pad[4096] = {0};
    fwrite(pad, 1, 4096 - 56, f);
    uint8_t l2[4096] = {0};
    fuzz_put_be(l2, (1ull << 63) | ((uint64_t)zl << (63 - 12)) | 8192, 8);
    fwrite(l2, 1, sizeof(l2), f);
    fwrite(z, 1, zl, f);
}

static bool qcow_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    if (size >= 4 && !memcmp(data, "QFI\xfb", 4)) {
        fwrite(data, 1, size, f);
        return true;
    }
    if (size >= 2 && (data[0] & 1)) {
        compressed_image(f, data, size);
        return true;
    }
    if (size < 4)
        return false;
    /* cluster_bits and l2_bits mostly in range, now and then out of it */
    unsigned cluster_bits = data[1] & 0x80 ? data[1] & 31 : 9 + data[1] % 8;
    unsigned l2_bits = data[2] & 0x80 ? data[2] & 31 : 6 + data[2] % 8;
    header(f, ((uint64_t)data[3] + 1) << 16, cluster_bits, l2_bits);
    fwrite(data + 4, 1, size - 4, f);
    return true;
}

static const struct fuzz_image qcow = {
    .driver = "qcow",
    .read_only = true,
    .unaligned_read = true,
    .no_backing = true,
    .synth = qcow_synth,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&qcow, data, size);
}
