/* SPDX-License-Identifier: MIT */
/*
 * vbd-img snapshot.
 */
#include "img.h"

int verb_snapshot(int argc, char **argv)
{
    const char *fmt = NULL, *name = NULL;
    char action = 0;
    bool quiet = false, force = false, image_opts = false;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"force-share", no_argument, NULL, 'U'},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hlc:a:d:f:qU", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return 1; break;
        case 'l': case 'c': case 'a': case 'd':
            if (action) {
                return img_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
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
        default: return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    /* -U with -c/-a/-d: the read-write open refuses it, as qemu-img's */
    unsigned flags = (action == 'l' ? 0 : VBD_OPEN_RDWR) | (force ? VBD_OPEN_FORCE_SHARE : 0);
    struct vbd_node *n = tool_open(argv[optind], fmt, image_opts, flags | VBD_OPEN_NO_BACKING, NULL, NULL);
    if (!n)
        return 1;
    struct vbd_node *img = vbd_node_skip_filters(n);
    /* as QEMU's snapshot fallback: a format without snapshots (raw) passes
     * them to its file (rbd) */
    while (!img->drv->snapshot_list && img->file && img->file != img && !img->backing)
        img = img->file;
    struct vbd_error *err = NULL;
    int rc = 0;
    if (!action) {
        /* qemu-img opens the image (read-write) and does nothing */
    } else if (!img->drv->snapshot_list) {
        /* qemu-img's words for a format without snapshots: -l lists none */
        if (action == 'c')
            vbd_error_report("Could not create snapshot '%s': %d (%s)", name, -ENOTSUP, strerror(ENOTSUP));
        else if (action == 'a')
            vbd_error_report("Could not apply snapshot '%s': Block driver does not support snapshots", name);
        else if (action == 'd')
            vbd_error_report("Could not delete snapshot '%s': snapshot not found", name);
        rc = action != 'l';
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
        sn.icount_valid = true; /* qemu-img snapshot -c records an icount of 0 */
        rc = img->drv->snapshot_create(img, &sn, &err) < 0;
        if (rc)
            vbd_error_report("Could not create snapshot '%s': %d (%s)", name, -(err ? err->code : EIO),
                             strerror(err ? err->code : EIO));
    } else if (action == 'a') {
        rc = img->drv->snapshot_goto(img, name, &err) < 0;
        if (rc)
            vbd_error_report("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
                             strerror(err ? err->code : EIO));
    } else {
        /* qemu-img finds the snapshot by its name alone (bdrv_snapshot_find),
         * the first of that name, and deletes it by its id */
        struct vbd_snapshot_info *list = NULL;
        int count = img->drv->snapshot_list(img, &list), i = 0;
        while (i < count && strcmp(list[i].name, name))
            i++;
        if (i >= count) {
            vbd_error_report("Could not delete snapshot '%s': snapshot not found", name);
            rc = 1;
        } else if (img->drv->snapshot_delete(img, list[i].id, NULL, &err) < 0) {
            vbd_error_report("Could not delete snapshot '%s': %s", name, err ? err->msg : "failed");
            rc = 1;
        }
        free(list);
    }
    vbd_error_free(err);
    (void)quiet;
    vbd_node_unref(n);
    return rc;
}
