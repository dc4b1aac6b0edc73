/* SPDX-License-Identifier: MIT */
/*
 * vbd-img rebase.
 */
#include "img.h"

/* qemu-img rebase -p: a fixed step for each range of at most 2 MiB the
 * image does not allocate (the ranges it compares), 100 / the number of
 * such ranges the size holds (integer division, as qemu-img's) */
struct rebase_progress {
    struct vbd_imageops_ctl ctl; /* first: the callback gets it */
    float step;
    uint64_t shown;
};

static int rebase_chunk_done(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written)
{
    struct rebase_progress *p = (struct rebase_progress *)ctl;
    (void)off;
    (void)written;
    uint64_t current, total;
    vbd_imageops_progress(ctl, &current, &total);
    if (current != p->shown) {
        p->shown = current;
        tool_progress_add(p->step);
    }
    return 0;
}

/* name, a backing file name as an image records it, as a path from here:
 * relative to the directory of n's file */
static void backing_path(const struct vbd_node *n, const char *name, char *path, size_t len)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", n->file ? n->file->filename : n->filename);
    char *slash = strrchr(dir, '/');
    if (name[0] == '/' || !slash)
        snprintf(path, len, "%s", name);
    else {
        *slash = 0;
        snprintf(path, len, "%s/%s", dir, name);
    }
}

/* The node of img's backing chain (below img) that is the file at path,
 * compared as canonical paths (qemu-img's bdrv_find_backing_image), or
 * NULL */
static struct vbd_node *chain_node_at(struct vbd_node *img, const char *path)
{
    char want[PATH_MAX], have[PATH_MAX], rec[4096];
    if (!realpath(path, want))
        return NULL;
    for (struct vbd_node *n = img; n && n->backing && n->backing_file[0]; n = vbd_node_skip_filters(n->backing)) {
        backing_path(n, n->backing_file, rec, sizeof(rec));
        if (realpath(rec, have) && !strcmp(want, have))
            return n->backing;
    }
    return NULL;
}

int verb_rebase(int argc, char **argv)
{
    const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL, *cache = NULL, *src_cache = NULL;
    bool unsafe = false, progress = false, quiet = false, image_opts = false, force = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'U': force = true; break;
        case 't': cache = optarg; break; /* checked as qemu-img does; vbd's own modes serve */
        case 'T': src_cache = optarg; break;
        case 'h':
            printf("Usage: vbd-img rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
                   "Change the backing file. Safe mode (default) first copies into the image every range where the\n"
                   "old and the new backing differ, so the guest-visible content stays the same; -u only rewrites the header.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    if (!backing && !unsafe)
        return img_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    /* as qemu-img: -u alone removes the backing file; its messages name
     * it '(null)' then (glibc's printf of its NULL name) */
    const char *shown = backing ? backing : "(null)";
    if (!backing)
        backing = "";
    /* qemu-img's progress (2-point steps, none with -q) starts here, and
     * from here every exit ends its line */
    bool show_progress = progress && !quiet;
    if (show_progress) {
        tool_progress_init(2);
        tool_progress_step(0);
    }
    struct vbd_node *top = NULL, *img, *nb = NULL;
    int rc = 1;
    bool changing = false; /* the change of the header was tried */
    unsigned cache_flags = 0;
    enum vbd_cache_mode src_mode;
    if (tool_cache_flags(cache, &cache_flags, NULL) < 0)
        goto out;
    if (src_cache && vbd_cache_mode_parse(src_cache, &src_mode) < 0) {
        vbd_error_report("Invalid source cache option: %s", src_cache);
        goto out;
    }
    top = tool_open(argv[optind], fmt, image_opts, VBD_OPEN_RDWR | (unsafe ? VBD_OPEN_NO_BACKING : 0),
                    NULL, NULL);
    if (!top)
        goto out;
    img = vbd_node_skip_filters(top);
    /* -F names a driver, checked once the image is open (as qemu-img),
     * before either backing file is opened */
    if (backing_fmt && !vbd_driver_find(backing_fmt)) {
        vbd_error_report("Invalid format name: '%s'", backing_fmt);
        goto out;
    }
    char path[4096];
    backing_path(img, backing, path, sizeof(path));
    /* an image already in the chain below is taken as the chain has it,
     * whatever -F says (qemu-img 7.2 does not open it again): the copy
     * compares what the guest sees through that node, and the header gets
     * -F as given */
    if (!unsafe && *backing && (nb = chain_node_at(img, path)))
        vbd_node_ref(nb);
    else if (!unsafe && *backing) {
        struct json_object *o = NULL;
        if (fmt_or_null(backing_fmt)) {
            o = json_object_new_object();
            json_object_object_add(o, "driver", json_object_new_string(backing_fmt));
        }
        struct vbd_error *oerr = NULL;
        /* -U: as qemu-img, the new backing file is read beside its writers */
        nb = vbd_open(path, o, force ? VBD_OPEN_FORCE_SHARE : 0, &oerr);
        if (!nb) {
            char msg[8192], prefix[4200];
            const char *why = oerr ? oerr->msg : "failed";
            /* the message names the file already: vbd_open's "Could not
             * open 'F': " goes, unless it is open(2)'s own (as qemu-img) */
            snprintf(prefix, sizeof(prefix), "Could not open '%s': ", path);
            if (oerr && !tool_is_open_errno(oerr) && !strncmp(why, prefix, strlen(prefix)))
                why += strlen(prefix);
            snprintf(msg, sizeof(msg), "Could not open new backing file '%s': %s", path, why);
            tool_report_text(msg);
            vbd_error_free(oerr);
            goto out;
        }
    }
    if (*backing && !backing_fmt) {
        /* qemu-img 7.2 no longer takes the probed format for the header:
         * refused, before anything is copied */
        vbd_error_report("Could not change the backing file to '%s': backing format must be specified", backing);
        changing = true; /* qemu-img's refusal is its change's (after its copy): 100% printed */
        goto out;
    }
    /* a format without backing files: refused once the new backing file
     * is open and -F checked, as qemu-img (its copy into such an image,
     * every cluster its own, copies nothing) */
    if (!img->drv->change_backing_file) {
        vbd_error_report("Could not change the backing file to '%s': Operation not supported", shown);
        changing = true;
        goto out;
    }
    struct vbd_error *err = NULL;
    if (!unsafe) {
        struct rebase_progress p = {.ctl.chunk_done = show_progress ? rebase_chunk_done : NULL};
        if (img->size)
            p.step = (float)100 / (img->size / (img->size < 2 * MIB ? img->size : 2 * MIB));
        /* one range at a time: the backing files' page-cache reads copied on this thread */
        struct vbd_copy_opts o = {.progress_data_only = true, .read_flags = VBD_REQ_INLINE};
        if (vbd_co_rebase_safe(img, img->backing, nb, &o, &p.ctl, &err) < 0) {
            tool_report(err);
            goto out;
        }
    }
    changing = true;
    if (img->drv->change_backing_file(img, backing, backing_fmt ? backing_fmt : (nb ? nb->drv->name : NULL), &err) < 0) {
        vbd_error_report("Could not change the backing file to '%s': %s", shown, err ? err->msg : "failed");
        vbd_error_free(err);
        goto out;
    }
    rc = 0;
out:
    /* qemu-img prints 100% once it has tried the change, failed or not */
    if (show_progress)
        tool_progress_finish(rc == 0 || changing);
    if (nb)
        vbd_node_unref(nb);
    if (top)
        vbd_node_unref(top);
    return rc;
}
