/* SPDX-License-Identifier: MIT */
/*
 * qom-list-types and qom-list-properties: qemu-storage-daemon 7.2's
 * answers for the object types vbd-daemon creates (iothread, secret,
 * tls-creds-*, authz-simple, authz-list, throttle-group) and the types
 * above them (their abstract parents and interfaces), from a table taken
 * from a running qsd (scripts/gen-qom-types.py, qom-types-data.h). QEMU's
 * whole type list (devices, chardevs, the types of its other subsystems)
 * is not vbd's: a type outside the table is not found, and a filter
 * ("implements") that names one lists only the table's types.
 */
#include "qmp/commands.h"

#include "qom-types-data.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <string.h>

static struct json_object *table(struct vbd_qmp_error *err)
{
    struct json_object *t = json_tokener_parse(qom_types_json);
    if (!t)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
    return t;
}

static struct json_object *qom_list_types(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *v, *t = table(err);
    if (!t)
        return NULL;
    const char *implements = json_object_object_get_ex(args, "implements", &v) ? json_object_get_string(v) : NULL;
    bool abstract = json_object_object_get_ex(args, "abstract", &v) && json_object_get_boolean(v);
    struct json_object *types = json_object_object_get(t, "types"), *list = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(types); i++) {
        struct json_object *ty = json_object_array_get_idx(types, i), *impl;
        if (!abstract && json_object_object_get_ex(ty, "abstract", &v) && json_object_get_boolean(v))
            continue;
        if (implements) {
            bool found = false;
            json_object_object_get_ex(ty, "implements", &impl);
            for (size_t k = 0; !found && k < json_object_array_length(impl); k++)
                found = !strcmp(json_object_get_string(json_object_array_get_idx(impl, k)), implements);
            if (!found)
                continue;
        }
        struct json_object *o = json_object_new_object();
        json_object_object_foreach(ty, key, val)
        {
            if (strcmp(key, "implements"))
                json_object_object_add(o, key, json_object_get(val));
        }
        json_object_array_add(list, o);
    }
    json_object_put(t);
    return list;
}

static struct json_object *qom_list_properties(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *name = json_object_get_string(json_object_object_get(args, "typename"));
    struct json_object *t = table(err), *props, *e, *ret = NULL;
    if (!t)
        return NULL;
    if (!json_object_object_get_ex(json_object_object_get(t, "props"), name, &props))
        vbd_qmp_error_setf(err, VBD_QMP_DEVICE_NOT_FOUND, "Class '%s' not found", name); /* qsd's words and class */
    else if (json_object_object_get_ex(props, "error", &e))
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s", json_object_get_string(e));
    else
        ret = json_object_get(props);
    json_object_put(t);
    return ret;
}

const struct vbd_qmp_command vbd_qmp_cmds_qom_types[] = {
    {"qom-list-types", "?implements:str ?abstract:bool", qom_list_types, 0},
    {"qom-list-properties", "typename:str", qom_list_properties, 0},
    {NULL, NULL, NULL, 0},
};
