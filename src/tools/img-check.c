/* SPDX-License-Identifier: MIT */
/*
 * vbd-img check.
 */
#include "img.h"

/* as qemu-img: a check that fails (the first or the one after a repair)
 * prints its reason and no result; exit code 1 */
static int check_failed(struct vbd_node *n, struct vbd_error *err, int ret)
{
    if (err)
        tool_report(err);
    else
        vbd_error_report("Check failed: %s", strerror(-ret));
    vbd_node_unref(n);
    return 1;
}

int verb_check(int argc, char **argv)
{
    const char *output = NULL;
    const char *fmt = NULL, *repair = NULL, *src_cache = NULL;
    bool json = false, quiet = false, force = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"repair", required_argument, NULL, 'r'}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case 'r':
            /* checked as met, as qemu-img does (before a later bad option) */
            if (strcmp(optarg, "leaks") && strcmp(optarg, "all"))
                return img_usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", optarg);
            repair = optarg;
            break;
        case 'q': quiet = true; break;
        case 'U': force = true; break;
        case 'T': src_cache = optarg; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-U] filename\n"
                   "Check an image's metadata. Exit: 0 clean, 1 check incomplete, 2 corruptions, 3 leaks only, 63 unsupported.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    unsigned fix = 0;
    if (repair) {
        if (!strcmp(repair, "leaks"))
            fix = VBD_CHECK_FIX_LEAKS;
        else if (!strcmp(repair, "all"))
            fix = VBD_CHECK_FIX_LEAKS | VBD_CHECK_FIX_ERRORS;
        else {
            return img_usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", repair);
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return 1;
    }
    /* --output's value is checked after the file name, as qemu-img does */
    if (output && !parse_output(output, &json))
        return 1;
    /* -T after --output, before the open, in qemu-img's words */
    enum vbd_cache_mode src_mode;
    if (src_cache && vbd_cache_mode_parse(src_cache, &src_mode) < 0) {
        vbd_error_report("Invalid source cache option: %s", src_cache);
        return 1;
    }
    /* with its backing chain, as qemu-img: an image whose chain cannot be
     * opened is not checked */
    unsigned flags = VBD_OPEN_CHECK | (fix ? VBD_OPEN_RDWR : 0) | (force ? VBD_OPEN_FORCE_SHARE : 0);
    struct vbd_node *n = tool_open(argv[optind], fmt, image_opts, flags, src_cache, NULL);
    if (!n)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(n);
    if (!img->drv->co_check) {
        vbd_error_report("This image format does not support checks");
        vbd_node_unref(n);
        return 63;
    }
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    int ret = img->drv->co_check(img, &r, fix, &err);
    if (ret == -ENOTSUP) { /* qemu-img's words for a driver that cannot (repair) */
        vbd_error_free(err);
        vbd_error_report("This image format does not support checks");
        vbd_node_unref(n);
        return 63;
    }
    if (ret < 0)
        return check_failed(n, err, ret);
    if (r.leaks_fixed || r.corruptions_fixed) {
        /* as qemu-img: what was repaired is said, then the image is
         * checked again and that check's findings are the result (the
         * image's end as it is after the repair, what is left unrepaired) */
        int64_t leaks_fixed = r.leaks_fixed, corruptions_fixed = r.corruptions_fixed;
        if (!json && !quiet)
            printf("The following inconsistencies were found and repaired:\n\n    %lld leaked clusters\n    %lld corruptions\n\nDouble checking the fixed image now...\n",
                   (long long)leaks_fixed, (long long)corruptions_fixed);
        r = (struct vbd_check_result){0};
        vbd_error_free(err);
        err = NULL;
        ret = img->drv->co_check(img, &r, 0, &err);
        if (ret < 0)
            return check_failed(n, err, ret);
        r.leaks_fixed = leaks_fixed;
        r.corruptions_fixed = corruptions_fixed;
    }
    /* -q: nothing, in json too (qemu-img's dump_json_image_check) */
    if (json && !quiet) {
        struct json_object *o = json_object_new_object();
        /* the key order qemu-img prints */
        if (r.image_end_offset > 0) /* qemu-img leaves it out for formats that do not know it (qed) */
            json_object_object_add(o, "image-end-offset", json_object_new_int64(r.image_end_offset));
        if (r.compressed_clusters) /* qemu-img leaves it out when zero */
            json_object_object_add(o, "compressed-clusters", json_object_new_int64((int64_t)r.compressed_clusters));
        if (r.total_clusters) /* qemu-img leaves it out when zero: formats without cluster counts (vmdk, vhdx, vdi) */
            json_object_object_add(o, "total-clusters", json_object_new_int64((int64_t)r.total_clusters));
        if (r.corruptions)
            json_object_object_add(o, "corruptions", json_object_new_int64(r.corruptions));
        if (r.corruptions_fixed)
            json_object_object_add(o, "corruptions-fixed", json_object_new_int64(r.corruptions_fixed));
        json_object_object_add(o, "check-errors", json_object_new_int64(r.check_errors));
        if (r.leaks)
            json_object_object_add(o, "leaks", json_object_new_int64(r.leaks));
        if (r.leaks_fixed)
            json_object_object_add(o, "leaks-fixed", json_object_new_int64(r.leaks_fixed));
        if (r.allocated_clusters) /* qemu-img leaves it out when zero */
            json_object_object_add(o, "allocated-clusters", json_object_new_int64((int64_t)r.allocated_clusters));
        /* the image as the command line names it (qemu-img's
         * collect_image_check): --image-opts' option string too */
        json_object_object_add(o, "filename", json_object_new_string(argv[optind]));
        json_object_object_add(o, "format", json_object_new_string(img->drv->name));
        /* qemu-img leaves it out when zero */
        if (r.fragmented_clusters)
            json_object_object_add(o, "fragmented-clusters", json_object_new_int64((int64_t)r.fragmented_clusters));
        tool_print_json(o);
        json_object_put(o);
    } else if (!json && !quiet) {
        if (r.corruptions)
            printf("\n%lld errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                   (long long)r.corruptions);
        if (r.leaks)
            printf("\n%lld leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                   (long long)r.leaks);
        if (r.check_errors)
            printf("\n%lld internal errors have occurred during the check.\n", (long long)r.check_errors);
        if (!r.corruptions && !r.leaks && !r.check_errors)
            printf("No errors were found on the image.\n");
        if (r.total_clusters && r.allocated_clusters)
            printf("%llu/%llu = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters\n",
                   (unsigned long long)r.allocated_clusters, (unsigned long long)r.total_clusters,
                   100.0 * r.allocated_clusters / r.total_clusters,
                   r.allocated_clusters ? 100.0 * r.fragmented_clusters / r.allocated_clusters : 0.0,
                   r.allocated_clusters ? 100.0 * r.compressed_clusters / r.allocated_clusters : 0.0);
        if (r.image_end_offset)
            printf("Image end offset: %lld\n", (long long)r.image_end_offset);
    }
    if (err)
        tool_report(err);
    vbd_node_unref(n);
    if (r.check_errors) {
        vbd_error_report("Check failed");
        return 1;
    }
    if (r.corruptions)
        return 2;
    if (r.leaks)
        return 3;
    return 0;
}
