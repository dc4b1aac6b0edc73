/* SPDX-License-Identifier: MIT */
/*
 * vbd-img commit.
 */
#include "img.h"

/* The base, read-write. qemu-img has it open already (read-only, in the
 * chain) and asks for write permission: a lock another process holds is
 * worded without "Could not open" (a read-only holder's lock) */
static struct vbd_node *open_base(const char *path, const char *fmt)
{
    struct json_object *opts = NULL;
    struct vbd_error *err = NULL;
    const char *filename = path;
    bool unknown = false;
    if (!tool_open_options(&filename, fmt, false, "file", &opts, &unknown, &err))
        return tool_open(path, fmt, false, VBD_OPEN_RDWR | VBD_OPEN_INLINE_WRITES, NULL, NULL); /* its words for the options */
    struct vbd_node *n = vbd_open(filename, opts, VBD_OPEN_RDWR | VBD_OPEN_INLINE_WRITES, &err);
    if (!n && err && strstr(err->msg, " lock: Is another process using the image [")) {
        tool_report_text(err->msg);
        vbd_error_free(err);
    } else if (!n) {
        tool_report_open(path, err);
    }
    return n;
}

int verb_commit(int argc, char **argv)
{
    const char *fmt = NULL, *base_name = NULL, *cache = NULL;
    bool drop = false, progress = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:t:b:dpqr:", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case 'b': base_name = optarg; break;
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        /* vbd commits with its own cache mode and unthrottled, but a wrong
         * -t or -r is refused as qemu-img refuses it */
        case 't': cache = optarg; break;
        case 'r':
            if (img_cvtnum("rate limit", optarg, 0, INT64_MAX) < 0)
                return 1;
            break;
        case 'h':
            printf("Usage: vbd-img commit [-q] [-f fmt] [-b base] [-d] [-p] filename\n"
                   "Write the image's own data into its backing file (or BASE further down the chain);\n"
                   "then empty the image unless -d.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return 1;
    }
    unsigned cache_flags = 0;
    if (tool_cache_flags(cache, &cache_flags, NULL) < 0)
        return 1;
    /* qemu-img opens the whole chain first, as it opens it (the top
     * read-write, the chain below read-only, with their locks): a chain
     * that cannot be opened (a member missing, a loop, a layer another
     * process writes: "Could not open backing file: Failed to get shared
     * "write" lock") is refused in its words, naming the top. Closed again
     * at once: the opens below are the ones that work. */
    struct vbd_node *chain = tool_open(argv[optind], fmt, image_opts,
                                       VBD_OPEN_RDWR | VBD_OPEN_NO_IO, NULL, NULL);
    if (!chain)
        return 1;
    /* an image without a backing file is refused here, before the second
     * open (a probed raw image's warning is printed once, as qemu-img's) */
    bool has_backing = vbd_node_skip_filters(chain)->backing_file[0];
    vbd_node_unref(chain);
    /* qemu-img's progress starts once the image is open: a commit that
     * fails from here has printed its 0% and ends the line */
    bool show_progress = progress && !quiet;
    if (show_progress)
        tool_progress(0);
    if (!has_backing) {
        if (show_progress)
            printf("\n");
        /* qemu-img looks for -b's image first, then for any backing file */
        if (base_name)
            vbd_error_report("Did not find '%s' in the backing chain of '%s'", base_name, argv[optind]);
        else
            vbd_error_report("Image does not have a backing file");
        return 1;
    }
    /* The top is opened without its chain, then the chain read-write: a
     * read-only backing child would hold the lock that forbids writers. */
    struct vbd_node *top = tool_open(argv[optind], fmt, image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!top) {
        if (show_progress)
            printf("\n");
        return 1;
    }
    struct vbd_node *img = vbd_node_skip_filters(top);
    int rc = 1;
    struct vbd_node *base = NULL, *layers[64];
    int nlayers = 1;
    layers[0] = img;
    if (!img->backing_file[0]) {
        vbd_error_report("Image does not have a backing file");
        goto out;
    }
    /* walk down: every image above the base is opened on its own (no chain),
     * read-only; the base read-write */
    for (;;) {
        struct vbd_node *cur = layers[nlayers - 1];
        if (!cur->backing_file[0]) {
            vbd_error_report("Did not find '%s' in the backing chain of '%s'", base_name, argv[optind]);
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
            base = open_base(path, bfmt);
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
    /* an all-zero chunk of the top becomes a write-zeroes request on the base */
    /* one chunk at a time: the top's page-cache reads are copied on this
     * thread, as the base's writes are (open_base) */
    struct vbd_copy_opts copy = {.zero_detect = VBD_IMAGEOPS_CHUNK_DEFAULT, .read_flags = VBD_REQ_INLINE};
    struct vbd_imageops_ctl ctl = {.chunk_done = show_progress ? img_print_progress : NULL};
    struct vbd_error *err = NULL;
    if (vbd_co_commit_layers(layers, nlayers, base, &copy, &ctl, &err) < 0) {
        tool_report(err);
        goto out;
    }
    if (show_progress) {
        tool_progress_end();
        show_progress = false; /* the line is ended */
    }
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
    if (show_progress)
        printf("\n");
    if (base)
        vbd_node_unref(base);
    for (int i = 1; i < nlayers; i++)
        vbd_node_unref(layers[i]);
    vbd_node_unref(top);
    return rc;
}
