/* Fuzz target: arbitrary bytes as a qed image file. Open it read-only,
 * read every byte of the disk, map it and run check (the scaffold:
 * fuzz-image.c); then open it read-write (a set need-check flag repairs the
 * tables first) and write across a few clusters: on an image its check
 * finds clean, nothing but the written bytes may change, before and after
 * a reopen (fuzz_image_write_isolated). Inputs not starting with
 * the magic get a valid header (4 KiB clusters, one-cluster tables, 16 MiB
 * disk, L1 at 4 KiB whose first entry points at 8 KiB) and become the
 * first L2 table and what follows it. */
#include "fuzz-image.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void qed_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_RDWR | VBD_OPEN_NO_FLUSH); /* no fsync per input */
    if (n) {
        static const uint64_t offs[] = {0, 5000, 8191, 1u << 20, 3u << 21};
        fuzz_image_write_isolated(j, n, offs, sizeof(offs) / sizeof(offs[0]), 9000, true);
    }
}

static bool qed_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    static const uint8_t hdr[64] = {
        'Q', 'E', 'D', 0,                   /* magic */
        0, 0x10, 0, 0, 1, 0, 0, 0,          /* cluster_size 4096, table_size 1 */
        1, 0, 0, 0,                         /* header_size 1 cluster */
        0, 0, 0, 0, 0, 0, 0, 0,             /* features */
        0, 0, 0, 0, 0, 0, 0, 0,             /* compat features */
        0, 0, 0, 0, 0, 0, 0, 0,             /* autoclear features */
        0, 0x10, 0, 0, 0, 0, 0, 0,          /* L1 at 4096 */
        0, 0, 0, 1, 0, 0, 0, 0,             /* image size 16 MiB */
        0, 0, 0, 0, 0, 0, 0, 0,             /* no backing file */
    };
    static const uint8_t l1_entry[8] = {0, 0x20, 0, 0, 0, 0, 0, 0}; /* first L2 table at 8192 */
    bool prefixed = size < sizeof(hdr) || memcmp(data, "QED", 4);
    if (prefixed) {
        fwrite(hdr, 1, sizeof(hdr), f);
        fseek(f, 4096, SEEK_SET);
        fwrite(l1_entry, 1, sizeof(l1_entry), f);
        fseek(f, 8192, SEEK_SET);
    }
    fwrite(data, 1, size, f);
    if (prefixed && size < 4 * 4096) { /* the whole L2 table and a few data clusters inside the file */
        fseek(f, 8192 + 4 * 4096 - 1, SEEK_SET);
        fputc(0, f);
    }
    return true;
}

static const struct fuzz_image qed = {
    .driver = "qed",
    .no_backing = true,
    .check = true,
    .synth = qed_synth,
    .after = qed_after,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&qed, data, size);
}
