/* SPDX-License-Identifier: MIT */
/*
 * vbd-img info; its image JSON and snapshot table are shared with snapshot -l.
 */
#include "img.h"

#include "vbd/alloc.h"

struct json_object *image_info_json(struct vbd_node *n, struct vbd_error **err)
{
    struct vbd_image_info info;
    if (vbd_node_get_info(n, &info, err) < 0)
        return NULL;
    struct json_object *o = json_object_new_object();
    /* qemu-img prints this key first (its dictionary order) */
    if (n->backing_file[0] && n->backing_format[0])
        json_object_object_add(o, "backing-filename-format", json_object_new_string(n->backing_format));
    struct vbd_snapshot_info *sn = NULL;
    /* as QEMU's snapshot fallback: raw shows its protocol's (rbd's) snapshots */
    struct vbd_node *sn_node = n;
    while (!sn_node->drv->snapshot_list && sn_node->file && sn_node->file != sn_node && !sn_node->backing &&
           sn_node->drv->kind != VBD_DRV_PROTOCOL)
        sn_node = sn_node->file;
    int nsn = sn_node->drv->snapshot_list ? sn_node->drv->snapshot_list(sn_node, &sn) : 0;
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
    /* qemu-img shows it when the image (or, for raw, its protocol) answers get_info: not over NBD,
     * nor for parallels (QEMU 7.2's parallels driver has no get_info; vbd-io's info stops there too) */
    if (info.has_dirty_flag ||
        (!(vbd_node_bottom(n)->drv->caps & VBD_DRV_CAP_REMOTE) && strcmp(n->drv->name, "parallels")))
        json_object_object_add(o, "dirty-flag", json_object_new_boolean(info.dirty_flag));
    return o;
}


/* qemu-img's snapshot table (info and snapshot -l) */
void print_snapshot_table(struct json_object *v)
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
            tool_print_specific(data, 4);
    }
}

int verb_info(int argc, char **argv)
{
    const char *output = NULL;
    const char *fmt = NULL;
    bool json = false, chain = false, image_opts = false, force = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, 
        {"help", no_argument, NULL, 'h'},          {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT}, {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":f:hU", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'f': fmt = optarg; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_BACKING_CHAIN: chain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case 'U': force = true; break;
        case 'h':
            printf("Usage: vbd-img info [-f fmt] [--output=human|json] [--backing-chain] [-U] [--image-opts] filename\n"
                   "Print the format, sizes, backing file and format-specific data of an image.\n");
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
    /* As qemu-img: image by image, each opened without its backing file and
     * the next one named by its full backing file name and format, so that
     * an image that cannot be opened is named itself, and a name met twice
     * (a loop, through a file, json: or NBD alike) ends the walk. */
    struct json_object *list = json_object_new_array();
    char **seen = NULL;
    size_t nseen = 0;
    char *name = vbd_xstrdup(argv[optind]), *name_fmt = fmt ? vbd_xstrdup(fmt) : NULL;
    bool first = true;
    int rc = 0;
    while (name) {
        bool looped = false;
        for (size_t i = 0; i < nseen && !looped; i++)
            looped = !strcmp(seen[i], name);
        if (looped) {
            vbd_error_report("Backing file '%s' creates an infinite loop.", name);
            rc = 1;
            break;
        }
        seen = vbd_xrealloc(seen, (nseen + 1) * sizeof(*seen));
        seen[nseen++] = name; /* freed with seen from here on */
        struct vbd_node *img = tool_open(name, name_fmt, first && image_opts,
                                         (force ? VBD_OPEN_FORCE_SHARE : 0) | VBD_OPEN_NO_IO | VBD_OPEN_NO_BACKING,
                                         NULL, NULL);
        name = NULL;
        free(name_fmt);
        name_fmt = NULL;
        if (!img) {
            rc = 1;
            break;
        }
        struct vbd_error *err = NULL;
        struct json_object *o = image_info_json(img, &err);
        if (!o) {
            tool_report(err);
            vbd_node_unref(img);
            rc = 1;
            break;
        }
        json_object_array_add(list, o);
        if (chain && img->backing_file[0]) {
            name = vbd_xstrdup(img->full_backing_filename[0] ? img->full_backing_filename : img->backing_file);
            name_fmt = img->backing_format[0] ? vbd_xstrdup(img->backing_format) : NULL;
        }
        vbd_node_unref(img);
        first = false;
    }
    free(name);
    free(name_fmt);
    for (size_t i = 0; i < nseen; i++)
        free(seen[i]);
    free(seen);
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
    return rc;
}
