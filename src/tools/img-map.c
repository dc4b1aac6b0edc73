/* SPDX-License-Identifier: MIT */
/*
 * vbd-img map.
 */
#include "img.h"

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

int verb_map(int argc, char **argv)
{
    const char *output = NULL;
    const char *fmt = NULL;
    bool json = false, image_opts = false, force = false;
    int64_t start = 0, maxlen = -1;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, 
        {"help", no_argument, NULL, 'h'},          {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},   {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":f:hUs:l:", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'U': force = true; break;
        case 's': if ((start = img_cvtnum("start offset", optarg, 0, INT64_MAX)) < 0) return 1; break;
        case 'l': if ((maxlen = img_cvtnum("max length", optarg, 0, INT64_MAX)) < 0) return 1; break;
        case 'h':
            printf("Usage: vbd-img map [-f fmt] [--output=human|json] [-U] [--start-offset=N] [--max-length=N] filename\n"
                   "Print where the image's data is: allocated, zero, which layer of the backing chain, host offset.\n");
            return 0;
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return 1;
    }
    /* --output's value is checked after the file name, as qemu-img does */
    if (output && !parse_output(output, &json))
        return 1;
    struct vbd_node *n = tool_open(argv[optind], fmt, image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, NULL, NULL);
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
    if (json && first && !rc) { /* nothing to map: qemu-img prints its empty entry at the start offset */
        struct map_entry none = {.start = (uint64_t)start};
        map_print(&none, true, true);
        first = false;
    }
    if (json)
        printf(first ? "[]\n" : "]\n");
    vbd_node_unref(n);
    return rc;
}
