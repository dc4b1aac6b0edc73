/* SPDX-License-Identifier: MIT */
/*
 * vbd-img measure.
 */
#include "img.h"

int verb_measure(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = NULL;
    struct json_object *opts = NULL;
    bool json = false, force = false, image_opts = false;
    int64_t size = -1;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"size", required_argument, NULL, OPT_SIZE}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:o:U", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'U': force = true; break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return 1; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_SIZE:
            if ((size = img_cvtnum("image size", optarg, 0, INT64_MAX)) < 0)
                return 1;
            break;
        case 'h':
            printf("Usage: vbd-img measure [--output=human|json] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]\n"
                   "Print how much space converting to OUTPUT_FMT needs (required and fully allocated).\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (!out_fmt)
        out_fmt = "raw";
    if (argc - optind > 1) {
        vbd_error_report("At most one filename argument is allowed.");
        return 1;
    }
    if ((size >= 0) == (optind < argc)) {
        vbd_error_report(size >= 0 ? "--size N cannot be used together with a filename." : "Either --size N or one filename must be specified.");
        return 1;
    }
    const struct vbd_driver *d = vbd_driver_find(out_fmt);
    if (!d || !d->measure) {
        vbd_error_report(d ? "Format driver '%s' does not support measure" : "Unknown file format '%s'", out_fmt);
        return 1;
    }
    struct vbd_node *in = NULL;
    if (optind < argc) {
        in = tool_open(argv[optind], fmt_or_null(fmt), image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
        if (!in)
            return 1;
    }
    if (!opts)
        opts = json_object_new_object();
    json_object_object_add(opts, "size", json_object_new_int64(in ? (int64_t)in->size : size));
    /* qemu-img reports the bitmaps a qcow2 v3 target could take over from a qcow2 input (we carry none) */
    struct json_object *compat = NULL;
    bool bitmaps = !strcmp(out_fmt, "qcow2") && in && vbd_node_skip_filters(in)->drv->co_bitmap_status &&
                   !(json_object_object_get_ex(opts, "compat", &compat) &&
                     (!strcmp(json_object_get_string(compat), "0.10") || !strcmp(json_object_get_string(compat), "v2")));
    uint64_t req = 0, full = 0;
    struct vbd_error *err = NULL;
    int rc = 0;
    if (d->measure(opts, in, &req, &full, &err) < 0) {
        tool_report(err);
        rc = 1;
    } else if (json) {
        struct json_object *o = json_object_new_object();
        if (bitmaps)
            json_object_object_add(o, "bitmaps", json_object_new_int64(0));
        json_object_object_add(o, "required", json_object_new_int64((int64_t)req));
        json_object_object_add(o, "fully-allocated", json_object_new_int64((int64_t)full));
        tool_print_json(o);
        json_object_put(o);
    } else {
        printf("required size: %llu\nfully allocated size: %llu\n", (unsigned long long)req, (unsigned long long)full);
        if (bitmaps)
            printf("bitmaps size: 0\n");
    }
    json_object_put(opts);
    if (in)
        vbd_node_unref(in);
    return rc;
}
