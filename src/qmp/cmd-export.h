/* SPDX-License-Identifier: MIT */
/*
 * What cmd-export.c (NBD server, block exports, the resume command) and
 * cmd-object.c (object-add/del, qom-*, query-iothreads) share: QEMU's id
 * check and the object commands that cmd-export.c's table lists. (The
 * checks of boxed arguments are in commands.h, beside the dispatcher's.)
 */
#ifndef VBD_QMP_CMD_EXPORT_H
#define VBD_QMP_CMD_EXPORT_H

#include "vbd/qmp.h"

#include <stdbool.h>

struct json_object;

/* QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
bool qmp_id_wellformed(const char *id);

/* cmd-object.c */
struct json_object *qmp_object_add(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_object_del(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_list(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_get(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_set(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_query_iothreads(struct json_object *args, struct vbd_qmp_error *err);

#endif
