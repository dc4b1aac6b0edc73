/* SPDX-License-Identifier: MIT */
/*
 * vbd-img resize.
 */
#include "img.h"

int verb_resize(int argc, char **argv)
{
    const char *fmt = NULL;
    int prealloc = VBD_PREALLOC_OFF;
    bool shrink = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"shrink", no_argument, NULL, OPT_SHRINK},
                                       {"preallocation", required_argument, NULL, OPT_PREALLOC},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    /* As qemu-img: the last argument is the size, taken before the
     * options are read (so that "-1G" is not an option): whatever it is
     * ("resize IMG -f" parses "-f" as the size, "resize IMG +1M -q" has
     * two file names); two words or fewer are not enough (--help aside) */
    bool help_only = argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
    if (argc < 3 && !help_only)
        return img_usage_error("Not enough arguments");
    const char *size_arg = help_only ? NULL : argv[--argc];
    while ((c = getopt_long(argc, argv, ":hf:q", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case OPT_SHRINK: shrink = true; break;
        case OPT_PREALLOC:
            /* checked here, as qemu-img checks it, in its words */
            for (prealloc = 0; vbd_prealloc_names[prealloc] && strcmp(vbd_prealloc_names[prealloc], optarg); prealloc++)
                ;
            if (!vbd_prealloc_names[prealloc]) {
                vbd_error_report("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img resize [-f fmt] [--preallocation=off|falloc|full] [--shrink] [-q] filename [+|-]size\n"
                   "Grow or (with --shrink) shrink the image's virtual size.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (argc - optind != 1)
        return img_usage_error("Expecting image file name and size");
    const char *ss = size_arg;
    int sign = 0;
    if (*ss == '+' || *ss == '-')
        sign = *ss++ == '+' ? 1 : -1;
    uint64_t delta;
    struct vbd_error *err = NULL;
    /* qemu-img resize parses the size as a QemuOpt: its messages */
    if (tool_opt_size("size", ss, &delta, &err) < 0) {
        tool_report(err);
        return 1;
    }
    struct vbd_node *n = tool_open(argv[optind], fmt, image_opts, VBD_OPEN_RDWR, NULL, NULL);
    if (!n)
        return 1;
    uint64_t old = n->size, size;
    if (sign > 0)
        size = old + delta;
    else if (sign < 0) {
        if (delta > old) {
            vbd_error_report("New image size must be positive");
            vbd_node_unref(n);
            return 1;
        }
        size = old - delta;
    } else
        size = delta;
    /* qemu-img: a new size of 0 is not positive either, however reached */
    if (!size) {
        vbd_error_report("New image size must be positive");
        vbd_node_unref(n);
        return 1;
    }
    int rc = 0;
    /* qemu-img's order: a preallocation that does not grow, then a shrink without --shrink */
    if (size <= old && prealloc) { /* not growing: the same size too */
        vbd_error_report("Preallocation can only be used for growing images");
        rc = 1;
    } else if (size < old && !shrink) {
        vbd_error_report("Use the --shrink option to perform a shrink operation.");
        vbd_warn("Shrinking an image will delete all data beyond the shrunken image's end. Before performing such "
                 "an operation, make sure there is no important data there.");
        rc = 1;
    } else if (vbd_node_co_truncate(n, size, true, prealloc, &err) < 0) {
        tool_report(err);
        rc = 1;
    } else if (!quiet) {
        printf("Image resized.\n");
    }
    vbd_node_unref(n);
    return rc;
}
