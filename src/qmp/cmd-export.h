/* SPDX-License-Identifier: MIT */
/*
 * What cmd-export.c (NBD server, block exports, the resume command) and
 * cmd-object.c (object-add/del, qom-*, query-iothreads) share: the checks
 * of boxed arguments, with QEMU's wording, and the object commands that
 * cmd-export.c's table lists.
 */
#ifndef VBD_QMP_CMD_EXPORT_H
#define VBD_QMP_CMD_EXPORT_H

#include "vbd/qmp.h"

#include <stdbool.h>

struct json_object;

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
