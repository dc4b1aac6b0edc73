/* SPDX-License-Identifier: MIT */
/*
 * vbd-img rebase.
 */
#include "img.h"

/* Do a and b differ in their first 512-byte sector; *run: how far that stays so, in whole sectors. */
static bool sector_run(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t *run)
{
    uint64_t i = len < 512 ? len : 512;
    bool differ = memcmp(a, b, i) != 0;
    while (i < len) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if ((memcmp(a + i, b + i, l) != 0) != differ)
            break;
        i += l;
    }
    *run = i;
    return differ;
}

int verb_rebase(int argc, char **argv)
{
    const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL;
    bool unsafe = false, progress = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:F:b:upt:T:qU", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': case 'T': case 'U': break;
        case 'h':
            printf("Usage: vbd-img rebase [-q] [-f fmt] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
                   "Change the backing file. Safe mode (default) first copies into the image every range where the\n"
                   "old and the new backing differ, so the guest-visible content stays the same; -u only rewrites the header.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1 || !backing) {
        vbd_error_report(backing ? "Expecting one image file name" : "Must specify backing file (-b) or use unsafe mode (-u)");
        return 1;
    }
    struct vbd_node *top = tool_open(argv[optind], fmt_or_null(fmt), image_opts,
                                     VBD_OPEN_RDWR | (unsafe ? VBD_OPEN_NO_BACKING : 0), NULL, NULL);
    if (!top)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(top);
    struct vbd_node *nb = NULL;
    uint8_t *b1 = NULL, *b2 = NULL;
    int rc = 1;
    if (!img->drv->change_backing_file) {
        vbd_error_report("Could not change the backing file to '%s': Operation not supported", backing);
        goto out;
    }
    if (!unsafe && *backing) {
        char path[4096], dir[4096];
        snprintf(dir, sizeof(dir), "%s", img->file ? img->file->filename : img->filename);
        char *slash = strrchr(dir, '/');
        if (backing[0] == '/' || !slash)
            snprintf(path, sizeof(path), "%s", backing);
        else {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%s", dir, backing);
        }
        nb = tool_open(path, fmt_or_null(backing_fmt), false, 0, NULL, NULL);
        if (!nb)
            goto out;
    }
    if (!unsafe) {
        b1 = vbd_alloc_aligned(4096, 2 * MIB);
        b2 = vbd_alloc_aligned(4096, 2 * MIB);
        for (uint64_t off = 0; off < img->size;) {
            uint64_t pnum;
            int st = vbd_node_co_block_status(img, false, off, img->size - off, &pnum, NULL, NULL);
            if (st < 0 || pnum == 0) {
                vbd_error_report("error while reading image metadata: %s", strerror(st < 0 ? -st : EIO));
                goto out;
            }
            if (pnum > 2 * MIB)
                pnum = 2 * MIB;
            if (!(st & VBD_BS_ALLOCATED)) {
                /* old view: the current backing chain; new view: nb (zeroes past its end or if none) */
                /* both read as zeroes past their ends */
                struct vbd_node *ob = img->backing;
                int r = 0;
                memset(b1, 0, pnum);
                if (ob && off < ob->size)
                    r = vbd_node_co_pread(ob, off, b1, off + pnum > ob->size ? ob->size - off : pnum);
                memset(b2, 0, pnum);
                if (r == 0 && nb && off < nb->size)
                    r = vbd_node_co_pread(nb, off, b2, off + pnum > nb->size ? nb->size - off : pnum);
                if (r < 0) {
                    vbd_error_report("error while reading: %s", strerror(-r));
                    goto out;
                }
                /* as qemu-img: only the 512-byte sectors where the two differ get the old data */
                for (uint64_t pos = 0; pos < pnum;) {
                    uint64_t run;
                    bool differ = sector_run(b1 + pos, b2 + pos, pnum - pos, &run);
                    if (differ && (r = vbd_node_co_pwrite(img, off + pos, b1 + pos, run, 0)) < 0) {
                        vbd_error_report("error while writing: %s", strerror(-r));
                        goto out;
                    }
                    pos += run;
                }
            }
            off += pnum;
            if (progress && !quiet)
                tool_progress(100.0 * off / img->size);
        }
        if (progress && !quiet)
            tool_progress_end();
    }
    struct vbd_error *err = NULL;
    if (img->drv->change_backing_file(img, backing, backing_fmt ? backing_fmt : (nb ? nb->drv->name : NULL), &err) < 0) {
        vbd_error_report("Could not change the backing file to '%s': %s", backing, err ? err->msg : "failed");
        vbd_error_free(err);
        goto out;
    }
    rc = 0;
out:
    free(b1);
    free(b2);
    if (nb)
        vbd_node_unref(nb);
    vbd_node_unref(top);
    return rc;
}
