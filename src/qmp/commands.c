/* SPDX-License-Identifier: MIT */
/* Every QMP command table, once (one table per src/qmp/cmd-<group>.c). */
#include "qmp/commands.h"

#include <stddef.h>
#include <string.h>

static const struct vbd_qmp_command *const groups[] = {
    vbd_qmp_cmds_core,
    vbd_qmp_cmds_block,
    vbd_qmp_cmds_export,
    vbd_qmp_cmds_snapshot,
    vbd_qmp_cmds_job,
    vbd_qmp_cmds_backup,
    vbd_qmp_cmds_create,

    vbd_qmp_cmds_mirror,
    vbd_qmp_cmds_graph,
    vbd_qmp_cmds_chardev,
    vbd_qmp_cmds_qom_types,
    NULL,
};

const struct vbd_qmp_command *vbd_qmp_command_next(const struct vbd_qmp_command *prev)
{
    size_t g = 0;
    const struct vbd_qmp_command *c = groups[0];
    if (prev) {
        /* the group that holds prev, then the entry after it */
        for (; groups[g]; g++) {
            for (c = groups[g]; c->name && c != prev; c++)
                ;
            if (c == prev)
                break;
        }
        if (!groups[g])
            return NULL;
        c = prev + 1;
    }
    while (!c->name) {
        if (!groups[++g])
            return NULL;
        c = groups[g];
    }
    return c;
}

const struct vbd_qmp_command *vbd_qmp_command_find(const char *name)
{
    for (const struct vbd_qmp_command *c = vbd_qmp_command_next(NULL); c; c = vbd_qmp_command_next(c))
        if (!strcmp(c->name, name))
            return c;
    return NULL;
}
