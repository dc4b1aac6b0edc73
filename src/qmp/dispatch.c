/* SPDX-License-Identifier: MIT */
/*
 * The QMP dispatcher: one request object in, one reply object out. The
 * request's shape and the command's top-level arguments are checked here,
 * once, with QEMU's wording, so handlers see only well-typed arguments.
 */
#include "vbd/error.h"
#include "vbd/qmp.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void vbd_qmp_error_setf(struct vbd_qmp_error *e, const char *cls, const char *fmt, ...)
{
    if (e->cls)
        return; /* the first error is the one the client sees */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->desc, sizeof(e->desc), fmt, ap);
    va_end(ap);
    e->cls = cls;
}

void vbd_qmp_error_take(struct vbd_qmp_error *e, struct vbd_error *src)
{
    vbd_qmp_error_setf(e, VBD_QMP_GENERIC_ERROR, "%s", src ? src->msg : "failed");
    vbd_error_free(src);
}

static vbd_qmp_change_hook change_hook;

void vbd_qmp_set_change_hook(vbd_qmp_change_hook fn)
{
    change_hook = fn;
}

int vbd_qmp_config_changed(const char *command, struct json_object *args, struct vbd_error **err)
{
    return change_hook ? change_hook(command, args, err) : 0;
}

struct json_object *vbd_qmp_ok(void)
{
    return json_object_new_object();
}

static const char *type_word(json_type t)
{
    switch (t) {
    case json_type_string: return "str";
    case json_type_int: return "int";
    case json_type_double: return "number";
    case json_type_boolean: return "bool";
    case json_type_object: return "object";
    case json_type_array: return "array";
    default: return "null";
    }
}

/* QEMU's names in "Invalid parameter type for 'x', expected: ..." */
static const char *expected_word(const char *type)
{
    if (!strcmp(type, "str"))
        return "string";
    if (!strcmp(type, "int"))
        return "integer";
    if (!strcmp(type, "bool"))
        return "boolean";
    return type;
}

static bool type_ok(const char *type, struct json_object *v)
{
    const char *have = type_word(json_object_get_type(v));
    if (!strcmp(type, "any"))
        return true;
    if (!strcmp(type, "number"))
        return !strcmp(have, "number") || !strcmp(have, "int");
    if (!strcmp(type, "uint")) /* QEMU's uint8..uint64 and size (a negative one wraps, as QEMU's) */
        return !strcmp(have, "int");
    return !strcmp(type, have);
}

/* One "?name:type" word of an arg_spec. */
struct spec_arg {
    char name[64], type[16];
    bool optional;
};

static const char *next_spec_arg(const char *p, struct spec_arg *a)
{
    while (*p == ' ')
        p++;
    if (!*p)
        return NULL;
    a->optional = *p == '?';
    if (a->optional)
        p++;
    size_t n = strcspn(p, ":");
    snprintf(a->name, sizeof(a->name), "%.*s", (int)n, p);
    p += n + (p[n] == ':');
    n = strcspn(p, " ");
    snprintf(a->type, sizeof(a->type), "%.*s", (int)n, p);
    return p + n;
}

static bool spec_has(const char *spec, const char *key)
{
    struct spec_arg a;
    for (const char *p = spec; (p = next_spec_arg(p, &a));)
        if (!strcmp(a.name, key))
            return true;
    return false;
}

static bool check_args(const struct vbd_qmp_command *c, struct json_object *args, struct vbd_qmp_error *err)
{
    if (!c->arg_spec)
        return true;
    struct spec_arg a;
    for (const char *p = c->arg_spec; (p = next_spec_arg(p, &a));) {
        struct json_object *v;
        if (!json_object_object_get_ex(args, a.name, &v)) {
            if (!a.optional) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is missing", a.name);
                return false;
            }
            continue;
        }
        if (!type_ok(a.type, v)) {
            if (!strcmp(a.type, "uint")) /* QEMU's unsigned visitor says it so */
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects uint64", a.name);
            else
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: %s",
                                   a.name, expected_word(a.type));
            return false;
        }
    }
    json_object_object_foreach(args, key, val)
    {
        (void)val;
        if (!spec_has(c->arg_spec, key)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    return true;
}

static struct json_object *error_reply(const struct vbd_qmp_error *err)
{
    struct json_object *e = json_object_new_object();
    json_object_object_add(e, "class", json_object_new_string(err->cls));
    json_object_object_add(e, "desc", json_object_new_string(err->desc));
    struct json_object *r = json_object_new_object();
    json_object_object_add(r, "error", e);
    return r;
}

static const struct vbd_qmp_command *find_in(const struct vbd_qmp_command *table, const char *name)
{
    if (!table)
        return vbd_qmp_command_find(name);
    for (; table->name; table++)
        if (!strcmp(table->name, name))
            return table;
    return NULL;
}

struct json_object *vbd_qmp_dispatch(struct json_object *req, bool negotiated)
{
    return vbd_qmp_dispatch_table(req, negotiated, NULL);
}

struct json_object *vbd_qmp_dispatch_table(struct json_object *req, bool negotiated,
                                           const struct vbd_qmp_command *table)
{
    struct vbd_qmp_error err = {0};
    struct json_object *reply = NULL, *id = NULL, *exec = NULL, *args = NULL;
    if (!json_object_is_type(req, json_type_object)) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input must be a JSON object");
        return error_reply(&err);
    }
    bool has_id = json_object_object_get_ex(req, "id", &id); /* "id": null is echoed too */
    json_object_object_foreach(req, key, val)
    {
        (void)val;
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id") && strcmp(key, "control")) {
            vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input member '%s' is unexpected", key);
            goto out;
        }
    }
    if (json_object_object_get_ex(req, "exec-oob", NULL)) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input member 'exec-oob' is unexpected");
        goto out;
    }
    if (!json_object_object_get_ex(req, "execute", &exec)) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input lacks member 'execute'");
        goto out;
    }
    if (!json_object_is_type(exec, json_type_string)) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input member 'execute' must be a string");
        goto out;
    }
    if (json_object_object_get_ex(req, "arguments", &args) && !json_object_is_type(args, json_type_object)) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "QMP input member 'arguments' must be an object");
        goto out;
    }
    const char *name = json_object_get_string(exec);
    const struct vbd_qmp_command *c = find_in(table, name);
    if (!c) {
        vbd_qmp_error_setf(&err, VBD_QMP_COMMAND_NOT_FOUND, "The command %s has not been found", name);
        goto out;
    }
    if (!negotiated && !(c->flags & VBD_QMP_BEFORE_CAPS)) {
        vbd_qmp_error_setf(&err, VBD_QMP_COMMAND_NOT_FOUND,
                           "Expecting capabilities negotiation with 'qmp_capabilities'");
        goto out;
    }
    /* handlers may take keys out: give them their own copy */
    struct json_object *own = NULL;
    if (args)
        json_object_deep_copy(args, &own, NULL);
    else
        own = json_object_new_object();
    if (own && check_args(c, own, &err)) {
        struct json_object *ret = c->run(own, &err);
        if (ret && !err.cls && negotiated && (c->flags & VBD_QMP_BEFORE_CAPS)) {
            /* as QEMU: the arguments are checked (and may fail) first;
             * negotiation commands have no side effect but the monitor's */
            json_object_put(ret);
            ret = NULL;
            vbd_qmp_error_setf(&err, VBD_QMP_COMMAND_NOT_FOUND,
                               "Capabilities negotiation is already complete, command ignored");
        }
        struct vbd_error *ce = NULL;
        if (ret && !err.cls && vbd_qmp_config_changed(name, args, &ce) < 0) {
            /* done, but would not survive a restart: the client must know */
            vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "%s", ce ? ce->msg : "the daemon's state was not saved");
            vbd_error_free(ce);
        }
        if (ret && !err.cls) {
            reply = json_object_new_object();
            json_object_object_add(reply, "return", ret);
        } else {
            json_object_put(ret);
            if (!err.cls)
                vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "%s failed", name);
        }
    } else if (!own) {
        vbd_qmp_error_setf(&err, VBD_QMP_GENERIC_ERROR, "out of memory");
    }
    json_object_put(own);
out:
    if (!reply)
        reply = error_reply(&err);
    if (has_id)
        json_object_object_add(reply, "id", json_object_get(id));
    return reply;
}
