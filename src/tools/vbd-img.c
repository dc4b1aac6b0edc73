/* SPDX-License-Identifier: MIT */
/*
 * vbd-img: qemu-img's verbs, options, messages, exit codes and JSON keys.
 * Every verb runs as one coroutine on the main thread's loop.
 */
#include "common.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VBD_VERSION_STR "0.1.0"

#define MIB (1024 * 1024)

static int verb_argc;
static char **verb_argv;
static int verb_rc;

/* ------------------------------------------------------------------ */
/* option helpers                                                      */

enum {
    OPT_OUTPUT = 256, OPT_IMAGE_OPTS, OPT_BACKING_CHAIN, OPT_SHRINK, OPT_PREALLOC, OPT_SIZE, OPT_PATTERN,
    OPT_FLUSH_INTERVAL, OPT_NO_DRAIN, OPT_TARGET_IS_ZERO, OPT_START, OPT_MAXLEN, OPT_OBJECT, OPT_FORCE,
    OPT_TARGET_IMAGE_OPTS,
};

static bool parse_output(const char *s, bool *json)
{
    if (!strcmp(s, "json"))
        *json = true;
    else if (!strcmp(s, "human"))
        *json = false;
    else {
        vbd_error_report("--output must be used with human or json as argument.");
        return false;
    }
    return true;
}

/* Merge "-o a=b,c=d" strings into one options object. "help" is special. */
static int add_o(struct json_object **opts, const char *s)
{
    /* qemu-img takes a "?" element of the list as "help" (the keyval syntax has no such key) */
    for (const char *p = s; *p;) {
        size_t len = strcspn(p, ",");
        if (len == 1 && *p == '?') {
            if (!*opts)
                *opts = json_object_new_object();
            json_object_object_add(*opts, "help", json_object_new_boolean(true));
            return 0;
        }
        p += len;
        while (*p == ',')
            p++;
    }
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse(s, NULL, &err);
    if (!o) {
        vbd_error_report("Invalid option list: %s", err ? err->msg : s);
        vbd_error_free(err);
        return -1;
    }
    if (!*opts)
        *opts = json_object_new_object();
    json_object_object_foreach(o, k, v) json_object_object_add(*opts, k, json_object_get(v));
    json_object_put(o);
    return 0;
}

static bool o_is_help(struct json_object *opts)
{
    return opts && (json_object_object_get_ex(opts, "help", NULL) || json_object_object_get_ex(opts, "?", NULL));
}

static void print_create_help(const char *fmt)
{
    const struct vbd_driver *d = vbd_driver_find(fmt);
    if (!d) {
        vbd_error_report("Unknown file format '%s'", fmt);
        return;
    }
    printf("Supported %s options:\n", fmt);
    for (const struct vbd_opt_desc *o = d->create_opts; o && o->name; o++) {
        static const char *const types[] = {"str", "bool", "num", "size"};
        printf("  %-22s <%s>%s%s%s\n", o->name, types[o->type], o->help ? " - " : "", o->help ? o->help : "",
               "");
        if (o->def_value)
            printf("  %-22s  (default: %s)\n", "", o->def_value);
    }
}

static const char *fmt_or_null(const char *f) { return f && *f ? f : NULL; }

/* ------------------------------------------------------------------ */
/* create                                                              */

static int verb_create(int argc, char **argv)
{
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool quiet = false, unsafe = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"object", required_argument, NULL, OPT_OBJECT}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "F:b:f:ho:qu", lo, NULL)) != -1) {
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
        default: return 1;
        }
    }
    if (o_is_help(opts)) {
        print_create_help(fmt);
        json_object_put(opts);
        return 0;
    }
    if (optind >= argc) {
        vbd_error_report("Expecting image file name");
        return 1;
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
        vbd_error_report("Unexpected argument: %s", argv[optind]);
        return 1;
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

/* ------------------------------------------------------------------ */
/* info                                                                */

static struct json_object *image_info_json(struct vbd_node *n, struct vbd_error **err)
{
    struct vbd_image_info info;
    if (vbd_node_get_info(n, &info, err) < 0)
        return NULL;
    struct json_object *o = json_object_new_object();
    /* qemu-img prints this key first (its dictionary order) */
    if (n->backing_file[0] && n->backing_format[0])
        json_object_object_add(o, "backing-filename-format", json_object_new_string(n->backing_format));
    struct vbd_snapshot_info *sn = NULL;
    int nsn = n->drv->snapshot_list ? n->drv->snapshot_list(n, &sn) : 0;
    if (nsn > 0) {
        struct json_object *arr = json_object_new_array();
        for (int i = 0; i < nsn; i++) {
            struct json_object *s = json_object_new_object();
            if (sn[i].icount_valid) /* qemu-img leaves it out when the snapshot has none */
                json_object_object_add(s, "icount", json_object_new_int64((int64_t)sn[i].icount));
            json_object_object_add(s, "vm-clock-nsec", json_object_new_int64(sn[i].vm_clock_nsec % 1000000000));
            json_object_object_add(s, "name", json_object_new_string(sn[i].name));
            json_object_object_add(s, "date-sec", json_object_new_int64(sn[i].date_sec));
            json_object_object_add(s, "date-nsec", json_object_new_int64(sn[i].date_nsec));
            json_object_object_add(s, "vm-clock-sec", json_object_new_int64(sn[i].vm_clock_nsec / 1000000000));
            json_object_object_add(s, "id", json_object_new_string(sn[i].id));
            json_object_object_add(s, "vm-state-size", json_object_new_int64((int64_t)sn[i].vm_state_size));
            json_object_array_add(arr, s);
        }
        json_object_object_add(o, "snapshots", arr);
    }
    free(sn);
    json_object_object_add(o, "virtual-size", json_object_new_int64((int64_t)info.virtual_size));
    json_object_object_add(o, "filename", json_object_new_string(n->filename));
    if (info.cluster_size)
        json_object_object_add(o, "cluster-size", json_object_new_int64(info.cluster_size));
    json_object_object_add(o, "format", json_object_new_string(n->drv->name));
    if (info.actual_size >= 0)
        json_object_object_add(o, "actual-size", json_object_new_int64(info.actual_size));
    if (info.format_specific)
        json_object_object_add(o, "format-specific", info.format_specific);
    if (n->backing_file[0]) {
        json_object_object_add(o, "full-backing-filename",
                               json_object_new_string(n->full_backing_filename[0] ? n->full_backing_filename : n->backing_file));
        json_object_object_add(o, "backing-filename", json_object_new_string(n->backing_file));
    }
    /* qemu-img shows it when the image (or, for raw, its protocol) answers get_info: not over NBD */
    struct vbd_node *bottom = n;
    while (bottom->file)
        bottom = bottom->file;
    if (info.has_dirty_flag || !(bottom->drv->caps & VBD_DRV_CAP_REMOTE))
        json_object_object_add(o, "dirty-flag", json_object_new_boolean(info.dirty_flag));
    return o;
}

static void print_specific(struct json_object *v, int indent)
{
    json_object_object_foreach(v, k, val) {
        char key[128];
        snprintf(key, sizeof(key), "%s", k);
        for (char *p = key; *p; p++)
            if (*p == '-')
                *p = ' ';
        if (json_object_is_type(val, json_type_object)) {
            printf("%*s%s:\n", indent, "", key);
            print_specific(val, indent + 4);
        } else if (json_object_is_type(val, json_type_array)) {
            printf("%*s%s:\n", indent, "", key);
            for (size_t i = 0; i < json_object_array_length(val); i++) {
                struct json_object *e = json_object_array_get_idx(val, i);
                if (json_object_is_type(e, json_type_object)) {
                    printf("%*s[%zu]:\n", indent + 4, "", i);
                    print_specific(e, indent + 8);
                } else {
                    printf("%*s[%zu]: %s\n", indent + 4, "", i, json_object_get_string(e));
                }
            }
        } else {
            printf("%*s%s: %s\n", indent, "", key, json_object_get_string(val));
        }
    }
}


/* qemu-img's snapshot table (info and snapshot -l) */
static void print_snapshot_table(struct json_object *v)
{
    printf("Snapshot list:\n");
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        struct json_object *sn = json_object_array_get_idx(v, i);
        time_t t = json_object_get_int64(json_object_object_get(sn, "date-sec"));
        struct tm tm;
        char date[32], vmsz[32];
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        tool_size_to_str((double)json_object_get_int64(json_object_object_get(sn, "vm-state-size")), vmsz,
                         sizeof(vmsz));
        int64_t secs = json_object_get_int64(json_object_object_get(sn, "vm-clock-sec"));
        struct json_object *ic = json_object_object_get(sn, "icount");
        char icount[32] = "";
        if (ic)
            snprintf(icount, sizeof(icount), "%lld", (long long)json_object_get_int64(ic));
        printf("%-9s %-16s %8s %19s %02lld:%02lld:%02lld.%03lld %10s\n",
               json_object_get_string(json_object_object_get(sn, "id")),
               json_object_get_string(json_object_object_get(sn, "name")), vmsz, date, (long long)(secs / 3600),
               (long long)(secs / 60 % 60), (long long)(secs % 60),
               (long long)(json_object_get_int64(json_object_object_get(sn, "vm-clock-nsec")) / 1000000), icount);
    }
}

static void print_info_human(struct json_object *o)
{
    char s[64];
    struct json_object *v;
    printf("image: %s\n", json_object_get_string(json_object_object_get(o, "filename")));
    printf("file format: %s\n", json_object_get_string(json_object_object_get(o, "format")));
    int64_t vs = json_object_get_int64(json_object_object_get(o, "virtual-size"));
    tool_size_to_str((double)vs, s, sizeof(s));
    printf("virtual size: %s (%lld bytes)\n", s, (long long)vs);
    if (json_object_object_get_ex(o, "actual-size", &v)) {
        tool_size_to_str((double)json_object_get_int64(v), s, sizeof(s));
        printf("disk size: %s\n", s);
    } else {
        printf("disk size: unavailable\n");
    }
    if (json_object_object_get_ex(o, "cluster-size", &v))
        printf("cluster_size: %lld\n", (long long)json_object_get_int64(v));
    if (json_object_object_get_ex(o, "backing-filename", &v)) {
        struct json_object *full;
        const char *bf = json_object_get_string(v);
        printf("backing file: %s", bf);
        if (json_object_object_get_ex(o, "full-backing-filename", &full) && strcmp(json_object_get_string(full), bf))
            printf(" (actual path: %s)", json_object_get_string(full));
        printf("\n");
        if (json_object_object_get_ex(o, "backing-filename-format", &v))
            printf("backing file format: %s\n", json_object_get_string(v));
    }
    if (json_object_object_get_ex(o, "snapshots", &v))
        print_snapshot_table(v);
    if (json_object_object_get_ex(o, "format-specific", &v)) {
        printf("Format specific information:\n");
        struct json_object *data;
        if (json_object_object_get_ex(v, "data", &data))
            print_specific(data, 4);
    }
}

static int verb_info(int argc, char **argv)
{
    const char *fmt = NULL;
    bool json = false, chain = false, image_opts = false, force = false;
    static const struct option lo[] = {
        {"help", no_argument, NULL, 'h'},          {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT}, {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "f:hU", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return 1; break;
        case OPT_BACKING_CHAIN: chain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'U': force = true; break;
        case 'h':
            printf("Usage: vbd-img info [-f fmt] [--output=human|json] [--backing-chain] [-U] [--image-opts] filename\n"
                   "Print the format, sizes, backing file and format-specific data of an image.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    struct vbd_node *top = tool_open(argv[optind], fmt_or_null(fmt), image_opts,
                                     (force ? VBD_OPEN_FORCE_SHARE : 0) | VBD_OPEN_NO_IO | (chain ? 0 : VBD_OPEN_NO_BACKING),
                                     NULL, NULL);
    if (!top)
        return 1;
    struct json_object *list = json_object_new_array();
    int rc = 0;
    for (struct vbd_node *n = top; n; n = chain ? n->backing : NULL) {
        struct vbd_node *img = n;
        struct vbd_error *err = NULL;
        struct json_object *o = image_info_json(img, &err);
        if (!o) {
            tool_report(err);
            rc = 1;
            break;
        }
        json_object_array_add(list, o);
    }
    if (!rc) {
        if (json) {
            tool_print_json(chain ? list : json_object_array_get_idx(list, 0));
        } else {
            for (size_t i = 0; i < json_object_array_length(list); i++) {
                if (i)
                    printf("\n");
                print_info_human(json_object_array_get_idx(list, i));
            }
        }
    }
    json_object_put(list);
    vbd_node_unref(top);
    return rc;
}

/* ------------------------------------------------------------------ */
/* map                                                                 */

struct map_entry {
    uint64_t start, length;
    int depth;
    bool present, zero, data, has_offset;
    uint64_t offset;
    const char *file;
};

static bool map_mergeable(const struct map_entry *a, const struct map_entry *b)
{
    return a->depth == b->depth && a->present == b->present && a->zero == b->zero && a->data == b->data &&
           a->has_offset == b->has_offset && (!a->has_offset || a->offset + a->length == b->offset) &&
           (!a->file || !b->file || !strcmp(a->file, b->file));
}

static int map_print(const struct map_entry *e, bool json, bool first)
{
    if (json) {
        printf("%s{ \"start\": %llu, \"length\": %llu, \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "[" : ",\n", (unsigned long long)e->start, (unsigned long long)e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false", e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %llu", (unsigned long long)e->offset);
        printf("}");
    } else if (e->data && !e->has_offset) {
        vbd_error_report("File contains external, encrypted or compressed clusters.");
        return -1;
    } else if (e->data && !e->zero) { /* data reading as zeroes (over a hole of the file) is not listed */
        char a[32], b[32], c2[32];
        snprintf(a, sizeof(a), "%#llx", (unsigned long long)e->start);
        snprintf(b, sizeof(b), "%#llx", (unsigned long long)e->length);
        snprintf(c2, sizeof(c2), "%#llx", (unsigned long long)e->offset);
        printf("%-16s%-16s%-16s%s\n", e->start ? a : "0", b, e->offset ? c2 : "0", e->file ? e->file : "");
    }
    return 0;
}

static int verb_map(int argc, char **argv)
{
    const char *fmt = NULL;
    bool json = false, image_opts = false, force = false;
    int64_t start = 0, maxlen = -1;
    static const struct option lo[] = {
        {"help", no_argument, NULL, 'h'},          {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},   {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "f:hUs:l:", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return 1; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'U': force = true; break;
        case 's': start = tool_cvtnum(optarg); if (start < 0) { vbd_error_report("Invalid start offset specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."); return 1; } break;
        case 'l': maxlen = tool_cvtnum(optarg); if (maxlen < 0) { vbd_error_report("Invalid length specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."); return 1; } break;
        case 'h':
            printf("Usage: vbd-img map [-f fmt] [--output=human|json] [-U] [--start-offset=N] [--max-length=N] filename\n"
                   "Print where the image's data is: allocated, zero, which layer of the backing chain, host offset.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
    if (!n)
        return 1;
    uint64_t end = n->size;
    if (maxlen >= 0 && (uint64_t)start + maxlen < end)
        end = start + maxlen;
    if (!json)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    struct map_entry cur = {0};
    bool have = false, first = true;
    int rc = 0;
    for (uint64_t off = start; off < end;) {
        uint64_t pnum, map = 0;
        struct vbd_node *file = NULL;
        int depth = 0;
        int st = vbd_node_co_block_status_above(n, NULL, true, off, end - off, &pnum, &map, &file, &depth);
        if (st < 0) {
            vbd_error_report("Could not read image metadata: %s", strerror(-st));
            rc = 1;
            break;
        }
        if (pnum == 0)
            break;
        struct map_entry e = {
            .start = off, .length = pnum, .depth = depth, .present = st & VBD_BS_ALLOCATED,
            .zero = st & VBD_BS_ZERO, .data = st & VBD_BS_DATA, .has_offset = (st & VBD_BS_OFFSET_VALID) && file,
            .offset = map, .file = file ? file->filename : NULL,
        };
        if (have && map_mergeable(&cur, &e)) {
            cur.length += e.length;
        } else {
            if (have) {
                if (map_print(&cur, json, first) < 0) {
                    have = false;
                    rc = 1;
                    break;
                }
                first = false;
            }
            cur = e;
            have = true;
        }
        off += pnum;
    }
    if (have && !rc) {
        rc = map_print(&cur, json, first) < 0;
        first = false;
    }
    if (json)
        printf(first ? "[]\n" : "]\n");
    vbd_node_unref(n);
    return rc;
}

/* ------------------------------------------------------------------ */
/* compare                                                             */

/* First non-zero 512-byte sector of buf, or -1. */
static int64_t first_nonzero_sector(const uint8_t *buf, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 512) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if (!vbd_buffer_is_zero(buf + i, l))
            return (int64_t)i;
    }
    return -1;
}

static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 512) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if (memcmp(a + i, b + i, l))
            return (int64_t)i;
    }
    return -1;
}

/* Is the range [off, off+len) known to read as zeroes (without reading)? */
static int known_zero(struct vbd_node *n, uint64_t off, uint64_t len, uint64_t *pnum)
{
    int st = vbd_node_co_block_status_above(n, NULL, true, off, len, pnum, NULL, NULL, NULL);
    if (st < 0)
        return st;
    return (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED) ? 1 : 0;
}

static int verb_compare(int argc, char **argv)
{
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = "writeback";
    bool strict = false, quiet = false, progress = false, force = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:F:T:pqsU", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt1 = optarg; break;
        case 'F': fmt2 = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 's': strict = true; break;
        case 'U': force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img compare [-f fmt] [-F fmt] [-T cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
                   "Exit 0 if the images have the same content, 1 if they differ, 2 on error.\n"
                   "  -s  strict: also a different size or allocation counts as a difference\n");
            return 0;
        default: return 2;
        }
    }
    if (optind != argc - 2) {
        vbd_error_report("Expecting two image file names");
        return 2;
    }
    unsigned fl = force ? VBD_OPEN_FORCE_SHARE : 0;
    struct vbd_node *a = tool_open(argv[optind], fmt_or_null(fmt1), image_opts, fl, cache, NULL);
    if (!a)
        return 2;
    struct vbd_node *b = tool_open(argv[optind + 1], fmt_or_null(fmt2), image_opts, fl, cache, NULL);
    if (!b) {
        vbd_node_unref(a);
        return 2;
    }
    uint64_t common = a->size < b->size ? a->size : b->size;
    uint8_t *ba = vbd_alloc_aligned(4096, 2 * MIB), *bb = vbd_alloc_aligned(4096, 2 * MIB);
    int rc = 0;
    int64_t mismatch = -1;
    if (strict && a->size != b->size) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        rc = 1;
        goto out;
    }
    for (uint64_t off = 0; off < common;) {
        uint64_t len = common - off < 2 * MIB ? common - off : 2 * MIB;
        uint64_t pa, pb;
        int za = known_zero(a, off, len, &pa), zb = known_zero(b, off, len, &pb);
        if (za < 0 || zb < 0) {
            vbd_error_report("error while reading block status: %s", strerror(-(za < 0 ? za : zb)));
            rc = 2;
            goto out;
        }
        uint64_t step = pa < pb ? pa : pb;
        if (strict) {
            uint64_t p1, p2;
            /* whole remaining range, as qemu-img asks: the EOF bit counts */
            int s1 = vbd_node_co_block_status_above(a, NULL, true, off, a->size - off, &p1, NULL, NULL, NULL);
            int s2 = vbd_node_co_block_status_above(b, NULL, true, off, b->size - off, &p2, NULL, NULL, NULL);
            unsigned m = VBD_BS_ALLOCATED | VBD_BS_DATA | VBD_BS_ZERO | VBD_BS_EOF; /* as qemu-img -s */
            if (s1 >= 0 && s2 >= 0 && ((s1 ^ s2) & m)) {
                if (!quiet)
                    printf("Strict mode: Offset %llu block status mismatch!\n", (unsigned long long)off);
                rc = 1;
                goto out;
            }
            step = step < p1 ? step : p1;
            step = step < p2 ? step : p2;
        }
        if (!(za && zb)) {
            int r1 = vbd_node_co_pread(a, off, ba, step), r2 = vbd_node_co_pread(b, off, bb, step);
            if (r1 < 0 || r2 < 0) {
                vbd_error_report("error while reading offset %llu of %s: %s", (unsigned long long)off,
                                 r1 < 0 ? argv[optind] : argv[optind + 1], strerror(-(r1 < 0 ? r1 : r2)));
                rc = 2;
                goto out;
            }
            int64_t d = first_diff_sector(ba, bb, step);
            if (d >= 0) {
                mismatch = off + d;
                break;
            }
        }
        off += step;
        if (progress)
            tool_progress(100.0 * off / (common ? common : 1));
    }
    if (mismatch < 0 && a->size != b->size) {
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
        /* The longer image's tail must read as zeroes. */
        struct vbd_node *big = a->size > b->size ? a : b;
        for (uint64_t off = common; off < big->size;) {
            uint64_t len = big->size - off < 2 * MIB ? big->size - off : 2 * MIB, p;
            int z = known_zero(big, off, len, &p);
            if (z < 0) {
                rc = 2;
                goto out;
            }
            if (!z) {
                if (vbd_node_co_pread(big, off, ba, p) < 0) {
                    rc = 2;
                    goto out;
                }
                int64_t d = first_nonzero_sector(ba, p);
                if (d >= 0) {
                    mismatch = off + d;
                    break;
                }
            }
            off += p;
        }
    }
    if (progress)
        tool_progress_end();
    if (mismatch >= 0) {
        if (!quiet)
            printf("Content mismatch at offset %lld!\n", (long long)mismatch);
        rc = 1;
    } else if (!quiet) {
        printf("Images are identical.\n");
    }
out:
    free(ba);
    free(bb);
    vbd_node_unref(a);
    vbd_node_unref(b);
    return rc;
}

/* ------------------------------------------------------------------ */
/* convert                                                             */

struct convert {
    struct vbd_node **src;
    int nsrc;
    uint64_t *src_start; /* offset of each source in the concatenation */
    uint64_t total;
    struct vbd_node *dst;
    uint64_t next; /* next offset to hand out */
    uint64_t next_write_seq, seq;
    bool in_order;
    bool target_zero;
    bool compress;
    uint64_t cluster; /* -c: the target's cluster size; chunks are whole clusters */
    uint64_t sparse; /* -S: 0 = no detection */
    uint64_t done_bytes;
    bool progress;
    int error;
    int running;
    struct vbd_co_queue order_q, done_q;
    /* block status may yield (nbd): without it, workers would claim the same offset */
    struct vbd_co_mutex claim_lock;
};

#define CONVERT_CHUNK (2 * MIB)

static int convert_chunk_write(struct convert *cv, uint64_t off, uint64_t len, uint8_t *buf, bool zero)
{
    if (zero) {
        if (cv->target_zero)
            return 0;
        return vbd_node_co_pwrite_zeroes(cv->dst, off, len, VBD_REQ_MAY_UNMAP);
    }
    if (cv->compress) {
        /* As qemu-img: every cluster with data is written compressed (whole), an
         * all-zero one is not written at all (-S 0: written all the same). */
        for (uint64_t pos = 0; pos < len; pos += cv->cluster) {
            uint64_t l = len - pos < cv->cluster ? len - pos : cv->cluster;
            int rc;
            if (cv->sparse && vbd_buffer_is_zero(buf + pos, l))
                rc = cv->target_zero ? 0 : vbd_node_co_pwrite_zeroes(cv->dst, off + pos, l, VBD_REQ_MAY_UNMAP);
            else
                rc = vbd_node_co_pwrite(cv->dst, off + pos, buf + pos, l, VBD_REQ_COMPRESSED);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    if (cv->sparse) {
        /* Write only the parts that are not all-zero runs of -S bytes. */
        uint64_t s = cv->sparse, pos = 0;
        while (pos < len) {
            uint64_t l = len - pos < s ? len - pos : s;
            bool z = vbd_buffer_is_zero(buf + pos, l);
            uint64_t run = l;
            while (pos + run < len) {
                uint64_t l2 = len - pos - run < s ? len - pos - run : s;
                if (vbd_buffer_is_zero(buf + pos + run, l2) != z)
                    break;
                run += l2;
            }
            int rc = z ? (cv->target_zero ? 0 : vbd_node_co_pwrite_zeroes(cv->dst, off + pos, run, VBD_REQ_MAY_UNMAP))
                       : vbd_node_co_pwrite(cv->dst, off + pos, buf + pos, run, 0);
            if (rc < 0)
                return rc;
            pos += run;
        }
        return 0;
    }
    return vbd_node_co_pwrite(cv->dst, off, buf, len, 0);
}

static void convert_worker(void *opaque)
{
    struct convert *cv = opaque;
    uint8_t *buf = vbd_alloc_aligned(4096, CONVERT_CHUNK);
    for (;;) {
        vbd_co_mutex_lock(&cv->claim_lock);
        if (cv->error || cv->next >= cv->total) {
            vbd_co_mutex_unlock(&cv->claim_lock);
            break;
        }
        uint64_t off = cv->next;
        int si = 0;
        while (si + 1 < cv->nsrc && off >= cv->src_start[si + 1])
            si++;
        struct vbd_node *src = cv->src[si];
        uint64_t soff = off - cv->src_start[si];
        uint64_t len = src->size - soff < CONVERT_CHUNK ? src->size - soff : CONVERT_CHUNK;
        uint64_t pnum;
        int st = vbd_node_co_block_status_above(src, NULL, true, soff, len, &pnum, NULL, NULL, NULL);
        if (st < 0) {
            cv->error = st;
            vbd_co_mutex_unlock(&cv->claim_lock);
            break;
        }
        if (pnum == 0)
            pnum = len;
        bool zero = (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED);
        if (cv->compress) {
            /* compressed clusters are written whole (off stays cluster aligned): a zero
             * run shorter than a cluster is read with the data around it */
            if (pnum >= cv->cluster) {
                pnum -= pnum % cv->cluster;
            } else {
                pnum = len < cv->cluster ? len : cv->cluster;
                zero = false;
            }
        }
        cv->next = off + pnum;
        uint64_t my_seq = cv->seq++;
        vbd_co_mutex_unlock(&cv->claim_lock);
        int rc = 0;
        if (!zero)
            rc = vbd_node_co_pread(src, soff, buf, pnum);
        if (cv->in_order)
            while (cv->next_write_seq != my_seq && !cv->error)
                vbd_co_queue_wait(&cv->order_q);
        if (rc == 0 && !cv->error)
            rc = convert_chunk_write(cv, off, pnum, buf, zero);
        if (cv->in_order) {
            cv->next_write_seq++;
            vbd_co_queue_wake_all(&cv->order_q);
        }
        if (rc < 0) {
            cv->error = rc;
            break;
        }
        cv->done_bytes += pnum;
        if (cv->progress)
            tool_progress(100.0 * cv->done_bytes / (cv->total ? cv->total : 1));
    }
    free(buf);
    if (--cv->running == 0)
        vbd_co_queue_wake_all(&cv->done_q);
    vbd_co_queue_wake_all(&cv->order_q);
}

/* -l snapshot.id=ID,snapshot.name=NAME or -l ID_OR_NAME (an id first, then a name, as qemu-img). */
static int convert_load_snapshot(struct vbd_node *n, const char *arg)
{
    struct vbd_node *img = vbd_node_skip_filters(n);
    char *id = NULL, *name = NULL;
    struct vbd_error *err = NULL;
    int rc = -1;
    if (!strncmp(arg, "snapshot.", 9)) {
        struct json_object *o = vbd_keyval_parse(arg, NULL, &err), *sn = NULL, *v;
        bool ok = o && json_object_object_get_ex(o, "snapshot", &sn) && json_object_is_type(sn, json_type_object);
        if (ok) {
            json_object_object_foreach(sn, k, val) {
                if ((strcmp(k, "id") && strcmp(k, "name")) || !json_object_is_type(val, json_type_string)) {
                    vbd_error_report("Invalid parameter 'snapshot.%s'", k);
                    ok = false;
                    break;
                }
            }
        }
        if (ok && json_object_object_get_ex(sn, "id", &v))
            id = strdup(json_object_get_string(v));
        if (ok && json_object_object_get_ex(sn, "name", &v))
            name = strdup(json_object_get_string(v));
        json_object_put(o);
        vbd_error_free(err);
        err = NULL;
        if (!ok) {
            vbd_error_report("Failed in parsing snapshot param '%s'", arg);
            goto out;
        }
    }
    if (!img->drv->snapshot_load_tmp) {
        vbd_error_report("Failed to load snapshot: Block format '%s' used by device '%s' does not support internal snapshots",
                         img->drv->name, img->node_name);
        goto out;
    }
    if (id || name)
        rc = img->drv->snapshot_load_tmp(img, id, name, &err);
    else if (!strncmp(arg, "snapshot.", 9))
        vbd_error_setf(&err, EINVAL, "snapshot_id and name are both NULL");
    else if ((rc = img->drv->snapshot_load_tmp(img, arg, NULL, &err)) == -ENOENT) {
        vbd_error_free(err);
        err = NULL;
        rc = img->drv->snapshot_load_tmp(img, NULL, arg, &err);
    }
    if (rc < 0)
        vbd_error_report("Failed to load snapshot: %s", err ? err->msg : "failed");
out:
    vbd_error_free(err);
    free(id);
    free(name);
    return rc < 0 ? -1 : 0;
}

static int verb_convert(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = "raw", *cache = "unsafe", *src_cache = "writeback", *backing = NULL,
               *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool compress = false, progress = false, no_create = false, out_of_order = false, quiet = false, force = false,
         target_zero = false, image_opts = false, target_image_opts = false;
    int64_t sparse = 4096, parallel = 8;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
                                       {"target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {"force-share", no_argument, NULL, 'U'},
                                       {NULL, 0, NULL, 0}};
    int c;
    const char *snapshot = NULL;
    while ((c = getopt_long(argc, argv, "hf:O:o:cpS:nm:Wt:T:B:F:qUl:", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'l': snapshot = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'c': compress = true; break;
        case 'p': progress = true; break;
        case 'S':
            sparse = tool_cvtnum(optarg);
            if (sparse < 0 || (sparse && sparse % 512)) {
                vbd_error_report("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16M, or 0");
                return 1;
            }
            break;
        case 'n': no_create = true; break;
        case 'm':
            parallel = atoi(optarg);
            if (parallel < 1 || parallel > 16) {
                vbd_error_report("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
                return 1;
            }
            break;
        case 'W': out_of_order = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'B': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force = true; break;
        case OPT_TARGET_IS_ZERO: target_zero = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_TARGET_IMAGE_OPTS: target_image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img convert [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]]\n"
                   "                       [-l snapshot_param] (snapshot.id=ID,snapshot.name=NAME or an id or name)\n"
                   "                       [-o options] [-S sparse_size] [-m num_coroutines] [-W] [--target-is-zero] [--target-image-opts] [-U] filename [filename2 [...]] output_filename\n"
                   "Copy (and concatenate) images into OUTPUT, converting the format. Holes and zero runs of -S bytes\n"
                   "(default 4k) are not written; -c compresses (formats that support it); -m runs N requests in parallel.\n");
            return 0;
        default: return 1;
        }
    }
    if (o_is_help(opts)) {
        print_create_help(out_fmt);
        json_object_put(opts);
        return 0;
    }
    if (argc - optind < 2) {
        vbd_error_report("Expecting image file name");
        return 1;
    }
    if (target_zero && !no_create) {
        vbd_error_report("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (target_image_opts && !no_create) {
        vbd_error_report("--target-image-opts requires use of -n flag");
        return 1;
    }
    const char *out = argv[argc - 1];
    struct convert cv = {.in_order = !out_of_order, .sparse = (uint64_t)sparse, .progress = progress && !quiet,
                         .compress = compress};
    cv.nsrc = argc - optind - 1;
    if (snapshot && cv.nsrc > 1) {
        vbd_error_report("No support for concatenating multiple snapshot");
        return 1;
    }
    cv.src = calloc(cv.nsrc, sizeof(*cv.src));
    cv.src_start = calloc(cv.nsrc + 1, sizeof(uint64_t));
    int rc = 1;
    for (int i = 0; i < cv.nsrc; i++) {
        cv.src[i] = tool_open(argv[optind + i], fmt_or_null(fmt), image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, src_cache, NULL);
        if (!cv.src[i])
            goto out;
        if (snapshot && convert_load_snapshot(cv.src[i], snapshot) < 0)
            goto out;
        cv.src_start[i] = cv.total;
        cv.total += cv.src[i]->size;
    }
    cv.src_start[cv.nsrc] = cv.total;
    const struct vbd_driver *od = vbd_driver_find(out_fmt);
    if (!od || od->kind != VBD_DRV_FORMAT) {
        vbd_error_report("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!no_create) {
        if (!opts)
            opts = json_object_new_object();
        json_object_object_add(opts, "size", json_object_new_int64((int64_t)cv.total));
        if (backing)
            json_object_object_add(opts, "backing_file", json_object_new_string(backing));
        if (backing_fmt)
            json_object_object_add(opts, "backing_fmt", json_object_new_string(backing_fmt));
        struct vbd_error *err = NULL;
        if (vbd_image_co_create(out_fmt, out, opts, &err) < 0) {
            vbd_error_report("%s: error while converting %s: %s", out, out_fmt, err ? err->msg : "failed");
            vbd_error_free(err);
            goto out;
        }
        /* A fresh image without backing reads as zeroes: skip zero writes. */
        target_zero = !backing;
    } else if (opts) {
        vbd_error_report("-o has no effect when skipping image creation");
        goto out;
    }
    cv.target_zero = target_zero;
    struct json_object *dopts = json_object_new_object();
    json_object_object_add(dopts, "driver", json_object_new_string(out_fmt));
    bool wt = false;
    unsigned dflags = VBD_OPEN_RDWR | VBD_OPEN_UNMAP;
    if (tool_cache_flags(cache, &dflags, &wt) < 0) {
        json_object_put(dopts);
        goto out;
    }
    if (backing)
        dflags |= VBD_OPEN_NO_BACKING;
    struct vbd_error *err = NULL;
    if (target_image_opts) {
        /* OUTPUT is the whole option string (driver=raw,file.driver=nbd,...), as qemu-img's */
        json_object_put(dopts);
        if (!(dopts = vbd_opts_parse(out, NULL, &err))) {
            tool_report(err);
            goto out;
        }
    }
    cv.dst = vbd_open(target_image_opts ? NULL : out, dopts, dflags, &err);
    if (!cv.dst) {
        tool_report(err);
        goto out;
    }
    if (cv.dst->size < cv.total) {
        vbd_error_report("Output image is too small (%llu < %llu bytes)", (unsigned long long)cv.dst->size,
                         (unsigned long long)cv.total);
        goto out;
    }
    if (compress && !(cv.dst->supported_write_flags & VBD_REQ_COMPRESSED)) {
        vbd_error_report("Compression not supported for this file format");
        goto out;
    }
    if (compress) {
        struct vbd_image_info info = {0};
        if (vbd_node_get_info(vbd_node_skip_filters(cv.dst), &info, NULL) == 0)
            cv.cluster = info.cluster_size;
        json_object_put(info.format_specific);
        if (!cv.cluster || cv.cluster > CONVERT_CHUNK) {
            vbd_error_report("Compression needs a cluster size of at most %u bytes", (unsigned)CONVERT_CHUNK);
            goto out;
        }
    }
    cv.running = (int)parallel;
    for (int i = 0; i < parallel; i++)
        vbd_co_wake(vbd_co_create(convert_worker, &cv));
    while (cv.running)
        vbd_co_queue_wait(&cv.done_q);
    if (cv.progress)
        tool_progress_end();
    if (!cv.error)
        cv.error = vbd_node_co_flush(cv.dst);
    if (cv.error) {
        vbd_error_report("error while writing at byte %llu: %s", (unsigned long long)cv.next, strerror(-cv.error));
        goto out;
    }
    rc = 0;
out:
    json_object_put(opts);
    if (cv.dst)
        vbd_node_unref(cv.dst);
    for (int i = 0; i < cv.nsrc; i++)
        if (cv.src[i])
            vbd_node_unref(cv.src[i]);
    free(cv.src);
    free(cv.src_start);
    return rc;
}

/* ------------------------------------------------------------------ */
/* resize, measure, check, snapshot, amend                             */

static int verb_resize(int argc, char **argv)
{
    const char *fmt = NULL, *prealloc_s = "off";
    bool shrink = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"shrink", no_argument, NULL, OPT_SHRINK},
                                       {"preallocation", required_argument, NULL, OPT_PREALLOC},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    /* As qemu-img: a last argument "-1G" is the size, not an option. */
    const char *neg_size = NULL;
    if (argc > 2 && argv[argc - 1][0] == '-' && argv[argc - 1][1] >= '0' && argv[argc - 1][1] <= '9')
        neg_size = argv[--argc];
    while ((c = getopt_long(argc, argv, "hf:q", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case OPT_SHRINK: shrink = true; break;
        case OPT_PREALLOC: prealloc_s = optarg; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img resize [-f fmt] [--preallocation=off|falloc|full] [--shrink] [-q] filename [+|-]size\n"
                   "Grow or (with --shrink) shrink the image's virtual size.\n");
            return 0;
        default: return 1;
        }
    }
    if (argc - optind != (neg_size ? 1 : 2)) {
        vbd_error_report("Expecting image file name and size");
        return 1;
    }
    const char *ss = neg_size ? neg_size : argv[optind + 1];
    int sign = 0;
    if (*ss == '+' || *ss == '-')
        sign = *ss++ == '+' ? 1 : -1;
    uint64_t delta;
    struct vbd_error *err = NULL;
    if (vbd_parse_size(ss, &delta, &err) < 0) {
        vbd_error_free(err);
        vbd_error_report("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, "
                         "megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return 1;
    }
    int prealloc = -1;
    for (int i = 0; vbd_prealloc_names[i]; i++)
        if (!strcmp(vbd_prealloc_names[i], prealloc_s))
            prealloc = i;
    if (prealloc < 0) {
        vbd_error_report("Invalid preallocation mode: '%s'", prealloc_s);
        return 1;
    }
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, VBD_OPEN_RDWR, NULL, NULL);
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
    int rc = 0;
    if (size < old && !shrink) {
        vbd_error_report("Use the --shrink option to perform a shrink operation.");
        vbd_warn("Shrinking an image will delete all data beyond the shrunken image's end. Before performing such "
                 "an operation, make sure there is no important data there.");
        rc = 1;
    } else if (size < old && prealloc) {
        vbd_error_report("Preallocation can only be used for growing images");
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

static int verb_measure(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = NULL;
    struct json_object *opts = NULL;
    bool json = false, force = false, image_opts = false;
    int64_t size = -1;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"size", required_argument, NULL, OPT_SIZE}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:O:o:U", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'U': force = true; break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return 1; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_SIZE:
            size = tool_cvtnum(optarg);
            if (size < 0) {
                vbd_error_report("Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
                                 "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
                return 1;
            }
            break;
        case 'h':
            printf("Usage: vbd-img measure [--output=human|json] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]\n"
                   "Print how much space converting to OUTPUT_FMT needs (required and fully allocated).\n");
            return 0;
        default: return 1;
        }
    }
    if (!out_fmt)
        out_fmt = "raw";
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

static int verb_check(int argc, char **argv)
{
    const char *fmt = NULL, *repair = NULL;
    bool json = false, quiet = false, force = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"repair", required_argument, NULL, 'r'}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:r:T:qU", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'r': repair = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force = true; break;
        case 'T': break;
        case OPT_OUTPUT: if (!parse_output(optarg, &json)) return 1; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-U] filename\n"
                   "Check an image's metadata. Exit: 0 clean, 1 check incomplete, 2 corruptions, 3 leaks only, 63 unsupported.\n");
            return 0;
        default: return 1;
        }
    }
    unsigned fix = 0;
    if (repair) {
        if (!strcmp(repair, "leaks"))
            fix = VBD_CHECK_FIX_LEAKS;
        else if (!strcmp(repair, "all"))
            fix = VBD_CHECK_FIX_LEAKS | VBD_CHECK_FIX_ERRORS;
        else {
            vbd_error_report("Unknown option value for -r (expecting 'leaks' or 'all'): %s", repair);
            return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    unsigned flags = VBD_OPEN_CHECK | VBD_OPEN_NO_BACKING | (fix ? VBD_OPEN_RDWR : 0) | (force ? VBD_OPEN_FORCE_SHARE : 0);
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, flags, NULL, NULL);
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
    if (ret < 0 && !r.check_errors)
        r.check_errors = 1;
    if (json) {
        struct json_object *o = json_object_new_object();
        /* the key order qemu-img prints */
        json_object_object_add(o, "image-end-offset", json_object_new_int64(r.image_end_offset));
        if (r.compressed_clusters) /* qemu-img leaves it out when zero */
            json_object_object_add(o, "compressed-clusters", json_object_new_int64((int64_t)r.compressed_clusters));
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
        json_object_object_add(o, "filename", json_object_new_string(n->filename));
        json_object_object_add(o, "format", json_object_new_string(img->drv->name));
        /* qemu-img leaves it out when zero */
        if (r.fragmented_clusters)
            json_object_object_add(o, "fragmented-clusters", json_object_new_int64((int64_t)r.fragmented_clusters));
        tool_print_json(o);
        json_object_put(o);
    } else if (!quiet) {
        if (r.leaks_fixed || r.corruptions_fixed)
            printf("The following inconsistencies were found and repaired:\n\n    %lld leaked clusters\n    %lld corruptions\n\nDouble checking the fixed image now...\n",
                   (long long)r.leaks_fixed, (long long)r.corruptions_fixed);
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
    if (r.check_errors)
        return 1;
    if (r.corruptions)
        return 2;
    if (r.leaks)
        return 3;
    return 0;
}

static int verb_snapshot(int argc, char **argv)
{
    const char *fmt = NULL, *name = NULL;
    char action = 0;
    bool quiet = false, force = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hlc:a:d:f:qU", lo, NULL)) != -1) {
        switch (c) {
        case 'l': case 'c': case 'a': case 'd':
            if (action) {
                vbd_error_report("Cannot mix '-l', '-a', '-c', '-d'");
                return 1;
            }
            action = (char)c;
            name = optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img snapshot [-l | -a snapshot | -c snapshot | -d snapshot] [-f fmt] [-q] [-U] filename\n"
                   "List, apply (revert to), create or delete internal snapshots.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1 || !action) {
        vbd_error_report(action ? "Expecting one image file name" : "One of -l, -a, -c, -d is required");
        return 1;
    }
    unsigned flags = action == 'l' ? (force ? VBD_OPEN_FORCE_SHARE : 0) : VBD_OPEN_RDWR;
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, flags | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!n)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(n);
    struct vbd_error *err = NULL;
    int rc = 0;
    if (!img->drv->snapshot_list) {
        vbd_error_report("Could not %s snapshot '%s': Operation not supported", action == 'l' ? "list" : action == 'c' ? "create" : action == 'a' ? "apply" : "delete",
                         name ? name : "");
        rc = 1;
    } else if (action == 'l') {
        struct json_object *o = image_info_json(img, &err);
        struct json_object *sn;
        if (o && json_object_object_get_ex(o, "snapshots", &sn)) {
            struct json_object *only = json_object_new_object();
            json_object_object_add(only, "filename", json_object_new_string(""));
            json_object_object_add(only, "format", json_object_new_string(""));
            json_object_object_add(only, "virtual-size", json_object_new_int64(0));
            json_object_object_add(only, "snapshots", json_object_get(sn));
            print_snapshot_table(sn);
            json_object_put(only);
        }
        json_object_put(o);
    } else if (action == 'c') {
        struct vbd_snapshot_info sn = {0};
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(sn.name, sizeof(sn.name), "%s", name);
        sn.date_sec = (uint32_t)ts.tv_sec;
        sn.date_nsec = (uint32_t)ts.tv_nsec;
        rc = img->drv->snapshot_create(img, &sn, &err) < 0;
        if (rc)
            vbd_error_report("Could not create snapshot '%s': %s", name, err ? err->msg : "failed");
    } else if (action == 'a') {
        rc = img->drv->snapshot_goto(img, name, &err) < 0;
        if (rc)
            vbd_error_report("Could not apply snapshot '%s': %s", name, err ? err->msg : "failed");
    } else {
        rc = img->drv->snapshot_delete(img, name, name, &err) < 0;
        if (rc)
            vbd_error_report("Could not delete snapshot '%s': %s", name, err ? err->msg : "failed");
    }
    vbd_error_free(err);
    (void)quiet;
    vbd_node_unref(n);
    return rc;
}

/* amend -o help: the options amend takes, listed as qemu-img lists them
 * (the format from -f, or from the image). */
static int print_amend_help(const char *fmt, const char *filename, bool image_opts)
{
    static const char *const amendable[] = {"backing_file", "backing_fmt",   "compat", "data_file", "data_file_raw",
                                            "lazy_refcounts", "refcount_bits", "size",   NULL};
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

static int verb_amend(int argc, char **argv)
{
    const char *fmt = NULL;
    struct json_object *opts = NULL;
    bool force = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"force", no_argument, NULL, OPT_FORCE},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "ho:f:t:pq", lo, NULL)) != -1) {
        switch (c) {
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case OPT_FORCE: force = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': case 'p': case 'q': break;
        case 'h':
            printf("Usage: vbd-img amend [-f fmt] [--force] -o options filename\nChange format options of an existing image.\n");
            return 0;
        default: return 1;
        }
    }
    if (!opts) {
        vbd_error_report("Must specify options (-o)");
        return 1;
    }
    if (o_is_help(opts)) {
        json_object_put(opts);
        return print_amend_help(fmt_or_null(fmt), optind < argc ? argv[optind] : NULL, image_opts);
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        json_object_put(opts);
        return 1;
    }
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!n) {
        json_object_put(opts);
        return 1;
    }
    struct vbd_node *img = vbd_node_skip_filters(n);
    int rc = 0;
    struct vbd_error *err = NULL;
    if (!img->drv->co_amend) {
        vbd_error_report("Format driver '%s' does not support option amendment", img->drv->name);
        rc = 1;
    } else if (img->drv->co_amend(img, opts, force, &err) < 0) {
        vbd_error_report("Error while amending options: %s", err ? err->msg : "failed");
        rc = 1;
    }
    vbd_error_free(err);
    json_object_put(opts);
    vbd_node_unref(n);
    return rc;
}

/* ------------------------------------------------------------------ */
/* commit, rebase                                                      */

static int copy_range(struct vbd_node *from, struct vbd_node *to, uint64_t off, uint64_t len, uint8_t *buf)
{
    while (len) {
        uint64_t l = len < 2 * MIB ? len : 2 * MIB;
        int rc = vbd_node_co_pread(from, off, buf, l);
        if (rc == 0)
            rc = vbd_buffer_is_zero(buf, l) ? vbd_node_co_pwrite_zeroes(to, off, l, 0) : vbd_node_co_pwrite(to, off, buf, l, 0);
        if (rc < 0)
            return rc;
        off += l;
        len -= l;
    }
    return 0;
}

static int verb_commit(int argc, char **argv)
{
    const char *fmt = NULL, *base_name = NULL;
    bool drop = false, progress = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:t:b:dpqr:", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'b': base_name = optarg; break;
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': case 'r': break;
        case 'h':
            printf("Usage: vbd-img commit [-q] [-f fmt] [-b base] [-d] [-p] filename\n"
                   "Write the image's own data into its backing file (or BASE further down the chain);\n"
                   "then empty the image unless -d.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    /* The top is opened without its chain, then the chain read-write: a
     * read-only backing child would hold the lock that forbids writers. */
    struct vbd_node *top = tool_open(argv[optind], fmt_or_null(fmt), image_opts, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!top)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(top);
    int rc = 1;
    struct vbd_node *base = NULL, *layers[64];
    int nlayers = 1;
    layers[0] = img;
    uint8_t *buf = NULL;
    if (!img->backing_file[0]) {
        vbd_error_report("Image does not have a backing file");
        goto out;
    }
    /* walk down: every image above the base is opened on its own (no chain),
     * read-only; the base read-write */
    for (;;) {
        struct vbd_node *cur = layers[nlayers - 1];
        if (!cur->backing_file[0]) {
            vbd_error_report("Base '%s' not found in the backing chain of '%s'", base_name, argv[optind]);
            goto out;
        }
        char path[4096], dir[4096];
        snprintf(dir, sizeof(dir), "%s", cur->file ? cur->file->filename : cur->filename);
        char *slash = strrchr(dir, '/');
        if (cur->backing_file[0] == '/' || !slash)
            snprintf(path, sizeof(path), "%s", cur->backing_file);
        else {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%s", dir, cur->backing_file);
        }
        char rp1[PATH_MAX], rp2[PATH_MAX];
        bool is_base = !base_name || !strcmp(base_name, path) || !strcmp(base_name, cur->backing_file) ||
                       (realpath(base_name, rp1) && realpath(path, rp2) && !strcmp(rp1, rp2));
        const char *bfmt = cur->backing_format[0] ? cur->backing_format : NULL;
        if (is_base) {
            base = tool_open(path, bfmt, false, VBD_OPEN_RDWR, NULL, NULL);
            if (!base)
                goto out;
            break;
        }
        if (nlayers == 64) {
            vbd_error_report("Backing chain of '%s' is longer than 64 images", argv[optind]);
            goto out;
        }
        layers[nlayers] = tool_open(path, bfmt, false, VBD_OPEN_NO_BACKING, NULL, NULL);
        if (!layers[nlayers])
            goto out;
        nlayers++;
    }
    if (base->size < img->size) {
        struct vbd_error *err = NULL;
        if (vbd_node_co_truncate(base, img->size, false, VBD_PREALLOC_OFF, &err) < 0) {
            tool_report(err);
            goto out;
        }
    }
    buf = vbd_alloc_aligned(4096, 2 * MIB);
    for (uint64_t off = 0; off < img->size;) {
        /* the topmost layer that has the range decides its content */
        uint64_t step = img->size - off;
        for (int i = 0; i < nlayers; i++) {
            struct vbd_node *l = layers[i];
            if (off >= l->size)
                continue;
            uint64_t pnum;
            int st = vbd_node_co_block_status(l, false, off, step < l->size - off ? step : l->size - off, &pnum, NULL, NULL);
            if (st < 0 || pnum == 0) {
                vbd_error_report("Could not read the allocation status at %llu: %s", (unsigned long long)off,
                                 strerror(st < 0 ? -st : EIO));
                goto out;
            }
            if (pnum < step)
                step = pnum;
            if (st & VBD_BS_ALLOCATED) {
                int r = (st & VBD_BS_ZERO) ? vbd_node_co_pwrite_zeroes(base, off, step, 0) : copy_range(l, base, off, step, buf);
                if (r < 0) {
                    vbd_error_report("Block job failed: %s", strerror(-r));
                    goto out;
                }
                break;
            }
        }
        off += step;
        if (progress && !quiet)
            tool_progress(100.0 * off / img->size);
    }
    if (progress && !quiet)
        tool_progress_end();
    if (vbd_node_co_flush(base) < 0) {
        vbd_error_report("Could not flush the base image");
        goto out;
    }
    /* as qemu-img: only a commit into the implicit (direct) backing file empties the image */
    if (!drop && !base_name && img->drv->co_make_empty) {
        int r = img->drv->co_make_empty(img);
        if (r < 0) {
            vbd_error_report("Could not empty %s: %s", argv[optind], strerror(-r));
            goto out;
        }
    }
    if (!quiet)
        printf("Image committed.\n");
    rc = 0;
out:
    free(buf);
    if (base)
        vbd_node_unref(base);
    for (int i = 1; i < nlayers; i++)
        vbd_node_unref(layers[i]);
    vbd_node_unref(top);
    return rc;
}

/* Do a and b differ in their first 512-byte sector; *run: how far that stays so, in whole sectors. */
static bool sector_run(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t *run)
{
    uint64_t i = len < 512 ? len : 512;
    bool differ = memcmp(a, b, i) != 0;
    while (i < len) {
        uint64_t l = len - i < 512 ? len - i : 512;
        if ((memcmp(a + i, b + i, l) != 0) != differ)
            break;
        i += l;
    }
    *run = i;
    return differ;
}

static int verb_rebase(int argc, char **argv)
{
    const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL;
    bool unsafe = false, progress = false, quiet = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
                                       {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:F:b:upt:T:qU", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 't': case 'T': case 'U': break;
        case 'h':
            printf("Usage: vbd-img rebase [-q] [-f fmt] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
                   "Change the backing file. Safe mode (default) first copies into the image every range where the\n"
                   "old and the new backing differ, so the guest-visible content stays the same; -u only rewrites the header.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1 || !backing) {
        vbd_error_report(backing ? "Expecting one image file name" : "Must specify backing file (-b) or use unsafe mode (-u)");
        return 1;
    }
    struct vbd_node *top = tool_open(argv[optind], fmt_or_null(fmt), image_opts,
                                     VBD_OPEN_RDWR | (unsafe ? VBD_OPEN_NO_BACKING : 0), NULL, NULL);
    if (!top)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(top);
    struct vbd_node *nb = NULL;
    uint8_t *b1 = NULL, *b2 = NULL;
    int rc = 1;
    if (!img->drv->change_backing_file) {
        vbd_error_report("Could not change the backing file to '%s': Operation not supported", backing);
        goto out;
    }
    if (!unsafe && *backing) {
        char path[4096], dir[4096];
        snprintf(dir, sizeof(dir), "%s", img->file ? img->file->filename : img->filename);
        char *slash = strrchr(dir, '/');
        if (backing[0] == '/' || !slash)
            snprintf(path, sizeof(path), "%s", backing);
        else {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%s", dir, backing);
        }
        nb = tool_open(path, fmt_or_null(backing_fmt), false, 0, NULL, NULL);
        if (!nb)
            goto out;
    }
    if (!unsafe) {
        b1 = vbd_alloc_aligned(4096, 2 * MIB);
        b2 = vbd_alloc_aligned(4096, 2 * MIB);
        for (uint64_t off = 0; off < img->size;) {
            uint64_t pnum;
            int st = vbd_node_co_block_status(img, false, off, img->size - off, &pnum, NULL, NULL);
            if (st < 0 || pnum == 0) {
                vbd_error_report("error while reading image metadata: %s", strerror(st < 0 ? -st : EIO));
                goto out;
            }
            if (pnum > 2 * MIB)
                pnum = 2 * MIB;
            if (!(st & VBD_BS_ALLOCATED)) {
                /* old view: the current backing chain; new view: nb (zeroes past its end or if none) */
                /* both read as zeroes past their ends */
                struct vbd_node *ob = img->backing;
                int r = 0;
                memset(b1, 0, pnum);
                if (ob && off < ob->size)
                    r = vbd_node_co_pread(ob, off, b1, off + pnum > ob->size ? ob->size - off : pnum);
                memset(b2, 0, pnum);
                if (r == 0 && nb && off < nb->size)
                    r = vbd_node_co_pread(nb, off, b2, off + pnum > nb->size ? nb->size - off : pnum);
                if (r < 0) {
                    vbd_error_report("error while reading: %s", strerror(-r));
                    goto out;
                }
                /* as qemu-img: only the 512-byte sectors where the two differ get the old data */
                for (uint64_t pos = 0; pos < pnum;) {
                    uint64_t run;
                    bool differ = sector_run(b1 + pos, b2 + pos, pnum - pos, &run);
                    if (differ && (r = vbd_node_co_pwrite(img, off + pos, b1 + pos, run, 0)) < 0) {
                        vbd_error_report("error while writing: %s", strerror(-r));
                        goto out;
                    }
                    pos += run;
                }
            }
            off += pnum;
            if (progress && !quiet)
                tool_progress(100.0 * off / img->size);
        }
        if (progress && !quiet)
            tool_progress_end();
    }
    struct vbd_error *err = NULL;
    if (img->drv->change_backing_file(img, backing, backing_fmt ? backing_fmt : (nb ? nb->drv->name : NULL), &err) < 0) {
        vbd_error_report("Could not change the backing file to '%s': %s", backing, err ? err->msg : "failed");
        vbd_error_free(err);
        goto out;
    }
    rc = 0;
out:
    free(b1);
    free(b2);
    if (nb)
        vbd_node_unref(nb);
    vbd_node_unref(top);
    return rc;
}

/* ------------------------------------------------------------------ */
/* dd                                                                  */

static int verb_dd(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = "raw", *in = NULL, *out = NULL;
    int64_t bs = 512, count = -1, skip = 0;
    bool force = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"force-share", no_argument, NULL, 'U'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hf:O:U", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'U': force = true; break;
        case 'h':
            printf("Usage: vbd-img dd [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n"
                   "Copy COUNT blocks of BS bytes (default 512) from INPUT, skipping SKIP blocks, into a new OUTPUT image.\n");
            return 0;
        default: return 1;
        }
    }
    for (int i = optind; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            vbd_error_report("unrecognized operand %s", argv[i]);
            return 1;
        }
        size_t kl = eq - argv[i];
        const char *v = eq + 1;
        if (!strncmp(argv[i], "if", kl) && kl == 2)
            in = v;
        else if (!strncmp(argv[i], "of", kl) && kl == 2)
            out = v;
        else if (!strncmp(argv[i], "bs", kl) && kl == 2) {
            bs = tool_cvtnum(v);
            if (bs <= 0 || bs > INT32_MAX) {
                vbd_error_report("invalid number: '%s'", v);
                return 1;
            }
        } else if (!strncmp(argv[i], "count", kl) && kl == 5) {
            count = tool_cvtnum(v);
            if (count < 0) {
                vbd_error_report("invalid number: '%s'", v);
                return 1;
            }
        } else if (!strncmp(argv[i], "skip", kl) && kl == 4) {
            skip = tool_cvtnum(v);
            if (skip < 0) {
                vbd_error_report("invalid number: '%s'", v);
                return 1;
            }
        } else {
            vbd_error_report("unrecognized operand %s", argv[i]);
            return 1;
        }
    }
    if (!in || !out) {
        vbd_error_report("Must specify both input and output files");
        return 1;
    }
    struct vbd_node *src = tool_open(in, fmt_or_null(fmt), false, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
    if (!src)
        return 1;
    /* qemu-img dd sizes the output as count*bs and then drops the skipped
     * part (count counts from the start of the input, not from skip). */
    uint64_t start = (uint64_t)skip * bs;
    uint64_t end = src->size;
    if (count >= 0 && (uint64_t)count * bs < end)
        end = (uint64_t)count * bs;
    if (start > end) {
        vbd_error_report("cannot skip to specified offset");
        vbd_node_unref(src);
        return 1;
    }
    uint64_t len = end - start;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "size", json_object_new_int64((int64_t)len));
    struct vbd_error *err = NULL;
    int rc = 1;
    struct vbd_node *dst = NULL;
    uint8_t *buf = NULL;
    if (vbd_image_co_create(out_fmt, out, o, &err) < 0) {
        vbd_error_report("%s: error while creating output image: %s", out, err ? err->msg : "failed");
        vbd_error_free(err);
        goto done;
    }
    dst = tool_open(out, out_fmt, false, VBD_OPEN_RDWR, NULL, NULL);
    if (!dst)
        goto done;
    buf = vbd_alloc_aligned(4096, (size_t)bs);
    for (uint64_t pos = 0; pos < len;) {
        uint64_t l = len - pos < (uint64_t)bs ? len - pos : (uint64_t)bs;
        int r = vbd_node_co_pread(src, start + pos, buf, l);
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

/* ------------------------------------------------------------------ */
/* bench                                                               */

struct bench {
    struct vbd_node *n;
    bool write;
    uint64_t bufsize, step, offset, image_size;
    int64_t count, issued, completed;
    int64_t flush_interval;
    bool drain;
    int in_flight;
    int error;
    struct vbd_co_queue done_q, drain_q;
    bool flushing;
    int workers;
};

static void bench_worker(void *opaque)
{
    struct bench *b = opaque;
    uint8_t *buf = vbd_alloc_aligned(4096, b->bufsize);
    memset(buf, 0, b->bufsize);
    struct iovec one = {buf, b->bufsize};
    struct vbd_qiov q = {&one, 1, b->bufsize};
    extern int bench_pattern;
    if (bench_pattern >= 0)
        memset(buf, bench_pattern, b->bufsize);
    while (!b->error && b->issued < b->count) {
        while (b->flushing)
            vbd_co_queue_wait(&b->drain_q);
        if (b->issued >= b->count)
            break;
        uint64_t off = b->offset;
        /* as qemu-img bench: wrap modulo the image size, so a large
         * step gives a strided pseudo-random pattern */
        b->offset = (b->offset + b->step) % b->image_size;
        if (b->offset + b->bufsize > b->image_size)
            b->offset = 0;
        b->issued++;
        b->in_flight++;
        int rc = b->write ? vbd_node_co_pwritev(b->n, off, b->bufsize, &q, 0, 0)
                          : vbd_node_co_preadv(b->n, off, b->bufsize, &q, 0, 0);
        b->in_flight--;
        if (rc < 0) {
            b->error = rc;
            break;
        }
        b->completed++;
        if (b->flush_interval && b->completed % b->flush_interval == 0) {
            if (b->drain) {
                b->flushing = true;
                while (b->in_flight)
                    vbd_co_queue_wait(&b->done_q);
            }
            int r = vbd_node_co_flush(b->n);
            b->flushing = false;
            vbd_co_queue_wake_all(&b->drain_q);
            if (r < 0) {
                b->error = r;
                break;
            }
        }
        if (b->flushing && !b->in_flight)
            vbd_co_queue_wake_all(&b->done_q);
    }
    free(buf);
    b->workers--;
    vbd_co_queue_wake_all(&b->done_q);
    vbd_co_queue_wake_all(&b->drain_q);
}

int bench_pattern = -1;

static int verb_bench(int argc, char **argv)
{
    const char *fmt = NULL, *cache = "writeback", *aio = NULL;
    int64_t count = 75000, depth = 64, bufsize = 4096, step = 0, offset = 0, flush_interval = 0;
    bool write = false, quiet = false, force = false, no_drain = false, image_opts = false;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"pattern", required_argument, NULL, OPT_PATTERN},
                                       {"flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL},
                                       {"no-drain", no_argument, NULL, OPT_NO_DRAIN}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hc:d:f:ni:o:qs:S:t:wU", lo, NULL)) != -1) {
        switch (c) {
        case 'c': count = tool_cvtnum(optarg); if (count <= 0) { vbd_error_report("Invalid request count specified"); return 1; } break;
        case 'd': depth = tool_cvtnum(optarg); if (depth <= 0 || depth > 4096) { vbd_error_report("Invalid queue depth specified"); return 1; } break;
        case 'f': fmt = optarg; break;
        case 'n': cache = "none"; break;
        case 'i': aio = optarg; break;
        case 'o': offset = tool_cvtnum(optarg); if (offset < 0) { vbd_error_report("Invalid offset specified"); return 1; } break;
        case 'q': quiet = true; break;
        case 's': bufsize = tool_cvtnum(optarg); if (bufsize <= 0 || bufsize > INT32_MAX) { vbd_error_report("Invalid buffer size specified"); return 1; } break;
        case 'S': step = tool_cvtnum(optarg); if (step < 0) { vbd_error_report("Invalid step size specified"); return 1; } break;
        case 't': cache = optarg; break;
        case 'w': write = true; break;
        case 'U': force = true; break;
        case OPT_PATTERN: bench_pattern = (int)strtol(optarg, NULL, 0) & 0xff; break;
        case OPT_FLUSH_INTERVAL: flush_interval = tool_cvtnum(optarg); if (flush_interval < 0) { vbd_error_report("Invalid flush interval specified"); return 1; } break;
        case OPT_NO_DRAIN: no_drain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [--no-drain] [-i aio] [-n]\n"
                   "                     [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
                   "Run COUNT sequential requests (step -S, default the buffer size) with DEPTH in flight; same options as qemu-img bench.\n");
            return 0;
        default: return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("Expecting one image file name");
        return 1;
    }
    if (!write && (flush_interval || bench_pattern >= 0)) {
        vbd_error_report(flush_interval ? "--flush-interval is only available in write tests" : "--pattern is only available in write tests");
        return 1;
    }
    unsigned flags = (write ? VBD_OPEN_RDWR : 0) | (force ? VBD_OPEN_FORCE_SHARE : 0);
    if (tool_aio_flags(aio, &flags) < 0)
        return 1;
    struct vbd_node *n = tool_open(argv[optind], fmt_or_null(fmt), image_opts, flags, cache, NULL);
    if (!n)
        return 1;
    struct bench b = {.n = n, .write = write, .bufsize = bufsize, .step = step ? step : bufsize, .offset = offset,
                      .image_size = n->size, .count = count, .flush_interval = flush_interval, .drain = !no_drain};
    if ((uint64_t)bufsize > n->size) {
        vbd_error_report("Buffer size is larger than the image");
        vbd_node_unref(n);
        return 1;
    }
    if (!quiet)
        printf("Sending %lld %s requests, %lld bytes each, %lld in parallel (starting at offset %lld, step size %lld)\n",
               (long long)count, write ? "write" : "read", (long long)bufsize, (long long)depth, (long long)offset,
               (long long)b.step);
    if (flush_interval && !quiet)
        printf("Sending flush every %lld requests\n", (long long)flush_interval);
    uint64_t t0 = vbd_clock_ns();
    b.workers = (int)(depth < count ? depth : count);
    int nw = b.workers;
    for (int i = 0; i < nw; i++)
        vbd_co_wake(vbd_co_create(bench_worker, &b));
    while (b.workers)
        vbd_co_queue_wait(&b.done_q);
    double secs = (vbd_clock_ns() - t0) / 1e9;
    int rc = 0;
    if (b.error) {
        vbd_error_report("Failed request: %s", strerror(-b.error));
        rc = 1;
    } else if (!quiet) {
        printf("Run completed in %3.3f seconds.\n", secs);
    }
    vbd_node_unref(n);
    return rc;
}

/* ------------------------------------------------------------------ */
/* dispatch                                                            */

int verb_bitmap(int argc, char **argv); /* img-bitmap.c */

static const struct verb {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} verbs[] = {
    {"amend", verb_amend, "change format options of an image"},
    {"bench", verb_bench, "run a simple I/O benchmark on an image"},
    {"bitmap", verb_bitmap, "add, remove, clear, enable, disable or merge persistent dirty bitmaps"},
    {"check", verb_check, "check (and repair) an image's metadata"},
    {"commit", verb_commit, "write an image's changes into its backing file"},
    {"compare", verb_compare, "compare the contents of two images"},
    {"convert", verb_convert, "convert/copy images between formats"},
    {"create", verb_create, "create a new image"},
    {"dd", verb_dd, "copy part of an image like dd(1)"},
    {"info", verb_info, "show information about an image"},
    {"map", verb_map, "show where an image's data is"},
    {"measure", verb_measure, "measure the space a conversion needs"},
    {"rebase", verb_rebase, "change the backing file of an image"},
    {"resize", verb_resize, "change the virtual size of an image"},
    {"snapshot", verb_snapshot, "list, create, apply or delete internal snapshots"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "vbd-img version " VBD_VERSION_STR "\n"
               "usage: vbd-img [--help | --version] COMMAND [command options]\n"
               "A disk image tool with qemu-img's commands, options, exit codes and JSON output.\n\nCommands:\n");
    for (const struct verb *v = verbs; v->name; v++)
        fprintf(f, "  %-10s %s\n", v->name, v->summary);
    fprintf(f, "\nRun 'vbd-img COMMAND --help' for a command's options. Every command also takes\n"
               "--object tls-creds-x509|tls-creds-psk,id=ID,dir=DIR,endpoint=client,... for nbd nodes' tls-creds=ID.\n"
               "NBD filenames: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, and with TLS required\n"
               "nbds:// and nbds+unix:// taking libnbd's tls-certificates=DIR, tls-psk-file=FILE, tls-username=NAME,\n"
               "tls-verify-peer=false, tls-hostname=NAME, or tls-creds=ID (an --object).\n"
               "Supported formats:");
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
        fprintf(f, " %s", (*d)->name);
    fprintf(f, "\n");
}

static void run_verb(void *opaque)
{
    const struct verb *v = opaque;
    verb_rc = v->fn(verb_argc, verb_argv);
}

int main(int argc, char **argv)
{
    vbd_log_set_prog("vbd-img");
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("vbd-img version " VBD_VERSION_STR "\n");
        return 0;
    }
    for (const struct verb *v = verbs; v->name; v++) {
        if (!strcmp(v->name, argv[1])) {
            verb_argc = argc - 1;
            verb_argv = argv + 1;
            /* --object (TLS credentials for nbd nodes) works with every command, as in qemu-img */
            if (tool_take_objects(&verb_argc, verb_argv) < 0) {
                vbd_tls_creds_remove_all();
                return 1;
            }
            optind = 1;
            /* qemu-img's raw-probing warning is noise for a tool run */
            vbd_co_run_sync(run_verb, (void *)v);
            vbd_tls_creds_remove_all();
            fflush(stdout);
            return verb_rc;
        }
    }
    vbd_error_report("Command not found: %s", argv[1]);
    return 1;
}
