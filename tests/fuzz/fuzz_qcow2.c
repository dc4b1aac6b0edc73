/* Fuzz target: arbitrary bytes as a qcow2 image file. Open it (read-only),
 * read every byte of the disk, map it, list snapshots and run check (the
 * scaffold: fuzz-image.c). Inputs shorter than a header get a valid 64
 * KiB-cluster header prefix so that mutations reach the tables. */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void qcow2_inspect(struct fuzz_job *j, struct vbd_node *n)
{
    (void)j;
    struct vbd_snapshot_info *sn = NULL;
    if (n->drv->snapshot_list && n->drv->snapshot_list(n, &sn) >= 0)
        free(sn);
}

static bool qcow2_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    /* a valid v3 header (64 KiB clusters, 16 MiB disk) under the input when it is short */
    static const uint8_t hdr[112] = {
        'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, /* version 3, no backing */
        0, 0, 0, 0, 0, 0, 0, 16,                                 /* cluster_bits 16 */
        0, 0, 0, 0, 1, 0, 0, 0,                                  /* size 16 MiB */
        0, 0, 0, 0, 0, 0, 0, 1,                                  /* crypt 0, l1_size 1 */
        0, 0, 0, 0, 0, 3, 0, 0,                                  /* l1 at 0x30000 */
        0, 0, 0, 0, 0, 1, 0, 0,                                  /* reftable at 0x10000 */
        0, 0, 0, 1, 0, 0, 0, 0,                                  /* 1 cluster, 0 snapshots */
        0, 0, 0, 0, 0, 0, 0, 0,                                  /* snapshots offset */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,          /* incompat, compat */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 112,        /* autoclear, refcount_order 4, hlen */
    };
    if (size < sizeof(hdr) || memcmp(data, "QFI\xfb", 4)) {
        fwrite(hdr, 1, sizeof(hdr), f);
        fseek(f, 4 * 65536 - 1, SEEK_SET);
        fputc(0, f);
        fseek(f, 0x30000, SEEK_SET); /* the input becomes the L1 table and what follows */
    }
    fwrite(data, 1, size, f);
    return true;
}

static const struct fuzz_image qcow2 = {
    .driver = "qcow2",
    .l2_cache_size = "256k",
    .no_backing = true,
    .check = true,
    .synth = qcow2_synth,
    .inspect = qcow2_inspect,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&qcow2, data, size);
}
