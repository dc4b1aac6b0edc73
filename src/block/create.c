/* SPDX-License-Identifier: MIT */
#include "vbd/block.h"
#include "vbd/error.h"

#include <errno.h>
#include <json-c/json.h>
#include <string.h>

/* The file protocol's hints among a format's creation options (qemu-img
 * create -f qcow2 -o nocow=on): QEMU hands a format's options on to every
 * file its create makes (the image, a qcow2 data file, a vmdk's extents).
 * Here they are taken out of the format's options (whose drivers refuse
 * what they do not know) and passed down through the format's co_create,
 * which gives them to vbd_create_protocol*() for each file it makes: each
 * create has its own, also when creates interleave (two QMP commands or
 * jobs, each yielding in its I/O). */
static const char *const format_file_hint_names[] = {"nocow", "extent_size_hint", "preallocation", NULL};

static bool has_create_opt(const struct vbd_driver *drv, const char *name)
{
    for (const struct vbd_opt_desc *d = drv->create_opts; d && d->name; d++)
        if (!strcmp(d->name, name))
            return true;
    return false;
}

int vbd_image_co_create(const char *fmt, const char *filename, struct json_object *opts, struct vbd_error **err)
{
    const struct vbd_driver *drv = vbd_driver_find(fmt);
    if (!drv) {
        vbd_error_setf(err, EINVAL, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    if (!drv->co_create) {
        vbd_error_setf(err, ENOTSUP, "Format driver '%s' does not support image creation", fmt);
        return -ENOTSUP;
    }
    struct json_object *hints = NULL, *v;
    /* (a protocol driver created directly takes them as its own options) */
    for (const char *const *name = format_file_hint_names; opts && drv->kind == VBD_DRV_FORMAT && *name; name++) {
        /* preallocation: the format's own where it has one (qcow2, raw) */
        if (!json_object_object_get_ex(opts, *name, &v) || has_create_opt(drv, *name))
            continue;
        if (!hints)
            hints = json_object_new_object();
        json_object_object_add(hints, *name, json_object_get(v));
        json_object_object_del(opts, *name);
    }
    int rc = drv->co_create(filename, NULL, opts, hints, err);
    json_object_put(hints);
    return rc;
}

int vbd_create_protocol(const char *filename, uint64_t size, enum vbd_prealloc prealloc, struct json_object *file_hints,
                        struct vbd_error **err)
{
    return vbd_create_protocol_opts(filename, size, prealloc, file_hints, NULL, err);
}

int vbd_create_protocol_opts(const char *filename, uint64_t size, enum vbd_prealloc prealloc,
                             struct json_object *file_hints, struct json_object *extra, struct vbd_error **err)
{
    const struct vbd_driver *drv = NULL;
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    if (colon && (!slash || colon < slash)) {
        for (const struct vbd_driver *const *d = vbd_driver_list(); *d && !drv; d++)
            for (const char *const *p = (*d)->protocols; p && *p; p++)
                if (strlen(*p) == (size_t)(colon - filename) && !strncmp(*p, filename, colon - filename))
                    drv = *d;
    }
    if (!drv)
        drv = vbd_driver_find("file");
    if (!drv->co_create) {
        vbd_error_setf(err, ENOTSUP, "Protocol driver '%s' does not support image creation", drv->name);
        return -ENOTSUP;
    }
    struct json_object *o = json_object_new_object();
    if (file_hints && json_object_object_get_ex(file_hints, "preallocation", NULL)) {
        /* a format without a preallocation option of its own (vdi, vpc,
         * vhdx, vmdk, qed, parallels) hands the option to the file it is
         * made in, which qemu-img 7.2 creates empty with it (then the
         * format writes what it writes): the mode checked in the file
         * protocol's words, nothing allocated */
        json_object_object_foreach(file_hints, hk, hv)
            json_object_object_add(o, hk, json_object_get(hv));
        json_object_object_add(o, "size", json_object_new_int64(0));
        int rc = drv->co_create(filename, NULL, o, NULL, err);
        json_object_put(o);
        if (rc < 0)
            return rc;
        o = json_object_new_object();
    }
    struct json_object *lists[2] = {file_hints, extra};
    for (int i = 0; i < 2; i++) {
        if (!lists[i])
            continue;
        json_object_object_foreach(lists[i], k, val) {
            bool known = false;
            if (lists[i] == file_hints && !strcmp(k, "preallocation"))
                continue; /* above */
            for (const struct vbd_opt_desc *d = drv->create_opts; d && d->name && !known; d++)
                known = !strcmp(d->name, k);
            if (!known) {
                vbd_error_setf(err, EINVAL, "Protocol driver '%s' does not support option '%s'", drv->name, k);
                json_object_put(o);
                return -EINVAL;
            }
            json_object_object_add(o, k, json_object_get(val));
        }
    }
    json_object_object_add(o, "size", json_object_new_int64((int64_t)size));
    json_object_object_add(o, "preallocation", json_object_new_string(vbd_prealloc_names[prealloc]));
    int rc = drv->co_create(filename, NULL, o, NULL, err);
    json_object_put(o);
    return rc;
}

struct vbd_node *vbd_create_protocol_node(const char *filename, struct vbd_node *target, uint64_t size,
                                          struct json_object *file_hints, struct vbd_error **err)
{
    if (!target) {
        if (vbd_create_protocol(filename, size, VBD_PREALLOC_OFF, file_hints, err) < 0)
            return NULL;
        return vbd_open(filename, json_object_new_object(), VBD_OPEN_RDWR | VBD_OPEN_PROTOCOL, err);
    }
    /* as a new file: nothing of the old content left (shrinking needs
     * exact); a device keeps its size (-ENOTSUP), as vbd_create_protocol
     * leaves it */
    struct vbd_error *e = NULL;
    int rc = target->drv->co_truncate ? vbd_node_co_truncate(target, 0, true, VBD_PREALLOC_OFF, &e) : 0;
    if (rc == 0 && size)
        rc = vbd_node_co_truncate(target, size, true, VBD_PREALLOC_OFF, &e);
    if (rc < 0 && rc != -ENOTSUP) {
        vbd_error_propagate(err, e);
        return NULL;
    }
    vbd_error_free(e);
    vbd_node_ref(target);
    return target;
}
