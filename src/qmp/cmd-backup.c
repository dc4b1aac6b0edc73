/* SPDX-License-Identifier: MIT */
/*
 * QMP blockdev-backup and drive-backup (qapi/block-core.json
 * BlockdevBackup, DriveBackup): the checks in QEMU 7.2's order and words
 * (blockdev.c do_backup_common, backup.c backup_job_create); the job is
 * src/job/backup.c. Both are transaction actions (the commands a
 * transaction of one, as QEMU's): prepare drains the source's exports and
 * creates the job, so its point in time is the instant of the other
 * actions; commit starts it; abort cancels it unstarted (the bitmap gets
 * its bits back, the target is not written).
 */
#include "daemon/objects.h"
#include "qmp/cmd-block.h"
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "vbd/backup.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/nbd.h"

#include <errno.h>
#include <json-c/json.h>
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

static int pick(const char *s, const char *const *names, int def)
{
    if (!s)
        return def;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

static const char *const syncs[] = {"full", "top", "none", "incremental", "bitmap", NULL};
static const char *const bitmap_modes[] = {"on-success", "never", "always", NULL};
static const char *const on_errors[] = {"report", "ignore", "enospc", "stop", "auto", NULL};
static const char *const drive_modes[] = {"existing", "absolute-paths", NULL};

static int check_enum(struct json_object *args, const char *key, const char *const *names, const char *prefix,
                      struct vbd_qmp_error *err)
{
    if (pick(arg_str(args, key), names, 0) >= 0)
        return 0;
    (void)prefix; /* QEMU's visitor names an action's members without the path ('sync', not 'actions[0].data.sync') */
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", key, arg_str(args, key));
    return -1;
}

/* The enums, as QEMU's visitor checks them before any action runs. */
static int backup_check(struct json_object *args, const char *prefix, struct vbd_qmp_error *err)
{
    if (check_enum(args, "sync", syncs, prefix, err) < 0 || check_enum(args, "bitmap-mode", bitmap_modes, prefix, err) < 0 ||
        check_enum(args, "on-source-error", on_errors, prefix, err) < 0 ||
        check_enum(args, "on-target-error", on_errors, prefix, err) < 0)
        return -1;
    return 0;
}

static int drive_backup_check(struct json_object *args, const char *prefix, struct vbd_qmp_error *err)
{
    if (check_enum(args, "mode", drive_modes, prefix, err) < 0)
        return -1;
    return backup_check(args, prefix, err);
}

static enum vbd_on_error on_error(struct json_object *args, const char *key)
{
    int v = pick(arg_str(args, key), on_errors, 0);
    return v == VBD_ON_ERROR_AUTO ? VBD_ON_ERROR_REPORT : (enum vbd_on_error)v;
}

/* Whether n itself holds persistent bitmap `name` (*st: its status,
 * -EINVAL: inconsistent). */
static struct vbd_node *persistent_owner(struct vbd_node *n, const char *name, int *st)
{
    uint64_t pnum;
    int rc = vbd_node_co_persistent_bitmap_status(n, name, 0, 1, &pnum);
    if (rc == -ENOENT)
        return NULL;
    *st = rc;
    return n;
}

/* The options and checks both actions share, then the job, created not
 * started (enums checked by backup_check; bs and target looked up by the
 * caller). */
static struct vbd_job *backup_common(struct json_object *args, struct vbd_node *bs, struct vbd_node *target,
                                     struct vbd_job_txn *txn, struct vbd_qmp_error *err)
{
    struct vbd_backup_opts o = {0};
    const char *job_id = arg_str(args, "job-id"), *bitmap = arg_str(args, "bitmap");
    int sync = pick(arg_str(args, "sync"), syncs, 0), mode = pick(arg_str(args, "bitmap-mode"), bitmap_modes, 0);
    o.on_source_error = on_error(args, "on-source-error");
    o.on_target_error = on_error(args, "on-target-error");
    o.txn = txn;
    o.filter_node_name = arg_str(args, "filter-node-name");
    struct json_object *v;
    o.speed = json_object_object_get_ex(args, "speed", &v) ? (uint64_t)json_object_get_int64(v) : 0;
    if (json_object_object_get_ex(args, "speed", &v) && json_object_get_int64(v) < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter 'speed'");
        return NULL;
    }
    struct json_object *perf;
    if (json_object_object_get_ex(args, "x-perf", &perf) && json_object_object_get_ex(perf, "max-workers", &v))
        o.max_workers = (int)json_object_get_int64(v);
    o.compress = arg_bool(args, "compress", false);
    o.auto_finalize = arg_bool(args, "auto-finalize", true);
    o.auto_dismiss = arg_bool(args, "auto-dismiss", true);
    o.bitmap_mode = (enum vbd_bitmap_sync_mode)mode;
    o.sync = sync == 0 ? VBD_BACKUP_FULL : sync == 1 ? VBD_BACKUP_TOP : sync == 2 ? VBD_BACKUP_NONE : VBD_BACKUP_BITMAP;
    bool has_mode = json_object_object_get_ex(args, "bitmap-mode", NULL);
    if (o.sync == VBD_BACKUP_BITMAP && !bitmap) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "must provide a valid bitmap name for '%s' sync mode",
                           arg_str(args, "sync"));
        return NULL;
    }
    if (sync == 3) { /* incremental: bitmap with on-success, QEMU's sugar */
        if (has_mode && o.bitmap_mode != VBD_BITMAP_SYNC_ON_SUCCESS) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
            return NULL;
        }
        has_mode = true;
    }
    if (bitmap) {
        int pst = 0;
        /* the source node's own bitmaps only, as QEMU's bdrv_find_dirty_bitmap
         * (an NBD export looks further down, a backup does not): a bitmap of
         * its backing file stopped seeing the guest's writes when an external
         * snapshot put the source over it, one of its file node counts host
         * offsets; either would copy the wrong ranges, and the incremental
         * backup would silently miss data */
        if (!(o.bitmap = vbd_dirty_bitmap_find(bs, bitmap)) &&
            !(o.persistent_node = persistent_owner(bs, bitmap, &pst))) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s' could not be found", bitmap);
            return NULL;
        }
        o.persistent_name = bitmap;
        if (!has_mode) { /* sync=bitmap too: QEMU has no default */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap sync mode must be given when providing a bitmap");
            return NULL;
        }
        /* QEMU's bdrv_dirty_bitmap_check: busy, then inconsistent */
        if (o.bitmap ? vbd_dirty_bitmap_busy(o.bitmap)
                     : vbd_backup_uses_persistent_bitmap(o.persistent_node, bitmap) ||
                           vbd_nbd_bitmap_exported(o.persistent_node, bitmap)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Bitmap '%s' is currently in use by another operation and cannot be used", bitmap);
            return NULL;
        }
        if (pst == -EINVAL) { /* in use on disk: a crash left it */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s' is inconsistent and cannot be used", bitmap);
            return NULL;
        }
        if (o.sync == VBD_BACKUP_NONE) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "sync mode '%s' does not produce meaningful bitmap outputs",
                               arg_str(args, "sync"));
            return NULL;
        }
        if (o.bitmap_mode == VBD_BITMAP_SYNC_NEVER && o.sync != VBD_BACKUP_BITMAP) { /* neither read nor written */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '%s'",
                               arg_str(args, "sync"));
            return NULL;
        }
    } else if (has_mode) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot specify bitmap sync mode without a bitmap");
        return NULL;
    }
    if (bs == target) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Source and target cannot be the same");
        return NULL;
    }
    /* QEMU op-blocks a job's nodes, but not a backup's source (only its
     * copy-before-write node, which sits above): a second backup of the
     * source stacks another one, and reaches job_create(), which refuses a
     * taken id */
    struct vbd_job *busy = NULL;
    for (struct vbd_job *j = vbd_job_next(NULL); j && !busy; j = vbd_job_next(j))
        if (j->status != VBD_JOB_NULL && j->drv->uses_node && j->drv->uses_node(j, bs) && !vbd_backup_job_reads(j, bs))
            busy = j;
    struct vbd_node *busy_node = busy ? bs : target;
    if (!busy)
        busy = vbd_job_using_node(target);
    if (busy) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: block device is in use by block job: %s",
                           busy_node->node_name, busy->drv->type);
        return NULL;
    }
    if (target->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block node '%s' is read-only", target->node_name);
        return NULL;
    }
    if (vbd_node_size(target) != vbd_node_size(bs)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Source and target image have different sizes");
        return NULL;
    }
    if (o.compress && !(target->supported_write_flags & VBD_REQ_COMPRESSED)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Compression is not supported for this drive %s", target->node_name);
        return NULL;
    }
    /* a target over the source through file children (a filter, raw or a
     * format on it): its writes would land in the source below the
     * copy-before-write node, which takes the source's write for itself
     * (vbd's job waited on itself and the daemon never stopped). QEMU
     * refuses putting the filter in, naming the node over the source. */
    for (struct vbd_node *p = target; p->file && p->file != p; p = p->file) {
        if (p->file != bs)
            continue;
        char cbw_name[160];
        if (o.filter_node_name)
            snprintf(cbw_name, sizeof(cbw_name), "node '%s'", o.filter_node_name);
        else
            snprintf(cbw_name, sizeof(cbw_name), "the backup's copy-before-write node");
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Could not replace node: Permission conflict on node '%s': permissions 'write' are both "
                           "required by node '%s' (uses node '%s' as 'file' child) and unshared by %s (uses node '%s' "
                           "as 'file' child).",
                           bs->node_name, p->node_name, bs->node_name, cbw_name, bs->node_name);
        return NULL;
    }
    /* a target whose data another node keeps (a format's file, a quorum's
     * child): the backup would write under the format's metadata or into
     * one replica apart from the others. QEMU's permission error, which
     * names the copy-before-write node it was making (implicit: '#blockNNN') */
    char by[512], cbw[160];
    int owner = vbd_node_data_owner(target, by, sizeof(by));
    if (owner != VBD_NODE_OWNER_NONE) {
        if (o.filter_node_name)
            snprintf(cbw, sizeof(cbw), "node '%s'", o.filter_node_name);
        else
            snprintf(cbw, sizeof(cbw), "the backup's copy-before-write node");
        /* QEMU looks at the newest user first: the node it makes shares no
         * resize, which a read-write format takes */
        if (owner == VBD_NODE_OWNER_FORMAT)
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Could not create node: Permission conflict on node '%s': permissions 'resize' are both "
                               "required by %s and unshared by %s (uses node '%s' as 'target' child).",
                               target->node_name, by, cbw, target->node_name);
        else
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Could not create node: Permission conflict on node '%s': permissions 'write' are both "
                           "required by %s (uses node '%s' as 'target' child) and unshared by %s.",
                           target->node_name, cbw, target->node_name, by);
        return NULL;
    }
    return vbd_backup_create(job_id ? job_id : "", bs, target, &o, err);
}

/* ---------- the actions ---------- */

/* QEMU enters the job at its start, inside the drain of its source, which
 * paused it at its creation: it stops at its first pause point before the
 * transaction goes on (JOB_STATUS_CHANGE running, paused; running again
 * when the drain ends, after every action's commit) */
static void backup_commit(struct tx_action *a)
{
    vbd_job_start(a->state);
    vbd_job_co_drain_wait(a->state);
}
static void backup_abort(struct tx_action *a) { vbd_job_cancel_unstarted(a->state); }
static void backup_clean(struct tx_action *a)
{
    if (a->state)
        vbd_job_unref(a->state);
}

/* The job, kept (referenced) until clean: an aborting group may dismiss it first. */
static int backup_keep(struct tx_action *a, struct vbd_job *job)
{
    if (!job)
        return -1;
    vbd_job_ref(job);
    a->state = job;
    vbd_daemon_drain_add_job(&a->drain, job); /* made inside its source's drain: paused with it */
    return 0;
}

static int blockdev_backup_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    struct vbd_node *bs = qmp_lookup_node(arg_str(a->data, "device"), err);
    if (!bs)
        return -1;
    struct vbd_node *target = qmp_lookup_node(arg_str(a->data, "target"), err);
    if (!target)
        return -1;
    /* the target joins the source's thread (QEMU moves it here, before
     * the other checks): refused while an export pins it elsewhere */
    if (vbd_daemon_node_pinned(target, vbd_node_home_loop(bs))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change iothread of active block backend");
        return -1;
    }
    vbd_daemon_co_join_source_loop(target, bs);
    tx_drain(a, bs);
    return backup_keep(a, backup_common(a->data, bs, target, a->txn, err));
}

/* drive-backup: the target is a file, made here unless mode=existing (as
 * QEMU: the source's format and size; sync=top's target has the source's
 * backing file, sync=none's the source itself), opened for the job and
 * closed with it. */
static int drive_backup_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    struct json_object *args = a->data;
    const char *file = arg_str(args, "target"), *format = arg_str(args, "format"), *sync = arg_str(args, "sync");
    int mode = pick(arg_str(args, "mode"), drive_modes, 1);
    struct vbd_node *bs = qmp_lookup_node(arg_str(args, "device"), err);
    if (!bs)
        return -1;
    tx_drain(a, bs);
    if (!format && mode == 1)
        format = bs->drv->name;
    struct vbd_node *backing = NULL;
    if (sync && !strcmp(sync, "top"))
        backing = vbd_node_skip_filters(bs)->backing;
    else if (sync && !strcmp(sync, "none"))
        backing = bs;
    struct vbd_error *e = NULL;
    const struct vbd_driver *target_drv = format ? vbd_driver_find(format) : NULL;
    if (mode == 1 && backing && target_drv && !target_drv->change_backing_file) {
        /* QEMU's bdrv_img_create, before it makes the file (raw, sync=top/none) */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Backing file not supported for file format '%s'", format);
        return -1;
    }
    if (mode == 1) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "size", json_object_new_int64((int64_t)vbd_node_size(bs)));
        if (backing) {
            json_object_object_add(o, "backing_file", json_object_new_string(backing->filename));
            json_object_object_add(o, "backing_fmt", json_object_new_string(backing->drv->name));
        }
        int rc = vbd_image_co_create(format, file, o, &e);
        json_object_put(o);
        if (rc < 0) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Could not create '%s': %s", file, e ? e->msg : strerror(-rc));
            vbd_error_free(e);
            return -1;
        }
    }
    struct json_object *o = json_object_new_object();
    if (format)
        json_object_object_add(o, "driver", json_object_new_string(format));
    /* the backing is the running node, not its file opened once more */
    if (target_drv && target_drv->change_backing_file)
        json_object_object_add(o, "backing", backing ? json_object_new_string(backing->node_name) : NULL);
    /* locked by its users as blockdev-add's nodes (the backup's from
     * vbd_backup_create on) */
    struct vbd_node *target = vbd_open(file, o, VBD_OPEN_RDWR | VBD_OPEN_LOCK_BY_USERS, &e);
    if (!target) {
        vbd_qmp_error_take(err, e);
        return -1;
    }
    /* opened on the main loop: it joins the source's thread, as blockdev-backup's */
    vbd_daemon_co_join_source_loop(target, bs);
    struct vbd_job *job = backup_common(args, bs, target, a->txn, err);
    vbd_node_unref(target); /* the job holds it until its end */
    return backup_keep(a, job);
}

#define BACKUP_ARGS                                                                                                    \
    "?job-id:str device:str target:str sync:str ?speed:int ?bitmap:str ?bitmap-mode:str ?compress:bool "             \
    "?on-source-error:str ?on-target-error:str ?auto-finalize:bool ?auto-dismiss:bool ?filter-node-name:str "         \
    "?x-perf:object"

const struct tx_action_type tx_blockdev_backup = {
    .name = "blockdev-backup",
    .arg_spec = BACKUP_ARGS,
    .check = backup_check,
    .prepare = blockdev_backup_prepare,
    .drains_all = true,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
    .grouped = true,
};

const struct tx_action_type tx_drive_backup = {
    .name = "drive-backup",
    .arg_spec = BACKUP_ARGS " ?format:str ?mode:str",
    .check = drive_backup_check,
    .prepare = drive_backup_prepare,
    .drains_all = true,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
    .grouped = true,
};

static struct json_object *qmp_blockdev_backup(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_blockdev_backup, args, err);
}

static struct json_object *qmp_drive_backup(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_drive_backup, args, err);
}

const struct vbd_qmp_command vbd_qmp_cmds_backup[] = {
    {"drive-backup", BACKUP_ARGS " ?format:str ?mode:str", qmp_drive_backup, 0},
    {"blockdev-backup", BACKUP_ARGS, qmp_blockdev_backup, 0},
    {NULL, NULL, NULL, 0},
};
