/* SPDX-License-Identifier: MIT */
#ifndef VBD_AUTHZ_H
#define VBD_AUTHZ_H

#include <stdbool.h>

struct json_object;
struct vbd_error;

/*
 * Authorization objects with QEMU's names and rules; a server asks whether
 * an identity may connect (the NBD server's tls-authz=ID: the distinguished
 * name of the client's certificate, as vbd_tls_peer_dn gives it).
 *
 *   --object authz-simple,id=ID,identity=NAME
 *       allows exactly NAME
 *   --object '{"qom-type":"authz-list","id":"ID","policy":"deny",
 *              "rules":[{"match":"O=vbd,CN=*","policy":"allow","format":"glob"}]}'
 *       the first rule whose match fits decides; none: policy (default
 *       deny). format=exact (default) compares the whole string, glob
 *       takes '*' for any run of characters and '?' for one (GLib's simple
 *       patterns, as QEMU: no brackets, no escapes). In keyval form the
 *       rules are rules.0.match=...,rules.0.policy=...
 *
 * authz-list-file and authz-pam are refused by name.
 *
 * Threads: the registry is the main thread's (add and remove asserted);
 * a reference taken with vbd_authz_get may be asked from the loop that
 * holds it.
 */

struct vbd_authz;

/* True for every authz-* qom-type: vbd_authz_add creates or refuses it. */
bool vbd_authz_type(const char *qom_type);
/* Create and register an object; opts are its keys without qom-type. */
int vbd_authz_add(const char *qom_type, struct json_object *opts, struct vbd_error **err);
/* A new reference to object id, or NULL with *err ("who" names the user). */
struct vbd_authz *vbd_authz_get(const char *id, const char *who, struct vbd_error **err);
void vbd_authz_unref(struct vbd_authz *a);
const char *vbd_authz_id(const struct vbd_authz *a);
bool vbd_authz_is_allowed(const struct vbd_authz *a, const char *identity);
/* Drop every registered object (users keep their references). */
void vbd_authz_remove_all(void);
/* QMP object-del: -EBUSY while the NBD server uses it, -ENOENT if there is
 * none, with *err saying so. */
int vbd_authz_remove(const char *id, struct vbd_error **err);
/* The registered ids, newest first: start with NULL; NULL at the end. */
const char *vbd_authz_next(const char *prev);
/* qom-get/qom-list: qom-type and properties (identity; policy and rules)
 * as a new JSON object; NULL if there is no such object. */
struct json_object *vbd_authz_props(const char *id, const char **qom_type);
/* qom-set authz-simple's identity (checked from the main loop, as every
 * user of these objects runs there). -ENOENT: no such object, -EINVAL:
 * not an authz-simple. */
int vbd_authz_set_identity(const char *id, const char *identity);

/* GLib's g_pattern_match_simple rules: '*' any run (also empty), '?' one
 * UTF-8 character, everything else itself. */
bool vbd_authz_glob_match(const char *pattern, const char *s);

#endif
