/* SPDX-License-Identifier: MIT */
/*
 * QMP blockdev-mirror and drive-mirror (qapi/block-core.json), their checks
 * in QEMU 7.2's order and words (blockdev.c qmp_blockdev_mirror,
 * qmp_drive_mirror, blockdev_mirror_common, mirror_start); the job itself
 * is src/job/mirror.c.
 */
#include "daemon/objects.h"
#include "qmp/cmd-block.h"
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/job.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char *arg_str(struct json_object *args, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : NULL;
}

static bool arg_bool(struct json_object *args, const char *key, bool def)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_boolean(v) : def;
}

static int64_t arg_int(struct json_object *args, const char *key, int64_t def)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_int64(v) : def;
}

static int parse_enum(struct json_object *args, const char *key, const char *const *names, int n, int def,
                      struct vbd_qmp_error *err)
{
    const char *s = arg_str(args, key);
    if (!s)
        return def;
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", key, s);
    return -1;
}

static int parse_on_error(struct json_object *args, const char *key, enum vbd_on_error *out,
                          struct vbd_qmp_error *err)
{
    static const char *const names[] = {"report", "ignore", "enospc", "stop", "auto"};
    int v = parse_enum(args, key, names, 5, VBD_ON_ERROR_REPORT, err);
    if (v < 0)
        return -1;
    /* a job's 'auto' is report (the device's policy is for devices) */
    *out = v == VBD_ON_ERROR_AUTO ? VBD_ON_ERROR_REPORT : (enum vbd_on_error)v;
    return 0;
}

static bool blocked(struct vbd_node *n, struct vbd_qmp_error *err)
{
    struct vbd_job *j = vbd_job_using_node(n);
    if (j)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: block device is in use by block job: %s",
                           n->node_name, j->drv->type);
    return j != NULL;
}

/* What both commands share: the sync mode (-1: refused) and the job's options. */
static int common_args(struct json_object *args, struct vbd_mirror_args *a, struct vbd_qmp_error *err)
{
    static const char *const syncs[] = {"full", "top", "none", "incremental", "bitmap"};
    static const char *const modes[] = {"background", "write-blocking"};
    int sync = parse_enum(args, "sync", syncs, 5, 0, err);
    if (sync < 0)
        return -1;
    int copy_mode = parse_enum(args, "copy-mode", modes, 2, 0, err);
    if (copy_mode < 0)
        return -1;
    if (parse_on_error(args, "on-source-error", &a->on_source_error, err) < 0 ||
        parse_on_error(args, "on-target-error", &a->on_target_error, err) < 0)
        return -1;
    a->filter_node_name = arg_str(args, "filter-node-name"); /* drive-mirror has none (QEMU 7.2) */
    a->write_blocking = copy_mode == 1;
    a->job_id = arg_str(args, "job-id");
    if (!a->job_id)
        a->job_id = ""; /* QEMU's default is the device's BlockBackend name, which a daemon's node has not */
    a->speed = arg_int(args, "speed", 0);
    int64_t g = arg_int(args, "granularity", 0), buf = arg_int(args, "buf-size", 0);
    a->auto_finalize = arg_bool(args, "auto-finalize", true);
    a->auto_dismiss = arg_bool(args, "auto-dismiss", true);
    a->unmap = arg_bool(args, "unmap", true);
    if (g != 0 && (g < 512 || g > 64 * 1024 * 1024)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'granularity' expects a value in range [512B, 64MB]");
        return -1;
    }
    if (g & (g - 1)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'granularity' expects a power of 2");
        return -1;
    }
    a->granularity = (uint64_t)g;
    if (sync >= 3) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Sync mode '%s' not supported", syncs[sync]);
        return -1;
    }
    if (buf < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter 'buf-size'");
        return -1;
    }
    a->buf_size = (uint64_t)buf;
    a->sync = (enum vbd_mirror_sync)sync; /* top without a backing file: the job counts as QEMU's (mirror.c) */
    return 0;
}

static int replaces_arg(struct json_object *args, struct vbd_mirror_args *a, struct vbd_qmp_error *err)
{
    const char *r = arg_str(args, "replaces");
    if (!r)
        return 0;
    a->replaces = vbd_node_find(r);
    if (!a->replaces) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to find node with node-name='%s'", r);
        return -1;
    }
    if (blocked(a->replaces, err))
        return -1;
    if (vbd_node_size(a->replaces) != vbd_node_size(a->target)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "cannot replace image with a mirror image of different size");
        return -1;
    }
    return 0;
}

static struct json_object *qmp_blockdev_mirror(struct json_object *args, struct vbd_qmp_error *err)
{
    struct vbd_mirror_args a = {0};
    if (!(a.src = qmp_get_root_bs(arg_str(args, "device"), err)))
        return NULL;
    if (!(a.target = qmp_lookup_node(arg_str(args, "target"), err)))
        return NULL;
    /* the target joins the source's thread (QEMU moves it here, before
     * the other checks): refused while an export pins it elsewhere */
    if (vbd_daemon_node_pinned(a.target, vbd_node_home_loop(a.src))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change iothread of active block backend");
        return NULL;
    }
    vbd_daemon_co_join_source_loop(a.target, a.src);
    if (blocked(a.src, err) || blocked(a.target, err))
        return NULL;
    if (common_args(args, &a, err) < 0 || replaces_arg(args, &a, err) < 0)
        return NULL;
    if (!vbd_mirror_start(&a, err))
        return NULL;
    return vbd_qmp_ok();
}

static struct json_object *qmp_drive_mirror(struct json_object *args, struct vbd_qmp_error *err)
{
    struct vbd_mirror_args a = {0};
    const char *file = arg_str(args, "target"), *format = arg_str(args, "format"), *mode = arg_str(args, "mode");
    const char *node_name = arg_str(args, "node-name");
    if (!(a.src = qmp_get_root_bs(arg_str(args, "device"), err)))
        return NULL;
    if (blocked(a.src, err))
        return NULL;
    bool existing = false;
    if (mode) {
        if (!strcmp(mode, "existing"))
            existing = true;
        else if (strcmp(mode, "absolute-paths")) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'mode' does not accept value '%s'", mode);
            return NULL;
        }
    }
    if (!format && !existing)
        format = a.src->drv->name;
    if (common_args(args, &a, err) < 0)
        return NULL;
    if (arg_str(args, "replaces") && !node_name) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "a node-name must be provided when replacing a named node of the graph");
        return NULL;
    }
    if (node_name && vbd_node_find(node_name)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Duplicate nodes with node-name='%s'", node_name);
        return NULL;
    }
    /* the target's backing: none (full), the source's backing (top), the source itself (none) */
    struct vbd_node *backing = a.sync == VBD_MIRROR_SYNC_NONE ? a.src : a.sync == VBD_MIRROR_SYNC_TOP ? a.src->backing : NULL;
    struct vbd_error *e = NULL;
    const struct vbd_driver *target_drv = format ? vbd_driver_find(format) : NULL;
    if (!existing && backing && target_drv && !target_drv->change_backing_file) {
        /* QEMU's bdrv_img_create, before it makes the file (raw, sync=top/none) */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Backing file not supported for file format '%s'", format);
        return NULL;
    }
    if (!existing) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "size", json_object_new_int64((int64_t)vbd_node_size(a.src)));
        if (backing) {
            json_object_object_add(o, "backing_file", json_object_new_string(backing->filename));
            json_object_object_add(o, "backing_fmt", json_object_new_string(backing->drv->name));
        }
        int rc = vbd_image_co_create(format, file, o, &e);
        json_object_put(o);
        if (rc < 0) {
            vbd_qmp_error_take(err, e);
            return NULL;
        }
    }
    struct json_object *o = json_object_new_object();
    if (format)
        json_object_object_add(o, "driver", json_object_new_string(format));
    if (node_name)
        json_object_object_add(o, "node-name", json_object_new_string(node_name));
    /* the backing is the running node, not its file opened once more; a
     * format without backing files (raw) is given none */
    if (!existing && target_drv && target_drv->change_backing_file)
        json_object_object_add(o, "backing", backing ? json_object_new_string(backing->node_name) : NULL);
    unsigned keep = VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH | VBD_OPEN_UNMAP | VBD_OPEN_AIO_THREADS;
    /* locked by its users as blockdev-add's nodes: the job's (write, only
     * unchanged writes shared) from vbd_mirror_start on, as qsd's */
    a.target = vbd_open(file, o, VBD_OPEN_RDWR | VBD_OPEN_LOCK_BY_USERS | (a.src->open_flags & keep), &e);
    if (!a.target) {
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    a.target_owned = true;
    a.target_new = !existing && !backing;
    a.target->backing_at_job_end = !existing && a.target->backing;
    /* opened on the main loop: it joins the source's thread, as blockdev-mirror's */
    vbd_daemon_co_join_source_loop(a.target, a.src);
    if (replaces_arg(args, &a, err) < 0 || !vbd_mirror_start(&a, err)) {
        vbd_node_unref(a.target);
        return NULL;
    }
    return vbd_qmp_ok();
}

#define MIRROR_COMMON                                                                                                  \
    "?job-id:str device:str target:str ?replaces:str sync:str ?speed:int ?granularity:u32 ?buf-size:int "              \
    "?on-source-error:str ?on-target-error:str ?copy-mode:str ?auto-finalize:bool ?auto-dismiss:bool"

const struct vbd_qmp_command vbd_qmp_cmds_mirror[] = {
    {"blockdev-mirror", MIRROR_COMMON " ?filter-node-name:str", qmp_blockdev_mirror, 0},
    {"drive-mirror", MIRROR_COMMON " ?format:str ?node-name:str ?mode:str ?unmap:bool", qmp_drive_mirror, 0},
    {NULL, NULL, NULL, 0},
};
