/* SPDX-License-Identifier: MIT */
/*
 * QMP: the user-creatable objects vbd has (iothread, tls-creds-x509/-psk/
 * -anon, authz-simple/-list, throttle-group, secret) as QEMU's QOM shows them: object-add and
 * object-del, qom-list of "/objects" and "/objects/ID", qom-get/qom-set of
 * their properties, query-iothreads. vbd has no object tree: the paths are
 * resolved against the three registries (src/engine/iothread.c,
 * src/util/tls-creds.c, src/util/authz.c), which also refuse to delete an
 * object something still uses.
 */
#include "qmp/chardev.h"
#include "qmp/cmd-export.h"
#include "qmp/commands.h"

#include "vbd/authz.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/options.h"
#include "vbd/secret.h"
#include "vbd/throttle.h"
#include "vbd/tls.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

/* qsd makes "/objects" when the first object is made (--object or
 * object-add; it stays when they are deleted): until then qom-list of it
 * is "Device '/objects' not found" and "/" lists "chardevs" only. */
static bool objects_made;

/* An object's qom-type and properties (not "type"), or NULL if there is no
 * object with that id. */
static struct json_object *object_props(const char *id, const char **qom_type)
{
    struct vbd_iothread_info t;
    if (vbd_iothread_info(id, &t)) {
        *qom_type = "iothread";
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "thread-pool-min", json_object_new_int64((int64_t)t.thread_pool_min));
        json_object_object_add(o, "aio-max-batch", json_object_new_int64((int64_t)t.aio_max_batch));
        json_object_object_add(o, "thread-pool-max", json_object_new_int64((int64_t)t.thread_pool_max));
        json_object_object_add(o, "poll-max-ns", json_object_new_int64((int64_t)t.poll_max_ns));
        json_object_object_add(o, "poll-grow", json_object_new_int64((int64_t)t.poll_grow));
        json_object_object_add(o, "poll-shrink", json_object_new_int64((int64_t)t.poll_shrink));
        return o;
    }
    struct vbd_throttle_config cfg;
    if (vbd_throttle_group_is_object(id) && vbd_throttle_group_get(id, &cfg)) {
        *qom_type = "throttle-group";
        struct json_object *limits = vbd_throttle_limits_json(&cfg), *o = json_object_new_object();
        json_object_object_add(o, "limits", json_object_get(limits));
        json_object_object_foreach(limits, key, val)
        {
            char name[64];
            snprintf(name, sizeof(name), "x-%s", key);
            json_object_object_add(o, name, json_object_get(val));
        }
        json_object_put(limits);
        return o;
    }
    const char *fmt = vbd_secret_format(id);
    if (fmt) {
        /* data, file and iv are write-only in QEMU too: the secret is
         * never shown */
        *qom_type = "secret";
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "loaded", json_object_new_boolean(true));
        json_object_object_add(o, "format", json_object_new_string(fmt));
        return o;
    }
    struct json_object *o = vbd_tls_creds_props(id, qom_type);
    return o ? o : vbd_authz_props(id, qom_type);
}

static bool object_exists(const char *id)
{
    const char *type;
    struct json_object *o = object_props(id, &type);
    json_object_put(o);
    return o != NULL;
}

/* ------------------------------------------------------------------ */
/* object-add / object-del                                             */

static const char *const qom_types[] = {"iothread",     "tls-creds-x509", "tls-creds-psk",  "tls-creds-anon",
                                        "authz-simple", "authz-list",     "throttle-group", "secret",       NULL};

static bool in_list(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], s))
            return true;
    return false;
}

/* Each type's properties as QEMU 7.2's ObjectOptions lists them (qom-type
 * and id are checked first). sanity-check and passwordid pass the type
 * check and are then refused by name: vbd does not implement them. */
static const char *members_of(const char *type)
{
    if (!strcmp(type, "iothread"))
        return "qom-type:str id:str ?aio-max-batch:int ?poll-max-ns:int ?poll-grow:int ?poll-shrink:int "
               "?thread-pool-min:int ?thread-pool-max:int";
    if (!strcmp(type, "tls-creds-x509"))
        return "qom-type:str id:str ?loaded:bool ?endpoint:str ?dir:str ?priority:str ?sanity-check:bool "
               "?verify-peer:bool ?passwordid:str";
    if (!strcmp(type, "tls-creds-psk"))
        return "qom-type:str id:str ?loaded:bool ?endpoint:str ?dir:str ?priority:str ?username:str";
    if (!strcmp(type, "tls-creds-anon"))
        return "qom-type:str id:str ?loaded:bool ?endpoint:str ?dir:str ?priority:str";
    if (!strcmp(type, "authz-simple"))
        return "qom-type:str id:str identity:str";
    if (!strcmp(type, "secret"))
        return "qom-type:str id:str ?loaded:bool ?format:str ?data:str ?file:str ?keyid:str ?iv:str";
    if (!strcmp(type, "throttle-group"))
        return "qom-type:str id:str ?limits:object "
               "?x-iops-total:int ?x-iops-total-max:int ?x-iops-total-max-length:int "
               "?x-iops-read:int ?x-iops-read-max:int ?x-iops-read-max-length:int "
               "?x-iops-write:int ?x-iops-write-max:int ?x-iops-write-max-length:int "
               "?x-bps-total:int ?x-bps-total-max:int ?x-bps-total-max-length:int "
               "?x-bps-read:int ?x-bps-read-max:int ?x-bps-read-max-length:int "
               "?x-bps-write:int ?x-bps-write-max:int ?x-bps-write-max-length:int ?x-iops-size:int";
    return "qom-type:str id:str ?policy:str ?rules:array";
}

static bool check_rules(struct json_object *args, struct vbd_qmp_error *err)
{
    static const char *const policies[] = {"deny", "allow", NULL};
    static const char *const formats[] = {"exact", "glob", NULL};
    struct json_object *rules;
    if (!json_object_object_get_ex(args, "rules", &rules))
        return true;
    for (size_t i = 0; i < json_object_array_length(rules); i++) {
        struct json_object *r = json_object_array_get_idx(rules, i);
        char name[32];
        snprintf(name, sizeof(name), "rules[%zu]", i);
        if (!json_object_is_type(r, json_type_object)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: object",
                               name);
            return false;
        }
        if (!qmp_check_members(r, "match:str policy:str ?format:str", name, err) ||
            !qmp_check_enum(r, "policy", "", policies, err) || !qmp_check_enum(r, "format", "", formats, err))
            return false;
    }
    return true;
}

/* vbd_secret_add takes the options the --object parser gives: strings */
static int add_secret(struct json_object *args, struct vbd_error **err)
{
    struct json_object *v;
    if (json_object_object_get_ex(args, "iv", &v)) {
        vbd_error_setf(err, ENOTSUP, "secret '%s': encrypted secrets (keyid, iv) are not supported", str_of(args, "id"));
        return -ENOTSUP;
    }
    return vbd_secret_add(args, err);
}

struct json_object *qmp_object_add(struct json_object *args, struct vbd_qmp_error *err)
{
    static const char *const endpoints[] = {"server", "client", NULL};
    static const char *const policies[] = {"deny", "allow", NULL};
    static const char *const formats[] = {"raw", "base64", NULL};
    struct json_object *v;
    if (!json_object_object_get_ex(args, "qom-type", &v)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'qom-type' is missing");
        return NULL;
    }
    if (!json_object_is_type(v, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'qom-type', expected: string");
        return NULL;
    }
    char type[64];
    snprintf(type, sizeof(type), "%s", json_object_get_string(v));
    if (vbd_qom_type_known(type) && !in_list(qom_types, type)) {
        /* QEMU names a type of its schema that its binary lacks so
         * (after checking the type's members, which vbd does not know) */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "invalid object type: %s", type);
        return NULL;
    }
    if (!qmp_check_enum(args, "qom-type", "", qom_types, err) ||
        !qmp_check_members(args, members_of(type), "", err) ||
        !qmp_check_enum(args, "endpoint", "", endpoints, err) || !qmp_check_enum(args, "policy", "", policies, err) ||
        !qmp_check_enum(args, "format", "", formats, err) || !check_rules(args, err))
        return NULL;
    const char *id = str_of(args, "id");
    if (!qmp_id_wellformed(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'id' expects an identifier");
        return NULL;
    }
    if (!strcmp(type, "iothread")) {
        /* QAPI types them int; the properties' setters refuse what is negative */
        static const char *const knobs[] = {"poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch",
                                            "thread-pool-min", "thread-pool-max", NULL};
        for (int i = 0; knobs[i]; i++)
            if (json_object_object_get_ex(args, knobs[i], &v) && json_object_get_int64(v) < 0) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s value must be in range [0, %lld]", knobs[i],
                                   (long long)INT64_MAX);
                return NULL;
            }
    }
    if (object_exists(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "attempt to add duplicate property '%s' to object (type 'container')", id);
        return NULL;
    }
    struct json_object *loaded = NULL;
    if (json_object_object_get_ex(args, "loaded", &loaded) && vbd_tls_creds_type(type)) {
        /* QEMU 7.2 lists it in the schema, then its property has no setter */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Property '%s.loaded' is not writable", type);
        return NULL;
    }
    if (loaded && !json_object_get_boolean(loaded)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s '%s': loaded=false is not supported (vbd loads the "
                           "credentials when the object is created)", type, id);
        return NULL;
    }
    json_object_object_del(args, "loaded"); /* deprecated in QEMU; always true */
    json_object_object_del(args, "qom-type");
    struct vbd_error *verr = NULL;
    int rc;
    if (!strcmp(type, "iothread"))
        rc = vbd_iothread_add(args, &verr); /* every key was checked above */
    else if (!strcmp(type, "throttle-group"))
        rc = vbd_throttle_group_add_opts(args, &verr);
    else if (!strcmp(type, "secret"))
        rc = add_secret(args, &verr);
    else if (vbd_tls_creds_type(type))
        rc = vbd_tls_creds_add(type, args, &verr);
    else
        rc = vbd_authz_add(type, args, &verr);
    if (rc < 0) {
        vbd_qmp_error_take(err, verr);
        return NULL;
    }
    objects_made = true;
    return vbd_qmp_ok();
}

/* keyval's numbered members ("rules.0.match=...": {"0": {...}}) are a
 * list, as QEMU's keyval_parse makes them */
static void keyval_lists(struct json_object *o, const char *key)
{
    struct json_object *m;
    if (!json_object_object_get_ex(o, key, &m) || !json_object_is_type(m, json_type_object))
        return;
    size_t n = (size_t)json_object_object_length(m);
    struct json_object *list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        char k[24];
        snprintf(k, sizeof(k), "%zu", i);
        struct json_object *e;
        if (!json_object_object_get_ex(m, k, &e)) {
            json_object_put(list);
            return; /* not 0..n-1: the type check refuses it */
        }
        json_object_array_add(list, json_object_get(e));
    }
    json_object_object_add(o, key, list);
}

/* limits.NAME=N of a throttle-group: ThrottleLimits' members are all int */
static bool keyval_limits(struct json_object *args, struct vbd_qmp_error *err)
{
    static const char *const names[] = {"iops-total", "iops-read", "iops-write", "bps-total", "bps-read", "bps-write"};
    struct json_object *limits;
    if (!json_object_object_get_ex(args, "limits", &limits) || !json_object_is_type(limits, json_type_object))
        return true;
    char spec[1024] = "";
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t n = strlen(spec);
        snprintf(spec + n, sizeof(spec) - n, "?%s:int ?%s-max:int ?%s-max-length:int ", names[i], names[i],
                 names[i]);
    }
    size_t n = strlen(spec);
    snprintf(spec + n, sizeof(spec) - n, "?iops-size:int");
    return qmp_keyval_members(limits, spec, "limits", err);
}

int vbd_qmp_object_add_cmdline(struct json_object *args, bool keyval, struct vbd_error **err)
{
    struct vbd_qmp_error qe = {0};
    struct json_object *v, *ret = NULL;
    if (keyval && json_object_object_get_ex(args, "qom-type", &v) && json_object_is_type(v, json_type_string)) {
        char type[64];
        snprintf(type, sizeof(type), "%s", json_object_get_string(v));
        /* an unknown type is refused by qmp_object_add before its members */
        if (in_list(qom_types, type)) {
            keyval_lists(args, "rules");
            if (!qmp_keyval_members(args, members_of(type), "", &qe) || !keyval_limits(args, &qe))
                goto out;
        }
    }
    ret = qmp_object_add(args, &qe);
out:
    if (!ret) {
        vbd_error_setf(err, EINVAL, "%s", qe.desc);
        return -EINVAL;
    }
    json_object_put(ret);
    return 0;
}

struct json_object *qmp_object_del(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id"), *type = NULL;
    struct json_object *o = object_props(id, &type);
    json_object_put(o);
    if (!o) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "object '%s' not found", id);
        return NULL;
    }
    struct vbd_error *verr = NULL;
    int rc;
    if (!strcmp(type, "iothread"))
        rc = vbd_iothread_remove(id, &verr);
    else if (!strcmp(type, "throttle-group"))
        rc = vbd_throttle_group_remove(id, &verr);
    else if (!strcmp(type, "secret"))
        rc = vbd_secret_remove(id, &verr);
    else if (vbd_tls_creds_type(type))
        rc = vbd_tls_creds_remove(id, &verr);
    else
        rc = vbd_authz_remove(id, &verr);
    if (rc < 0) {
        vbd_qmp_error_take(err, verr);
        return NULL;
    }
    return vbd_qmp_ok();
}

/* ------------------------------------------------------------------ */
/* qom-list / qom-get / qom-set                                        */

static struct json_object *prop_entry(const char *name, const char *type)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "type", json_object_new_string(type));
    return o;
}

static void list_objects(struct json_object *list)
{
    const char *type;
    for (const char *id = vbd_iothread_next(NULL); id; id = vbd_iothread_next(id))
        json_object_array_add(list, prop_entry(id, "child<iothread>"));
    for (const char *id = vbd_tls_creds_next(NULL); id; id = vbd_tls_creds_next(id)) {
        json_object_put(vbd_tls_creds_props(id, &type));
        char t[64];
        snprintf(t, sizeof(t), "child<%s>", type);
        json_object_array_add(list, prop_entry(id, t));
    }
    for (const char *id = vbd_authz_next(NULL); id; id = vbd_authz_next(id)) {
        json_object_put(vbd_authz_props(id, &type));
        char t[64];
        snprintf(t, sizeof(t), "child<%s>", type);
        json_object_array_add(list, prop_entry(id, t));
    }
    for (const char *id = vbd_throttle_group_next(NULL); id; id = vbd_throttle_group_next(id))
        json_object_array_add(list, prop_entry(id, "child<throttle-group>"));
    for (const char *id = vbd_secret_next(NULL); id; id = vbd_secret_next(id))
        json_object_array_add(list, prop_entry(id, "child<secret>"));
}

enum qom_node { QOM_NONE, QOM_AMBIGUOUS, QOM_ROOT, QOM_OBJECTS, QOM_OBJECT, QOM_CHARDEVS, QOM_CHARDEV };

/* Does full (a path without its leading '/') end in partial, at a '/'? */
static bool ends_with_part(const char *full, const char *partial)
{
    size_t f = strlen(full), n = strlen(partial);
    return f >= n && !strcmp(full + f - n, partial) && (f == n || full[f - n - 1] == '/');
}

/* One candidate of a partial path: counted if it matches, kept if first. */
static void candidate(const char *full, const char *partial, enum qom_node kind, const char *id, int *matches,
                      enum qom_node *found, char *out, size_t outlen)
{
    if (!ends_with_part(full, partial))
        return;
    if ((*matches)++ == 0) {
        *found = kind;
        snprintf(out, outlen, "%s", id ? id : "");
    }
}

/*
 * "/" (the root), "/objects" and "/chardevs" (the containers),
 * "/objects/ID" and "/chardevs/ID"; as QEMU, a path without the leading
 * '/' is a partial path, matched against the end of the full ones
 * ("objects", "ID", "chardevs/ID"; one that matches two, as an object and
 * a chardev of one id, is ambiguous), and a trailing '/' is ignored.
 */
static enum qom_node resolve(const char *path, char *id, size_t idlen)
{
    bool absolute = path[0] == '/';
    char p[256];
    if (strlen(path) >= sizeof(p))
        return QOM_NONE;
    snprintf(p, sizeof(p), "%s", path + absolute);
    size_t n = strlen(p);
    if (n && p[n - 1] == '/')
        p[--n] = 0;
    if (!n)
        return absolute ? QOM_ROOT : QOM_NONE;
    if (absolute) {
        if (!strcmp(p, "objects"))
            return objects_made ? QOM_OBJECTS : QOM_NONE;
        if (!strcmp(p, "chardevs"))
            return QOM_CHARDEVS;
        const char *name = !strncmp(p, "objects/", 8) ? p + 8 : !strncmp(p, "chardevs/", 9) ? p + 9 : NULL;
        if (!name || strchr(name, '/'))
            return QOM_NONE;
        if (name == p + 8 ? !object_exists(name) : !qmp_chardev_find(name))
            return QOM_NONE;
        snprintf(id, idlen, "%s", name);
        return name == p + 8 ? QOM_OBJECT : QOM_CHARDEV;
    }
    int matches = 0;
    enum qom_node found = QOM_NONE;
    char full[320];
    if (objects_made)
        candidate("objects", p, QOM_OBJECTS, NULL, &matches, &found, id, idlen);
    candidate("chardevs", p, QOM_CHARDEVS, NULL, &matches, &found, id, idlen);
    struct json_object *objs = json_object_new_array();
    list_objects(objs);
    for (size_t i = 0; i < json_object_array_length(objs); i++) {
        const char *oid = str_of(json_object_array_get_idx(objs, i), "name");
        snprintf(full, sizeof(full), "objects/%s", oid);
        candidate(full, p, QOM_OBJECT, oid, &matches, &found, id, idlen);
    }
    json_object_put(objs);
    for (struct qmp_chardev *c = qmp_chardev_next(NULL); c; c = qmp_chardev_next(c)) {
        snprintf(full, sizeof(full), "chardevs/%s", c->id);
        candidate(full, p, QOM_CHARDEV, c->id, &matches, &found, id, idlen);
    }
    return matches == 1 ? found : matches ? QOM_AMBIGUOUS : QOM_NONE;
}

/* qom-list says a path is ambiguous; qom-get and qom-set, as QEMU's, only
 * that nothing was found (they ask object_resolve_path without it) */
static enum qom_node resolve_or_fail(const char *path, char *id, size_t idlen, bool say_ambiguous,
                                     struct vbd_qmp_error *err)
{
    enum qom_node n = resolve(path, id, idlen);
    if (n == QOM_AMBIGUOUS && say_ambiguous)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Path '%s' is ambiguous", path);
    else if (n == QOM_NONE || n == QOM_AMBIGUOUS)
        vbd_qmp_error_setf(err, VBD_QMP_DEVICE_NOT_FOUND, "Device '%s' not found", path);
    return n == QOM_AMBIGUOUS ? QOM_NONE : n;
}

/* QOM's type names for the properties (QAPI enums and structs by name). */
static const char *prop_type(const char *name, struct json_object *v)
{
    if (!strcmp(name, "endpoint"))
        return "QCryptoTLSCredsEndpoint";
    if (!strcmp(name, "policy"))
        return "QAuthZListPolicy";
    if (!strcmp(name, "rules"))
        return "QAuthZListRule";
    if (!strcmp(name, "limits"))
        return "ThrottleLimits";
    switch (json_object_get_type(v)) {
    case json_type_int: return "int";
    case json_type_boolean: return "bool";
    default: return "string";
    }
}

struct json_object *qmp_qom_list(struct json_object *args, struct vbd_qmp_error *err)
{
    char id[256];
    enum qom_node n = resolve_or_fail(str_of(args, "path"), id, sizeof(id), true, err);
    if (n == QOM_NONE)
        return NULL;
    struct json_object *list = json_object_new_array();
    json_object_array_add(list, prop_entry("type", "string"));
    if (n == QOM_ROOT) {
        if (objects_made)
            json_object_array_add(list, prop_entry("objects", "child<container>"));
        json_object_array_add(list, prop_entry("chardevs", "child<container>"));
    } else if (n == QOM_OBJECTS) {
        list_objects(list);
    } else if (n == QOM_CHARDEVS) {
        const char *type;
        for (struct qmp_chardev *c = qmp_chardev_next(NULL); c; c = qmp_chardev_next(c)) {
            json_object_put(qmp_chardev_qom_props(c->id, &type));
            char t[64];
            snprintf(t, sizeof(t), "child<%s>", type);
            json_object_array_add(list, prop_entry(c->id, t));
        }
    } else {
        const char *type;
        struct json_object *props = n == QOM_CHARDEV ? qmp_chardev_qom_props(id, &type) : object_props(id, &type);
        json_object_object_foreach(props, key, val)
        {
            json_object_array_add(list, prop_entry(key, n == QOM_CHARDEV && !strcmp(key, "addr") ? "SocketAddress"
                                                                                             : prop_type(key, val)));
        }
        json_object_put(props);
    }
    return list;
}

/* Is prop a child<> property of container n? Its canonical path in out. */
static bool child_path(enum qom_node n, const char *prop, char *out, size_t len)
{
    if (n == QOM_ROOT && ((!strcmp(prop, "objects") && objects_made) || !strcmp(prop, "chardevs")))
        snprintf(out, len, "/%s", prop);
    else if (n == QOM_OBJECTS && strcmp(prop, "type") && object_exists(prop))
        snprintf(out, len, "/objects/%s", prop);
    else if (n == QOM_CHARDEVS && strcmp(prop, "type") && qmp_chardev_find(prop))
        snprintf(out, len, "/chardevs/%s", prop);
    else
        return false;
    return true;
}

struct json_object *qmp_qom_get(struct json_object *args, struct vbd_qmp_error *err)
{
    char id[256];
    const char *prop = str_of(args, "property"), *type = "container";
    enum qom_node n = resolve_or_fail(str_of(args, "path"), id, sizeof(id), false, err);
    if (n == QOM_NONE)
        return NULL;
    struct json_object *props = n == QOM_OBJECT    ? object_props(id, &type)
                                : n == QOM_CHARDEV ? qmp_chardev_qom_props(id, &type)
                                                   : NULL;
    struct json_object *v, *ret = NULL;
    /* a container's children are child<> properties: their value is the
     * child's canonical path, as QEMU's object_get_child_property */
    char child[320];
    if (child_path(n, prop, child, sizeof(child)))
        ret = json_object_new_string(child);
    else if (!strcmp(prop, "type"))
        ret = json_object_new_string(type);
    else if (props && json_object_object_get_ex(props, prop, &v))
        ret = json_object_get(v);
    else
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Property '%s.%s' not found", type, prop);
    json_object_put(props);
    return ret;
}

struct json_object *qmp_qom_set(struct json_object *args, struct vbd_qmp_error *err)
{
    char id[256];
    const char *prop = str_of(args, "property"), *type = "container";
    struct json_object *value;
    json_object_object_get_ex(args, "value", &value);
    enum qom_node n = resolve_or_fail(str_of(args, "path"), id, sizeof(id), false, err);
    if (n == QOM_NONE)
        return NULL;
    struct json_object *props = n == QOM_OBJECT    ? object_props(id, &type)
                                : n == QOM_CHARDEV ? qmp_chardev_qom_props(id, &type)
                                                   : NULL;
    char child[320];
    bool is_child = child_path(n, prop, child, sizeof(child)); /* read-only in QEMU */
    bool known = !strcmp(prop, "type") || is_child || (props && json_object_object_get_ex(props, prop, NULL));
    json_object_put(props);
    if (!known) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Property '%s.%s' not found", type, prop);
        return NULL;
    }
    if (!strcmp(type, "iothread") && strcmp(prop, "thread-pool-min") && strcmp(prop, "thread-pool-max") &&
        strcmp(prop, "type")) {
        /* qsd 7.2's words: the property is an int (a number past int64 is
         * not one), its setter refuses what is negative */
        if (!json_object_is_type(value, json_type_int) ||
            (json_object_get_int64(value) == INT64_MAX && json_object_get_uint64(value) != (uint64_t)INT64_MAX)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: integer", prop);
            return NULL;
        }
        if (json_object_get_int64(value) < 0) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s value must be in range [0, %lld]", prop,
                               (long long)INT64_MAX);
            return NULL;
        }
        vbd_iothread_set(id, prop, (uint64_t)json_object_get_int64(value));
        return vbd_qmp_ok();
    }
    if (!strcmp(type, "throttle-group") && !strcmp(prop, "limits")) {
        /* as QEMU: the members given change, the others keep their value */
        struct vbd_throttle_config cfg;
        struct vbd_error *verr = NULL;
        if (!vbd_throttle_group_get(id, &cfg) || vbd_throttle_limits_apply(&cfg, value, "", &verr) < 0 ||
            vbd_throttle_group_set(id, &cfg, &verr) < 0) {
            vbd_qmp_error_take(err, verr);
            return NULL;
        }
        return vbd_qmp_ok();
    }
    if (!strcmp(type, "throttle-group") && strcmp(prop, "type")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Property cannot be set after initialization");
        return NULL;
    }
    if (!strcmp(type, "authz-simple") && !strcmp(prop, "identity")) {
        if (!json_object_is_type(value, json_type_string)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'identity', expected: string");
            return NULL;
        }
        vbd_authz_set_identity(id, json_object_get_string(value));
        return vbd_qmp_ok();
    }
    if (!strcmp(prop, "type") || n == QOM_CHARDEV || is_child) /* a chardev's connected and addr are read-only in QEMU */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Property '%s.%s' is not writable", type, prop);
    else
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Property '%s.%s' cannot be changed in vbd (only an iothread's poll-max-ns, poll-grow, "
                           "poll-shrink and aio-max-batch, an authz-simple's identity and a throttle-group's limits can); delete the object and "
                           "add it again",
                           type, prop);
    return NULL;
}

struct json_object *qmp_query_iothreads(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args, (void)err;
    struct json_object *list = json_object_new_array();
    for (const char *id = vbd_iothread_next(NULL); id; id = vbd_iothread_next(id)) {
        struct vbd_iothread_info t;
        if (!vbd_iothread_info(id, &t))
            continue;
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(t.id));
        json_object_object_add(o, "thread-id", json_object_new_int(t.thread_id));
        json_object_object_add(o, "poll-max-ns", json_object_new_int64((int64_t)t.poll_max_ns));
        json_object_object_add(o, "poll-grow", json_object_new_int64((int64_t)t.poll_grow));
        json_object_object_add(o, "poll-shrink", json_object_new_int64((int64_t)t.poll_shrink));
        json_object_object_add(o, "aio-max-batch", json_object_new_int64((int64_t)t.aio_max_batch));
        json_object_array_add(list, o);
    }
    return list;
}
