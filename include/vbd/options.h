/* SPDX-License-Identifier: MIT */
#ifndef VBD_OPTIONS_H
#define VBD_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct vbd_error;

/*
 * Options are json-c objects (our QDict). They come from QEMU's keyval
 * syntax ("driver=raw,file.driver=file,file.filename=a.img" — dotted keys
 * make nested objects, ",," is a literal comma, values are strings), from
 * JSON text ('{"driver":"raw",...}'), or from "json:{...}" pseudo-filenames.
 * Scalars given as strings are converted when read (size suffixes,
 * on/off/true/false), so keyval and JSON input behave the same.
 *
 * Drivers *take* the keys they understand (vbd_opt_take_*: read and remove);
 * whatever remains after open is an unknown key and is reported by name
 * with vbd_opts_check_empty().
 *
 * No shared state: any thread, each on its own objects.
 */

/* keyval: "a=1,b.c=x". implied_key: name for a leading bare value
 * ("file.qcow2,format=raw" with implied_key "file"); may be NULL. */
struct json_object *vbd_keyval_parse(const char *str, const char *implied_key, struct vbd_error **err);
/* JSON object text, with or without the "json:" prefix. */
struct json_object *vbd_json_parse_object(const char *str, struct vbd_error **err);
/* Either: text starting with '{' or "json:" is JSON, else keyval. */
struct json_object *vbd_opts_parse(const char *str, const char *implied_key, struct vbd_error **err);
/* The same without QemuOpts' bare flags ("ro" for "ro=on"): qemu-storage-
 * daemon parses --blockdev, --export, --monitor, --nbd-server and --object
 * with keyval, which refuses them ("Expected '=' after parameter 'ro'"). */
struct json_object *vbd_opts_parse_strict(const char *str, const char *implied_key, struct vbd_error **err);

/* Lookup with dotted path ("file.filename"); NULL if absent. */
struct json_object *vbd_opt_get(struct json_object *opts, const char *path);
/* Typed take: returns 1 if present and valid (value stored, key removed),
 * 0 if absent (*out untouched), -EINVAL with *err naming key and value if bad. */
int vbd_opt_take_str(struct json_object *opts, const char *key, char **out, struct vbd_error **err); /* *out malloc'd */
int vbd_opt_take_bool(struct json_object *opts, const char *key, bool *out, struct vbd_error **err); /* on/off/true/false/yes/no */
int vbd_opt_take_u64(struct json_object *opts, const char *key, uint64_t *out, struct vbd_error **err);
int vbd_opt_take_size(struct json_object *opts, const char *key, uint64_t *out, struct vbd_error **err); /* suffixes k/M/G/T/P/E, B */
/* One of choices (NULL terminated); stores index. */
int vbd_opt_take_enum(struct json_object *opts, const char *key, const char *const *choices, int *out, struct vbd_error **err);
/* Take a sub-object (child node options, e.g. "file"): returns a new
 * reference, or NULL if absent. A string value (a node-name reference or a
 * filename) is returned as a json string object. */
struct json_object *vbd_opt_take_obj(struct json_object *opts, const char *key);
/* Error "'<what>' does not support option '<key>'" for the first leftover key. */
/* TYPE is in QEMU 7.2's ObjectType enum (a qom-type its schema knows, which
 * a binary may still not build): the QEMU tools say "invalid object type"
 * for such a type they cannot make, "Parameter 'qom-type' does not accept
 * value" for any other. */
bool vbd_qom_type_known(const char *type);
int vbd_opts_check_empty(struct json_object *opts, const char *what, struct vbd_error **err);
/* the same, worded "WHAT DOES_NOT support the option 'KEY'" (QEMU says a
 * protocol "doesn't", a format "does not") */
int vbd_opts_check_empty_worded(struct json_object *opts, const char *what, const char *does_not,
                                struct vbd_error **err);

/* Sizes: "1G", "512", "64k", "1.5M". Rejects negative, overflow, unknown
 * suffix ("1Q") with a message naming the value. */
int vbd_parse_size(const char *str, uint64_t *out, struct vbd_error **err);
/* "on"/"off"/... */
int vbd_parse_bool(const char *str, bool *out);

#endif
