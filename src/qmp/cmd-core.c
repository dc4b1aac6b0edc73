/* SPDX-License-Identifier: MIT */
/* The core commands: capabilities negotiation, version, the command list, quit. */
#include "qmp/commands.h"
#include "qmp/monitor.h"

#include <json-c/json.h>
#include <stddef.h>
#include <string.h>

/* The interface is qemu-storage-daemon 7.2's: management tools compare
 * this version to decide what they may send. */
#define QMP_QEMU_MAJOR 7
#define QMP_QEMU_MINOR 2
#define QMP_QEMU_MICRO 0

struct json_object *vbd_qmp_version(void)
{
    struct json_object *q = json_object_new_object(), *v = json_object_new_object();
    json_object_object_add(q, "micro", json_object_new_int(QMP_QEMU_MICRO));
    json_object_object_add(q, "minor", json_object_new_int(QMP_QEMU_MINOR));
    json_object_object_add(q, "major", json_object_new_int(QMP_QEMU_MAJOR));
    json_object_object_add(v, "qemu", q);
    json_object_object_add(v, "package", json_object_new_string(VBD_QMP_PACKAGE));
    return v;
}

static struct json_object *qmp_capabilities(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *enable;
    if (json_object_object_get_ex(args, "enable", &enable)) {
        size_t n = json_object_array_length(enable);
        for (size_t i = 0; i < n; i++) {
            struct json_object *cap = json_object_array_get_idx(enable, i);
            const char *name = json_object_is_type(cap, json_type_string) ? json_object_get_string(cap) : NULL;
            if (!name) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'enable[%zu]', expected: string", i);
                return NULL;
            }
            if (!strcmp(name, "oob")) {
                /* QEMU's wording for a monitor that cannot do out-of-band */
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Capability 'oob' not available");
                return NULL;
            }
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'null' does not accept value '%s'", name);
            return NULL;
        }
    }
    return vbd_qmp_ok(); /* the monitor marks the client negotiated on success */
}

static struct json_object *query_version(struct json_object *args, struct vbd_qmp_error *err)
{
    return vbd_qmp_version();
}

static struct json_object *query_commands(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *list = json_object_new_array();
    for (const struct vbd_qmp_command *c = vbd_qmp_command_next(NULL); c; c = vbd_qmp_command_next(c)) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(c->name));
        json_object_array_add(list, o);
    }
    return list;
}

static struct json_object *quit(struct json_object *args, struct vbd_qmp_error *err)
{
    vbd_qmp_request_quit();
    return vbd_qmp_ok();
}

const struct vbd_qmp_command vbd_qmp_cmds_core[] = {
    {"qmp_capabilities", "?enable:array", qmp_capabilities, VBD_QMP_BEFORE_CAPS},
    {"query-version", "", query_version, 0},
    {"query-commands", "", query_commands, 0},
    {"quit", "", quit, 0},
    {NULL, NULL, NULL, 0},
};
