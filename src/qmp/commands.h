/* SPDX-License-Identifier: MIT */
#ifndef VBD_QMP_COMMANDS_H
#define VBD_QMP_COMMANDS_H

#include "vbd/qmp.h"

#include <stdbool.h>

/* One table per group, each ended by an entry with name NULL. */
extern const struct vbd_qmp_command vbd_qmp_cmds_core[];     /* cmd-core.c: capabilities, version, commands, schema, quit */
extern const struct vbd_qmp_command vbd_qmp_cmds_block[];    /* cmd-block.c: blockdev-*, block_resize, stats, ... */
extern const struct vbd_qmp_command vbd_qmp_cmds_export[];   /* cmd-export.c: nbd-server-*, block-export-*, objects */
extern const struct vbd_qmp_command vbd_qmp_cmds_snapshot[];
extern const struct vbd_qmp_command vbd_qmp_cmds_job[];      /* cmd-job.c: block-stream, block-commit, job verbs and queries */ /* cmd-snapshot.c: snapshots, bitmaps, transaction */
extern const struct vbd_qmp_command vbd_qmp_cmds_backup[];   /* cmd-backup.c: blockdev-backup */

extern const struct vbd_qmp_command vbd_qmp_cmds_create[];   /* cmd-create.c: blockdev-create, x-blockdev-amend */

extern const struct vbd_qmp_command vbd_qmp_cmds_mirror[];   /* cmd-mirror.c: blockdev-mirror, drive-mirror */
extern const struct vbd_qmp_command vbd_qmp_cmds_graph[];    /* cmd-block-graph.c: x-debug-query-block-graph */
extern const struct vbd_qmp_command vbd_qmp_cmds_qom_types[]; /* cmd-qom-types.c: qom-list-types, qom-list-properties */
extern const struct vbd_qmp_command vbd_qmp_cmds_chardev[];  /* chardev.c: chardev-*, ringbuf-*, query-chardev-backends */

struct vbd_qmp_error;

/* --object help (or ?) and --object TYPE,...,help, as qsd, qemu-nbd and
 * qemu-img answer them: the types this program makes (types: sorted,
 * NULL-terminated) or TYPE's properties as qsd 7.2 lists them (from
 * cmd-qom-types.c's table, less those vbd refuses), on stdout. True when
 * arg asked for help (the caller exits 0); false: an object to make. */
bool vbd_qom_object_help(const char *arg, const char *const *types);

/*
 * Check the members of a boxed argument object against spec (the
 * arg_spec syntax of vbd_qmp_command: "name:type ?name:type", plus the
 * type "strlist": a string or an array of strings). prefix names the
 * object in messages ("addr.data" gives 'addr.data.port'); "" at the top.
 * Missing, wrongly typed and unexpected members are refused as QEMU words
 * them. Leaves obj unchanged.
 */
bool qmp_check_members(struct json_object *obj, const char *spec, const char *prefix, struct vbd_qmp_error *err);
/* The same for options from the command line (keyval, "a=1,b.c=x"):
 * string values of int, uint, u32 (uint32) and bool members are first
 * read as QEMU's keyval visitor reads them (its messages) and replaced in
 * obj by the typed values. */
bool qmp_keyval_members(struct json_object *obj, const char *spec, const char *prefix, struct vbd_qmp_error *err);

/* If key is present, its string value must be one of choices (NULL
 * terminated): "Parameter 'KEY' does not accept value 'V'". */
bool qmp_check_enum(struct json_object *obj, const char *key, const char *prefix, const char *const *choices,
                    struct vbd_qmp_error *err);

#endif
