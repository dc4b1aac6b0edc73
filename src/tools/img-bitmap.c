/* SPDX-License-Identifier: MIT */
/*
 * vbd-img bitmap: qemu-img bitmap's actions on persistent dirty bitmaps
 * (--add, --remove, --clear, --enable, --disable, --merge), applied in the
 * order given; each is stored before the next runs, and a failing one
 * stops the rest (those before it stay done, as with qemu-img).
 */
#include "img.h"

#include "vbd/block.h"
#include "vbd/error.h"

#include <json-c/json.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int verb_bitmap(int argc, char **argv);
int img_check_bitmaps(struct vbd_node *src, bool skip_broken);
int img_copy_bitmaps(struct vbd_node *src, struct vbd_node *dst, bool skip_broken);
int img_bad_option(int c, char **argv);

enum { OPT_ADD = 300, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE, OPT_IMAGE_OPTS_BM };

static const char *const action_names[] = {
    [VBD_BITMAP_ADD] = "add",       [VBD_BITMAP_REMOVE] = "remove",   [VBD_BITMAP_CLEAR] = "clear",
    [VBD_BITMAP_ENABLE] = "enable", [VBD_BITMAP_DISABLE] = "disable", [VBD_BITMAP_MERGE] = "merge",
};

struct action {
    enum vbd_bitmap_action act;
    const char *source; /* MERGE: the bitmap merged from */
};

/* The dirty ranges of bitmap `name` of src, for a merge. */
static int dirty_ranges(struct vbd_node *src, const char *name, uint64_t (**out)[2], size_t *count)
{
    uint64_t (*r)[2] = NULL;
    size_t n = 0, cap = 0;
    for (uint64_t off = 0; off < src->size;) {
        uint64_t pnum = 0;
        int st = vbd_node_co_bitmap_status(src, name, off, src->size - off, &pnum);
        if (st < 0) {
            free(r);
            return st;
        }
        if (!pnum)
            break;
        if (st) {
            if (n && r[n - 1][0] + r[n - 1][1] == off) {
                r[n - 1][1] += pnum;
            } else {
                if (n == cap) {
                    cap = cap ? 2 * cap : 64;
                    uint64_t(*g)[2] = realloc(r, cap * sizeof(*r));
                    if (!g) {
                        free(r);
                        return -ENOMEM;
                    }
                    r = g;
                }
                r[n][0] = off;
                r[n++][1] = pnum;
            }
        }
        off += pnum;
    }
    *out = r;
    *count = n;
    return 0;
}

static void op_failed(const struct action *a, const char *bitmap, const char *why)
{
    vbd_error_report("Operation %s on bitmap %s failed: %s", action_names[a->act], bitmap, why);
}

/* One action; 0 or 1 (reported). */
static int run_action(struct vbd_node *img, struct vbd_node *src, const struct action *a, const char *bitmap,
                      uint64_t granularity)
{
    struct vbd_bitmap_op op = {.action = a->act, .name = bitmap, .granularity = (uint32_t)granularity};
    uint64_t (*ranges)[2] = NULL;
    char why[1200];
    /* as QEMU's block-dirty-bitmap-add: the name, then -g, checked once
     * the image is open, before whether the image can store a bitmap */
    if (a->act == VBD_BITMAP_ADD && !*bitmap) {
        op_failed(a, bitmap, "Bitmap name cannot be empty");
        return 1;
    }
    if (a->act == VBD_BITMAP_ADD && granularity &&
        (granularity < 512 || granularity > UINT32_MAX || (granularity & (granularity - 1)))) {
        op_failed(a, bitmap, "Granularity must be power of 2 and at least 512");
        return 1;
    }
    if (!img->drv->co_bitmap_change && a->act != VBD_BITMAP_ADD) {
        /* QEMU looks the bitmap up first: an image without bitmaps has none of that name */
        snprintf(why, sizeof(why), "Dirty bitmap '%s' not found", bitmap);
        op_failed(a, bitmap, why);
        return 1;
    }
    if (!img->drv->co_bitmap_change) {
        snprintf(why, sizeof(why), "Can't store persistent bitmaps to %s: Operation not supported", img->node_name);
        op_failed(a, bitmap, why);
        return 1;
    }
    if (a->act == VBD_BITMAP_MERGE) {
        uint64_t pnum;
        int st = vbd_node_co_bitmap_status(img, bitmap, 0, 1, &pnum);
        if (st == -ENOENT) {
            snprintf(why, sizeof(why), "Dirty bitmap '%s' not found", bitmap);
            op_failed(a, bitmap, why);
            return 1;
        }
        if (vbd_node_co_bitmap_status(src, a->source, 0, 1, &pnum) != -ENOENT && src->size != img->size) {
            snprintf(why, sizeof(why),
                     "Bitmaps are of different sizes (destination size is %llu, source size is %llu) and can't be merged",
                     (unsigned long long)img->size, (unsigned long long)src->size);
            op_failed(a, bitmap, why);
            return 1;
        }
        st = dirty_ranges(src, a->source, &ranges, &op.nranges);
        if (st < 0) {
            if (st == -ENOENT)
                snprintf(why, sizeof(why), "Dirty bitmap '%s' not found", a->source);
            else if (st == -EINVAL)
                snprintf(why, sizeof(why), "Bitmap '%s' is inconsistent and cannot be used", a->source);
            else
                snprintf(why, sizeof(why), "Could not read bitmap '%s': %s", a->source, strerror(-st));
            op_failed(a, bitmap, why);
            return 1;
        }
        op.ranges = (const uint64_t(*)[2])ranges;
    }
    struct vbd_error *err = NULL;
    int rc = img->drv->co_bitmap_change(img, &op, &err);
    free(ranges);
    if (rc < 0) {
        op_failed(a, bitmap, err ? err->msg : strerror(-rc));
        vbd_error_free(err);
        return 1;
    }
    return 0;
}

int verb_bitmap(int argc, char **argv)
{
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'},         {"add", no_argument, NULL, OPT_ADD},
                                       {"remove", no_argument, NULL, OPT_REMOVE}, {"clear", no_argument, NULL, OPT_CLEAR},
                                       {"enable", no_argument, NULL, OPT_ENABLE}, {"disable", no_argument, NULL, OPT_DISABLE},
                                       {"merge", required_argument, NULL, OPT_MERGE},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS_BM},
                                       {"granularity", required_argument, NULL, 'g'}, {NULL, 0, NULL, 0}};
    const char *fmt = NULL, *src_file = NULL, *src_fmt = NULL;
    bool image_opts = false, add = false;
    int64_t granularity = 0;
    struct action *acts = calloc((size_t)argc + 1, sizeof(*acts));
    int nacts = 0, c;
    if (!acts)
        return 1;
    while ((c = getopt_long(argc, argv, ":hf:b:F:g:q", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) { free(acts); return 1; } break;
        case OPT_ADD: acts[nacts++].act = VBD_BITMAP_ADD; add = true; break;
        case OPT_REMOVE: acts[nacts++].act = VBD_BITMAP_REMOVE; break;
        case OPT_CLEAR: acts[nacts++].act = VBD_BITMAP_CLEAR; break;
        case OPT_ENABLE: acts[nacts++].act = VBD_BITMAP_ENABLE; break;
        case OPT_DISABLE: acts[nacts++].act = VBD_BITMAP_DISABLE; break;
        case OPT_MERGE:
            acts[nacts].act = VBD_BITMAP_MERGE;
            acts[nacts++].source = optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'b': src_file = optarg; break;
        case 'F': src_fmt = optarg; break;
        case 'g':
            granularity = img_cvtnum("granularity", optarg, 0, INT64_MAX);
            if (granularity < 0) {
                free(acts);
                return 1;
            }
            break;
        case OPT_IMAGE_OPTS_BM: image_opts = true; break;
        case 'q': break;
        case 'h':
            printf("Usage: vbd-img bitmap (--merge SOURCE | --add | --remove | --clear |\n"
                   "                      --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]]\n"
                   "                      [-g GRANULARITY] [--object OBJECTDEF] [--image-opts | -f FMT]\n"
                   "                      FILENAME BITMAP\n"
                   "Change the persistent dirty bitmap BITMAP of FILENAME; the actions run in the order given.\n"
                   "  --add        create BITMAP, tracking writes\n"
                   "  --remove     delete BITMAP\n"
                   "  --clear      reset every bit of BITMAP\n"
                   "  --enable     BITMAP tracks writes from now on\n"
                   "  --disable    BITMAP stops tracking writes\n"
                   "  --merge SOURCE  set in BITMAP every bit set in bitmap SOURCE (of SOURCE_FILE with -b)\n"
                   "  -g GRANULARITY  bytes per bit for --add (a power of 2, at least 512)\n");
            free(acts);
            return 0;
        default: free(acts); return img_bad_option(c, argv);
        }
    }
    int rc = 1;
    struct vbd_node *n = NULL, *src = NULL;
    bool merge = false;
    for (int i = 0; i < nacts; i++)
        merge |= acts[i].act == VBD_BITMAP_MERGE;
    if (!nacts) {
        vbd_error_report("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
        goto out;
    }
    if (granularity && !add) {
        vbd_error_report("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_file) {
        vbd_error_report("-F only supported with -b");
        goto out;
    }
    if (src_file && !merge) {
        vbd_error_report("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        vbd_error_report("Expecting filename and bitmap name");
        goto out;
    }
    const char *filename = argv[optind], *bitmap = argv[optind + 1];
    /* -f '' and -F '' name no driver ("Unknown driver ''"), as qemu-img's */
    n = tool_open(filename, fmt, image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!n)
        goto out;
    if (src_file && !(src = tool_open(src_file, src_fmt, false, VBD_OPEN_NO_BACKING, NULL, NULL)))
        goto out;
    struct vbd_node *img = vbd_node_skip_filters(n);
    rc = 0;
    for (int i = 0; i < nacts && !rc; i++) {
        rc = run_action(img, src ? src : img, &acts[i], bitmap, (uint64_t)granularity);
    }
out:
    if (src)
        vbd_node_unref(src);
    if (n)
        vbd_node_unref(n);
    free(acts);
    return rc;
}

/* convert --bitmaps: the persistent bitmaps of src as qemu-img lists them
 * (qcow2 info: name, granularity, flags "auto" = enabled, "in-use" =
 * inconsistent). check: 0, or -1 after qemu-img's error for a broken one
 * (skip_broken: warned about later, when copying). */
static struct json_object *bitmap_list(struct vbd_node *src, struct json_object **info_out)
{
    struct vbd_image_info info = {0};
    struct json_object *data = NULL, *list = NULL;
    if (vbd_node_get_info(vbd_node_skip_filters(src), &info, NULL) == 0 && info.format_specific &&
        json_object_object_get_ex(info.format_specific, "data", &data))
        json_object_object_get_ex(data, "bitmaps", &list);
    *info_out = info.format_specific;
    return list;
}

static bool has_flag(struct json_object *b, const char *flag)
{
    struct json_object *flags;
    if (!json_object_object_get_ex(b, "flags", &flags))
        return false;
    for (size_t i = 0; i < json_object_array_length(flags); i++)
        if (!strcmp(json_object_get_string(json_object_array_get_idx(flags, i)), flag))
            return true;
    return false;
}

int img_check_bitmaps(struct vbd_node *src, bool skip_broken)
{
    struct json_object *info = NULL, *list = bitmap_list(src, &info);
    int rc = 0;
    for (size_t i = 0; list && !skip_broken && i < json_object_array_length(list); i++) {
        struct json_object *b = json_object_array_get_idx(list, i), *name;
        if (has_flag(b, "in-use") && json_object_object_get_ex(b, "name", &name)) {
            vbd_error_report("Cannot copy inconsistent bitmap '%s'", json_object_get_string(name));
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'vbd-img bitmap --remove' to delete it\n");
            rc = -1;
            break;
        }
    }
    json_object_put(info);
    return rc;
}

int img_copy_bitmaps(struct vbd_node *src, struct vbd_node *dst, bool skip_broken)
{
    struct json_object *info = NULL, *list = bitmap_list(src, &info);
    struct vbd_node *img = vbd_node_skip_filters(dst);
    int rc = 0;
    for (size_t i = 0; list && rc == 0 && i < json_object_array_length(list); i++) {
        struct json_object *b = json_object_array_get_idx(list, i), *jn, *jg;
        if (!json_object_object_get_ex(b, "name", &jn) || !json_object_object_get_ex(b, "granularity", &jg))
            continue;
        const char *name = json_object_get_string(jn);
        if (has_flag(b, "in-use")) { /* only here with --skip-broken-bitmaps */
            fprintf(stderr, "vbd-img: warning: Skipping inconsistent bitmap '%s'\n", name);
            continue;
        }
        struct vbd_bitmap_op add = {.action = VBD_BITMAP_ADD, .name = name,
                                    .granularity = (uint32_t)json_object_get_int64(jg), .disabled = !has_flag(b, "auto")};
        struct vbd_bitmap_op merge = {.action = VBD_BITMAP_MERGE, .name = name};
        uint64_t (*ranges)[2] = NULL;
        struct vbd_error *err = NULL;
        int st = img->drv->co_bitmap_change ? img->drv->co_bitmap_change(img, &add, &err) : -ENOTSUP;
        if (st < 0) {
            vbd_error_report("Failed to create bitmap %s: %s", name, err ? err->msg : strerror(-st));
            rc = -1;
        } else if ((st = dirty_ranges(src, name, &ranges, &merge.nranges)) < 0 ||
                   (merge.ranges = (const uint64_t(*)[2])ranges,
                    (st = img->drv->co_bitmap_change(img, &merge, &err)) < 0)) {
            vbd_error_report("Failed to populate bitmap %s: %s", name, err ? err->msg : strerror(-st));
            struct vbd_bitmap_op rm = {.action = VBD_BITMAP_REMOVE, .name = name};
            img->drv->co_bitmap_change(img, &rm, NULL);
            rc = -1;
        }
        free(ranges);
        vbd_error_free(err);
    }
    json_object_put(info);
    return rc;
}
