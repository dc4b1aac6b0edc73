/* SPDX-License-Identifier: MIT */
/*
 * vbd-img compare.
 */
#include "img.h"

/* First non-zero 512-byte sector of buf, or -1. */
static int64_t first_nonzero_sector(const uint8_t *buf, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 512) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if (!vbd_buffer_is_zero(buf + i, l))
            return (int64_t)i;
    }
    return -1;
}

static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    if (!memcmp(a, b, len)) /* the common case in one call; the sector only on a mismatch */
        return -1;
    for (uint64_t i = 0; i < len; i += 512) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if (memcmp(a + i, b + i, l))
            return (int64_t)i;
    }
    return -1;
}

/* Is the range [off, off+len) known to read as zeroes (without reading)? */
static int known_zero(struct vbd_node *n, uint64_t off, uint64_t len, uint64_t *pnum)
{
    int st = vbd_node_co_block_status_above(n, NULL, true, off, len, pnum, NULL, NULL, NULL);
    if (st < 0)
        return st;
    return (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED) ? 1 : 0;
}

int verb_compare(int argc, char **argv)
{
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = "writeback";
    bool strict = false, quiet = false, progress = false, force = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt1 = optarg; break;
        case 'F': fmt2 = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 's': strict = true; break;
        case 'U': force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img compare [-f fmt] [-F fmt] [-T cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
                   "Exit 0 if the images have the same content, 1 if they differ, 2 on error.\n"
                   "  -s  strict: also a different size or allocation counts as a difference\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 2)
        return img_usage_error("Expecting two image file names");
    /* qemu-img's progress (2-point steps, none with -q): once the images
     * are open it starts at 0, and from here every exit ends its line */
    bool show_progress = progress && !quiet;
    if (show_progress)
        tool_progress_init(2);
    /* -T checked before the opens, in qemu-img's words (exit 2) */
    enum vbd_cache_mode src_mode;
    if (vbd_cache_mode_parse(cache, &src_mode) < 0) {
        vbd_error_report("Invalid source cache option: %s", cache);
        if (show_progress)
            tool_progress_finish(false);
        return 2;
    }
    unsigned fl = force ? VBD_OPEN_FORCE_SHARE : 0;
    struct vbd_node *a = tool_open(argv[optind], fmt1, image_opts, fl, cache, NULL), *b = NULL;
    if (a)
        b = tool_open(argv[optind + 1], fmt2, image_opts, fl, cache, NULL);
    if (!b) {
        if (a)
            vbd_node_unref(a);
        if (show_progress)
            tool_progress_finish(false);
        return 2;
    }
    uint64_t common = a->size < b->size ? a->size : b->size, progress_base = a->size > b->size ? a->size : b->size;
    uint8_t *ba = vbd_alloc_aligned(4096, 2 * MIB), *bb = vbd_alloc_aligned(4096, 2 * MIB);
    int rc = 0;
    int64_t mismatch = -1;
    if (show_progress)
        tool_progress_step(0);
    if (strict && a->size != b->size) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        rc = 1;
        goto out;
    }
    /* qemu-img's steps, which its progress counts: each the extent both
     * images' block status describes (from the offset to each one's end),
     * at most 2 MiB where one holds data */
    for (uint64_t off = 0; off < common;) {
        uint64_t pa, pb;
        int za = known_zero(a, off, a->size - off, &pa), zb = known_zero(b, off, b->size - off, &pb);
        if (za < 0 || zb < 0) {
            vbd_error_report("error while reading block status: %s", strerror(-(za < 0 ? za : zb)));
            rc = 2;
            goto out;
        }
        uint64_t step = pa < pb ? pa : pb;
        if (step > common - off)
            step = common - off;
        if (!(za && zb) && step > 2 * MIB)
            step = 2 * MIB;
        if (strict) {
            uint64_t p1, p2;
            /* whole remaining range, as qemu-img asks: the EOF bit counts */
            int s1 = vbd_node_co_block_status_above(a, NULL, true, off, a->size - off, &p1, NULL, NULL, NULL);
            int s2 = vbd_node_co_block_status_above(b, NULL, true, off, b->size - off, &p2, NULL, NULL, NULL);
            unsigned m = VBD_BS_ALLOCATED | VBD_BS_DATA | VBD_BS_ZERO | VBD_BS_EOF; /* as qemu-img -s */
            if (s1 >= 0 && s2 >= 0 && ((s1 ^ s2) & m)) {
                if (!quiet)
                    printf("Strict mode: Offset %llu block status mismatch!\n", (unsigned long long)off);
                rc = 1;
                goto out;
            }
            step = step < p1 ? step : p1;
            step = step < p2 ? step : p2;
        }
        if (!(za && zb)) {
            /* one side known to read as zeroes: only the other is read, and
             * looked at for its first sector that is not zero (qemu-img
             * reads that side alone too) */
            int r1 = za ? 0 : img_pread(a, off, ba, step), r2 = r1 < 0 || zb ? 0 : img_pread(b, off, bb, step);
            if (r1 < 0 || r2 < 0) {
                vbd_error_report("error while reading offset %llu of %s: %s", (unsigned long long)off,
                                 r1 < 0 ? argv[optind] : argv[optind + 1], strerror(-(r1 < 0 ? r1 : r2)));
                rc = 2;
                goto out;
            }
            int64_t d = za ? first_nonzero_sector(bb, step) : zb ? first_nonzero_sector(ba, step) : first_diff_sector(ba, bb, step);
            if (d >= 0) {
                mismatch = off + d;
                break;
            }
        }
        off += step;
        if (show_progress)
            tool_progress_add((float)step / progress_base * 100);
    }
    if (mismatch < 0 && a->size != b->size) {
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
        /* The longer image's tail must read as zeroes. */
        struct vbd_node *big = a->size > b->size ? a : b;
        for (uint64_t off = common; off < big->size;) {
            uint64_t p;
            int z = known_zero(big, off, big->size - off, &p);
            if (z < 0) {
                rc = 2;
                goto out;
            }
            if (!z) {
                if (p > 2 * MIB)
                    p = 2 * MIB;
                if (img_pread(big, off, ba, p) < 0) {
                    rc = 2;
                    goto out;
                }
                int64_t d = first_nonzero_sector(ba, p);
                if (d >= 0) {
                    mismatch = off + d;
                    break;
                }
            }
            off += p;
            if (show_progress)
                tool_progress_add((float)p / progress_base * 100);
        }
    }
    if (mismatch >= 0) {
        if (!quiet)
            printf("Content mismatch at offset %lld!\n", (long long)mismatch);
        rc = 1;
    } else if (!quiet) {
        printf("Images are identical.\n");
    }
out:
    if (show_progress)
        tool_progress_finish(false);
    free(ba);
    free(bb);
    vbd_node_unref(a);
    vbd_node_unref(b);
    return rc;
}
