/* SPDX-License-Identifier: MIT */
/*
 * QMP block jobs (qapi/job.json, qapi/block-core.json): block-stream,
 * block-commit, the job verbs in their job-* and legacy block-job-* forms,
 * query-jobs and query-block-jobs. Argument checks in QEMU 7.2's order
 * and words (blockdev.c qmp_block_stream / qmp_block_commit); the jobs
 * themselves are in src/job/.
 */
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "vbd/error.h"
#include "vbd/job.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
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

static int parse_on_error(struct json_object *args, enum vbd_on_error *out, struct vbd_qmp_error *err)
{
    static const char *const names[] = {"report", "ignore", "enospc", "stop", "auto"};
    const char *s = arg_str(args, "on-error");
    *out = VBD_ON_ERROR_REPORT;
    if (!s)
        return 0;
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum vbd_on_error)i;
            if (*out == VBD_ON_ERROR_AUTO) /* a job's 'auto' is report (the device's policy is for devices) */
                *out = VBD_ON_ERROR_REPORT;
            return 0;
        }
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'on-error' does not accept value '%s'", s);
    return -1;
}

static bool chain_contains(struct vbd_node *top, struct vbd_node *n)
{
    for (struct vbd_node *p = top; p; p = p->backing)
        if (p == n)
            return true;
    return false;
}

/* bdrv_find_backing_image: a backing file named as recorded in its
 * overlay, or as its node's filename, or the same file by path. */
static struct vbd_node *find_backing_image(struct vbd_node *bs, const char *name)
{
    char want[PATH_MAX], have[PATH_MAX];
    bool real = realpath(name, want) != NULL;
    for (struct vbd_node *p = bs; p && p->backing; p = p->backing) {
        struct vbd_node *b = p->backing;
        if (!strcmp(p->backing_file, name) || !strcmp(b->filename, name))
            return b;
        if (real && realpath(b->filename, have) && !strcmp(want, have))
            return b;
    }
    return NULL;
}

/* bdrv_op_is_blocked for the nodes a job holds */
static bool blocked(struct vbd_node *n, struct vbd_qmp_error *err)
{
    struct vbd_job *j = vbd_job_using_node(n);
    if (j)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: block device is in use by block job: %s",
                           n->node_name, j->drv->type);
    return j != NULL;
}

static int job_options(struct json_object *args, enum vbd_on_error *on_error, bool *af, bool *ad,
                       struct vbd_qmp_error *err)
{
    if (parse_on_error(args, on_error, err) < 0)
        return -1;
    *af = arg_bool(args, "auto-finalize", true);
    *ad = arg_bool(args, "auto-dismiss", true);
    return 0;
}

static int check_speed(struct json_object *args, uint64_t *speed, struct vbd_qmp_error *err)
{
    int64_t s = arg_int(args, "speed", 0);
    if (s < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'speed' expects a non-negative value");
        return -1;
    }
    *speed = (uint64_t)s;
    return 0;
}

static struct json_object *qmp_block_stream(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *device = arg_str(args, "device"), *base = arg_str(args, "base"), *base_node = arg_str(args, "base-node");
    const char *bottom = arg_str(args, "bottom"), *backing_file = arg_str(args, "backing-file");
    const char *job_id = arg_str(args, "job-id");
    if (base && base_node) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'base' and 'base-node' cannot be specified at the same time");
        return NULL;
    }
    if (base && bottom) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'base' and 'bottom' cannot be specified at the same time");
        return NULL;
    }
    if (bottom && base_node) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'bottom' and 'base-node' cannot be specified at the same time");
        return NULL;
    }
    uint64_t speed;
    enum vbd_on_error on_error;
    bool af, ad;
    if (job_options(args, &on_error, &af, &ad, err) < 0)
        return NULL;
    struct vbd_node *bs = qmp_lookup_node(device, err);
    if (!bs)
        return NULL;
    struct vbd_node *base_bs = NULL, *bottom_bs = NULL;
    if (base) {
        base_bs = find_backing_image(bs, base);
        if (!base_bs) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't find '%s' in the backing chain", base);
            return NULL;
        }
    }
    if (base_node) {
        base_bs = qmp_lookup_bs(NULL, base_node, err);
        if (!base_bs)
            return NULL;
        if (base_bs == bs || !chain_contains(bs, base_bs)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is not a backing image of '%s'", base_node, device);
            return NULL;
        }
    }
    if (bottom) {
        bottom_bs = qmp_lookup_bs(NULL, bottom, err);
        if (!bottom_bs)
            return NULL;
        if (bottom_bs->drv->kind == VBD_DRV_FILTER) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is a filter, use a non-filter node as 'bottom'",
                               bottom);
            return NULL;
        }
        if (!chain_contains(bs, bottom_bs)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is not in a chain starting from '%s'", bottom,
                               device);
            return NULL;
        }
        base_bs = bottom_bs->backing;
    }
    struct vbd_node *end = bottom_bs ? bottom_bs->backing : base_bs;
    for (struct vbd_node *p = bs; p && p != end; p = p->backing)
        if (blocked(p, err))
            return NULL;
    if (!base_bs && backing_file) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "backing file specified, but streaming the entire chain");
        return NULL;
    }
    if (check_speed(args, &speed, err) < 0)
        return NULL;
    /* QEMU names the job after the device's BlockBackend, which a node of
     * the storage daemon has not: the empty name it refuses */
    if (!vbd_stream_start(job_id ? job_id : "", bs, base_bs, backing_file ? backing_file : base,
                          arg_str(args, "filter-node-name"), speed, on_error, af, ad, err))
        return NULL;
    return vbd_qmp_ok();
}

static struct json_object *qmp_block_commit(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *device = arg_str(args, "device"), *base = arg_str(args, "base"), *base_node = arg_str(args, "base-node");
    const char *top = arg_str(args, "top"), *top_node = arg_str(args, "top-node");
    const char *backing_file = arg_str(args, "backing-file"), *job_id = arg_str(args, "job-id");
        enum vbd_on_error on_error;
    bool af, ad;
    if (job_options(args, &on_error, &af, &ad, err) < 0)
        return NULL;
    /* the device lookup comes first: libvirt probes with DeviceNotFound */
    struct vbd_node *bs = vbd_node_find(device);
    if (!bs) {
        vbd_qmp_error_setf(err, VBD_QMP_DEVICE_NOT_FOUND, "Device '%s' not found", device);
        return NULL;
    }
    if (!qmp_is_root_node(bs)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Need a root block node");
        return NULL;
    }
    if (blocked(bs, err))
        return NULL;
    struct vbd_node *top_bs = bs, *base_bs;
    if (top_node && top) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'top-node' and 'top' are mutually exclusive");
        return NULL;
    } else if (top_node) {
        if (!(top_bs = qmp_lookup_bs(NULL, top_node, err)))
            return NULL;
        if (!chain_contains(bs, top_bs)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'%s' is not in this backing file chain", top_node);
            return NULL;
        }
    } else if (top && strcmp(bs->filename, top)) {
        top_bs = find_backing_image(bs, top);
    }
    if (!top_bs) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Top image file %s not found", top ? top : "NULL");
        return NULL;
    }
    if (base_node && base) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'base-node' and 'base' are mutually exclusive");
        return NULL;
    } else if (base_node) {
        if (!(base_bs = qmp_lookup_bs(NULL, base_node, err)))
            return NULL;
        if (!chain_contains(top_bs, base_bs)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'%s' is not in this backing file chain", base_node);
            return NULL;
        }
    } else if (base) {
        if (!(base_bs = find_backing_image(top_bs, base))) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't find '%s' in the backing chain", base);
            return NULL;
        }
    } else {
        /* bdrv_find_base(): top itself when it has no backing file, refused
         * below as committing into itself, as QEMU does */
        base_bs = top_bs;
        while (base_bs->backing)
            base_bs = base_bs->backing;
    }
    for (struct vbd_node *p = top_bs; p && p != base_bs->backing; p = p->backing)
        if (blocked(p, err))
            return NULL;
    if (top_bs == base_bs) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "cannot commit an image into itself");
        return NULL;
    }
    bool active = top_bs == bs;
    if (active && backing_file) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'backing-file' specified, but 'top' is the active layer");
        return NULL;
    }
    if (!vbd_commit_start(job_id ? job_id : "", top_bs, base_bs, active, backing_file,
                          arg_str(args, "filter-node-name"), arg_int(args, "speed", 0), on_error, af, ad, err))
        return NULL;
    return vbd_qmp_ok();
}

/* ---------- verbs ---------- */

static struct vbd_job *find_job(struct json_object *args, struct vbd_qmp_error *err)
{
    struct vbd_job *j = vbd_job_find(arg_str(args, "id"));
    if (!j)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Job not found");
    return j;
}

static struct vbd_job *find_block_job_key(struct json_object *args, const char *key, struct vbd_qmp_error *err)
{
    const char *id = arg_str(args, key);
    struct vbd_job *j = vbd_job_find(id);
    if (j && j->drv->plain)
        j = NULL; /* not a block job */
    if (!j)
        vbd_qmp_error_setf(err, VBD_QMP_DEVICE_NOT_ACTIVE, "Block job '%s' not found", id);
    return j;
}
static struct vbd_job *find_block_job(struct json_object *args, struct vbd_qmp_error *err)
{
    return find_block_job_key(args, "device", err);
}
/* block-job-finalize and block-job-dismiss name it 'id' */
static struct vbd_job *find_block_job_id(struct json_object *args, struct vbd_qmp_error *err)
{
    return find_block_job_key(args, "id", err);
}

#define VERB(fname, finder, call)                                                                                      \
    static struct json_object *fname(struct json_object *args, struct vbd_qmp_error *err)                              \
    {                                                                                                                  \
        struct vbd_job *job = finder(args, err);                                                                       \
        if (!job || (call) < 0)                                                                                        \
            return NULL;                                                                                               \
        return vbd_qmp_ok();                                                                                           \
    }

VERB(qmp_job_pause, find_job, vbd_job_user_pause(job, err))
VERB(qmp_job_resume, find_job, vbd_job_user_resume(job, err))
VERB(qmp_job_cancel, find_job, vbd_job_user_cancel(job, true, err))
VERB(qmp_job_complete, find_job, vbd_job_complete(job, err))
VERB(qmp_job_finalize, find_job, vbd_job_finalize(job, err))
VERB(qmp_job_dismiss, find_job, vbd_job_dismiss(job, err))
VERB(qmp_block_job_pause, find_block_job, vbd_job_user_pause(job, err))
VERB(qmp_block_job_resume, find_block_job, vbd_job_user_resume(job, err))
VERB(qmp_block_job_complete, find_block_job, vbd_job_complete(job, err))
VERB(qmp_block_job_finalize, find_block_job_id, vbd_job_finalize(job, err))
VERB(qmp_block_job_dismiss, find_block_job_id, vbd_job_dismiss(job, err))
VERB(qmp_block_job_set_speed, find_block_job, vbd_job_set_speed(job, arg_int(args, "speed", 0), err))

static struct json_object *qmp_block_job_cancel(struct json_object *args, struct vbd_qmp_error *err)
{
    struct vbd_job *job = find_block_job(args, err);
    if (!job)
        return NULL;
    bool force = arg_bool(args, "force", false);
    if (job->user_paused && !force) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The block job for device '%s' is currently paused",
                           arg_str(args, "device"));
        return NULL;
    }
    if (vbd_job_user_cancel(job, force, err) < 0)
        return NULL;
    return vbd_qmp_ok();
}

static struct json_object *qmp_query_jobs(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args;
    (void)err;
    struct json_object *a = json_object_new_array();
    for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j))
        json_object_array_add(a, vbd_job_info(j));
    return a;
}

static struct json_object *qmp_query_block_jobs(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args;
    (void)err;
    struct json_object *a = json_object_new_array();
    for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j))
        if (!j->drv->plain)
            json_object_array_add(a, vbd_block_job_info(j));
    return a;
}

#define JOB_COMMON "?speed:int ?on-error:str ?filter-node-name:str ?auto-finalize:bool ?auto-dismiss:bool"

const struct vbd_qmp_command vbd_qmp_cmds_job[] = {
    {"block-stream", "?job-id:str device:str ?base:str ?base-node:str ?backing-file:str ?bottom:str " JOB_COMMON,
     qmp_block_stream, 0},
    {"block-commit",
     "?job-id:str device:str ?base-node:str ?base:str ?top-node:str ?top:str ?backing-file:str " JOB_COMMON,
     qmp_block_commit, 0},
    {"query-jobs", "", qmp_query_jobs, 0},
    {"query-block-jobs", "", qmp_query_block_jobs, 0},
    {"job-pause", "id:str", qmp_job_pause, 0},
    {"job-resume", "id:str", qmp_job_resume, 0},
    {"job-cancel", "id:str", qmp_job_cancel, 0},
    {"job-complete", "id:str", qmp_job_complete, 0},
    {"job-finalize", "id:str", qmp_job_finalize, 0},
    {"job-dismiss", "id:str", qmp_job_dismiss, 0},
    {"block-job-pause", "device:str", qmp_block_job_pause, 0},
    {"block-job-resume", "device:str", qmp_block_job_resume, 0},
    {"block-job-cancel", "device:str ?force:bool", qmp_block_job_cancel, 0},
    {"block-job-complete", "device:str", qmp_block_job_complete, 0},
    {"block-job-finalize", "id:str", qmp_block_job_finalize, 0},
    {"block-job-dismiss", "id:str", qmp_block_job_dismiss, 0},
    {"block-job-set-speed", "device:str speed:int", qmp_block_job_set_speed, 0},
    {NULL, NULL, NULL, 0},
};
