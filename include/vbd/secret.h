/* SPDX-License-Identifier: MIT */
#ifndef VBD_SECRET_H
#define VBD_SECRET_H

#include <stddef.h>

struct json_object;
struct vbd_error;

/*
 * QEMU's "secret" object (--object secret,id=ID,data=...|file=PATH
 * [,format=raw|base64]): a password or key that drivers look up by id
 * (rbd's key-secret, iscsi's password-secret), from --object or QMP
 * object-add. Unencrypted secrets only (no keyid/iv). The store is
 * process-wide; add and remove on the main thread (asserted), where the
 * drivers read them too (their open).
 */
int vbd_secret_add(struct json_object *opts, struct vbd_error **err); /* takes id, data, file, format */
/* The secret's bytes as base64 (malloc'd, NUL-terminated), or NULL with *err. */
char *vbd_secret_get_base64(const char *id, struct vbd_error **err);
void vbd_secret_remove_all(void);
/* For QMP (object-add/-del, qom-list/-get): whether id is a secret, and
 * its format as given ("raw" or "base64"), or NULL. */
const char *vbd_secret_format(const char *id);
/* The ids, in turn: first with NULL, then with the previous one. */
const char *vbd_secret_next(const char *prev);
/* Drivers copy the key when they open, so an open node keeps working. */
int vbd_secret_remove(const char *id, struct vbd_error **err);

#endif
