/* SPDX-License-Identifier: MIT */
/*
 * vbd-img create: the checks, messages and "Formatting" line of qemu-img
 * 7.2's bdrv_img_create, in its order.
 */
#include "img.h"

/*
 * The "Formatting" line lists the options as qemu-img does: in the order of
 * QEMU's creation option list of the format, then the file protocol's, each
 * with the value given or, if none, QEMU's printed default (NAME=DEFAULT; a
 * bare NAME has none). Options vbd knows that QEMU does not follow.
 */
static const char *const formatting_order[][2] = {
    {"qcow2", "encryption encrypt.format encrypt.key-secret encrypt.cipher-alg encrypt.cipher-mode encrypt.ivgen-alg "
              "encrypt.ivgen-hash-alg encrypt.hash-alg encrypt.iter-time cluster_size=65536 extended_l2=off preallocation compression_type=zlib size compat backing_file "
              "backing_fmt data_file data_file_raw lazy_refcounts=off refcount_bits=16"},
    {"raw", "size"},
    {"vmdk", "size adapter_type backing_file backing_fmt compat6=off hwversion=undefined toolsversion subformat "
             "zeroed_grain"},
    {"vpc", "size subformat force_size"},
    {"vhdx", "size log_size=1048576 block_size=0 subformat block_state_zero"},
    {"vdi", "size static=off"},
    {"qed", "size backing_file backing_fmt cluster_size=65536 table_size"},
    {"parallels", "size cluster_size=1048576"},
};
static const char protocol_order[] = "nocow preallocation extent_size_hint";

static const struct vbd_opt_desc *find_desc(const struct vbd_driver *drv, const char *name)
{
    for (const struct vbd_opt_desc *o = drv->create_opts; o && o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    return NULL;
}

static void print_value(const struct vbd_driver *drv, const char *name, struct json_object *v)
{
    /* the format's option, else the file protocol's (extent_size_hint=1M
     * is printed as 1048576 too) */
    const struct vbd_opt_desc *d = find_desc(drv, name);
    if (!d)
        d = find_desc(vbd_driver_find("file"), name);
    const char *s = json_object_get_string(v);
    uint64_t n;
    /* QEMU prints numbers and sizes it parsed as plain numbers (64k as 65536) */
    if (d && ((d->type == VBD_OPT_SIZE && tool_strtosz_u64(s, &n, false) == 0) ||
              (d->type == VBD_OPT_NUMBER && img_opt_number(name, s, &n, NULL) == 0))) {
        printf(" %s=%llu", name, (unsigned long long)n);
        return;
    }
    printf(" %s=", name);
    /* and strings with their commas doubled, as on a command line */
    for (; *s; s++)
        fputs(*s == ',' ? ",," : (char[2]){*s, 0}, stdout);
}

/* print NAME's value or QEMU's default for it (TOKEN is NAME[=DEFAULT]) unless printed already */
static void print_token(const struct vbd_driver *drv, struct json_object *opts, struct json_object *done,
                        const char *token, size_t len)
{
    char name[64];
    const char *eq = memchr(token, '=', len);
    size_t nl = eq ? (size_t)(eq - token) : len;
    snprintf(name, sizeof(name), "%.*s", (int)nl, token);
    if (json_object_object_get_ex(done, name, NULL))
        return;
    json_object_object_add(done, name, NULL);
    struct json_object *v = vbd_opt_get(opts, name);
    if (v)
        print_value(drv, name, v);
    else if (eq)
        printf(" %.*s", (int)len, token);
}

static void print_formatting(const struct vbd_driver *drv, const char *filename, struct json_object *opts)
{
    const char *order = NULL;
    for (size_t i = 0; i < sizeof(formatting_order) / sizeof(formatting_order[0]); i++)
        if (!strcmp(formatting_order[i][0], drv->name))
            order = formatting_order[i][1];
    struct json_object *done = json_object_new_object();
    printf("Formatting '%s', fmt=%s", filename, drv->name);
    for (const char *list = order ? order : ""; list; list = list == protocol_order ? NULL : protocol_order) {
        for (const char *p = list; *p;) {
            size_t len = strcspn(p, " ");
            print_token(drv, opts, done, p, len);
            p += len;
            while (*p == ' ')
                p++;
        }
    }
    /* the format's options in vbd's order when QEMU's is not known, then the rest */
    for (const struct vbd_opt_desc *o = drv->create_opts; o && o->name; o++)
        print_token(drv, opts, done, o->name, strlen(o->name));
    json_object_object_foreach(opts, k, v) {
        (void)v;
        print_token(drv, opts, done, k, strlen(k));
    }
    json_object_put(done);
    printf("\n");
    fflush(stdout);
}

/* the backing file, opened as QEMU's bdrv_img_create does (to check it and
 * take the size from it); its format when -F names none */
static int check_backing(const char *filename, const char *bf, const char *bfmt, uint64_t *size, bool want_size)
{
    /* relative to the new image */
    char path[4096];
    if (bf[0] != '/' && strchr(filename, '/'))
        snprintf(path, sizeof(path), "%.*s/%s", (int)(strrchr(filename, '/') - filename), filename, bf);
    else
        snprintf(path, sizeof(path), "%s", bf);
    struct json_object *o = NULL;
    if (bfmt) {
        o = json_object_new_object();
        json_object_object_add(o, "driver", json_object_new_string(bfmt));
    }
    struct vbd_error *err = NULL;
    struct vbd_node *bn = vbd_open(path, o, VBD_OPEN_FORCE_SHARE, &err);
    if (!bn) {
        /* the driver's words as QEMU's bdrv_open gives them: "Could not
         * open 'F': " only before open(2)'s own reason */
        const char *msg = err ? err->msg : "Could not open backing file";
        char head[4200];
        snprintf(head, sizeof(head), "Could not open '%s': ", path);
        if (err && !tool_is_open_errno(err) && !strncmp(msg, head, strlen(head)))
            msg += strlen(head);
        vbd_error_report("%s: %s", filename, msg);
        fprintf(stderr, "Could not open backing image.\n");
        vbd_error_free(err);
        return -1;
    }
    if (!bfmt) {
        /* qemu-img 7.2 wants the backing format named; its hint has no newline */
        vbd_error_report("%s: Backing file specified without backing format", filename);
        fprintf(stderr, "Detected format of %s.", vbd_node_skip_filters(bn)->drv->name);
        vbd_node_unref(bn);
        return -1;
    }
    if (want_size)
        *size = bn->size;
    vbd_node_unref(bn);
    return 0;
}

int verb_create(int argc, char **argv)
{
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool quiet = false, unsafe = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"object", required_argument, NULL, OPT_OBJECT}, {NULL, 0, NULL, 0}};
    int c, rc = 1;
    img_encryption_options = true;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) goto out; break;
        case 'f': fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) goto out; break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case 'h':
            printf("Usage: vbd-img create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]\n"
                   "Create a new image FILENAME of format FMT (default raw) and SIZE bytes (k, M, G, T, P, E suffixes).\n"
                   "  -o help lists the format's options; -b/-F set a backing file; -u skips opening it.\n");
            rc = 0;
            goto out;
        default: rc = img_bad_option(c, argv); goto out;
        }
    }
    if (o_is_help(opts)) {
        rc = print_create_help(fmt, optind < argc ? argv[optind] : NULL);
        goto out;
    }
    if (optind >= argc) {
        rc = img_usage_error("Expecting image file name");
        goto out;
    }
    const char *filename = argv[optind++];
    uint64_t size = 0, print_size = 0;
    bool have_size = false;
    if (optind < argc) {
        int64_t s = img_cvtnum("image size", argv[optind++], 0, INT64_MAX);
        if (s < 0)
            goto out;
        print_size = (uint64_t)s;
        size = (print_size + 511) & ~511ull; /* qemu-img's drivers round up to whole sectors */
        have_size = true;
    }
    if (optind < argc) {
        rc = img_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    const struct vbd_driver *drv = vbd_driver_find(fmt);
    if (!drv || drv->kind != VBD_DRV_FORMAT) {
        vbd_error_report("%s: Unknown file format '%s'", filename, fmt);
        goto out;
    }
    if (!drv->co_create) {
        vbd_error_report("%s: Format driver '%s' does not support image creation", filename, drv->name);
        goto out;
    }
    if (!opts)
        opts = json_object_new_object();
    if (img_check_create_options(drv, filename, opts, filename) < 0)
        goto out;
    struct json_object *so = vbd_opt_get(opts, "size");
    if (so && have_size) {
        vbd_error_report("%s: The image size must be specified only once", filename);
        goto out;
    }
    if (so) {
        /* checked above */
        if (tool_strtosz_u64(json_object_get_string(so), &size, false) < 0)
            goto out;
        print_size = size;
        /* past 2^63 (EFBIG below) it is left as it is, not wrapped to a small size */
        if (size <= INT64_MAX)
            size = (size + 511) & ~511ull;
        have_size = true;
    }
    if ((backing && !find_desc(drv, "backing_file")) || (backing_fmt && !find_desc(drv, "backing_fmt"))) {
        vbd_error_report("%s: Backing file%s not supported for file format '%s'", filename,
                         backing && !find_desc(drv, "backing_file") ? "" : " format", fmt);
        goto out;
    }
    if (backing)
        json_object_object_add(opts, "backing_file", json_object_new_string(backing));
    if (backing_fmt)
        json_object_object_add(opts, "backing_fmt", json_object_new_string(backing_fmt));
    struct json_object *b = vbd_opt_get(opts, "backing_file");
    struct json_object *bfo = vbd_opt_get(opts, "backing_fmt");
    const char *bf = b ? json_object_get_string(b) : NULL;
    if (bf && !strcmp(bf, filename)) {
        vbd_error_report("%s: Error: Trying to create an image with the same filename as the backing file", filename);
        goto out;
    }
    if (bf && !*bf) {
        vbd_error_report("%s: Expected backing file name, got empty string", filename);
        goto out;
    }
    if (bf && !unsafe) {
        uint64_t bsize = 0;
        if (check_backing(filename, bf, bfo ? json_object_get_string(bfo) : NULL, &bsize, !have_size) < 0)
            goto out;
        if (!have_size) {
            size = print_size = bsize;
            have_size = true;
        }
    } else if (bf && !bfo) {
        vbd_error_report("%s: Backing file specified without backing format", filename);
        goto out;
    }
    if (!have_size) {
        vbd_error_report("%s: Image creation needs a size parameter", filename);
        goto out;
    }
    if (!quiet) {
        json_object_object_add(opts, "size", json_object_new_uint64(print_size));
        print_formatting(drv, filename, opts);
    }
    if (img_refuse_encryption(drv, filename, opts) < 0)
        goto out;
    /* a backing format not opened (-u) is still a driver's name to the
     * format's create (QEMU's BlockdevDriver): no image names a format
     * nothing could open it with */
    /* (qed makes its file first and then refuses it, as QEMU's qed; vmdk
     * names no backing format, it checks the backing file itself) */
    if (bfo && strcmp(drv->name, "qed") && strcmp(drv->name, "vmdk") && !vbd_driver_find(json_object_get_string(bfo))) {
        vbd_error_report("%s: Parameter 'backing-fmt' does not accept value '%s'", filename,
                         json_object_get_string(bfo));
        goto out;
    }
    struct vbd_error *err = NULL;
    int crc;
    if (size > INT64_MAX) {
        /* a size within 511 bytes of 2^63 rounds up past what any image (or file) holds */
        crc = -EFBIG;
    } else {
        json_object_object_add(opts, "size", json_object_new_int64((int64_t)size));
        img_normalize_create_options(drv, filename, opts);
        crc = vbd_image_co_create(fmt, filename, opts, &err);
    }
    if (crc == -EFBIG || (crc < 0 && err && err->code == EFBIG)) {
        /* qemu-img's bdrv_img_create words any driver's EFBIG this way,
         * with a hint for the formats that have a cluster size */
        vbd_error_report("%s: The image size is too large for file format '%s'%s", filename, drv->name,
                         find_desc(drv, "cluster_size") ? " (try using a larger cluster size)" : "");
        vbd_error_free(err);
        goto out;
    }
    if (crc < 0) {
        char msg[2048];
        snprintf(msg, sizeof(msg), "%s: %s", filename, err ? err->msg : strerror(-crc));
        tool_report_text(msg);
        vbd_error_free(err);
        goto out;
    }
    rc = 0;
out:
    json_object_put(opts);
    return rc;
}
