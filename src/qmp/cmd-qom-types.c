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
#include <stdio.h>
#include <stdlib.h>
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

/* Properties of the table that vbd refuses at object-add (encrypted
 * secrets; a TLS key's password, the certificate sanity check): not
 * offered by --object TYPE,help. Nor is "loaded" (secrets, TLS
 * credentials): qsd's help leaves it out (deprecated since QEMU 6.0). */
static bool refused_property(const char *type, const char *name)
{
    if (!strcmp(name, "loaded"))
        return true;
    static const char *const refused[][2] = {
        {"secret", "keyid"}, {"secret", "iv"}, {"tls-creds-x509", "passwordid"}, {"tls-creds-x509", "sanity-check"}};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (!strcmp(type, refused[i][0]) && !strcmp(name, refused[i][1]))
            return true;
    return false;
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "TYPE options:" and a line "  name=<type>" a property, sorted as QEMU
 * sorts them (the whole line: "x-bps-read-max-length=" before "x-bps-read-max="). */
static bool print_type_help(const char *type)
{
    struct vbd_qmp_error err = {0};
    struct json_object *t = table(&err), *props;
    if (!t)
        return false;
    if (!json_object_object_get_ex(json_object_object_get(t, "props"), type, &props) ||
        !json_object_is_type(props, json_type_array)) {
        json_object_put(t);
        return false;
    }
    size_t n = json_object_array_length(props), k = 0;
    char **lines = calloc(n ? n : 1, sizeof(*lines));
    for (size_t i = 0; lines && i < n; i++) {
        struct json_object *p = json_object_array_get_idx(props, i);
        const char *name = json_object_get_string(json_object_object_get(p, "name"));
        const char *ptype = json_object_get_string(json_object_object_get(p, "type"));
        if (!name || !ptype || !strcmp(name, "type") || refused_property(type, name))
            continue;
        size_t len = strlen(name) + strlen(ptype) + 8;
        if ((lines[k] = malloc(len)))
            snprintf(lines[k++], len, "  %s=<%s>", name, ptype);
    }
    qsort(lines, k, sizeof(*lines), line_cmp);
    printf("%s options:\n", type);
    for (size_t i = 0; i < k; i++) {
        printf("%s\n", lines[i]);
        free(lines[i]);
    }
    free(lines);
    json_object_put(t);
    return true;
}

bool vbd_qom_object_help(const char *arg, const char *const *types)
{
    if (!arg || arg[0] == '{' || !strncmp(arg, "json:", 5))
        return false; /* JSON: qom-type "help" is a wrong value there, as in QEMU */
    /* keyval: the first member is the type (implied qom-type=), help or ? */
    const char *comma = arg;
    while ((comma = strchr(comma, ',')) && comma[1] == ',')
        comma += 2; /* ",," is a comma inside a value */
    size_t first = comma ? (size_t)(comma - arg) : strlen(arg);
    bool list = (first == 4 && !strncmp(arg, "help", 4)) || (first == 1 && arg[0] == '?');
    bool type_help = false;
    for (const char *p = comma; !list && p && *p;) {
        p++; /* past the ',' */
        const char *end = p;
        while ((end = strchr(end, ',')) && end[1] == ',')
            end += 2;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if ((len == 4 && !strncmp(p, "help", 4)) || (len == 1 && *p == '?'))
            type_help = true;
        p = end;
    }
    if (!list && !type_help)
        return false;
    char type[64] = "";
    const char *tstart = arg;
    size_t tlen = first;
    if (first > 9 && !strncmp(arg, "qom-type=", 9)) {
        tstart += 9;
        tlen -= 9;
    }
    if (!list && !memchr(tstart, '=', tlen) && tlen < sizeof(type))
        snprintf(type, sizeof(type), "%.*s", (int)tlen, tstart);
    bool known = false;
    for (size_t i = 0; type[0] && types[i]; i++)
        known |= !strcmp(types[i], type);
    if (!known || !print_type_help(type)) {
        /* help, or the help of a type this program does not make: the list, as QEMU */
        printf("List of user creatable objects:\n");
        for (size_t i = 0; types[i]; i++)
            printf("  %s\n", types[i]);
    }
    fflush(stdout);
    return true;
}

const struct vbd_qmp_command vbd_qmp_cmds_qom_types[] = {
    {"qom-list-types", "?implements:str ?abstract:bool", qom_list_types, 0},
    {"qom-list-properties", "typename:str", qom_list_properties, 0},
    {NULL, NULL, NULL, 0},
};
