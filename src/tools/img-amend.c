/* SPDX-License-Identifier: MIT */
/*
 * vbd-img amend.
 */
#include "img.h"

/* the options qemu-img's amend takes for qcow2 (QCOW_COMMON_OPTIONS), sorted as its help lists them */
static const char *const amendable[] = {"backing_file",   "backing_fmt",   "compat", "data_file", "data_file_raw",
                                        "lazy_refcounts", "refcount_bits", "size",   NULL};

/* amend -o help: the options amend takes, listed as qemu-img lists them
 * (the format from -f, or from the image). */
static int print_amend_help(const char *fmt, const char *filename, bool image_opts)
{
    const struct vbd_driver *d = NULL;
    if (!fmt && filename) {
        struct vbd_node *n = tool_open(filename, NULL, image_opts, VBD_OPEN_NO_BACKING | VBD_OPEN_FORCE_SHARE, NULL, NULL);
        if (!n)
            return 1;
        d = vbd_node_skip_filters(n)->drv;
        vbd_node_unref(n);
    } else if (fmt && !(d = vbd_driver_find(fmt))) {
        vbd_error_report("Unknown file format '%s'", fmt);
        return 1;
    }
    if (!d) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    if (!d->co_amend) {
        vbd_error_report("Format driver '%s' does not support option amendment", d->name);
        return 1;
    }
    static const char *const types[] = {"str", "bool (on/off)", "num", "size"};
    printf("Amend options for '%s':\n", d->name);
    for (const char *const *a = amendable; *a; a++)
        for (const struct vbd_opt_desc *o = d->create_opts; o && o->name; o++) {
            if (strcmp(o->name, *a))
                continue;
            char head[64];
            snprintf(head, sizeof(head), "  %s=<%s>", o->name, types[o->type]);
            printf("%-24s - %s\n", head, o->help ? o->help : "");
        }
    return 0;
}

/* qemu-img parses -o with the options amend takes, before the driver sees
 * any: the first other option is an 'Invalid parameter', with a hint when
 * every option given is one of the format's creation options. */
static bool amend_opts_known(const struct vbd_driver *d, struct json_object *opts)
{
    const char *bad = NULL;
    char bad_key[128];
    bool all_create = true;
    json_object_object_foreach(opts, k, val) {
        /* -o encrypt.format=X arrives nested: name it as given */
        char key[128];
        struct json_object_iter sub = {0};
        if (json_object_is_type(val, json_type_object) && json_object_object_length(val) > 0) {
            json_object_object_foreachC(val, sub) break;
            snprintf(key, sizeof(key), "%s.%s", k, sub.key);
        } else {
            snprintf(key, sizeof(key), "%s", k);
        }
        bool known = false;
        for (const char *const *a = amendable; *a && !known; a++)
            known = !strcmp(*a, key);
        if (!known && !bad)
            snprintf(bad_key, sizeof(bad_key), "%s", bad = key);
        bool create = false;
        for (const struct vbd_opt_desc *o = d->create_opts; o && o->name && !create; o++)
            create = !strcmp(o->name, key);
        /* qcow2's encryption options are qemu's creation options (vbd lists none) */
        create = create || (!strcmp(d->name, "qcow2") && !strncmp(key, "encrypt.", 8));
        all_create = all_create && create;
    }
    if (!bad)
        return true;
    vbd_error_report("Invalid parameter '%s'", bad_key);
    if (all_create)
        fprintf(stderr, "This option is only supported for image creation\n");
    return false;
}

/* a refusal before the options are used: what -o made is freed */
static int put_opts_ret(struct json_object *opts, int rc)
{
    json_object_put(opts);
    return rc;
}

int verb_amend(int argc, char **argv)
{
    const char *fmt = NULL, *cache = NULL;
    struct json_object *opts = NULL;
    bool force = false, image_opts = false, progress = false, quiet = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"force", no_argument, NULL, OPT_FORCE},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return put_opts_ret(opts, 1); break;
        case 'o': if (add_o(&opts, optarg) < 0) return put_opts_ret(opts, 1); break;
        case 'f': fmt = optarg; break;
        case OPT_FORCE: force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': cache = optarg; break; /* checked as qemu-img does; vbd's own mode serves */
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'h':
            printf("Usage: vbd-img amend [-f fmt] [--force] -o options filename\nChange format options of an existing image.\n");
            return put_opts_ret(opts, 0);
        default: return put_opts_ret(opts, img_bad_option(c, argv));
        }
    }
    if (!opts)
        return put_opts_ret(opts, img_usage_error("Must specify options (-o)"));
    /* -p (not with -q): qemu-img's progress from here on, and its end (a
     * new line) whatever happens, help and errors too; 0% and 100% around
     * the amendment itself */
    progress = progress && !quiet;
    int rc = 1;
    struct vbd_node *n = NULL;
    struct vbd_error *err = NULL;
    unsigned cache_flags = 0;
    if (o_is_help(opts)) {
        rc = print_amend_help(fmt_or_null(fmt), optind < argc ? argv[optind] : NULL, image_opts);
        goto out;
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        goto out;
    }
    if (tool_cache_flags(cache, &cache_flags, NULL) < 0)
        goto out;
    n = tool_open(argv[optind], fmt, image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!n)
        goto out;
    struct vbd_node *img = vbd_node_skip_filters(n);
    rc = 0;
    if (!img->drv->co_amend) {
        vbd_error_report("Format driver '%s' does not support option amendment", img->drv->name);
        rc = 1;
    } else if (!amend_opts_known(img->drv, opts) || img_check_create_options(img->drv, NULL, opts, NULL) < 0) {
        /* qemu-img parses -o before amending: unknown names, then values that do not parse */
        rc = 1;
    } else {
        img_normalize_create_options(img->drv, NULL, opts);
        if (progress) {
            tool_progress_init(1.0f);
            tool_progress_step(0);
        }
        int st = img->drv->co_amend(img, opts, force, &err);
        if (progress)
            tool_progress_step(100);
        if (st < 0) {
            /* qemu-img 7.2 prints the driver's error as it is, no prefix */
            fflush(stdout);
            vbd_error_report("%s", err ? err->msg : "failed");
            rc = 1;
        }
    }
out:
    if (progress) {
        printf("\n");
        fflush(stdout);
    }
    vbd_error_free(err);
    json_object_put(opts);
    if (n)
        vbd_node_unref(n);
    return rc;
}
