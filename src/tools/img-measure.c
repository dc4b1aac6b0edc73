/* SPDX-License-Identifier: MIT */
/*
 * vbd-img measure.
 */
#include "img.h"

/* a refusal before the options are used: what -o made is freed */
static int put_opts_ret(struct json_object *opts, int rc)
{
    json_object_put(opts);
    return rc;
}

int verb_measure(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = NULL, *snapshot = NULL;
    struct json_object *opts = NULL;
    bool json = false, force = false, image_opts = false;
    int64_t size = -1;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"size", required_argument, NULL, OPT_SIZE}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    /* qemu-img 7.2's measure lets getopt word a bad option (named by the
     * verb: "measure: invalid option -- 'Z'"), then prints the help and
     * exits 0 */
    opterr = 1;
    while ((c = getopt_long(argc, argv, "hf:O:o:Ul:", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return put_opts_ret(opts, 1); break;
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return put_opts_ret(opts, 1); break;
        case 'U': force = true; break;
        case 'l': snapshot = optarg; break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return put_opts_ret(opts, 1); break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_SIZE:
            if ((size = img_cvtnum("image size", optarg, 0, INT64_MAX)) < 0)
                return put_opts_ret(opts, 1);
            break;
        case 'h':
        case '?':
            printf("Usage: vbd-img measure [--output=human|json] [-O output_fmt] [-o options] [--size N | [-l snapshot_param] [-f fmt] filename]\n"
                   "Print how much space converting to OUTPUT_FMT needs (required and fully allocated).\n");
            return put_opts_ret(opts, 0);
        }
    }
    if (!out_fmt)
        out_fmt = "raw";
    if (argc - optind > 1) {
        vbd_error_report("At most one filename argument is allowed.");
        return put_opts_ret(opts, 1);
    }
    if (optind == argc && (image_opts || fmt || snapshot)) {
        vbd_error_report("--image-opts, -f, and -l require a filename argument.");
        return put_opts_ret(opts, 1);
    }
    if ((size >= 0) == (optind < argc)) {
        vbd_error_report(size >= 0 ? "--size N cannot be used together with a filename." : "Either --size N or one filename must be specified.");
        return put_opts_ret(opts, 1);
    }
    /* as qemu-img: the input is opened before the output format is looked up */
    struct vbd_node *in = NULL;
    if (optind < argc) {
        in = tool_open(argv[optind], fmt, image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
        if (!in)
            return put_opts_ret(opts, 1);
        if (snapshot && img_load_snapshot(in, snapshot) < 0) {
            vbd_node_unref(in);
            return put_opts_ret(opts, 1);
        }
    }
    /* qemu-img's order: the format, whether it creates images, -o parsed
     * with its creation options, then whether it measures */
    const struct vbd_driver *d = vbd_driver_find(out_fmt);
    if (!d || !d->co_create) {
        vbd_error_report(d ? "Format driver '%s' does not support image creation" : "Unknown file format '%s'", out_fmt);
        if (in)
            vbd_node_unref(in);
        return put_opts_ret(opts, 1);
    }
    if (!opts)
        opts = json_object_new_object();
    /* qemu-img parses -o with the format's and the file protocol's creation
     * options: an unknown name or a size that is none is refused here */
    if (img_check_create_options(d, NULL, opts, NULL) < 0) {
        vbd_error_report("Invalid options for file format '%s'", out_fmt);
        json_object_put(opts);
        if (in)
            vbd_node_unref(in);
        return 1;
    }
    if (!d->measure) {
        vbd_error_report("Block driver '%s' does not support size measurement", out_fmt);
        json_object_put(opts);
        if (in)
            vbd_node_unref(in);
        return 1;
    }
    img_normalize_create_options(d, NULL, opts);
    json_object_object_add(opts, "size", json_object_new_int64(in ? (int64_t)in->size : size));
    /* qemu-img reports the room the bitmaps of a qcow2 v3 input take in a qcow2 v3 target */
    struct json_object *compat = NULL;
    bool bitmaps = !strcmp(out_fmt, "qcow2") && in && vbd_node_skip_filters(in)->drv->co_bitmap_status &&
                   !(json_object_object_get_ex(opts, "compat", &compat) &&
                     (!strcmp(json_object_get_string(compat), "0.10") || !strcmp(json_object_get_string(compat), "v2")));
    uint64_t bitmaps_size = 0;
    if (bitmaps) {
        /* qemu's sum over the input's persistent bitmaps, in clusters of the
         * output: the bitmap's data, its table, the directory (a qcow2 v2
         * input stores none: no line at all then) */
        struct vbd_image_info info = {0};
        struct json_object *data = NULL, *cv, *list;
        uint64_t cs = 65536;
        struct json_object *copy = NULL;
        if (json_object_object_get_ex(opts, "cluster_size", NULL)) {
            json_object_deep_copy(opts, &copy, NULL);
            if (vbd_opt_take_size(copy, "cluster_size", &cs, NULL) < 0 || !cs)
                cs = 65536; /* measure reports the bad value */
            json_object_put(copy);
        }
        if (vbd_node_get_info(vbd_node_skip_filters(in), &info, NULL) == 0 && info.format_specific)
            json_object_object_get_ex(info.format_specific, "data", &data);
        if (data && json_object_object_get_ex(data, "compat", &cv) && !strcmp(json_object_get_string(cv), "0.10"))
            bitmaps = false;
        uint64_t dir = 0;
        if (data && json_object_object_get_ex(data, "bitmaps", &list))
            for (size_t i = 0; i < json_object_array_length(list); i++) {
                struct json_object *b = json_object_array_get_idx(list, i), *name, *gran;
                if (!json_object_object_get_ex(b, "name", &name) || !json_object_object_get_ex(b, "granularity", &gran))
                    continue;
                uint64_t g = (uint64_t)json_object_get_int64(gran);
                uint64_t bytes = ((in->size + g - 1) / g + 7) / 8;
                uint64_t clusters = (bytes + cs - 1) / cs;
                dir += (24 + strlen(json_object_get_string(name)) + 7) / 8 * 8;
                bitmaps_size += clusters * cs + (clusters * 8 + cs - 1) / cs * cs;
            }
        bitmaps_size += (dir + cs - 1) / cs * cs;
        json_object_put(info.format_specific);
    }
    uint64_t req = 0, full = 0;
    struct vbd_error *err = NULL;
    int rc = 0;
    if (d->measure(opts, in, &req, &full, &err) < 0) {
        tool_report(err);
        rc = 1;
    } else if (json) {
        struct json_object *o = json_object_new_object();
        if (bitmaps)
            json_object_object_add(o, "bitmaps", json_object_new_int64((int64_t)bitmaps_size));
        json_object_object_add(o, "required", json_object_new_int64((int64_t)req));
        json_object_object_add(o, "fully-allocated", json_object_new_int64((int64_t)full));
        tool_print_json(o);
        json_object_put(o);
    } else {
        printf("required size: %llu\nfully allocated size: %llu\n", (unsigned long long)req, (unsigned long long)full);
        if (bitmaps)
            printf("bitmaps size: %llu\n", (unsigned long long)bitmaps_size);
    }
    json_object_put(opts);
    if (in)
        vbd_node_unref(in);
    return rc;
}
