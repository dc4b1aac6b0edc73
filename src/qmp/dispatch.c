/* SPDX-License-Identifier: MIT */
/*
 * The QMP dispatcher: one request object in, one reply object out. The
 * request's shape and the command's top-level arguments are checked here,
 * once, with QEMU's wording, so handlers see only well-typed arguments;
 * handlers check their nested objects with the same checker
 * (qmp_check_members), so every level words its errors alike.
 */
#include "qmp/commands.h"

#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/qmp.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
    assert(vbd_thread_is_main() && vbd_in_co()); /* commands run in coroutines on the main loop */
    return change_hook ? change_hook(command, args, err) : 0;
}

struct json_object *vbd_qmp_ok(void)
{
    return json_object_new_object();
}

/* The arg_spec type of a JSON value: str, int, number, bool, object, array, null. */
static const char *type_word(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_string: return "str";
    case json_type_int: return "int";
    case json_type_double: return "number";
    case json_type_boolean: return "bool";
    case json_type_object: return "object";
    case json_type_array: return "array";
    default: return "null";
    }
}

static bool type_ok(const char *want, struct json_object *v)
{
    const char *have = type_word(v);
    if (!strcmp(want, "any"))
        return true;
    if (!strcmp(want, "number"))
        return !strcmp(have, "number") || !strcmp(have, "int");
    if (!strcmp(want, "uint") || !strcmp(want, "u32")) /* QEMU's uint8..uint64 and size (a negative one wraps, as QEMU's) */
        return !strcmp(have, "int");
    if (!strcmp(want, "strlist")) {
        if (!strcmp(have, "str"))
            return true;
        if (strcmp(have, "array"))
            return false;
        for (size_t i = 0; i < json_object_array_length(v); i++)
            if (!json_object_is_type(json_object_array_get_idx(v, i), json_type_string))
                return false;
        return true;
    }
    return !strcmp(want, have);
}

/* QEMU's names in "Invalid parameter type for 'x', expected: ..." */
static const char *expected_word(const char *type)
{
    if (!strcmp(type, "str") || !strcmp(type, "strlist"))
        return "string";
    if (!strcmp(type, "int"))
        return "integer";
    if (!strcmp(type, "bool"))
        return "boolean";
    return type;
}

/* One "?name:type" word of an arg_spec. */
struct spec_word {
    char name[64], type[16];
    bool optional;
};

static const char *next_word(const char *p, struct spec_word *w)
{
    while (*p == ' ')
        p++;
    if (!*p)
        return NULL;
    w->optional = *p == '?';
    p += w->optional;
    size_t n = strcspn(p, ":");
    snprintf(w->name, sizeof(w->name), "%.*s", (int)n, p);
    p += n + (p[n] == ':');
    n = strcspn(p, " ");
    snprintf(w->type, sizeof(w->type), "%.*s", (int)n, p);
    return p + n;
}

static void full_name(char *buf, size_t len, const char *prefix, const char *key)
{
    snprintf(buf, len, "%s%s%s", prefix, *prefix ? "." : "", key);
}

/*
 * A command-line value (keyval: every scalar is a string) as QEMU's keyval
 * input visitor reads it into a member of type `type`: int (qemu_strtoi64),
 * uint/u32 (qemu_strtou64, which takes "-1" as 2^64-1 as strtoull does;
 * u32 then bounded as visit_type_uint32 does, naming the member alone),
 * bool (on/yes/true/y, off/no/false/n). Replaces the string in obj with
 * the typed value; other types and non-strings are left as they are.
 */
static bool keyval_convert(struct json_object *obj, const char *key, const char *type, const char *name,
                           struct vbd_qmp_error *err)
{
    struct json_object *v = json_object_object_get(obj, key);
    if (!json_object_is_type(v, json_type_string))
        return true;
    const char *s = json_object_get_string(v);
    char *end;
    errno = 0;
    if (!strcmp(type, "int")) {
        long long n = strtoll(s, &end, 0);
        if (!*s || *end || errno) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects integer", name);
            return false;
        }
        json_object_object_add(obj, key, json_object_new_int64(n));
    } else if (!strcmp(type, "uint") || !strcmp(type, "u32")) {
        unsigned long long n = strtoull(s, &end, 0);
        if (!*s || *end || errno) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects integer", name);
            return false;
        }
        if (!strcmp(type, "u32") && n > UINT32_MAX) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects uint32_t", key);
            return false;
        }
        json_object_object_add(obj, key, json_object_new_uint64(n));
    } else if (!strcmp(type, "bool")) {
        bool b;
        if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "y"))
            b = true;
        else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "n"))
            b = false;
        else {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects 'on' or 'off'", name);
            return false;
        }
        json_object_object_add(obj, key, json_object_new_boolean(b));
    }
    return true;
}

static bool check_members(struct json_object *obj, const char *spec, const char *prefix, bool keyval,
                          struct vbd_qmp_error *err)
{
    char name[256];
    struct spec_word w;
    for (const char *p = spec; (p = next_word(p, &w));) {
        struct json_object *v;
        full_name(name, sizeof(name), prefix, w.name);
        if (!json_object_object_get_ex(obj, w.name, &v)) {
            if (w.optional)
                continue;
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is missing", name);
            return false;
        }
        /* in member order, as the visitor meets them */
        if (keyval && !keyval_convert(obj, w.name, w.type, name, err))
            return false;
        v = json_object_object_get(obj, w.name);
        /* json-c keeps an integer up to 2^64-1: one past INT64_MAX is a
         * number QEMU's int64 visitor does not take (its words), and a u32
         * is range-checked here as QEMU's uint32 visitor does */
        bool is_int = json_object_is_type(v, json_type_int);
        if (is_int && !strcmp(w.type, "int") && json_object_get_int64(v) == INT64_MAX &&
            json_object_get_uint64(v) > (uint64_t)INT64_MAX) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: integer", name);
            return false;
        }
        if (is_int && !strcmp(w.type, "u32") && (json_object_get_int64(v) < 0 || json_object_get_uint64(v) > UINT32_MAX)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects uint32_t", name);
            return false;
        }
        if (!type_ok(w.type, v)) {
            if (!strcmp(w.type, "uint") || !strcmp(w.type, "u32")) /* QEMU's unsigned visitor says it so */
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects uint64", name);
            else
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: %s", name,
                                   expected_word(w.type));
            return false;
        }
    }
    json_object_object_foreach(obj, key, val)
    {
        (void)val;
        bool known = false;
        for (const char *p = spec; !known && (p = next_word(p, &w));)
            known = !strcmp(w.name, key);
        if (!known) {
            full_name(name, sizeof(name), prefix, key);
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", name);
            return false;
        }
    }
    return true;
}

bool qmp_check_members(struct json_object *obj, const char *spec, const char *prefix, struct vbd_qmp_error *err)
{
    return check_members(obj, spec, prefix, false, err);
}

bool qmp_keyval_members(struct json_object *obj, const char *spec, const char *prefix, struct vbd_qmp_error *err)
{
    return check_members(obj, spec, prefix, true, err);
}

bool qmp_check_enum(struct json_object *obj, const char *key, const char *prefix, const char *const *choices,
                    struct vbd_qmp_error *err)
{
    struct json_object *v;
    if (!json_object_object_get_ex(obj, key, &v))
        return true;
    const char *s = json_object_get_string(v);
    for (int i = 0; choices[i]; i++)
        if (!strcmp(s, choices[i]))
            return true;
    char name[256];
    full_name(name, sizeof(name), prefix, key);
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", name, s);
    return false;
}

static struct json_object *error_reply(const struct vbd_qmp_error *err)
{
    struct json_object *e = json_object_new_object();
    json_object_object_add(e, "class", json_object_new_string(err->cls));
    /* a lock conflict's question is QEMU's error hint, which QMP does not
     * send: 'Failed to get "write" lock', as qsd's reply */
    const char *q = strstr(err->desc, " lock: Is another process using the image [");
    int len = q ? (int)(q - err->desc) + 5 : (int)strlen(err->desc);
    json_object_object_add(e, "desc", json_object_new_string_len(err->desc, len));
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
    assert(vbd_thread_is_main() && vbd_in_co()); /* commands run in coroutines on the main loop */
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
        /* "control" (run-oob, QEMU 2.12's) too: qsd 7.2 refuses it as unexpected */
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
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
    if (own && (!c->arg_spec || qmp_check_members(own, c->arg_spec, "", &err))) {
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
