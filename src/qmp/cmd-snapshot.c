/* SPDX-License-Identifier: MIT */
#include "qmp/commands.h"

#include <stddef.h>

const struct vbd_qmp_command vbd_qmp_cmds_snapshot[] = {
    {NULL, NULL, NULL, 0},
};
