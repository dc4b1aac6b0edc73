/* SPDX-License-Identifier: MIT */
/* The core commands: capabilities negotiation, version, the command list, quit. */
#include "qmp/commands.h"
#include "qmp/monitor.h"

#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>
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
            if (!strcmp(name, "oob"))
                continue; /* a valid value; the monitor refuses it (it offers no capability) */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'null' does not accept value '%s'", name);
            return NULL;
        }
    }
    return vbd_qmp_ok(); /* the monitor checks what it offers and marks the client negotiated */
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

/* SchemaInfo entries as qsd's introspection has them (type names are
 * opaque strings there too). What vbd knows honestly: each command's
 * top-level arguments from its arg_spec (a boxed command, arg_spec NULL,
 * gets arg-type "any": its members are not described), no return types
 * ("any"), and the events the daemon sends with their data members. */
static struct json_object *schema_entry(const char *name, const char *meta)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "meta-type", json_object_new_string(meta));
    return o;
}

static const char *schema_type(const char *spec_type)
{
    if (!strcmp(spec_type, "str") || !strcmp(spec_type, "int") || !strcmp(spec_type, "number") ||
        !strcmp(spec_type, "bool"))
        return spec_type;
    if (!strcmp(spec_type, "uint"))
        return "int"; /* QEMU's introspection names every integer type int */
    if (!strcmp(spec_type, "array"))
        return "[any]";
    return "any"; /* object, any */
}

/*
 * The events vbd-daemon sends (vbd_qmp_event's callers), with their data
 * as QEMU 7.2's schema types it (qsd 7.2's query-qmp-schema; its
 * VSERPORT_CHANGE is a virtio-serial port's: vbd has none). The members
 * in arg_spec syntax; a type "a|b|c" is an enum of those values.
 */
#define JOB_TYPES "commit|stream|mirror|backup|create|amend|snapshot-load|snapshot-save|snapshot-delete"
static const struct {
    const char *name, *data;
} schema_events[] = {
    {"BLOCK_IMAGE_CORRUPTED", "device:str ?node-name:str msg:str ?offset:int ?size:int fatal:bool"},
    {"BLOCK_IO_ERROR", "device:str ?node-name:str operation:read|write action:ignore|report|stop ?nospace:bool "
                       "reason:str"},
    {"BLOCK_JOB_COMPLETED", "type:" JOB_TYPES " device:str len:int offset:int speed:int ?error:str"},
    {"BLOCK_JOB_CANCELLED", "type:" JOB_TYPES " device:str len:int offset:int speed:int"},
    {"BLOCK_JOB_ERROR", "device:str operation:read|write action:ignore|report|stop"},
    {"BLOCK_JOB_READY", "type:" JOB_TYPES " device:str len:int offset:int speed:int"},
    {"BLOCK_JOB_PENDING", "type:" JOB_TYPES " id:str"},
    {"BLOCK_WRITE_THRESHOLD", "node-name:str amount-exceeded:uint write-threshold:uint"},
    {"QUORUM_FAILURE", "reference:str sector-num:int sectors-count:int"},
    {"QUORUM_REPORT_BAD", "type:read|write|flush ?error:str node-name:str sector-num:int sectors-count:int"},
    {"JOB_STATUS_CHANGE", "id:str status:undefined|created|running|paused|ready|standby|waiting|pending|aborting|"
                          "concluded|null"},
    {"BLOCK_EXPORT_DELETED", "id:str"},
};

/* A new type name ("N"), for an object or an enum entry. */
static const char *schema_name(unsigned *next_type, char *buf, size_t size)
{
    snprintf(buf, size, "%u", (*next_type)++);
    return buf;
}

/* An enum entry for "a|b|c" (QEMU 7.2's: values and members); its name in tname. */
static void schema_enum(struct json_object *list, const char *values, unsigned *next_type, char *tname, size_t tn)
{
    struct json_object *e = schema_entry(schema_name(next_type, tname, tn), "enum");
    struct json_object *vals = json_object_new_array(), *members = json_object_new_array();
    for (const char *v = values; *v;) {
        size_t n = strcspn(v, "|");
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "name", json_object_new_string_len(v, (int)n));
        json_object_array_add(members, m);
        json_object_array_add(vals, json_object_new_string_len(v, (int)n));
        v += n + (v[n] == '|');
    }
    json_object_object_add(e, "members", members);
    json_object_object_add(e, "values", vals);
    json_object_array_add(list, e);
}

/* An object entry for an arg_spec (its enums' entries too); its name in tname. */
static void schema_object(struct json_object *list, const char *spec, unsigned *next_type, char *tname, size_t tn)
{
    struct json_object *obj = schema_entry(schema_name(next_type, tname, tn), "object");
    struct json_object *members = json_object_new_array();
    for (const char *p = spec; *p;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (!n)
            break;
        bool optional = *p == '?';
        const char *word = p + optional;
        size_t wn = n - optional, colon = strcspn(word, ":");
        char aname[64], atype[256], ename[16];
        snprintf(aname, sizeof(aname), "%.*s", (int)(colon < wn ? colon : wn), word);
        snprintf(atype, sizeof(atype), "%.*s", colon < wn ? (int)(wn - colon - 1) : 0, word + colon + 1);
        const char *type = schema_type(atype);
        if (strchr(atype, '|')) {
            schema_enum(list, atype, next_type, ename, sizeof(ename));
            type = ename;
        }
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "name", json_object_new_string(aname));
        json_object_object_add(m, "type", json_object_new_string(type));
        if (optional)
            json_object_object_add(m, "default", NULL); /* QEMU's mark of an optional member */
        json_object_array_add(members, m);
        p += n;
    }
    json_object_object_add(obj, "members", members);
    json_object_array_add(list, obj);
}

static struct json_object *query_qmp_schema(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *list = json_object_new_array();
    unsigned next_type = 1; /* "0" is the empty object */
    char tname[16];
    for (const struct vbd_qmp_command *c = vbd_qmp_command_next(NULL); c; c = vbd_qmp_command_next(c)) {
        struct json_object *cmd = schema_entry(c->name, "command");
        json_object_object_add(cmd, "ret-type", json_object_new_string("any"));
        if (!c->arg_spec) {
            json_object_object_add(cmd, "arg-type", json_object_new_string("any"));
        } else if (!c->arg_spec[strspn(c->arg_spec, " ")]) {
            json_object_object_add(cmd, "arg-type", json_object_new_string("0"));
        } else {
            schema_object(list, c->arg_spec, &next_type, tname, sizeof(tname));
            json_object_object_add(cmd, "arg-type", json_object_new_string(tname));
        }
        json_object_array_add(list, cmd);
    }
    for (size_t i = 0; i < sizeof(schema_events) / sizeof(schema_events[0]); i++) {
        struct json_object *ev = schema_entry(schema_events[i].name, "event");
        schema_object(list, schema_events[i].data, &next_type, tname, sizeof(tname));
        json_object_object_add(ev, "arg-type", json_object_new_string(tname));
        json_object_array_add(list, ev);
    }
    struct json_object *empty = schema_entry("0", "object");
    json_object_object_add(empty, "members", json_object_new_array());
    json_object_array_add(list, empty);
    struct json_object *arr = schema_entry("[any]", "array");
    json_object_object_add(arr, "element-type", json_object_new_string("any"));
    json_object_array_add(list, arr);
    static const char *const builtins[][2] = {{"str", "string"}, {"int", "int"},   {"number", "number"},
                                              {"bool", "boolean"}, {"any", "value"}, {"null", "null"}};
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        struct json_object *b = schema_entry(builtins[i][0], "builtin");
        json_object_object_add(b, "json-type", json_object_new_string(builtins[i][1]));
        json_object_array_add(list, b);
    }
    return list;
}

static struct json_object *quit(struct json_object *args, struct vbd_qmp_error *err)
{
    vbd_qmp_request_quit();
    return vbd_qmp_ok();
}

static struct json_object *query_chardev(struct json_object *args, struct vbd_qmp_error *err)
{
    return vbd_qmp_query_chardev();
}

const struct vbd_qmp_command vbd_qmp_cmds_core[] = {
    {"qmp_capabilities", "?enable:array", qmp_capabilities, VBD_QMP_BEFORE_CAPS},
    {"query-version", "", query_version, 0},
    {"query-commands", "", query_commands, 0},
    {"query-qmp-schema", "", query_qmp_schema, 0},
    {"quit", "", quit, 0},
    {"query-chardev", "", query_chardev, 0},
    {NULL, NULL, NULL, 0},
};
