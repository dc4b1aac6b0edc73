/* SPDX-License-Identifier: MIT */
#ifndef VBD_QMP_COMMANDS_H
#define VBD_QMP_COMMANDS_H

#include "vbd/qmp.h"

/* One table per group, each ended by an entry with name NULL. */
extern const struct vbd_qmp_command vbd_qmp_cmds_core[];     /* cmd-core.c: capabilities, version, commands, schema, quit */
extern const struct vbd_qmp_command vbd_qmp_cmds_block[];    /* cmd-block.c: blockdev-*, block_resize, stats, ... */
extern const struct vbd_qmp_command vbd_qmp_cmds_export[];   /* cmd-export.c: nbd-server-*, block-export-*, objects */
extern const struct vbd_qmp_command vbd_qmp_cmds_snapshot[];
extern const struct vbd_qmp_command vbd_qmp_cmds_job[];      /* cmd-job.c: block-stream, block-commit, job verbs and queries */ /* cmd-snapshot.c: snapshots, bitmaps, transaction */
extern const struct vbd_qmp_command vbd_qmp_cmds_backup[];   /* cmd-backup.c: blockdev-backup */

extern const struct vbd_qmp_command vbd_qmp_cmds_create[];   /* cmd-create.c: blockdev-create, x-blockdev-amend */

#endif
