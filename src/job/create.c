/* SPDX-License-Identifier: MIT */
/*
 * blockdev-create and x-blockdev-amend as jobs (QEMU's block/create.c and
 * block/amend.c): a job of type "create" or "amend" that does the work in
 * one step (progress 0/1, then 1/1), with auto-dismiss off as QEMU has it,
 * so the user reads the error with query-jobs and dismisses the job. A
 * plain Job: no BLOCK_JOB_* events. The QMP side (argument checks) is
 * src/qmp/cmd-create.c; what is written is the drivers' own create code,
 * the one vbd-img create uses.
 */
#include "vbd/job.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct create_job {
    struct json_object *opts; /* BlockdevCreateOptions, checked by the caller */
    struct vbd_node *node;    /* the node being written (busy meanwhile) */
    struct vbd_node *amend;   /* x-blockdev-amend's node */
    bool force;
};

static const char *opt_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                             : NULL;
}

/* A BlockdevRef: a node-name, or options for a node opened for the job. */
static struct vbd_node *ref_node(struct json_object *ref, struct vbd_error **err)
{
    if (json_object_is_type(ref, json_type_string)) {
        const char *name = json_object_get_string(ref);
        struct vbd_node *n = vbd_node_find(name);
        if (!n) {
            vbd_error_setf(err, ENOENT, "Cannot find device='%s' nor node-name='%s'", name, name);
            return NULL;
        }
        vbd_node_ref(n);
        return n;
    }
    struct json_object *o = NULL;
    json_object_deep_copy(ref, &o, NULL);
    return vbd_open(NULL, o, VBD_OPEN_RDWR, err);
}

/* QMP's names for a format's options -> the create options of vbd-img
 * create (-o), which the driver's create code takes. */
static const struct {
    const char *qmp, *opt;
} renames[] = {
    {"backing-file", "backing_file"},   {"backing-fmt", "backing_fmt"},         {"cluster-size", "cluster_size"},
    {"lazy-refcounts", "lazy_refcounts"}, {"refcount-bits", "refcount_bits"},  {"compression-type", "compression_type"},
    {"extended-l2", "extended_l2"},     {"data-file-raw", "data_file_raw"},     {"preallocation", "preallocation"},
    {"size", "size"},                   {"table-size", "table_size"},           {"log-size", "log_size"},
    {"block-size", "block_size"},       {"subformat", "subformat"},             {"block-state-zero", "block_state_zero"},
    {"force-size", "force_size"},       {"adapter-type", "adapter_type"},       {"hwversion", "hwversion"},
    {"toolsversion", "toolsversion"},   {"zeroed-grain", "zeroed_grain"},
};

static int create_format(struct vbd_job *job, struct create_job *c, const char *driver, struct vbd_error **err)
{
    const struct vbd_driver *drv = vbd_driver_find(driver);
    struct json_object *v, *o = json_object_new_object();
    int rc = -EINVAL;
    struct vbd_node *data = NULL;
    json_object_object_foreach(c->opts, key, val)
    {
        if (!strcmp(key, "driver") || !strcmp(key, "file") || !strcmp(key, "data-file"))
            continue;
        if (!strcmp(key, "version")) {
            json_object_object_add(o, "compat",
                                   json_object_new_string(!strcmp(json_object_get_string(val), "v2") ? "0.10" : "1.1"));
            continue;
        }
        size_t i = 0;
        while (i < sizeof(renames) / sizeof(renames[0]) && strcmp(renames[i].qmp, key))
            i++;
        if (!strcmp(driver, "vdi") && !strcmp(key, "preallocation")) {
            /* metadata: a static image (every block mapped); vdi has no other mode */
            const char *pa = json_object_get_string(val);
            if (strcmp(pa, "off") && strcmp(pa, "metadata")) {
                vbd_error_setf(err, EINVAL, "Preallocation mode not supported for vdi");
                goto out;
            }
            json_object_object_add(o, "static", json_object_new_boolean(!strcmp(pa, "metadata")));
            continue;
        }
        if (!strcmp(key, "encrypt")) {
            vbd_error_setf(err, ENOTSUP, "Encrypted %s images are not supported by vbd-daemon", driver);
            goto out;
        }
        if (i == sizeof(renames) / sizeof(renames[0])) {
            vbd_error_setf(err, ENOTSUP, "Option '%s' of driver '%s' is not supported by vbd-daemon", key, driver);
            goto out;
        }
        json_object_object_add(o, renames[i].opt, json_object_get(val));
    }
    if (!strcmp(driver, "qcow2") && json_object_object_get_ex(c->opts, "size", &v) &&
        json_object_get_int64(v) % 512) {
        vbd_error_setf(err, EINVAL, "Image size must be a multiple of 512 bytes");
        goto out;
    }
    if (!(c->node = ref_node(json_object_object_get(c->opts, "file"), err)))
        goto out;
    if (json_object_object_get_ex(c->opts, "data-file", &v)) {
        if (!(data = ref_node(v, err)))
            goto out;
        json_object_object_add(o, "data_file", json_object_new_string(data->filename));
    }
    if (c->node->read_only) {
        vbd_error_setf(err, EACCES, "Block node '%s' is read-only", c->node->node_name);
        goto out;
    }
    /* a node whose data another node keeps (a live qcow2's file, a
     * quorum's child): the new image would be written over it. QEMU's
     * permission error. */
    char by[512];
    if (vbd_node_data_owner(c->node, by, sizeof(by)) != VBD_NODE_OWNER_NONE) {
        vbd_error_setf(err, EPERM,
                       "Permission conflict on node '%s': permissions 'write, resize' are both required by an unnamed "
                       "block device (uses node '%s' as 'root' child) and unshared by %s.",
                       c->node->node_name, c->node->node_name, by);
        goto out;
    }
    rc = drv->co_create(c->node->filename, c->node, o, NULL, err);
out:
    json_object_put(o);
    if (data)
        vbd_node_unref(data);
    return rc;
}

static int create_run(struct vbd_job *job, struct vbd_error **err)
{
    struct create_job *c = job->opaque;
    job->ctl.total = 1;
    int rc;
    if (c->amend) {
        /* QEMU 7.2's qcow2 amend options are only 'encrypt' (keyslots),
         * which vbd does not have; with none there is nothing to change */
        rc = 0;
        if (json_object_object_get_ex(c->opts, "encrypt", NULL)) {
            vbd_error_setf(err, ENOTSUP, "qcow2 '%s': vbd-daemon does not support encryption (no keyslots to amend)",
                           c->amend->node_name);
            rc = -ENOTSUP;
        }
    } else {
        const char *driver = opt_str(c->opts, "driver");
        if (!strcmp(driver, "file")) {
            struct json_object *v;
            uint64_t size = json_object_object_get_ex(c->opts, "size", &v) ? (uint64_t)json_object_get_int64(v) : 0;
            const char *pa = opt_str(c->opts, "preallocation");
            int mode = VBD_PREALLOC_OFF;
            for (int i = 0; pa && vbd_prealloc_names[i]; i++)
                if (!strcmp(pa, vbd_prealloc_names[i]))
                    mode = i;
            /* nocow, extent-size-hint: the hints QEMU's file driver gives the new file */
            struct json_object *hints = json_object_new_object();
            if (json_object_object_get_ex(c->opts, "nocow", &v))
                json_object_object_add(hints, "nocow",
                                       json_object_new_string(json_object_get_boolean(v) ? "on" : "off"));
            if (json_object_object_get_ex(c->opts, "extent-size-hint", &v))
                json_object_object_add(hints, "extent_size_hint", json_object_new_int64(json_object_get_int64(v)));
            rc = vbd_create_protocol_opts(opt_str(c->opts, "filename"), size, (enum vbd_prealloc)mode, hints, NULL, err);
            json_object_put(hints);
        } else {
            rc = create_format(job, c, driver, err);
        }
    }
    job->ctl.current = 1;
    return rc;
}

static void create_free(struct vbd_job *job)
{
    struct create_job *c = job->opaque;
    if (!c)
        return;
    json_object_put(c->opts);
    if (c->node)
        vbd_node_unref(c->node);
    if (c->amend)
        vbd_node_unref(c->amend);
    free(c);
}

static bool create_uses(struct vbd_job *job, struct vbd_node *n)
{
    struct create_job *c = job->opaque;
    return c && (c->node == n || c->amend == n);
}

static const struct vbd_job_driver create_driver = {
    .type = "create",
    .plain = true,
    .run = create_run,
    .free = create_free,
    .uses_node = create_uses,
    .writes_node = create_uses,
};

static const struct vbd_job_driver amend_driver = {
    .type = "amend",
    .plain = true,
    .run = create_run,
    .free = create_free,
    .uses_node = create_uses,
    .writes_node = create_uses,
};

struct vbd_job *vbd_create_job_start(const char *job_id, struct json_object *options, struct vbd_qmp_error *err)
{
    struct vbd_job *job = vbd_job_create(&create_driver, job_id, true, false, 0, VBD_ON_ERROR_REPORT, err);
    if (!job)
        return NULL;
    struct create_job *c = vbd_xcalloc(1, sizeof(*c));
    c->opts = json_object_get(options);
    job->opaque = c;
    vbd_job_start(job);
    return job;
}

struct vbd_job *vbd_amend_job_start(const char *job_id, struct vbd_node *n, struct json_object *options, bool force,
                                    struct vbd_qmp_error *err)
{
    struct vbd_job *job = vbd_job_create(&amend_driver, job_id, true, false, 0, VBD_ON_ERROR_REPORT, err);
    if (!job)
        return NULL;
    struct create_job *c = vbd_xcalloc(1, sizeof(*c));
    c->opts = json_object_get(options);
    vbd_node_ref(n);
    c->amend = n;
    c->force = force;
    job->opaque = c;
    vbd_job_start(job);
    return job;
}
