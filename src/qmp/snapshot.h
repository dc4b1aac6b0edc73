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
    /* The command alone is QEMU's transaction of one (blockdev_do_action),
     * which begins with a drain of every node (bdrv_drain_all): every
     * running job pauses and resumes; a bitmap command is not. */
    bool drains_all;
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
/* tx_drain for a change QEMU makes without a drain (bitmaps): the jobs
 * pause without a status change (objects.h, _quiet). */
void tx_drain_quiet(struct tx_action *a, struct vbd_node *n);

/* Run one action as a transaction of one: the command's handler. */
struct json_object *tx_run_one(const struct tx_action_type *t, struct json_object *args, struct vbd_qmp_error *err);

/* QEMU's bdrv_lookup_bs(device, node_name), the one rule for which name a
 * command takes: device names a BlockBackend, and qemu-storage-daemon has
 * none a user can name, so only node_name finds a node (any node). NULL
 * with QEMU's "Cannot find device='D' nor node-name='N'"; either may be
 * NULL. The commands QEMU looks up with bdrv_lookup_bs(name, name) (a job's
 * device, a bitmap's node, ...) use qmp_lookup_node(name); those that pass
 * device and node-name apart (block_resize, blockdev-snapshot-sync) take no
 * node through device=, as qsd. */
struct vbd_node *qmp_lookup_bs(const char *device, const char *node_name, struct vbd_qmp_error *err);
static inline struct vbd_node *qmp_lookup_node(const char *name, struct vbd_qmp_error *err)
{
    return qmp_lookup_bs(name, name, err);
}
/* A node above n (n is its file or backing), or NULL; *role says which. */
struct vbd_node *qmp_node_parent(struct vbd_node *n, const char **role);
/* QEMU's bdrv_is_root_node(): no node above n, neither a parent nor a
 * job's filter (which has the job as its parent in QEMU). */
bool qmp_is_root_node(struct vbd_node *n);
/* QEMU's qmp_get_root_bs(name): qmp_lookup_node, and the node must be a
 * root ("Need a root block node"). The device of drive-mirror,
 * blockdev-mirror and the internal snapshots. */
struct vbd_node *qmp_get_root_bs(const char *name, struct vbd_qmp_error *err);

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
