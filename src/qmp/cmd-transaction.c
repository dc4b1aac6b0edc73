/* SPDX-License-Identifier: MIT */
/*
 * QMP 'transaction': several snapshot, bitmap and backup actions, all or
 * nothing (qapi/transaction.json). Every action is checked first (shape
 * and argument types, as QEMU's visitor does before anything runs), then
 * prepared in order; if one fails, those prepared are aborted in reverse
 * order, else all are committed. A backup's job is created in its prepare
 * (under the drain, the same instant as the other actions) and started in
 * its commit. completion-mode 'grouped' puts the backups' jobs in one
 * group (vbd_job_txn: one failing cancels the others); the actions that
 * start no job refuse it, as QEMU's do.
 */
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/job.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vbd_node *qmp_lookup_bs(const char *device, const char *node_name, struct vbd_qmp_error *err)
{
    struct vbd_node *n = node_name ? vbd_node_find(node_name) : NULL;
    if (!n)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot find device='%s' nor node-name='%s'", device ? device : "",
                           node_name ? node_name : "");
    return n;
}

struct vbd_node *qmp_node_parent(struct vbd_node *n, const char **role)
{
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p)) {
        if (p->backing == n) {
            *role = "backing hd";
            return p;
        }
        if (p->file == n) {
            *role = "file";
            return p;
        }
    }
    return NULL;
}

/* Whether QEMU 7.2 would have a job's filter node or the job itself
 * above n: a mirror's source or target, a stream's device (vbd's jobs put
 * no node there), a backup's target and a commit's overlay (the job's own
 * edges: "Need a root block node" for an internal snapshot of them, which
 * vbd made under the job). */
static bool job_filter_above(struct vbd_node *n)
{
    struct vbd_job *j = vbd_job_using_node(n);
    return j && !j->drv->plain;
}

bool qmp_is_root_node(struct vbd_node *n)
{
    const char *role;
    return !qmp_node_parent(n, &role) && vbd_job_filter_skip(n) == n && !job_filter_above(n);
}

struct vbd_node *qmp_get_root_bs(const char *name, struct vbd_qmp_error *err)
{
    struct vbd_node *n = qmp_lookup_node(name, err);
    if (n && !qmp_is_root_node(n)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Need a root block node");
        return NULL;
    }
    return n;
}

void tx_drain(struct tx_action *a, struct vbd_node *n)
{
    if (a->drained)
        return;
    vbd_daemon_co_drain_begin(n, &a->drain);
    a->drained = true;
}

void tx_drain_quiet(struct tx_action *a, struct vbd_node *n)
{
    if (a->drained)
        return;
    vbd_daemon_co_drain_begin_quiet(n, &a->drain);
    a->drained = true;
}

/* ---------- running ---------- */

static bool grouped_refused(const struct tx_action *a, bool grouped, struct vbd_qmp_error *err)
{
    if (grouped && !a->type->grouped)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Action '%s' does not support Transaction property completion-mode = grouped", a->type->name);
    return grouped && !a->type->grouped;
}

static int tx_run(struct tx_action *acts, int n, bool grouped, bool drain_all, struct vbd_qmp_error *err)
{
    int prepared = 0, rc = 0;
    /* QEMU's qmp_transaction starts with bdrv_drain_all: every running
     * job pauses and resumes (its events) before the first action */
    if (drain_all)
        vbd_daemon_co_drain_all();
    for (; prepared < n; prepared++) {
        struct tx_action *a = &acts[prepared];
        if (grouped_refused(a, grouped, err) || a->type->prepare(a, err) < 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0) {
        for (int i = 0; i < n; i++)
            if (acts[i].type->commit)
                acts[i].type->commit(&acts[i]);
        /* vbd-daemon --state: saved while the exports are still drained, so
         * no guest write reaches an overlay that a restart would not know */
        struct vbd_error *e = NULL;
        if (vbd_qmp_config_changed("transaction", NULL, &e) < 0) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", e ? e->msg : "the daemon's state was not saved");
            rc = -1;
        }
        vbd_error_free(e);
    } else {
        /* the failed one undid itself; the others in reverse order */
        for (int i = prepared - 1; i >= 0; i--)
            if (acts[i].type->abort)
                acts[i].type->abort(&acts[i]);
    }
    /* in the actions' order, as QEMU's: the jobs started inside their
     * sources' drains resume in that order */
    for (int i = 0; i < n; i++) {
        if (acts[i].type->clean)
            acts[i].type->clean(&acts[i]);
        if (acts[i].drained)
            vbd_daemon_drain_end(&acts[i].drain);
    }
    return rc;
}

struct json_object *tx_run_one(const struct tx_action_type *t, struct json_object *args, struct vbd_qmp_error *err)
{
    struct tx_action a = {.type = t, .data = args};
    if (t->check && t->check(args, "", err) < 0)
        return NULL;
    return tx_run(&a, 1, false, t->drains_all, err) < 0 ? NULL : vbd_qmp_ok();
}

/* The 'abort' action: always fails its prepare (tests of rollback). */
static int abort_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    (void)a;
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Transaction aborted using Abort action");
    return -1;
}
/* QEMU's abort action does not check completion-mode */
static const struct tx_action_type tx_abort = {.name = "abort", .arg_spec = "", .prepare = abort_prepare, .grouped = true};

static const struct tx_action_type *const action_types[] = {
    &tx_abort,
    &tx_bitmap_add,
    &tx_bitmap_remove,
    &tx_bitmap_clear,
    &tx_bitmap_enable,
    &tx_bitmap_disable,
    &tx_bitmap_merge,
    &tx_blockdev_snapshot,
    &tx_internal_snapshot,
    &tx_blockdev_snapshot_sync,
    &tx_blockdev_backup,
    &tx_drive_backup,
    NULL,
};

/* Checked as QEMU's visitor checks TransactionAction: {type, data}. */
static int parse_action(struct json_object *item, int i, struct tx_action *a, struct vbd_qmp_error *err)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "actions[%d]", i);
    if (!json_object_is_type(item, json_type_object)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: object", prefix);
        return -1;
    }
    if (!qmp_check_members(item, "type:str data:object", prefix, err))
        return -1;
    const char *type = json_object_get_string(json_object_object_get(item, "type"));
    for (const struct tx_action_type *const *t = action_types; *t; t++)
        if (!strcmp((*t)->name, type))
            a->type = *t;
    if (!a->type) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'type' does not accept value '%s'", type);
        return -1;
    }
    a->data = json_object_object_get(item, "data");
    snprintf(prefix, sizeof(prefix), "actions[%d].data", i);
    if (!qmp_check_members(a->data, a->type->arg_spec, prefix, err))
        return -1;
    snprintf(prefix, sizeof(prefix), "actions[%d].data.", i);
    return a->type->check ? a->type->check(a->data, prefix, err) : 0;
}

struct json_object *qmp_transaction(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *list = json_object_object_get(args, "actions"), *props = NULL;
    bool grouped = false;
    int n = (int)json_object_array_length(list);
    struct tx_action *acts = vbd_xcalloc((size_t)n + 1, sizeof(*acts));
    for (int i = 0; i < n; i++)
        if (parse_action(json_object_array_get_idx(list, (size_t)i), i, &acts[i], err) < 0)
            goto fail;
    if (json_object_object_get_ex(args, "properties", &props)) {
        if (!qmp_check_members(props, "?completion-mode:str", "properties", err))
            goto fail;
        struct json_object *mode = json_object_object_get(props, "completion-mode");
        const char *m = mode ? json_object_get_string(mode) : "individual";
        grouped = !strcmp(m, "grouped");
        if (!grouped && strcmp(m, "individual")) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'completion-mode' does not accept value '%s'", m);
            goto fail;
        }
    }
    struct vbd_job_txn *txn = grouped ? vbd_job_txn_new() : NULL;
    for (int i = 0; i < n; i++)
        acts[i].txn = txn;
    int rc = tx_run(acts, n, grouped, true, err);
    vbd_job_txn_unref(txn); /* the jobs hold it */
    if (rc < 0)
        goto fail;
    free(acts);
    return vbd_qmp_ok();
fail:
    free(acts);
    return NULL;
}
