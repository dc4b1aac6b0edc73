/* SPDX-License-Identifier: MIT */
/*
 * QMP snapshots (qapi/block-core.json): internal ones inside a qcow2 image
 * (blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync)
 * and external ones, a new overlay on top of a running node
 * (blockdev-snapshot-sync creates and opens it, blockdev-snapshot takes one
 * added with blockdev-add). An external snapshot switches every export on
 * the node to the overlay in a drained section; the node becomes the
 * overlay's backing, read-only, its data as it was at the switch.
 *
 * This file also holds the group's one command table (the bitmap commands
 * are in cmd-bitmap.c, transaction in cmd-transaction.c).
 */
#include "qmp/cmd-block.h"
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "daemon/objects.h"
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/job.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *arg_str(struct json_object *args, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : NULL;
}

/* The node must be a root: QEMU refuses a node something sits on. */
static bool busy(struct vbd_node *n, struct vbd_qmp_error *err)
{
    const char *role;
    struct vbd_node *p = qmp_node_parent(n, &role);
    if (p) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: node is used as %s of '%s'", n->node_name, role,
                           p->node_name);
        return true;
    }
    /* A block job's node (a backup's target, which has no parent here):
     * QEMU's job blocks its external snapshot. vbd made it, and the job
     * went on writing into a node now read-only under the overlay. */
    struct vbd_job *j = vbd_job_using_node(n);
    if (j)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: block device is in use by block job: %s",
                           n->node_name, j->drv->type);
    return j != NULL;
}

/* ---------- internal snapshots ---------- */

struct internal_state {
    struct vbd_node *n;
    char id[128];
};

/* Index of the snapshot matching id and/or name (both, when both are
 * given, as QEMU's bdrv_snapshot_find_by_id_and_name), or -1. */
static int find_snapshot(const struct vbd_snapshot_info *list, int count, const char *id, const char *name)
{
    for (int i = 0; i < count; i++)
        if ((!id || !strcmp(list[i].id, id)) && (!name || !strcmp(list[i].name, name)))
            return i;
    return -1;
}

static int internal_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *device = arg_str(a->data, "device"), *name = arg_str(a->data, "name");
    struct vbd_node *n = qmp_get_root_bs(device, err);
    if (!n)
        return -1;
    tx_drain(a, n);
    if (n->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Device '%s' is read only", device);
        return -1;
    }
    if (!n->drv->snapshot_create || !n->drv->snapshot_list || !n->drv->snapshot_delete) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block format '%s' used by device '%s' does not support internal snapshots",
                           n->drv->name, device);
        return -1;
    }
    if (!*name) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Name is empty");
        return -1;
    }
    struct vbd_snapshot_info *list = NULL;
    struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver calls on the node's home loop */
    int count = n->drv->snapshot_list(n, &list);
    vbd_node_co_leave_home(origin);
    if (count < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to get a snapshot list: %s", strerror(-count));
        return -1;
    }
    int found = find_snapshot(list, count, NULL, name);
    free(list);
    if (found >= 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Snapshot with name '%s' already exists on device '%s'", name, device);
        return -1;
    }
    /* what the guest wrote before the command is in the snapshot */
    int rc = vbd_node_co_flush(n);
    if (rc < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to flush device '%s': %s", device, strerror(-rc));
        return -1;
    }
    struct vbd_snapshot_info sn = {0};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(sn.name, sizeof(sn.name), "%s", name);
    sn.date_sec = (uint32_t)ts.tv_sec;
    sn.date_nsec = (uint32_t)ts.tv_nsec;
    struct vbd_error *e = NULL;
    origin = vbd_node_co_enter_home(n);
    rc = n->drv->snapshot_create(n, &sn, &e);
    vbd_node_co_leave_home(origin);
    if (rc < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to create snapshot '%s' on device '%s': %s", name, device,
                           e ? e->msg : "failed");
        vbd_error_free(e);
        return -1;
    }
    struct internal_state *st = vbd_xcalloc(1, sizeof(*st));
    st->n = n;
    snprintf(st->id, sizeof(st->id), "%s", sn.id);
    a->state = st;
    return 0;
}

static void internal_abort(struct tx_action *a)
{
    struct internal_state *st = a->state;
    struct vbd_error *e = NULL;
    if (!st)
        return;
    struct vbd_loop *origin = vbd_node_co_enter_home(st->n);
    int rc = st->n->drv->snapshot_delete(st->n, st->id, NULL, &e);
    vbd_node_co_leave_home(origin);
    if (rc < 0) {
        vbd_error_report("transaction abort: could not delete internal snapshot %s of '%s': %s", st->id, st->n->node_name,
                         e ? e->msg : "failed");
        vbd_error_free(e);
    }
}

static void free_state(struct tx_action *a)
{
    free(a->state);
    a->state = NULL;
}

const struct tx_action_type tx_internal_snapshot = {
    .name = "blockdev-snapshot-internal-sync",
    .arg_spec = "device:str name:str",
    .prepare = internal_prepare,
    .drains_all = true,
    .abort = internal_abort,
    .clean = free_state,
};

static struct json_object *qmp_internal_snapshot(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_internal_snapshot, args, err);
}

/* QEMU's SnapshotInfo. */
static struct json_object *snapshot_info_json(const struct vbd_snapshot_info *sn)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(sn->id));
    json_object_object_add(o, "name", json_object_new_string(sn->name));
    json_object_object_add(o, "vm-state-size", json_object_new_int64((int64_t)sn->vm_state_size));
    json_object_object_add(o, "date-sec", json_object_new_int64(sn->date_sec));
    json_object_object_add(o, "date-nsec", json_object_new_int64(sn->date_nsec));
    json_object_object_add(o, "vm-clock-sec", json_object_new_int64((int64_t)(sn->vm_clock_nsec / 1000000000u)));
    json_object_object_add(o, "vm-clock-nsec", json_object_new_int64((int64_t)(sn->vm_clock_nsec % 1000000000u)));
    if (sn->icount_valid)
        json_object_object_add(o, "icount", json_object_new_int64((int64_t)sn->icount));
    return o;
}

static struct json_object *qmp_internal_snapshot_delete(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *device = arg_str(args, "device"), *id = arg_str(args, "id"), *name = arg_str(args, "name");
    struct vbd_node *n = qmp_get_root_bs(device, err);
    if (!n)
        return NULL;
    if (!id && !name) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Name or id must be provided");
        return NULL;
    }
    if (!n->drv->snapshot_list || !n->drv->snapshot_delete) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to get a snapshot list: %s", strerror(ENOTSUP));
        return NULL;
    }
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(n, &d);
    struct json_object *ret = NULL;
    struct vbd_snapshot_info *list = NULL;
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    int count = n->drv->snapshot_list(n, &list);
    vbd_node_co_leave_home(origin);
    int i = count < 0 ? -1 : find_snapshot(list, count, id, name);
    if (count < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to get a snapshot list: %s", strerror(-count));
    } else if (i < 0) {
        /* QEMU prints an absent one as 'null' */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Snapshot with id '%s' and name '%s' does not exist on device '%s'",
                           id ? id : "null", name ? name : "null", device);
    } else if (n->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Device '%s' is read only", device);
    } else {
        struct vbd_error *e = NULL;
        origin = vbd_node_co_enter_home(n);
        int rc = n->drv->snapshot_delete(n, list[i].id, NULL, &e);
        vbd_node_co_leave_home(origin);
        if (rc < 0)
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to delete snapshot '%s' on device '%s': %s", list[i].id,
                               device, e ? e->msg : "failed");
        else
            ret = snapshot_info_json(&list[i]);
        vbd_error_free(e);
    }
    free(list);
    vbd_daemon_drain_end(&d);
    return ret;
}

/* ---------- external snapshots ---------- */

struct external_state {
    struct vbd_node *old, *overlay; /* one reference on the overlay (until the daemon takes it) */
    bool attached_backing;          /* blockdev-snapshot: we set overlay->backing */
    bool switched;                  /* the exports on old send to the overlay */
};

/*
 * Both external snapshots end here, in prepare, with every export on old
 * drained: old flushed (the base's data is what the guest wrote until
 * now), the exports switched. Commit only makes old read-only; abort
 * switches back.
 */
static int external_switch(struct tx_action *a, struct external_state *st, struct vbd_qmp_error *err)
{
    int rc = vbd_node_co_flush(st->old);
    if (rc < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to flush '%s': %s", st->old->node_name, strerror(-rc));
        return -1;
    }
    struct vbd_error *e = NULL;
    /* the overlay joins its backing's home loop (an iothread the graph was
     * moved to): the exports' requests keep running where they did. It is
     * new and unused; if it cannot move (an nbd file), it stays and the
     * requests hop (vbd/block.h) */
    struct vbd_loop *home = vbd_node_home_loop(st->old);
    if (vbd_node_home_loop(st->overlay) != home && !vbd_daemon_node_pinned(st->overlay, home) &&
        vbd_node_co_set_home(st->overlay, home, &e) < 0) {
        vbd_error_free(e);
        e = NULL;
    }
    if (vbd_daemon_replace_root(st->old, st->overlay, &e) < 0) {
        vbd_qmp_error_take(err, e);
        return -1;
    }
    st->switched = true;
    a->state = st;
    return 0;
}

static void external_commit(struct tx_action *a)
{
    struct external_state *st = a->state;
    /* Below the overlay nothing writes to it any more: the base stays as
     * it was at the switch. It is reopened read-only, as QEMU's
     * external_snapshot_commit does: a qcow2 writes its metadata and
     * persistent bitmaps back and is marked clean, its file drops the
     * write lock. The flag alone left the driver read-write underneath: a
     * kill left the bitmaps in-use (lost), and a later reopen read-write
     * (block-commit into it) loaded them a second time over the live
     * ones, whose bits were dropped. A driver that cannot switch keeps
     * the flag only (nothing writes to the node all the same). QEMU's
     * copy-on-read takes no reopen at all: the reopen fails quietly there
     * and the node and the nodes below it stay read-write, as here. */
    struct vbd_error *e = NULL;
    bool reopens = strcmp(st->old->drv->name, "copy-on-read") != 0;
    if (reopens && st->old->drv->reopen_rw && vbd_node_co_set_read_only(st->old, true, &e) < 0) {
        vbd_warn("external snapshot: node '%s' stays read-write underneath: %s", st->old->node_name,
                 e ? e->msg : "reopen failed");
        vbd_error_free(e);
    }
    if (reopens)
        st->old->read_only = true;
    /* blockdev-snapshot-sync's overlay is not the monitor's (no
     * blockdev-del): as in qsd, its users hold it (the exports switched to
     * it, a node put on top of it later, a job) and it closes with the
     * last of them; clean drops the reference it was opened with, so with
     * none (nothing used the old node) it closes at once. --state
     * describes it while it lives. */
    if (!st->attached_backing)
        st->overlay->held_by_users = true;
}

static void external_abort(struct tx_action *a)
{
    struct external_state *st = a->state;
    if (!st)
        return;
    if (st->switched) {
        struct vbd_error *e = NULL;
        if (vbd_daemon_replace_root(st->overlay, st->old, &e) < 0) { /* cannot fail: old took these exports before */
            vbd_error_report("transaction abort: %s", e ? e->msg : "could not switch back");
            vbd_error_free(e);
        }
    }
    if (st->attached_backing) {
        st->overlay->backing = NULL;
        vbd_node_unref(st->old);
    }
}

static void external_clean(struct tx_action *a)
{
    struct external_state *st = a->state;
    /* blockdev-snapshot-sync: the reference the overlay was opened with
     * (QEMU's external_snapshot_clean): aborted, it closes and its file
     * stays (as QEMU); committed, its users keep it */
    if (st && st->overlay && !st->attached_backing) {
        if (st->overlay->refcnt == 1)
            vbd_node_co_flush(st->overlay); /* nothing uses it: it closes now */
        vbd_node_unref(st->overlay);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* closed: its locks went with it */
    }
    free_state(a);
}

static int sync_check(struct json_object *data, const char *prefix, struct vbd_qmp_error *err)
{
    (void)prefix;
    const char *mode = arg_str(data, "mode");
    if (mode && strcmp(mode, "absolute-paths") && strcmp(mode, "existing")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'mode' does not accept value '%s'", mode);
        return -1;
    }
    return 0;
}

static int sync_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *device = arg_str(a->data, "device"), *node_name = arg_str(a->data, "node-name");
    const char *file = arg_str(a->data, "snapshot-file"), *snn = arg_str(a->data, "snapshot-node-name");
    const char *format = arg_str(a->data, "format"), *mode = arg_str(a->data, "mode");
    if (!format)
        format = "qcow2";
    bool existing = mode && !strcmp(mode, "existing");
    struct vbd_node *old = qmp_lookup_bs(device, node_name, err); /* device= finds no node, as in qsd */
    if (!old)
        return -1;
    tx_drain(a, old);
    if (busy(old, err))
        return -1;
    if (node_name && !snn) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "New overlay node-name missing");
        return -1;
    }
    if (snn && vbd_node_find(snn)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "New overlay node-name already in use");
        return -1;
    }
    const struct vbd_driver *drv = vbd_driver_find(format);
    if (!drv || drv->kind != VBD_DRV_FORMAT) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Unknown file format '%s'", format);
        return -1;
    }
    if (!drv->change_backing_file) { /* the formats that record a backing file can change it */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Backing file not supported for file format '%s'", format);
        return -1;
    }
    struct vbd_error *e = NULL;
    if (!existing) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "size", json_object_new_int64((int64_t)vbd_node_size(old)));
        json_object_object_add(o, "backing_file", json_object_new_string(old->filename));
        json_object_object_add(o, "backing_fmt", json_object_new_string(old->drv->name));
        int rc = vbd_image_co_create(format, file, o, &e);
        json_object_put(o);
        if (rc < 0) {
            if (e && strstr(e->msg, file))
                vbd_qmp_error_take(err, e);
            else {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Could not create '%s': %s", file, e ? e->msg : strerror(-rc));
                vbd_error_free(e);
            }
            return -1;
        }
    }
    /* a bad name is refused once the image is made, as QEMU's
     * external_snapshot_prepare refuses it at the overlay's open: the
     * file stays */
    if (snn && !vbd_qmp_node_name_check(snn, err))
        return -1;
    /* the overlay's backing is the running node itself, not the file
     * opened a second time */
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string(format));
    if (snn)
        json_object_object_add(o, "node-name", json_object_new_string(snn));
    json_object_object_add(o, "backing", json_object_new_string(old->node_name));
    unsigned keep = VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH | VBD_OPEN_UNMAP | VBD_OPEN_AIO_THREADS;
    /* locked by its users as blockdev-add's nodes: its format's claim
     * (read, write, resize) until they are set after the switch. Read-only
     * over a read-only node (added so, or a snapshot's backing already), as
     * QEMU opens the overlay with the old node's flags */
    unsigned rw = old->read_only ? 0 : VBD_OPEN_RDWR;
    struct vbd_node *overlay = vbd_open(file, o, rw | VBD_OPEN_LOCK_BY_USERS | (old->open_flags & keep), &e);
    if (!overlay) {
        vbd_qmp_error_take(err, e);
        return -1;
    }
    struct external_state *st = vbd_xcalloc(1, sizeof(*st));
    st->old = old;
    st->overlay = overlay;
    if (external_switch(a, st, err) < 0) {
        vbd_node_unref(overlay);
        free(st);
        return -1;
    }
    return 0;
}

const struct tx_action_type tx_blockdev_snapshot_sync = {
    .name = "blockdev-snapshot-sync",
    .arg_spec = "?device:str ?node-name:str snapshot-file:str ?snapshot-node-name:str ?format:str ?mode:str",
    .check = sync_check,
    .prepare = sync_prepare,
    .drains_all = true,
    .commit = external_commit,
    .abort = external_abort,
    .clean = external_clean,
};

/* Someone besides the daemon holds it: an export or a parent node. */
static bool in_use(struct vbd_node *n)
{
    return n->refcnt > (vbd_daemon_node_find(n->node_name) == n ? 1 : 0);
}

static int snapshot_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *node = arg_str(a->data, "node"), *overlay_name = arg_str(a->data, "overlay");
    struct vbd_node *old = qmp_lookup_node(node, err);
    if (!old)
        return -1;
    tx_drain(a, old);
    if (busy(old, err))
        return -1;
    struct vbd_node *overlay = qmp_lookup_node(overlay_name, err);
    if (!overlay)
        return -1;
    if (overlay == old || in_use(overlay)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The overlay is already in use");
        return -1;
    }
    if (overlay->backing) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The overlay already has a backing image");
        return -1;
    }
    if (!overlay->drv->change_backing_file) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The overlay does not support backing images");
        return -1;
    }
    if (vbd_node_size(overlay) < vbd_node_size(old)) {
        /* an export's size is fixed while a client is connected */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The overlay '%s' is smaller than node '%s'", overlay_name, node);
        return -1;
    }
    struct external_state *st = vbd_xcalloc(1, sizeof(*st));
    st->old = old;
    st->overlay = overlay;
    /* the image's recorded backing file stays as the user made it (QEMU
     * does not rewrite it either) */
    vbd_node_ref(old);
    overlay->backing = old;
    st->attached_backing = true;
    if (external_switch(a, st, err) < 0) {
        overlay->backing = NULL;
        vbd_node_unref(old);
        free(st);
        return -1;
    }
    return 0;
}

const struct tx_action_type tx_blockdev_snapshot = {
    .name = "blockdev-snapshot",
    .arg_spec = "node:str overlay:str",
    .prepare = snapshot_prepare,
    .drains_all = true,
    .commit = external_commit,
    .abort = external_abort,
    .clean = external_clean,
};

static struct json_object *qmp_snapshot_sync(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_blockdev_snapshot_sync, args, err);
}

static struct json_object *qmp_snapshot(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_blockdev_snapshot, args, err);
}

const struct vbd_qmp_command vbd_qmp_cmds_snapshot[] = {
    {"blockdev-snapshot-sync", "?device:str ?node-name:str snapshot-file:str ?snapshot-node-name:str ?format:str ?mode:str",
     qmp_snapshot_sync, 0},
    {"blockdev-snapshot", "node:str overlay:str", qmp_snapshot, 0},
    {"blockdev-snapshot-internal-sync", "device:str name:str", qmp_internal_snapshot, 0},
    {"blockdev-snapshot-delete-internal-sync", "device:str ?id:str ?name:str", qmp_internal_snapshot_delete, 0},
    {"block-dirty-bitmap-add", "node:str name:str ?granularity:u32 ?persistent:bool ?disabled:bool", qmp_bitmap_add, 0},
    {"block-dirty-bitmap-remove", "node:str name:str", qmp_bitmap_remove, 0},
    {"block-dirty-bitmap-clear", "node:str name:str", qmp_bitmap_clear, 0},
    {"block-dirty-bitmap-enable", "node:str name:str", qmp_bitmap_enable, 0},
    {"block-dirty-bitmap-disable", "node:str name:str", qmp_bitmap_disable, 0},
    {"block-dirty-bitmap-merge", "node:str target:str bitmaps:array", qmp_bitmap_merge, 0},
    {"x-debug-block-dirty-bitmap-sha256", "node:str name:str", qmp_bitmap_sha256, 0},
    {"transaction", "actions:array ?properties:object", qmp_transaction, 0},
    {NULL, NULL, NULL, 0},
};
