/* SPDX-License-Identifier: MIT */
/*
 * vbd-img create.
 */
#include "img.h"

int verb_create(int argc, char **argv)
{
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool quiet = false, unsafe = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"object", required_argument, NULL, OPT_OBJECT}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case 'h':
            printf("Usage: vbd-img create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n"
                   "Create a new image FILENAME of format FMT (default raw) and SIZE bytes (k, M, G, T, P, E suffixes).\n"
                   "  -o help lists the format's options; -b/-F set a backing file; -u skips opening it.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (o_is_help(opts)) {
        print_create_help(fmt);
        json_object_put(opts);
        return 0;
    }
    if (optind >= argc) {
        json_object_put(opts);
        return img_usage_error("Expecting image file name");
    }
    const char *filename = argv[optind++];
    const struct vbd_driver *drv = vbd_driver_find(fmt);
    if (!drv || drv->kind != VBD_DRV_FORMAT) {
        vbd_error_report("Unknown file format '%s'", fmt);
        return 1;
    }
    if (!opts)
        opts = json_object_new_object();
    uint64_t size = 0;
    bool have_size = false;
    if (optind < argc) {
        struct vbd_error *err = NULL;
        if (vbd_parse_size(argv[optind], &size, &err) < 0) {
            vbd_error_free(err);
            vbd_error_report("Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
                             "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            json_object_put(opts);
            return 1;
        }
        have_size = true;
        size = (size + 511) & ~511ull; /* qemu-img rounds up to whole sectors */
        optind++;
    }
    if (optind < argc) {
        json_object_put(opts);
        return img_usage_error("Unexpected argument: %s", argv[optind]);
    }
    if (backing)
        json_object_object_add(opts, "backing_file", json_object_new_string(backing));
    if (backing_fmt)
        json_object_object_add(opts, "backing_fmt", json_object_new_string(backing_fmt));
    struct json_object *b = vbd_opt_get(opts, "backing_file");
    if (!have_size && !vbd_opt_get(opts, "size")) {
        if (!b || unsafe) {
            vbd_error_report("Image creation needs a size parameter");
            json_object_put(opts);
            return 1;
        }
        /* size from the backing file, resolved relative to the new image */
        const char *bf = json_object_get_string(b);
        char path[4096];
        if (bf[0] != '/' && strchr(filename, '/'))
            snprintf(path, sizeof(path), "%.*s/%s", (int)(strrchr(filename, '/') - filename), filename, bf);
        else
            snprintf(path, sizeof(path), "%s", bf);
        struct json_object *bfo = vbd_opt_get(opts, "backing_fmt");
        struct vbd_node *bn = tool_open(path, bfo ? json_object_get_string(bfo) : NULL, false, VBD_OPEN_NO_BACKING, NULL, NULL);
        if (!bn) {
            json_object_put(opts);
            return 1;
        }
        size = bn->size;
        vbd_node_unref(bn);
        have_size = true;
    }
    if (have_size)
        json_object_object_add(opts, "size", json_object_new_int64((int64_t)size));
    if (!quiet) {
        printf("Formatting '%s', fmt=%s", filename, fmt);
        json_object_object_foreach(opts, k, v) {
            if (strcmp(k, "size"))
                printf(" %s=%s", k, json_object_get_string(v));
        }
        struct json_object *sz = vbd_opt_get(opts, "size");
        printf(" size=%s\n", sz ? json_object_get_string(sz) : "0");
    }
    struct vbd_error *err = NULL;
    int rc = vbd_image_co_create(fmt, filename, opts, &err);
    json_object_put(opts);
    if (rc < 0) {
        vbd_error_report("%s: %s", filename, err ? err->msg : strerror(-rc));
        vbd_error_free(err);
        return 1;
    }
    return 0;
}
