/* Fuzz target: arbitrary bytes as a parallels image file. Opened read-only
 * (for check): every byte read, mapped, checked (the scaffold:
 * fuzz-image.c); then opened read-write: writes that allocate clusters
 * (on an image check finds clean, nothing else may change, before and
 * after a reopen: fuzz_image_write_isolated), a close; then checked with
 * repair. Inputs without a parallels
 * magic get a valid header (4 KiB clusters, 256 KiB disk) in front, so
 * that they become the BAT and the data. */
#include "fuzz-image.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parallels_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_RDWR);
    if (n && j->tag && n->size) {
        /* allocation writes a whole cluster: write only when they are
         * small. On an image check finds clean, nothing but the written
         * bytes may change, before and after a reopen. */
        const uint64_t offs[] = {0, 5000, n->size / 2, n->size - 1};
        fuzz_image_write_isolated(j, n, offs, sizeof(offs) / sizeof(offs[0]), 9000, true);
    } else if (n) {
        vbd_node_unref(n);
    }
    n = fuzz_image_open(j, VBD_OPEN_RDWR | VBD_OPEN_CHECK);
    if (n) {
        fuzz_image_check(j, n, VBD_CHECK_FIX_ERRORS | VBD_CHECK_FIX_LEAKS);
        vbd_node_unref(n);
    }
}

static bool parallels_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    static const uint8_t hdr[64] = {
        'W', 'i', 't', 'h', 'o', 'u', 'F', 'r', 'e', 'S', 'p', 'a', 'c', 'E', 'x', 't',
        2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, /* version 2, 16 heads, 8 sectors a cluster */
        64, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,             /* 64 BAT entries, 512 sectors */
        0, 0, 0, 0, 1, 0, 0, 0,                          /* not in use, data at sector 1 */
    };
    j->tag = 1;
    if (size < 16 || (memcmp(data, "WithouFreSpacExt", 16) && memcmp(data, "WithoutFreeSpace", 16)))
        fwrite(hdr, 1, sizeof(hdr), f);
    else
        j->tag = size >= 32 && data[30] == 0 && data[31] == 0 && data[29] < 8; /* tracks < 2048: < 1 MiB */
    fwrite(data, 1, size, f);
    return true;
}

static const struct fuzz_image parallels = {
    .driver = "parallels",
    .check = true,
    .synth = parallels_synth,
    .after = parallels_after,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&parallels, data, size);
}
