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

/* --nbd-server's options as QEMU's NbdServerOptions (addr a flat
 * SocketAddress: addr.type=unix,addr.path=...): missing, unexpected and
 * mistyped members refused in its words; keyval: the command line's
 * strings typed first (qmp_keyval_members). */
bool vbd_qmp_nbd_server_opts_check(struct json_object *opts, bool keyval, struct vbd_qmp_error *err);
/* QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
bool qmp_id_wellformed(const char *id);

/* cmd-object.c */
struct json_object *qmp_object_add(struct json_object *args, struct vbd_qmp_error *err);
/* --object: what object-add does, the keyval form's strings first read as
 * QEMU's keyval visitor reads them (keyval false: JSON, typed as QMP's).
 * Returns 0 or -EINVAL with *err holding object-add's message. */
struct vbd_error;
int vbd_qmp_object_add_cmdline(struct json_object *args, bool keyval, struct vbd_error **err);
struct json_object *qmp_object_del(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_list(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_get(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_qom_set(struct json_object *args, struct vbd_qmp_error *err);
struct json_object *qmp_query_iothreads(struct json_object *args, struct vbd_qmp_error *err);

#endif
