/* SPDX-License-Identifier: MIT */
/* Every export type, once (pattern 1). */
#include "vbd/export.h"
#include "vbd/nbd.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <json-c/json.h>
#include <stddef.h>
#include <string.h>

extern const struct vbd_export_type vbd_export_type_vhost_user_blk;

static const struct vbd_export_type *const export_types[] = {
    &vbd_export_type_vhost_user_blk,
    &vbd_export_type_nbd,
    NULL,
};

const struct vbd_export_type *const *vbd_export_types(void)
{
    return export_types;
}

void vbd_export_io_error_event(const char *export_id, const char *node_name, bool write, int err,
                               const char *action)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "device", json_object_new_string(export_id));
    json_object_object_add(d, "node-name", json_object_new_string(node_name));
    json_object_object_add(d, "operation", json_object_new_string(write ? "write" : "read"));
    json_object_object_add(d, "action", json_object_new_string(action));
    json_object_object_add(d, "nospace", json_object_new_boolean(err == -ENOSPC));
    json_object_object_add(d, "reason", json_object_new_string(strerror(-err)));
    vbd_qmp_event("BLOCK_IO_ERROR", d);
}
