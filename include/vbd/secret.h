/* SPDX-License-Identifier: MIT */
#ifndef VBD_SECRET_H
#define VBD_SECRET_H

struct json_object;
struct vbd_error;

/*
 * QEMU's "secret" objects (--object secret,id=sec0,data=... or
 * file=PATH), so that a password (iSCSI CHAP's password-secret) need not
 * sit in a node's options. Only format=raw. Process-wide, main thread.
 */
/* opts holds "id" and "data" or "file" (and "format"); keys are taken. */
int vbd_secret_add(struct json_object *opts, struct vbd_error **err);
/* A malloc'd copy of the secret's bytes (a string), or NULL with *err. */
char *vbd_secret_lookup(const char *id, struct vbd_error **err);

#endif
