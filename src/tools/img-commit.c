/* SPDX-License-Identifier: MIT */
/*
 * vbd-img commit.
 */
#include "img.h"

static int copy_range(struct vbd_node *from, struct vbd_node *to, uint64_t off, uint64_t len, uint8_t *buf)
{
    while (len) {
        uint64_t l = len < 2 * MIB ? len : 2 * MIB;
        int rc = vbd_node_co_pread(from, off, buf, l);
        if (rc == 0)
            rc = vbd_buffer_is_zero(buf, l) ? vbd_node_co_pwrite_zeroes(to, off, l, 0) : vbd_node_co_pwrite(to, off, buf, l, 0);
        if (rc < 0)
            return rc;
        off += l;
        len -= l;
    }
    return 0;
}

int verb_commit(int argc, char **argv)
{
    const char *fmt = NULL, *base_name = NULL;
    bool drop = false, progress = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:t:b:dpqr:", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'b': base_name = optarg; break;
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': case 'r': break;
        case 'h':
            printf("Usage: vbd-img commit [-q] [-f fmt] [-b base] [-d] [-p] filename\n"
                   "Write the image's own data into its backing file (or BASE further down the chain);\n"
                   "then empty the image unless -d.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    /* The top is opened without its chain, then the chain read-write: a
     * read-only backing child would hold the lock that forbids writers. */
    struct vbd_node *top = tool_open(argv[optind], fmt_or_null(fmt), image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!top)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(top);
    int rc = 1;
    struct vbd_node *base = NULL, *layers[64];
    int nlayers = 1;
    layers[0] = img;
    uint8_t *buf = NULL;
    if (!img->backing_file[0]) {
        vbd_error_report("Image does not have a backing file");
        goto out;
    }
    /* walk down: every image above the base is opened on its own (no chain),
     * read-only; the base read-write */
    for (;;) {
        struct vbd_node *cur = layers[nlayers - 1];
        if (!cur->backing_file[0]) {
            vbd_error_report("Base '%s' not found in the backing chain of '%s'", base_name, argv[optind]);
            goto out;
        }
        char path[4096], dir[4096];
        snprintf(dir, sizeof(dir), "%s", cur->file ? cur->file->filename : cur->filename);
        char *slash = strrchr(dir, '/');
        if (cur->backing_file[0] == '/' || !slash)
            snprintf(path, sizeof(path), "%s", cur->backing_file);
        else {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%s", dir, cur->backing_file);
        }
        char rp1[PATH_MAX], rp2[PATH_MAX];
        bool is_base = !base_name || !strcmp(base_name, path) || !strcmp(base_name, cur->backing_file) ||
                       (realpath(base_name, rp1) && realpath(path, rp2) && !strcmp(rp1, rp2));
        const char *bfmt = cur->backing_format[0] ? cur->backing_format : NULL;
        if (is_base) {
            base = tool_open(path, bfmt, false, VBD_OPEN_RDWR, NULL, NULL);
            if (!base)
                goto out;
            break;
        }
        if (nlayers == 64) {
            vbd_error_report("Backing chain of '%s' is longer than 64 images", argv[optind]);
            goto out;
        }
        layers[nlayers] = tool_open(path, bfmt, false, VBD_OPEN_NO_BACKING, NULL, NULL);
        if (!layers[nlayers])
            goto out;
        nlayers++;
    }
    if (base->size < img->size) {
        struct vbd_error *err = NULL;
        if (vbd_node_co_truncate(base, img->size, false, VBD_PREALLOC_OFF, &err) < 0) {
            tool_report(err);
            goto out;
        }
    }
    buf = vbd_alloc_aligned(4096, 2 * MIB);
    for (uint64_t off = 0; off < img->size;) {
        /* the topmost layer that has the range decides its content */
        uint64_t step = img->size - off;
        for (int i = 0; i < nlayers; i++) {
            struct vbd_node *l = layers[i];
            if (off >= l->size)
                continue;
            uint64_t pnum;
            int st = vbd_node_co_block_status(l, false, off, step < l->size - off ? step : l->size - off, &pnum, NULL, NULL);
            if (st < 0 || pnum == 0) {
                vbd_error_report("Could not read the allocation status at %llu: %s", (unsigned long long)off,
                                 strerror(st < 0 ? -st : EIO));
                goto out;
            }
            if (pnum < step)
                step = pnum;
            if (st & VBD_BS_ALLOCATED) {
                int r = (st & VBD_BS_ZERO) ? vbd_node_co_pwrite_zeroes(base, off, step, 0) : copy_range(l, base, off, step, buf);
                if (r < 0) {
                    vbd_error_report("Block job failed: %s", strerror(-r));
                    goto out;
                }
                break;
            }
        }
        off += step;
        if (progress && !quiet)
            tool_progress(100.0 * off / img->size);
    }
    if (progress && !quiet)
        tool_progress_end();
    if (vbd_node_co_flush(base) < 0) {
        vbd_error_report("Could not flush the base image");
        goto out;
    }
    /* as qemu-img: only a commit into the implicit (direct) backing file empties the image */
    if (!drop && !base_name && img->drv->co_make_empty) {
        int r = img->drv->co_make_empty(img);
        if (r < 0) {
            vbd_error_report("Could not empty %s: %s", argv[optind], strerror(-r));
            goto out;
        }
    }
    if (!quiet)
        printf("Image committed.\n");
    rc = 0;
out:
    free(buf);
    if (base)
        vbd_node_unref(base);
    for (int i = 1; i < nlayers; i++)
        vbd_node_unref(layers[i]);
    vbd_node_unref(top);
    return rc;
}
