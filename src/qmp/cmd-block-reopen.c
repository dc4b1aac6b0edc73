/* SPDX-License-Identifier: MIT */
/*
 * blockdev-reopen, in the list form qemu-storage-daemon 7.2 takes:
 * {"options": [BlockdevOptions, ...]}. Each entry gives a node's options
 * in full, as blockdev-add did; vbd changes read-only (libvirt's use,
 * around block commits) and refuses, clearly, a change to anything else.
 * All entries are checked before any node changes; if switching one fails,
 * those already switched go back.
 */
#include "qmp/cmd-block.h"

#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/job.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reopen_entry {
    struct vbd_node *n;
    bool read_only;
};

static bool flag_matches(struct json_object *o, const char *key, bool current, struct vbd_qmp_error *err,
                         const char *node)
{
    struct json_object *v;
    bool want = json_object_object_get_ex(o, key, &v) && v && json_object_get_boolean(v);
    if (want != current) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Cannot change the option '%s' of node '%s' (blockdev-reopen changes read-only only)", key,
                           node);
        return false;
    }
    return true;
}

/* The entry's options must describe the node as it is, read-only aside. */
static bool check_entry(struct json_object *o, int idx, struct reopen_entry *re, struct vbd_qmp_error *err)
{
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "options[%d].", idx);
    if (!json_object_is_type(o, json_type_object)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'options[%d]', expected: object",
                           idx);
        return false;
    }
    if (!vbd_qmp_check_blockdev(o, prefix, err))
        return false;
    struct json_object *v;
    if (!json_object_object_get_ex(o, "node-name", &v)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "node-name not specified");
        return false;
    }
    const char *name = json_object_get_string(v);
    struct vbd_node *n = vbd_node_find(name);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to find node with node-name='%s'", name);
        return false;
    }
    json_object_object_foreach(o, key, val)
    {
        if (!strcmp(key, "node-name") || !strcmp(key, "read-only") || !strcmp(key, "auto-read-only"))
            continue;
        if (!strcmp(key, "driver")) {
            if (!vbd_driver_find(json_object_get_string(val)) ||
                vbd_driver_find(json_object_get_string(val)) != n->drv) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change the option 'driver'");
                return false;
            }
        } else if (!strcmp(key, "file") || !strcmp(key, "backing")) {
            struct vbd_node *cur = !strcmp(key, "file") ? n->file : n->backing;
            bool same = val ? (json_object_is_type(val, json_type_string) && cur &&
                               !strcmp(json_object_get_string(val), cur->node_name))
                            : !cur;
            if (!same) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                                   "Cannot change the option '%s' of node '%s': give the node-name of its current %s",
                                   key, name, key);
                return false;
            }
        } else if (!strcmp(key, "filename")) {
            if (strcmp(json_object_get_string(val), n->filename)) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change the option 'filename'");
                return false;
            }
        } else if (!strcmp(key, "cache")) {
            if (!flag_matches(val, "direct", (n->open_flags & VBD_OPEN_NOCACHE) != 0, err, name) ||
                !flag_matches(val, "no-flush", (n->open_flags & VBD_OPEN_NO_FLUSH) != 0, err, name))
                return false;
        } else if (!strcmp(key, "discard")) {
            bool unmap = !strcmp(json_object_get_string(val), "unmap");
            if (unmap != ((n->open_flags & VBD_OPEN_UNMAP) != 0)) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                                   "Cannot change the option 'discard' of node '%s' (blockdev-reopen changes "
                                   "read-only only)",
                                   name);
                return false;
            }
        } else if (!strcmp(key, "force-share")) {
            if (!flag_matches(o, "force-share", (n->open_flags & VBD_OPEN_FORCE_SHARE) != 0, err, name))
                return false;
        } else if (!strcmp(key, "detect-zeroes") &&
                   !strcmp(json_object_get_string(val), vbd_detect_zeroes_names[n->detect_zeroes])) {
            continue;
        } else {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Cannot change the option '%s' of node '%s': vbd's blockdev-reopen changes read-only "
                               "only",
                               key, name);
            return false;
        }
    }
    if (n->backing && !json_object_object_get_ex(o, "backing", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "backing is missing for '%s'", name);
        return false;
    }
    re->n = n;
    re->read_only = json_object_object_get_ex(o, "read-only", &v) && json_object_get_boolean(v);
    /* a job's target too: its writes would fail, and one in flight inside
     * the driver would meet its metadata written back and frozen (qsd's
     * job holds the write permission and refuses the same way) */
    if (re->read_only && !n->read_only && (vbd_qmp_node_written_by_export(n) || vbd_job_writing_node(n))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Read-only block node '%s' cannot support read-write users",
                           name);
        return false;
    }
    if (!re->read_only && !n->drv->reopen_rw && n->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' (driver '%s') cannot be made read-write", name,
                           n->drv->name);
        return false;
    }
    return true;
}

struct json_object *vbd_qmp_blockdev_reopen(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *list = json_object_object_get(args, "options");
    size_t len = json_object_array_length(list);
    struct reopen_entry *re = calloc(len ? len : 1, sizeof(*re));
    bool *was_ro = calloc(len ? len : 1, sizeof(*was_ro));
    if (!re || !was_ro) {
        free(re);
        free(was_ro);
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    size_t i;
    for (i = 0; i < len; i++)
        if (!check_entry(json_object_array_get_idx(list, i), (int)i, &re[i], err))
            goto fail;
    for (i = 0; i < len; i++) {
        struct vbd_error *e = NULL;
        was_ro[i] = re[i].n->read_only;
        if (vbd_node_co_set_read_only(re[i].n, re[i].read_only, &e) < 0) {
            vbd_qmp_error_take(err, e);
            while (i-- > 0) /* all or nothing, as QEMU's reopen queue */
                vbd_node_co_set_read_only(re[i].n, was_ro[i], NULL);
            goto fail;
        }
    }
    free(re);
    free(was_ro);
    return vbd_qmp_ok();
fail:
    free(re);
    free(was_ro);
    return NULL;
}
