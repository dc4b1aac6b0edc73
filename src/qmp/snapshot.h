/* SPDX-License-Identifier: MIT */
#ifndef VBD_QMP_SNAPSHOT_H
#define VBD_QMP_SNAPSHOT_H

/*
 * The actions of QMP's 'transaction' (cmd-transaction.c), defined where
 * their commands are: the snapshots in cmd-snapshot.c, the dirty bitmaps
 * in cmd-bitmap.c, the backups in cmd-backup.c. A command that is also an action runs as a transaction
 * of one, as QEMU does, so both paths check and act alike.
 *
 * An action's prepare does the work and keeps what abort needs to undo
 * it; commit makes it final (the graph switch of an external snapshot);
 * clean runs last in every case. Every action drains the exports that
 * reach its node from prepare to clean: nothing writes between a prepare
 * and its abort, so an undo restores exactly what was there.
 */
#include "daemon/objects.h"
#include "vbd/qmp.h"

struct json_object;
struct vbd_node;

struct tx_action;
struct tx_action_type {
    const char *name;     /* the action's "type" and the command's name */
    const char *arg_spec; /* its "data", as vbd_qmp_command's arg_spec */
    /* Nested shapes and ranges arg_spec cannot say (may be NULL); names in
     * messages start with prefix ("actions[0].data." in a transaction). */
    int (*check)(struct json_object *data, const char *prefix, struct vbd_qmp_error *err);
    int (*prepare)(struct tx_action *a, struct vbd_qmp_error *err); /* 0, or -1 with *err and nothing changed */
    void (*commit)(struct tx_action *a);                              /* may be NULL */
    void (*abort)(struct tx_action *a);                               /* may be NULL */
    void (*clean)(struct tx_action *a);                               /* may be NULL */
    bool grouped; /* takes completion-mode=grouped (starts a job); the others refuse it, as QEMU's */
};

struct tx_action {
    const struct tx_action_type *type;
    struct json_object *data; /* borrowed: the action's arguments, checked against arg_spec */
    void *state;              /* the action's own, freed by clean */
    struct vbd_daemon_drain drain;
    bool drained;
    struct vbd_job_txn *txn; /* completion-mode=grouped: the group its job joins, else NULL */
};

extern const struct tx_action_type tx_blockdev_snapshot_sync, tx_blockdev_snapshot, tx_internal_snapshot;
extern const struct tx_action_type tx_bitmap_add, tx_bitmap_remove, tx_bitmap_clear, tx_bitmap_enable,
    tx_bitmap_disable, tx_bitmap_merge;
extern const struct tx_action_type tx_blockdev_backup, tx_drive_backup; /* cmd-backup.c */

/* Drain the exports that reach n until the action is cleaned. */
void tx_drain(struct tx_action *a, struct vbd_node *n);

/* Run one action as a transaction of one: the command's handler. */
struct json_object *tx_run_one(const struct tx_action_type *t, struct json_object *args, struct vbd_qmp_error *err);

/* The node named `name` (any node, as QEMU's bdrv_lookup_bs), or NULL
 * with QEMU's error. */
struct vbd_node *qmp_lookup_node(const char *name, struct vbd_qmp_error *err);
/* A node above n (n is its file or backing), or NULL; *role says which. */
struct vbd_node *qmp_node_parent(struct vbd_node *n, const char **role);
/* Whether QEMU 7.2 would have a job's filter node above n, so that
 * qmp_get_root_bs() refuses it ("Need a root block node"): a mirror's
 * source or target, a stream's device (vbd's jobs put no node there). */
bool qmp_job_filter_above(struct vbd_node *n);

/* Command handlers defined next to their actions (listed in the one table
 * of cmd-snapshot.c). */
struct json_object *qmp_transaction(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_add(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_remove(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_clear(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_sha256(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_enable(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_disable(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_bitmap_merge(struct json_object *args, struct vbd_qmp_error *err);

#endif
