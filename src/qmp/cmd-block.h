/* SPDX-License-Identifier: MIT */
/* Shared by the block command files (cmd-block*.c). */
#ifndef VBD_QMP_CMD_BLOCK_H
#define VBD_QMP_CMD_BLOCK_H

#include "vbd/qmp.h"

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct vbd_node;

/* Check a BlockdevOptions object as QEMU's schema types it (prefix: ""
 * at the top, "file." for a nested child, "options[0]." for reopen).
 * Unknown keys are refused, as QEMU; vbd's own nbd TLS keys are known. */
bool vbd_qmp_check_blockdev(struct json_object *o, const char *prefix, struct vbd_qmp_error *err);

/* A new node's name as QEMU checks it (bdrv_assign_node_name: "Invalid
 * node-name: 'NAME'", "Node name too long"); blockdev-add and --blockdev. */
bool vbd_qmp_node_name_check(const char *name, struct vbd_qmp_error *err);

/* Is o a file node without a filename (one object, not its children)?
 * QEMU's schema makes filename mandatory for driver=file, before any open:
 * blockdev-add checks it in vbd_qmp_check_blockdev, vbd-daemon's --blockdev
 * on every object of its keyval options (it cannot use the whole schema
 * check: keyval gives strings where the schema wants JSON types). The
 * callers word the error ("Parameter 'PATH.filename' is missing"). */
bool vbd_qmp_file_lacks_filename(struct json_object *o);

/* blockdev-add: check args as the schema types them, open the node (the
 * caller's reference on args is kept) and hand it to the daemon. Returns
 * the node (owned by the daemon) or NULL with err set. Also the path
 * --libvirt-disk builds its nodes with. */
struct vbd_node *vbd_qmp_blockdev_add_opts(struct json_object *args, struct vbd_qmp_error *err);

/* Is n written by an export: its node, or below it through "file" or a
 * quorum's children? */
bool vbd_qmp_node_written_by_export(struct vbd_node *n);

struct json_object *vbd_qmp_query_named_block_nodes(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *vbd_qmp_query_blockstats(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *vbd_qmp_blockdev_reopen(struct json_object *args, struct vbd_qmp_error *err);
/* A node's size changed (block_resize, a raw node's window by
 * blockdev-reopen), drained: the nodes above see it, the exports tell
 * their clients. cmd names the command in warnings. */
void vbd_qmp_sizes_changed(const char *cmd);

/* The options a monitor gave n (blockdev-add, --blockdev: a copy made
 * before the open took from them; the reference is taken): kept on n, and
 * on each child they give inline, for blockdev-reopen to compare with. */
void vbd_qmp_node_given_options(struct vbd_node *n, struct json_object *given);

#endif
