/* SPDX-License-Identifier: MIT */
/*
 * vbd-img dd.
 */
#include "img.h"

int verb_dd(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = "raw", *in = NULL, *out = NULL;
    int64_t bs = 512, count = -1, skip = 0;
    bool force = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:U", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'U': force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n"
                   "Copy COUNT blocks of BS bytes (default 512) from INPUT, skipping SKIP blocks, into a new OUTPUT image.\n"
                   "--image-opts: INPUT is an option string (the output, made by name, stays a file name, as in qemu-img).\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    for (int i = optind; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            vbd_error_report("unrecognized operand %s", argv[i]);
            return 1;
        }
        int kl = (int)(eq - argv[i]);
        const char *v = eq + 1;
        if (!strncmp(argv[i], "if", (size_t)kl) && kl == 2)
            in = v;
        else if (!strncmp(argv[i], "of", (size_t)kl) && kl == 2)
            out = v;
        else if (!strncmp(argv[i], "bs", (size_t)kl) && kl == 2) {
            if ((bs = img_cvtnum("bs", v, 1, INT_MAX)) < 0)
                return 1;
        } else if (!strncmp(argv[i], "count", (size_t)kl) && kl == 5) {
            if ((count = img_cvtnum("count", v, 0, INT64_MAX)) < 0)
                return 1;
        } else if (!strncmp(argv[i], "skip", (size_t)kl) && kl == 4) {
            if ((skip = img_cvtnum("skip", v, 0, INT64_MAX)) < 0)
                return 1;
        } else {
            /* qemu-img names the operand's key only */
            vbd_error_report("unrecognized operand %.*s", kl, argv[i]);
            return 1;
        }
    }
    if (!in || !out) {
        vbd_error_report("Must specify both input and output files");
        return 1;
    }
    struct vbd_node *src = tool_open(in, fmt, image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
    if (!src)
        return 1;
    /* qemu-img's checks of the output format, after the input's open */
    const struct vbd_driver *od = vbd_driver_find(out_fmt);
    if (!od || od->kind != VBD_DRV_FORMAT || !od->co_create) {
        if (!od || od->kind != VBD_DRV_FORMAT)
            vbd_error_report("Unknown file format");
        else
            vbd_error_report("Format driver '%s' does not support image creation", od->name);
        vbd_node_unref(src);
        return 1;
    }
    /* qemu-img dd sizes the output as count*bs and then drops the skipped
     * part (count counts from the start of the input, not from skip). */
    uint64_t start = (uint64_t)skip * bs;
    uint64_t end = src->size;
    if (count >= 0 && (uint64_t)count * bs < end)
        end = (uint64_t)count * bs;
    /* qemu-img reports a skip past the end once the output is made and
     * open (an error of that open comes first) and goes on: an empty
     * output, exit 0 */
    bool skip_past_end = start > end;
    if (skip_past_end)
        start = end;
    uint64_t len = end - start;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "size", json_object_new_int64((int64_t)len));
    struct vbd_error *err = NULL;
    int rc = 1;
    struct vbd_node *dst = NULL;
    uint8_t *buf = NULL;
    if (vbd_image_co_create(out_fmt, out, o, &err) < 0) {
        char msg[2048];
        snprintf(msg, sizeof(msg), "%s: error while creating output image: %s", out, err ? err->msg : "failed");
        tool_report_text(msg);
        vbd_error_free(err);
        goto done;
    }
    /* One block at a time, read then written: each copy to or from the
     * page cache (tmpfs) is made on this thread (VBD_REQ_INLINE,
     * VBD_OPEN_INLINE_WRITES), not handed to a worker and waited for */
    dst = tool_open(out, out_fmt, false, VBD_OPEN_RDWR | VBD_OPEN_INLINE_WRITES, NULL, NULL);
    if (!dst)
        goto done;
    if (skip_past_end)
        vbd_error_report("%s: cannot skip to specified offset", in);
    buf = vbd_alloc_aligned(4096, (size_t)bs);
    for (uint64_t pos = 0; pos < len;) {
        uint64_t l = len - pos < (uint64_t)bs ? len - pos : (uint64_t)bs;
        int r = img_pread(src, start + pos, buf, l);
        if (r == 0)
            r = vbd_node_co_pwrite(dst, pos, buf, l, 0);
        if (r < 0) {
            vbd_error_report("error while copying at offset %llu: %s", (unsigned long long)pos, strerror(-r));
            goto done;
        }
        pos += l;
    }
    rc = vbd_node_co_flush(dst) < 0;
done:
    json_object_put(o);
    free(buf);
    if (dst)
        vbd_node_unref(dst);
    vbd_node_unref(src);
    return rc;
}
