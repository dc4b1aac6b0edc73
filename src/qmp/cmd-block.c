/* SPDX-License-Identifier: MIT */
/*
 * QMP block commands: nodes added, removed, resized and watched at run
 * time, as qemu-storage-daemon does them (qapi/block-core.json). The
 * queries are in cmd-block-query.c, blockdev-reopen in cmd-block-reopen.c.
 */
#include "qmp/cmd-block.h"
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "daemon/objects.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/iothread.h"
#include "vbd/job.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- BlockdevOptions, typed as QEMU's schema types them ---------- */

/* One key: name and type. Types: str, int, bool, obj (any object), ref
 * (node name or nested BlockdevOptions), ref-or-null (backing),
 * cache ({direct, no-flush}), any, or "enum:a,b,c". */
struct key_type {
    const char *name, *type;
};

static const struct key_type base_keys[] = {
    {"driver", "str"},       {"node-name", "str"},       {"discard", "enum:ignore,unmap"},
    {"cache", "cache"},      {"read-only", "bool"},      {"auto-read-only", "bool"},
    {"force-share", "bool"}, {"detect-zeroes", "enum:off,on,unmap"}, {NULL, NULL},
};
static const struct key_type file_keys[] = {
    {"filename", "str"},   {"pr-manager", "str"}, {"locking", "enum:auto,on,off"}, {"aio", "enum:threads,native,io_uring"},
    {"aio-max-batch", "int"}, {"drop-cache", "bool"}, {"x-check-cache-dropped", "bool"}, {NULL, NULL},
};
static const struct key_type null_keys[] = {{"size", "int"}, {"latency-ns", "uint"}, {"read-zeroes", "bool"}, {NULL, NULL}};
static const struct key_type nbd_keys[] = {
    {"server", "sockaddr"}, {"export", "str"}, {"tls-creds", "str"}, {"tls-hostname", "str"}, {"x-dirty-bitmap", "str"},
    {"reconnect-delay", "int"}, {"open-timeout", "int"},
    /* vbd's own: TLS without an object (vbd-img's nbds:// URIs) */
    {"tls", "bool"}, {"tls-certificates", "str"}, {"tls-psk-file", "str"}, {"tls-username", "str"},
    {"tls-verify-peer", "bool"}, {NULL, NULL},
};
/* QEMU 7.2's BlockdevOptionsRbd */
static const struct key_type rbd_keys[] = {
    {"pool", "str"}, {"namespace", "str"}, {"image", "str"}, {"conf", "str"}, {"snapshot", "str"},
    {"encrypt", "any"}, {"user", "str"}, {"auth-client-required", "any"}, {"key-secret", "str"},
    {"server", "any"}, {NULL, NULL},
};
/* QEMU's BlockdevOptionsIscsi ("password" is QEMU's runtime option the URI fills) */
static const struct key_type iscsi_keys[] = {
    {"transport", "enum:tcp,iser"}, {"portal", "str"}, {"target", "str"}, {"lun", "int"}, {"user", "str"},
    {"password-secret", "str"}, {"initiator-name", "str"}, {"header-digest", "enum:crc32c,none,crc32c-none,none-crc32c"},
    {"timeout", "int"}, {NULL, NULL},
};
static const struct key_type raw_keys[] = {{"file", "ref"}, {"offset", "int"}, {"size", "int"}, {NULL, NULL}};
static const struct key_type qcow2_keys[] = {
    {"file", "ref"}, {"backing", "ref-or-null"}, {"data-file", "ref"}, {"lazy-refcounts", "bool"},
    {"pass-discard-request", "bool"}, {"pass-discard-snapshot", "bool"}, {"pass-discard-other", "bool"},
    {"overlap-check", "overlap"}, {"cache-size", "int"}, {"l2-cache-size", "int"}, {"l2-cache-entry-size", "int"},
    {"refcount-cache-size", "int"}, {"cache-clean-interval", "int"}, {"encrypt", "obj"}, {NULL, NULL},
};
/* QEMU's BlockdevOptionsGenericFormat (vdi, vpc, parallels, vhdx, bochs, cloop, dmg) and
 * BlockdevOptionsGenericCOWFormat (qed) */
static const struct key_type generic_format_keys[] = {{"file", "ref"}, {NULL, NULL}};
static const struct key_type generic_cow_format_keys[] = {{"file", "ref"}, {"backing", "ref-or-null"}, {NULL, NULL}};
/* BlockdevOptionsThrottle and BlockdevOptionsBlkdebug */
static const struct key_type throttle_keys[] = {{"throttle-group", "str"}, {"file", "ref"}, {NULL, NULL}};
/* BlockdevOptionsQuorum: children is a list of BlockdevRef */
static const struct key_type quorum_keys[] = {
    {"blkverify", "bool"}, {"children", "refs"}, {"vote-threshold", "int"}, {"rewrite-corrupted", "bool"},
    {"read-pattern", "enum:quorum,fifo"}, {NULL, NULL},
};
static const struct key_type cor_keys[] = {{"file", "ref"}, {"bottom", "str"}, {NULL, NULL}};
/* BlockdevOptionsCbw and BlockdevOptionsGenericFormat (snapshot-access) */
static const struct key_type cbw_keys[] = {
    {"file", "ref"}, {"target", "ref"}, {"bitmap", "obj"}, {"on-cbw-error", "enum:break-guest-write,break-snapshot"},
    {"cbw-timeout", "int"}, {NULL, NULL},
};
static const struct key_type blkdebug_keys[] = {
    {"image", "ref"}, {"config", "str"}, {"align", "int"}, {"max-transfer", "int"}, {"opt-write-zero", "int"},
    {"max-write-zero", "int"}, {"opt-discard", "int"}, {"max-discard", "int"}, {"inject-error", "any"},
    {"set-state", "any"}, {"take-child-perms", "any"}, {"unshare-child-perms", "any"}, {NULL, NULL},
};
static const struct {
    const char *driver;
    const struct key_type *keys;
} driver_keys[] = {
    {"file", file_keys}, {"host_device", file_keys}, {"host_cdrom", file_keys}, {"null-co", null_keys},
    {"null-aio", null_keys}, {"nbd", nbd_keys}, {"rbd", rbd_keys}, {"iscsi", iscsi_keys}, {"raw", raw_keys}, {"qcow2", qcow2_keys},
    {"vdi", generic_format_keys}, {"vpc", generic_format_keys}, {"parallels", generic_format_keys},
    {"qed", generic_cow_format_keys}, {"throttle", throttle_keys}, {"blkdebug", blkdebug_keys},
    {"copy-on-read", cor_keys}, {"quorum", quorum_keys}, {"vmdk", generic_cow_format_keys},
    {"copy-before-write", cbw_keys}, {"snapshot-access", generic_format_keys},
    {"vhdx", generic_format_keys},
    {"bochs", generic_format_keys}, {"cloop", generic_format_keys}, {"dmg", generic_format_keys},
};

static const char *json_kind(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_string: return "str";
    case json_type_int: return "int";
    case json_type_double: return "number";
    case json_type_boolean: return "bool";
    case json_type_object: return "obj";
    case json_type_array: return "array";
    default: return "null";
    }
}

static const char *expected_word(const char *type)
{
    if (!strcmp(type, "str") || !strncmp(type, "enum:", 5))
        return "string";
    if (!strcmp(type, "int"))
        return "integer";
    if (!strcmp(type, "bool"))
        return "boolean";
    if (!strcmp(type, "ref"))
        return "BlockdevRef";
    if (!strcmp(type, "ref-or-null"))
        return "BlockdevRefOrNull";
    if (!strcmp(type, "refs"))
        return "array";
    if (!strcmp(type, "overlap"))
        return "Qcow2OverlapChecks";
    return "object";
}

static bool enum_has(const char *list, const char *word)
{
    size_t len = strlen(word);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && !strncmp(p, word, n))
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

static const struct key_type *find_key(const struct key_type *keys, const char *name)
{
    for (; keys && keys->name; keys++)
        if (!strcmp(keys->name, name))
            return keys;
    return NULL;
}

static bool check_value(const char *path, const char *type, struct json_object *v, struct vbd_qmp_error *err);

/* QEMU's SocketAddress (nbd's server), visited as QAPI does: the type,
 * then its branch's members in order (a mandatory one missing, a wrong
 * type), then the members left over. A "!" marks a mandatory member. */
static bool check_sockaddr(const char *path, struct json_object *v, struct vbd_qmp_error *err)
{
    static const struct {
        const char *type;
        struct key_type keys[9];
    } branches[] = {
        {"inet", {{"!host", "str"}, {"!port", "str"}, {"numeric", "bool"}, {"to", "int"}, {"ipv4", "bool"},
                  {"ipv6", "bool"}, {"keep-alive", "bool"}, {"mptcp", "bool"}, {NULL, NULL}}},
        {"unix", {{"!path", "str"}, {"abstract", "bool"}, {"tight", "bool"}, {NULL, NULL}}},
        {"vsock", {{"!cid", "str"}, {"!port", "str"}, {NULL, NULL}}},
        {"fd", {{"!str", "str"}, {NULL, NULL}}},
    };
    char sub[256];
    struct json_object *t;
    snprintf(sub, sizeof(sub), "%s.type", path);
    if (!json_object_object_get_ex(v, "type", &t)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is missing", sub);
        return false;
    }
    /* the union's discriminator: QAPI names it without the prefix */
    if (!check_value("type", "enum:inet,unix,vsock,fd", t, err))
        return false;
    const struct key_type *keys = NULL;
    for (size_t i = 0; i < sizeof(branches) / sizeof(branches[0]); i++)
        if (!strcmp(branches[i].type, json_object_get_string(t)))
            keys = branches[i].keys;
    for (const struct key_type *k = keys; k->name; k++) {
        const char *name = k->name + (k->name[0] == '!');
        struct json_object *m;
        snprintf(sub, sizeof(sub), "%s.%s", path, name);
        if (!json_object_object_get_ex(v, name, &m)) {
            if (k->name[0] == '!') {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is missing", sub);
                return false;
            }
        } else if (!check_value(sub, k->type, m, err)) {
            return false;
        }
    }
    json_object_object_foreach(v, key, m)
    {
        (void)m;
        bool known = !strcmp(key, "type");
        for (const struct key_type *k = keys; k->name && !known; k++)
            known = !strcmp(k->name + (k->name[0] == '!'), key);
        if (!known) {
            snprintf(sub, sizeof(sub), "%s.%s", path, key);
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", sub);
            return false;
        }
    }
    return true;
}

static bool check_value(const char *path, const char *type, struct json_object *v, struct vbd_qmp_error *err)
{
    const char *have = json_kind(v);
    bool ok;
    if (!strcmp(type, "any"))
        ok = true;
    else if (!strncmp(type, "enum:", 5))
        ok = !strcmp(have, "str");
    else if (!strcmp(type, "ref"))
        ok = !strcmp(have, "str") || !strcmp(have, "obj");
    else if (!strcmp(type, "ref-or-null"))
        ok = !strcmp(have, "str") || !strcmp(have, "obj") || !strcmp(have, "null");
    else if (!strcmp(type, "cache") || !strcmp(type, "sockaddr"))
        ok = !strcmp(have, "obj");
    else if (!strcmp(type, "refs"))
        ok = !strcmp(have, "array");
    else if (!strcmp(type, "uint")) /* QEMU's unsigned visitor (a negative one wraps) */
        ok = !strcmp(have, "int");
    else if (!strcmp(type, "overlap")) /* QEMU's Qcow2OverlapChecks: a template name or flags */
        ok = !strcmp(have, "str") || !strcmp(have, "obj");
    else
        ok = !strcmp(have, type);
    /* json-c keeps an integer up to 2^64-1: one past INT64_MAX is a number
     * QEMU's int64 visitor does not take (a null-co's size of 2^63) */
    if (ok && !strcmp(type, "int") && json_object_get_int64(v) == INT64_MAX &&
        json_object_get_uint64(v) > (uint64_t)INT64_MAX)
        ok = false;
    if (!ok && !strcmp(type, "uint")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' expects uint64", path); /* QEMU's words */
        return false;
    }
    if (!ok) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%s', expected: %s", path,
                           expected_word(type));
        return false;
    }
    if (!strncmp(type, "enum:", 5) && !enum_has(type + 5, json_object_get_string(v))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", path,
                           json_object_get_string(v));
        return false;
    }
    if (!strcmp(type, "cache")) {
        static const struct key_type cache_keys[] = {{"direct", "bool"}, {"no-flush", "bool"}, {NULL, NULL}};
        json_object_object_foreach(v, k, cv)
        {
            char sub[256];
            snprintf(sub, sizeof(sub), "%s.%s", path, k);
            const struct key_type *kt = find_key(cache_keys, k);
            if (!kt) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", sub);
                return false;
            }
            if (!check_value(sub, kt->type, cv, err))
                return false;
        }
    }
    if (!strcmp(type, "overlap")) {
        /* QEMU's Qcow2OverlapCheckFlags, visited in its order, then the members left over */
        static const struct key_type flag_keys[] = {
            {"template", "enum:none,constant,cached,all"}, {"main-header", "bool"}, {"active-l1", "bool"},
            {"active-l2", "bool"}, {"refcount-table", "bool"}, {"refcount-block", "bool"},
            {"snapshot-table", "bool"}, {"inactive-l1", "bool"}, {"inactive-l2", "bool"},
            {"bitmap-directory", "bool"}, {NULL, NULL},
        };
        if (!strcmp(have, "str"))
            return check_value(path, flag_keys[0].type, v, err);
        for (const struct key_type *k = flag_keys; k->name; k++) {
            struct json_object *m;
            char sub[256];
            snprintf(sub, sizeof(sub), "%s.%s", path, k->name);
            /* QAPI names the template member without the prefix */
            if (json_object_object_get_ex(v, k->name, &m) && !check_value(k == flag_keys ? k->name : sub, k->type, m, err))
                return false;
        }
        json_object_object_foreach(v, key, m)
        {
            (void)m;
            if (!find_key(flag_keys, key)) {
                char sub[256];
                snprintf(sub, sizeof(sub), "%s.%s", path, key);
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", sub);
                return false;
            }
        }
    }
    if (!strcmp(type, "sockaddr"))
        return check_sockaddr(path, v, err);
    if (!strcmp(type, "refs")) {
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            char sub[256];
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            if (!check_value(sub, "ref", json_object_array_get_idx(v, i), err))
                return false;
        }
    }
    if ((!strcmp(type, "ref") || !strcmp(type, "ref-or-null")) && !strcmp(have, "obj")) {
        char sub[256];
        snprintf(sub, sizeof(sub), "%s.", path);
        return vbd_qmp_check_blockdev(v, sub, err);
    }
    return true;
}

bool vbd_qmp_check_blockdev(struct json_object *o, const char *prefix, struct vbd_qmp_error *err)
{
    struct json_object *drv;
    if (!json_object_object_get_ex(o, "driver", &drv)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sdriver' is missing", prefix);
        return false;
    }
    char path[256];
    snprintf(path, sizeof(path), "%sdriver", prefix);
    if (!check_value(path, "str", drv, err))
        return false;
    const struct key_type *keys = NULL;
    for (size_t i = 0; i < sizeof(driver_keys) / sizeof(driver_keys[0]); i++)
        if (!strcmp(driver_keys[i].driver, json_object_get_string(drv)))
            keys = driver_keys[i].keys;
    if (!keys || !vbd_driver_find(json_object_get_string(drv))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", path,
                           json_object_get_string(drv));
        return false;
    }
    json_object_object_foreach(o, k, v)
    {
        snprintf(path, sizeof(path), "%s%s", prefix, k);
        const struct key_type *kt = find_key(base_keys, k);
        if (!kt)
            kt = find_key(keys, k);
        if (!kt) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' is unexpected", path);
            return false;
        }
        if (!check_value(path, kt->type, v, err))
            return false;
    }
    /* a format needs its file (QEMU's schema makes it mandatory) */
    if (find_key(keys, "file") && !json_object_object_get_ex(o, "file", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sfile' is missing", prefix);
        return false;
    }
    if (find_key(keys, "image") && !json_object_object_get_ex(o, "image", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%simage' is missing", prefix);
        return false;
    }
    /* QEMU's schema makes these mandatory too (nbd's server, rbd's being
     * optional; quorum's; iscsi's in its schema's order; copy-before-write's target) */
    const struct key_type *server = find_key(keys, "server");
    if (server && !strcmp(server->type, "sockaddr") && !json_object_object_get_ex(o, "server", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sserver' is missing", prefix);
        return false;
    }
    static const char *const required[] = {"children", "vote-threshold", "transport", "portal", "target"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        if (find_key(keys, required[i]) && !json_object_object_get_ex(o, required[i], NULL)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s%s' is missing", prefix, required[i]);
            return false;
        }
    if (find_key(keys, "throttle-group") && !json_object_object_get_ex(o, "throttle-group", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sthrottle-group' is missing", prefix);
        return false;
    }
    if (vbd_qmp_file_lacks_filename(o)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sfilename' is missing", prefix);
        return false;
    }
    return true;
}

bool vbd_qmp_file_lacks_filename(struct json_object *o)
{
    struct json_object *drv = json_object_object_get(o, "driver");
    return drv && json_object_is_type(drv, json_type_string) &&
           !strcmp(json_object_get_string(drv), "file") && !json_object_object_get_ex(o, "filename", NULL);
}

bool vbd_qmp_node_name_check(const char *s, struct vbd_qmp_error *err)
{
    /* QEMU's bdrv_assign_node_name(): id_wellformed() (a letter, then
     * letters, digits, '-', '.', '_'), then the 31 bytes its node_name
     * array holds, each with its own message */
    bool ok = isalpha((unsigned char)*s);
    for (const char *p = s; ok && *p; p++)
        ok = isalnum((unsigned char)*p) || strchr("-._", *p);
    if (!ok) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid node-name: '%s'", s);
        return false;
    }
    if (strlen(s) > 31) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node name too long");
        return false;
    }
    return true;
}

struct vbd_node *vbd_qmp_blockdev_add_opts(struct json_object *args, struct vbd_qmp_error *err)
{
    if (!vbd_qmp_check_blockdev(args, "", err))
        return NULL;
    struct json_object *nn;
    if (!json_object_object_get_ex(args, "node-name", &nn)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'node-name' must be specified for the root node");
        return NULL;
    }
    if (!vbd_qmp_node_name_check(json_object_get_string(nn), err))
        return NULL;
    struct json_object *v;
    bool auto_ro = json_object_object_get_ex(args, "auto-read-only", &v) && json_object_get_boolean(v);
    bool ro = json_object_object_get_ex(args, "read-only", &v) && json_object_get_boolean(v);
    struct json_object *retry = NULL, *given = NULL;
    if (auto_ro && !ro)
        json_object_deep_copy(args, &retry, NULL);
    json_object_deep_copy(args, &given, NULL); /* the open takes from args */
    struct vbd_error *e = NULL;
    struct vbd_node *n = vbd_open(NULL, json_object_get(args), VBD_OPEN_RDWR | VBD_OPEN_LOCK_BY_USERS, &e);
    if (!n && retry && e && (e->code == EACCES || e->code == EROFS || e->code == EPERM)) {
        /* auto-read-only: what cannot be written is opened read-only, as QEMU's file driver */
        vbd_error_free(e);
        e = NULL;
        n = vbd_open(NULL, json_object_get(retry), VBD_OPEN_LOCK_BY_USERS, &e);
    }
    json_object_put(retry);
    if (!n) {
        json_object_put(given);
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    vbd_qmp_node_given_options(n, given);
    vbd_daemon_node_add(n);
    /* its locks as its users need them (none if nothing uses it yet) */
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, &e) < 0) {
        vbd_daemon_node_del(n->node_name, NULL);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    return n;
}

/* QEMU lists the BlockBackends a monitor named or a device holds: qsd has
 * none (its exports' are anonymous), so its list is always empty */
static struct json_object *query_block(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args, (void)err;
    return json_object_new_array();
}

static struct json_object *blockdev_add(struct json_object *args, struct vbd_qmp_error *err)
{
    return vbd_qmp_blockdev_add_opts(args, err) ? vbd_qmp_ok() : NULL;
}

static bool job_holds(struct vbd_job *j, struct vbd_node *n)
{
    return n && j->drv->uses_node(j, n);
}

/* n is the topmost node job j holds: no node j holds has it as backing
 * (a job's filter node in between, as a commit_top, counts as nothing) */
static bool job_top(struct vbd_job *j, struct vbd_node *n)
{
    for (struct vbd_node *q = vbd_node_next(NULL); q; q = vbd_node_next(q))
        if (vbd_job_filter_skip(q->backing) == n && job_holds(j, q))
            return false;
    return job_holds(j, n);
}

/* QEMU's job puts its filter right above n (backup's copy-before-write and
 * mirror's mirror_top over the source, whose writes vbd's jobs hook;
 * stream's copy-on-read and active commit's mirror_top over the top; a
 * non-active commit's commit_top over the node under the overlay): an
 * export of n moves up onto the filter. */
static bool job_filters(struct vbd_job *j, struct vbd_node *n)
{
    const char *type = j->drv->type;
    if (!strcmp(type, "backup") || !strcmp(type, "mirror"))
        return n->write_hook != NULL;
    if (!strcmp(type, "stream") || (!strcmp(type, "commit") && j->drv->complete))
        return job_top(j, n);
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p))
        if (vbd_job_filter_skip(p->backing) == n && job_top(j, p))
            return true;
    return false;
}

/* qmp_blockdev_del()'s words for a node job j holds. QEMU's job opens a
 * BlockBackend on some ("Node X is in use": mirror's target, commit's
 * base and a non-active commit's top, blockdev-create's file), op-blocks
 * the others ("is busy"), and a backup's source is only a child of the
 * job's copy-before-write filter ("Block device X is in use"). */
static void job_node_del_error(struct vbd_job *j, struct vbd_node *n, struct vbd_qmp_error *err)
{
    const char *type = j->drv->type;
    bool blk = false;
    if (!strcmp(type, "backup") && n->write_hook) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block device %s is in use", n->node_name);
        return;
    }
    if (!strcmp(type, "mirror"))
        blk = !n->write_hook;
    if (!strcmp(type, "create"))
        blk = true; /* the format's create writes through a BlockBackend */
    if (!strcmp(type, "commit"))
        blk = !job_holds(j, vbd_job_filter_skip(n->backing)) || (!j->drv->complete && job_filters(j, n));
    if (blk)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node %s is in use", n->node_name);
    else
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: block device is in use by block job: %s",
                           n->node_name, type);
}

static struct json_object *blockdev_del(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *name = json_object_get_string(json_object_object_get(args, "node-name"));
    struct vbd_node *n = vbd_node_find(name);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    /* qmp_blockdev_del()'s words and order, for any node (the monitor's
     * or not: blockdev-snapshot-sync's overlay is its users'): an export's
     * node has a BlockBackend in QEMU ("Node X is in use") unless a job's
     * filter took it; then the op blockers: a job's node as
     * job_node_del_error() says, a backing file as its parent blocks it;
     * then a node the monitor did not add; then another node's child has a
     * second reference ("Block device X is in use") */
    bool exported = false;
    for (struct vbd_daemon_export *x = vbd_daemon_export_first(); x && !exported; x = x->next) {
        struct vbd_backend *be = x->type->backend ? x->type->backend(x->exp) : NULL;
        exported = be && vbd_backend_node(be) == n;
    }
    struct vbd_job *j = vbd_job_using_node(n);
    if (j && (!exported || job_filters(j, n))) {
        job_node_del_error(j, n, err);
        return NULL;
    }
    if (exported) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node %s is in use", name);
        return NULL;
    }
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p))
        if (p->backing == n) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is busy: node is used as backing hd of '%s'", name,
                               p->node_name);
            return NULL;
        }
    if (vbd_daemon_node_find(name) != n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node %s is not owned by the monitor", name);
        return NULL;
    }
    if (n->refcnt > 1) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block device %s is in use", name);
        return NULL;
    }
    struct vbd_error *e = NULL;
    if (vbd_daemon_node_del(name, &e) < 0) {
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    return vbd_qmp_ok();
}

static const char *opt_str(struct json_object *args, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : NULL;
}

/* Does a write entering m reach n: n itself, down file children and a
 * quorum's children (every write goes to each), never a backing file? */
static bool writes_reach(struct vbd_node *m, struct vbd_node *n)
{
    if (m == n)
        return true;
    if (m->file && m->file != m && writes_reach(m->file, n))
        return true;
    char name[32];
    struct vbd_node *c;
    for (int i = 0; m->drv->child_at && (c = m->drv->child_at(m, i, name, sizeof(name))); i++)
        if (writes_reach(c, n))
            return true;
    return false;
}

bool vbd_qmp_node_written_by_export(struct vbd_node *n)
{
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct vbd_backend *be = e->type->backend ? e->type->backend(e->exp) : NULL;
        if (!be || vbd_backend_read_only(be))
            continue;
        if (vbd_backend_node(be) && writes_reach(vbd_backend_node(be), n))
            return true;
    }
    return false;
}

/* Why QEMU would refuse to resize n (qmp_block_resize: the op blockers,
 * then the permissions of a BlockBackend taking RESIZE), in its words;
 * false if nothing holds the size. A backing file and a job's nodes are
 * op-blocked ("Device ... is in use", device printed as glibc prints a
 * NULL), except a backup's source, whose copy-before-write filter
 * unshares RESIZE; the permission model refuses the rest: a node exported
 * over NBD (the export's BlockBackend does not share RESIZE;
 * vhost-user-blk's does and tells the guest), a format node's file (read
 * and written at offsets the format keeps), a quorum's child. Filters and
 * raw pass their parent's permissions through: their child stays
 * resizable, as in QEMU. */
static bool resize_refused(struct vbd_node *n, const char *device, struct vbd_qmp_error *err)
{
    struct vbd_job *j = vbd_job_using_node(n);
    bool backing = false;
    for (struct vbd_node *p = vbd_node_next(NULL); p && !backing; p = vbd_node_next(p))
        backing = p->backing == n;
    if (backing || (j && !(n->write_hook && !strcmp(j->drv->type, "backup")))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Device '%s' is in use", device ? device : "(null)");
        return true;
    }
    /* the resize reaches further down: raw and filters pass it to their
     * child, which another user may hold the size of (a format over the
     * same file node): QEMU's check of the whole graph with the command's
     * BlockBackend (resize taken, everything shared), and its image
     * locks: a second file node on the same image whose users unshare
     * resize (a format over it) refuses it as another process would
     * ('Failed to get "resize" lock'). The caller gives them back
     * (vbd_qmp_image_locks_follow) once done. */
    struct vbd_qmp_perm_user u = {.node = n, .perm = 0x8, .shared = 0xf, .user = "an unnamed block device",
                                  .child = "root"};
    struct vbd_error *e = NULL;
    if (vbd_qmp_image_locks_follow_users(&u, 1, &e) < 0) {
        vbd_qmp_error_take(err, e);
        return true;
    }
    return false;
}

/* block_resize with the command's image locks taken (resize_refused) */
static struct json_object *resize_locked(struct vbd_node *n, int64_t size, struct vbd_qmp_error *err)
{
    /* the node, or below a raw or filter node (read-write over a
     * read-only node) the node its resize reaches */
    for (struct vbd_node *m = n; m; m = m->file != m ? m->file : NULL) {
        if (m->read_only) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Image is read-only");
            return NULL;
        }
        if (m->drv->kind != VBD_DRV_FILTER && strcmp(m->drv->name, "raw"))
            break;
    }
    /* QEMU's file-posix sets a regular file to the size asked for even when
     * not 'exact' (a shrink included); vbd's file driver leaves a file
     * longer unless exact, which the formats rely on: exact when the node
     * is a file or passes the request straight to one (raw, filters) */
    bool exact = false;
    for (struct vbd_node *m = n; m && !exact; m = m->file != m ? m->file : NULL) {
        exact = m->drv->kind == VBD_DRV_PROTOCOL && !strcmp(m->drv->name, "file");
        if (m->drv->kind == VBD_DRV_FORMAT && strcmp(m->drv->name, "raw"))
            break;
    }
    /* drained as QEMU's qmp_block_resize: no request is in flight in the
     * range that goes or in the metadata that changes (a shrink drops L2
     * tables and refcount blocks and cuts the file), and the requests after
     * it see the new size */
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(n, &d);
    struct vbd_error *e = NULL;
    if (vbd_node_co_truncate(n, (uint64_t)size, exact, VBD_PREALLOC_OFF, &e) < 0) {
        vbd_daemon_drain_end(&d);
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    vbd_qmp_sizes_changed("block_resize");
    vbd_daemon_drain_end(&d);
    return vbd_qmp_ok();
}

static struct json_object *block_resize(struct json_object *args, struct vbd_qmp_error *err)
{
    int64_t size = json_object_get_int64(json_object_object_get(args, "size"));
    const char *device = opt_str(args, "device"), *node_name = opt_str(args, "node-name");
    struct vbd_node *n = qmp_lookup_bs(device, node_name, err);
    if (!n)
        return NULL;
    if (size < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'size' expects a >0 size");
        return NULL;
    }
    if (resize_refused(n, device, err))
        return NULL;
    struct json_object *ret = resize_locked(n, size, err);
    vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* the command's resize lock goes */
    return ret;
}

void vbd_qmp_sizes_changed(const char *cmd)
{
    /* as SIGHUP: the nodes above see the new size, the exports tell their clients */
    struct vbd_error *e = NULL;
    for (struct vbd_node *m = vbd_daemon_node_next(NULL); m; m = vbd_daemon_node_next(m)) {
        if (vbd_node_refresh_size(m, &e) < 0) {
            vbd_warn("%s: node '%s': %s", cmd, m->node_name, e ? e->msg : "cannot refresh its size");
            vbd_error_free(e);
            e = NULL;
        }
    }
    for (struct vbd_daemon_export *x = vbd_daemon_export_first(); x; x = x->next)
        if (x->type->resized)
            x->type->resized(x->exp);
}

static struct json_object *change_backing_file(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *device = opt_str(args, "device"), *image = opt_str(args, "image-node-name");
    const char *backing_file = opt_str(args, "backing-file");
    struct vbd_node *top = qmp_get_root_bs(device, err);
    if (!top)
        return NULL;
    struct vbd_node *n = qmp_lookup_bs(NULL, image, err);
    if (!n)
        return NULL;
    struct vbd_node *m = top;
    while (m && m != n)
        m = m->backing ? m->backing : (m->drv->kind == VBD_DRV_FILTER ? m->file : NULL);
    if (!m) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is not in the backing chain of '%s'", image, device);
        return NULL;
    }
    if (!n->drv->change_backing_file) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' (driver '%s') has no backing file to change", image,
                           n->drv->name);
        return NULL;
    }
    /* as QEMU: a read-only image is made writable for the change, then read-only again */
    struct vbd_error *e = NULL;
    bool was_ro = n->read_only;
    if (was_ro && vbd_node_co_set_read_only(n, false, &e) < 0) {
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    const char *fmt = n->backing ? n->backing->drv->name : (n->backing_format[0] ? n->backing_format : NULL);
    char fmtbuf[32] = "";
    if (fmt)
        snprintf(fmtbuf, sizeof(fmtbuf), "%s", fmt);
    struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver state: its home loop's */
    int rc = n->drv->change_backing_file(n, backing_file, fmt ? fmtbuf : NULL, &e);
    vbd_node_co_leave_home(origin);
    if (rc == 0)
        rc = vbd_node_co_flush(n);
    if (was_ro) {
        struct vbd_error *e2 = NULL;
        if (vbd_node_co_set_read_only(n, true, &e2) < 0)
            vbd_error_propagate(&e, e2);
    }
    if (rc < 0 || e) {
        if (!e)
            vbd_error_setf(&e, -rc, "Could not change the backing file of '%s': %s", image, strerror(-rc));
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    return vbd_qmp_ok();
}

static struct json_object *block_set_write_threshold(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *name = opt_str(args, "node-name");
    struct vbd_node *n = vbd_node_find(name);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Device '%s' not found", name);
        return NULL;
    }
    vbd_node_set_write_threshold(n, (uint64_t)json_object_get_int64(json_object_object_get(args, "write-threshold")));
    return vbd_qmp_ok();
}

struct job_backend_find {
    struct vbd_node *n;
    bool found;
};

static void job_backend_edge(void *opaque, struct vbd_node *parent, const char *name, struct vbd_node *child,
                             unsigned perm, unsigned shared)
{
    (void)name, (void)perm, (void)shared;
    struct job_backend_find *f = opaque;
    if (!parent && child == f->n)
        f->found = true;
}

/* Whether a block job holds a BlockBackend of its own on n in QEMU (a
 * mirror's on its target, a commit's on its base and top, a stream's on
 * its filter node: vbd_job_driver.graph_backends), which its bdrv_has_blk
 * sees. */
static bool job_backend_on(struct vbd_node *n)
{
    struct job_backend_find f = {.n = n};
    for (struct vbd_job *j = vbd_job_next(NULL); j && !f.found; j = vbd_job_next(j))
        if (j->drv->graph_backends)
            j->drv->graph_backends(j, job_backend_edge, &f);
    return f.found;
}

static struct json_object *x_blockdev_set_iothread(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *name = opt_str(args, "node-name");
    struct json_object *iot = json_object_object_get(args, "iothread"), *fv;
    bool force = json_object_object_get_ex(args, "force", &fv) && json_object_get_boolean(fv);
    struct vbd_node *n = vbd_node_find(name);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    if (iot && !json_object_is_type(iot, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'iothread', expected: StrOrNull");
        return NULL;
    }
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e && !force; e = e->next) {
        struct vbd_backend *be = e->type->backend ? e->type->backend(e->exp) : NULL;
        for (struct vbd_node *m = be ? vbd_backend_node(be) : NULL; m; m = m->file != m ? m->file : NULL)
            if (m == n) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                                   "Node %s is associated with a BlockBackend and could be in use (use force=true "
                                   "to override this check)",
                                   name);
                return NULL;
            }
    }
    if (!force && job_backend_on(n)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Node %s is associated with a BlockBackend and could be in use (use force=true to override "
                           "this check)",
                           name);
        return NULL;
    }
    struct vbd_loop *loop = NULL; /* null: back to the main loop */
    if (iot) {
        const char *id = json_object_get_string(iot);
        loop = vbd_iothread_loop(id);
        if (!loop) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot find iothread %s", id);
            return NULL;
        }
    }
    /* n and the nodes below it change home (vbd/block.h): an export over
     * them (force) is drained meanwhile and its requests follow */
    struct vbd_error *e = NULL;
    if (vbd_daemon_co_move_node(n, loop, &e) < 0) {
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    return vbd_qmp_ok();
}

/* ---------- events ---------- */

static void on_write_threshold(struct vbd_node *n, uint64_t threshold, uint64_t exceeded)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "node-name", json_object_new_string(n->node_name));
    json_object_object_add(d, "amount-exceeded", json_object_new_uint64(exceeded));
    json_object_object_add(d, "write-threshold", json_object_new_uint64(threshold));
    vbd_qmp_event("BLOCK_WRITE_THRESHOLD", d);
}

static void on_corrupted(struct vbd_node *n, const char *msg, int64_t offset, int64_t size, bool fatal)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "device", json_object_new_string("")); /* no named backends, as qsd's exports */
    json_object_object_add(d, "node-name", json_object_new_string(n->node_name));
    json_object_object_add(d, "msg", json_object_new_string(msg));
    if (offset >= 0)
        json_object_object_add(d, "offset", json_object_new_int64(offset));
    if (size >= 0)
        json_object_object_add(d, "size", json_object_new_int64(size));
    json_object_object_add(d, "fatal", json_object_new_boolean(fatal));
    vbd_qmp_event("BLOCK_IMAGE_CORRUPTED", d);
}

static bool written_by_an_export(struct vbd_node *n)
{
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct vbd_backend *be = e->type->backend ? e->type->backend(e->exp) : NULL;
        if (be && !vbd_backend_read_only(be) && vbd_backend_node(be) == n)
            return true;
    }
    return false;
}

static const struct vbd_node_event_handlers qmp_handlers = {
    .write_threshold = on_write_threshold,
    .corrupted = on_corrupted,
    .written_outside = written_by_an_export,
};

/* Linked in only with the command tables (vbd-daemon): its nodes report to the monitors. */
__attribute__((constructor)) static void register_block_events(void)
{
    vbd_node_set_event_handlers(&qmp_handlers);
}

/* Does n have a child named `name` (QEMU's bdrv_find_child)? */
static bool node_has_child(struct vbd_node *n, const char *name)
{
    if (n->file && n->file != n && !strcmp(name, "file"))
        return true;
    if (n->backing && !strcmp(name, "backing"))
        return true;
    char nm[32];
    for (int i = 0; n->drv->child_at && n->drv->child_at(n, i, nm, sizeof(nm)); i++)
        if (!strcmp(nm, name))
            return true;
    return false;
}

/* A node has a parent in QEMU's graph when another node, an export's
 * BlockBackend or a job uses it; the monitor's reference is not one. */
static bool node_has_parent(struct vbd_node *n)
{
    if (n->refcnt > 1 || vbd_job_using_node(n))
        return true;
    for (struct vbd_daemon_export *x = vbd_daemon_export_first(); x; x = x->next) {
        struct vbd_backend *be = x->type->backend ? x->type->backend(x->exp) : NULL;
        if (be && vbd_backend_node(be) == n)
            return true;
    }
    return false;
}

/* x-blockdev-change (qmp_x_blockdev_change, QEMU 7.2): a quorum takes
 * one more child by node name, or lets one go by its child name; the
 * checks in QEMU's order and words. The new child gets no copy of the
 * data: it holds what is written from now on, and reads vote with it. */
static struct json_object *x_blockdev_change(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *parent = opt_str(args, "parent"), *child = opt_str(args, "child"), *node = opt_str(args, "node");
    struct vbd_node *p = qmp_lookup_node(parent, err);
    if (!p)
        return NULL;
    if (!child == !node) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           child ? "The parameters child and node are in conflict" : "Either child or node must be specified");
        return NULL;
    }
    struct vbd_error *e = NULL;
    int rc = 0;
    if (child) {
        if (!node_has_child(p, child)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' does not have child '%s'", parent, child);
            return NULL;
        }
        if (!p->drv->del_child) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The node %s does not support removing a child", p->node_name);
            return NULL;
        }
        struct vbd_loop *origin = vbd_node_co_enter_home(p);
        rc = p->drv->del_child(p, child, &e);
        vbd_node_co_leave_home(origin);
    } else {
        struct vbd_node *c = vbd_node_find(node);
        if (!c) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' not found", node);
            return NULL;
        }
        if (!p->drv->add_child) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The node %s does not support adding a child", p->node_name);
            return NULL;
        }
        if (node_has_parent(c)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The node %s already has a parent", c->node_name);
            return NULL;
        }
        struct vbd_loop *origin = vbd_node_co_enter_home(p);
        rc = p->drv->add_child(p, c, &e);
        vbd_node_co_leave_home(origin);
    }
    if (rc < 0) {
        vbd_qmp_error_take(err, e);
        return NULL;
    }
    return vbd_qmp_ok();
}

const struct vbd_qmp_command vbd_qmp_cmds_block[] = {
    {"blockdev-add", NULL, blockdev_add, 0},
    {"blockdev-del", "node-name:str", blockdev_del, 0},
    {"blockdev-reopen", "options:array", vbd_qmp_blockdev_reopen, 0},
    {"query-named-block-nodes", "?flat:bool", vbd_qmp_query_named_block_nodes, 0},
    {"query-block", "", query_block, 0},
    {"block_resize", "?device:str ?node-name:str size:int", block_resize, 0},
    {"query-blockstats", "?query-nodes:bool", vbd_qmp_query_blockstats, 0},
    {"change-backing-file", "device:str image-node-name:str backing-file:str", change_backing_file, 0},
    {"block-set-write-threshold", "node-name:str write-threshold:uint", block_set_write_threshold, 0},
    {"x-blockdev-set-iothread", "node-name:str iothread:any ?force:bool", x_blockdev_set_iothread, 0},
    {"x-blockdev-change", "parent:str ?child:str ?node:str", x_blockdev_change, 0},
    {NULL, NULL, NULL, 0},
};
