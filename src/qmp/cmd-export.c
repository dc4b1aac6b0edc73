/* SPDX-License-Identifier: MIT */
/*
 * QMP: the NBD server (nbd-server-start/stop), block exports
 * (block-export-add/del, query-block-exports, BLOCK_EXPORT_DELETED) and
 * vbd's resume of exports stopped by werror/rerror=stop, as
 * qemu-storage-daemon 7.2 takes them. The JSON QMP gives is checked here
 * with QEMU's wording and translated to the keys --nbd-server and --export
 * take, so the command line and QMP create the same things the same way.
 * The object commands are in cmd-object.c; this table lists both.
 */
#include "qmp/cmd-block.h"
#include "qmp/cmd-export.h"
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "daemon/objects.h"
#include "vbd/alloc.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * QMP's downstream-extension prefix (qmp-spec, "Downstream extension of
 * QMP": __RFQDN_, the reverse of a fully qualified domain name the
 * extender controls, so that no upstream or other downstream name can
 * collide). vbd has no domain of its own; vbd.github.io is the host name
 * GitHub gives the project's account ("com.github.vbd" would reverse a
 * URL path, not a host name). One definition: change it here if the
 * project gets a domain.
 */
#define VBD_QMP_RFQDN "__io.github.vbd_"

/* ------------------------------------------------------------------ */
/* boxed arguments                                                     */

bool qmp_id_wellformed(const char *id)
{
    if (!isalpha((unsigned char)id[0]))
        return false;
    for (const char *p = id + 1; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p))
            return false;
    return true;
}

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

/* Moves key from `from` to `to` (under the name to_key), if present. */
static void move_key(struct json_object *from, const char *key, struct json_object *to, const char *to_key)
{
    struct json_object *v;
    if (json_object_object_get_ex(from, key, &v)) {
        json_object_object_add(to, to_key, json_object_get(v));
        json_object_object_del(from, key);
    }
}

/* ------------------------------------------------------------------ */
/* the NBD server                                                      */

/*
 * QMP's SocketAddressLegacy ({"type":"unix","data":{"path":...}} or
 * {"type":"inet","data":{"host":...,"port":"..."}}), as the "addr" of
 * --nbd-server: {"type":..., "path"|"host","port"}.
 */
static struct json_object *legacy_addr(struct json_object *addr, struct vbd_qmp_error *err)
{
    static const char *const types[] = {"inet", "unix", "vsock", "fd", NULL};
    /* qsd names the legacy union's tag 'type', not 'addr.type' */
    if (!qmp_check_members(addr, "type:str ?data:any", "addr", err) || !qmp_check_enum(addr, "type", "", types, err))
        return NULL;
    struct json_object *data;
    if (!json_object_object_get_ex(addr, "data", &data)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'addr.data' is missing");
        return NULL;
    }
    if (!json_object_is_type(data, json_type_object)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'addr.data', expected: object");
        return NULL;
    }
    const char *type = str_of(addr, "type");
    bool unix_sock = !strcmp(type, "unix");
    if (!unix_sock && strcmp(type, "inet")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "NBD server: addr.type '%s' is not supported by vbd (unix or inet)", type);
        return NULL;
    }
    /* inet: QEMU 7.2's InetSocketAddress (the NBD server applies them as
     * qsd's listener does, keep-alive taken and left alone) */
    if (!qmp_check_members(data,
                           unix_sock ? "path:str"
                                     : "host:str port:str ?numeric:bool ?to:uint ?ipv4:bool ?ipv6:bool ?keep-alive:bool "
                                       "?mptcp:bool",
                           "addr.data", err))
        return NULL;
    struct json_object *out = json_object_new_object();
    json_object_object_add(out, "type", json_object_new_string(type));
    json_object_object_foreach(data, key, val)
    {
        json_object_object_add(out, key, json_object_get(val));
    }
    return out;
}

/* QEMU 7.2's SocketAddress types, in the order of nbd_addr_members. */
static const char *const socket_types[] = {"inet", "unix", "vsock", "fd", NULL};

/* addr.type of a flat SocketAddress, checked as QEMU's visitor checks it;
 * enum_prefix names the member in the enum's message (QEMU's NBD server
 * options say 'type' alone, the vhost-user-blk export 'addr.type'). The
 * index into socket_types, or -1 with *err set. */
static int socket_addr_type(struct json_object *addr, const char *enum_prefix, struct vbd_qmp_error *err)
{
    struct json_object *t;
    if (!json_object_object_get_ex(addr, "type", &t)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'addr.type' is missing");
        return -1;
    }
    if (!json_object_is_type(t, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'addr.type', expected: string");
        return -1;
    }
    if (!qmp_check_enum(addr, "type", enum_prefix, socket_types, err))
        return -1;
    int i = 0;
    while (strcmp(socket_types[i], json_object_get_string(t)))
        i++;
    return i;
}

bool vbd_qmp_nbd_server_opts_check(struct json_object *opts, bool keyval, struct vbd_qmp_error *err)
{
    /* QEMU 7.2's SocketAddress members per type (socket_types' order) */
    static const char *const members[] = {
        "type:str host:str port:str ?numeric:bool ?to:uint ?ipv4:bool ?ipv6:bool ?keep-alive:bool ?mptcp:bool",
        "type:str path:str ?abstract:bool ?tight:bool", "type:str cid:str port:str", "type:str str:str"};
    bool (*check)(struct json_object *, const char *, const char *, struct vbd_qmp_error *) =
        keyval ? qmp_keyval_members : qmp_check_members;
    struct json_object *addr;
    if (!json_object_object_get_ex(opts, "addr", &addr)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'addr' is missing");
        return false;
    }
    if (!json_object_is_type(addr, json_type_object)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'addr', expected: object");
        return false;
    }
    /* the enum's message names the tag alone ('type'), as QEMU's enum visitor does */
    int i = socket_addr_type(addr, "", err);
    if (i < 0)
        return false;
    return check(addr, members[i], "addr", err) &&
           check(opts, "addr:object ?tls-creds:str ?tls-authz:str ?max-connections:u32", "", err);
}

static struct json_object *nbd_server_start(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *addr;
    json_object_object_get_ex(args, "addr", &addr);
    struct json_object *a = legacy_addr(addr, err);
    if (!a)
        return NULL;
    struct json_object *opts = json_object_new_object();
    json_object_object_add(opts, "addr", a);
    move_key(args, "tls-creds", opts, "tls-creds");
    move_key(args, "tls-authz", opts, "tls-authz");
    move_key(args, "max-connections", opts, "max-connections");
    struct vbd_error *verr = NULL;
    int rc = vbd_nbd_server_start(opts, &verr);
    json_object_put(opts);
    if (rc < 0) {
        vbd_qmp_error_take(err, verr);
        return NULL;
    }
    return vbd_qmp_ok();
}

/* The export is gone from the daemon: tell every monitor. */
static void export_deleted(const char *id)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "id", json_object_new_string(id));
    vbd_qmp_event("BLOCK_EXPORT_DELETED", d);
}

/* Clients are cut off, in-flight requests finish, then it is freed. */
static void export_remove_hard(struct vbd_daemon_export *e)
{
    char *id = vbd_xstrdup(e->id);
    if (e->type->disconnect)
        e->type->disconnect(e->exp);
    vbd_daemon_export_remove(e);
    export_deleted(id);
    free(id);
}

static struct json_object *nbd_server_stop(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args;
    if (!vbd_nbd_server_running()) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "NBD server not running");
        return NULL;
    }
    /* as qsd: the NBD exports go with the server, each with its event */
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(), *next; e; e = next) {
        next = e->next;
        if (e->type == &vbd_export_type_nbd) {
            export_remove_hard(e);
            next = vbd_daemon_export_first(); /* the list may have changed while we waited */
        }
    }
    vbd_nbd_server_stop();
    return vbd_qmp_ok();
}

/* ------------------------------------------------------------------ */
/* block exports                                                       */

/* BlockExportOptions' common members, in QAPI order, then the members
 * each type adds. vhost-user-blk takes --export's own keys too (serial,
 * werror, rerror, retry-interval, merge, server, physical-block-size;
 * iothread may be a list of ids): vbd's, not qsd's. */
#define EXPORT_COMMON "type:str id:str ?fixed-iothread:bool ?iothread:strlist node-name:str ?writable:bool ?writethrough:bool"
#define EXPORT_NBD " ?name:str ?description:str ?bitmaps:array ?allocation-depth:bool"
#define EXPORT_VHOST                                                                                                  \
    " addr:object ?logical-block-size:uint ?num-queues:uint ?physical-block-size:uint ?serial:str ?werror:str"          \
    " ?rerror:str ?retry-interval:int ?merge:bool ?server:bool"

/* nbd: bitmaps (names, or {"node", "name"} of a node at or below the
 * exported one), writethrough, iothread and fixed-iothread go on to
 * --export's keys of those names (the daemon moves the node to the
 * iothread, as qsd's blk_exp_add; the connections are served there). */
static bool nbd_export_opts(struct json_object *args, const char *id, struct json_object *opts,
                            struct vbd_qmp_error *err)
{
    (void)id;
    (void)opts;
    struct json_object *iot;
    if (json_object_object_get_ex(args, "iothread", &iot) && !json_object_is_type(iot, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'iothread', expected: string");
        return false;
    }
    return true;
}

/* vhost-user-blk: addr is QMP's flat SocketAddress {"type":"unix","path":...}. */
static bool vhost_export_opts(struct json_object *args, const char *id, struct json_object *opts,
                              struct vbd_qmp_error *err)
{
    static const char *const werrors[] = {"report", "stop", "enospc", NULL};
    static const char *const rerrors[] = {"report", "stop", NULL};
    struct json_object *addr;
    json_object_object_get_ex(args, "addr", &addr);
    if (!qmp_check_enum(args, "werror", "", werrors, err) || !qmp_check_enum(args, "rerror", "", rerrors, err))
        return false;
    int type = socket_addr_type(addr, "addr", err);
    if (type < 0)
        return false;
    if (strcmp(socket_types[type], "unix")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Only socket address types 'unix' and 'fd' are supported"); /* qsd's words */
        return false;
    }
    if (!qmp_check_members(addr, "type:str path:str ?abstract:bool ?tight:bool", "addr", err))
        return false;
    struct json_object *abstract;
    if (json_object_object_get_ex(addr, "abstract", &abstract) && json_object_get_boolean(abstract)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "abstract unix sockets are not supported by vbd-daemon");
        return false;
    }
    json_object_object_del(addr, "abstract"); /* false: a path, as without it; tight matters only when abstract */
    json_object_object_del(addr, "tight");
    move_key(args, "addr", opts, "addr");
    json_object_object_del(args, "fixed-iothread"); /* the rings always stay on the iothreads given */
    return true;
}

static struct json_object *block_export_add(struct json_object *args, struct vbd_qmp_error *err)
{
    static const char *const types[] = {"nbd", "vhost-user-blk", NULL};
    struct json_object *t;
    if (!json_object_object_get_ex(args, "type", &t)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'type' is missing");
        return NULL;
    }
    if (!json_object_is_type(t, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'type', expected: string");
        return NULL;
    }
    if (!qmp_check_enum(args, "type", "", types, err))
        return NULL;
    bool nbd = !strcmp(json_object_get_string(t), "nbd");
    if (!qmp_check_members(args, nbd ? EXPORT_COMMON EXPORT_NBD : EXPORT_COMMON EXPORT_VHOST, "", err))
        return NULL;
    if (!qmp_id_wellformed(str_of(args, "id"))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid block export id");
        return NULL;
    }
    struct json_object *opts = json_object_new_object();
    move_key(args, "type", opts, "type");
    move_key(args, "id", opts, "id");
    move_key(args, "node-name", opts, "node-name");
    const char *id = str_of(opts, "id");
    if (!(nbd ? nbd_export_opts(args, id, opts, err) : vhost_export_opts(args, id, opts, err))) {
        json_object_put(opts);
        return NULL;
    }
    json_object_object_foreach(args, key, val)
    {
        json_object_object_add(opts, key, json_object_get(val)); /* the same names as --export */
    }
    struct vbd_error *verr = NULL;
    int rc = vbd_daemon_export_add(opts, "block-export-add", &verr);
    json_object_put(opts);
    if (rc < 0) {
        vbd_qmp_error_take(err, verr);
        return NULL;
    }
    return vbd_qmp_ok();
}

static struct vbd_daemon_export *find_export(const char *id, struct vbd_qmp_error *err)
{
    struct vbd_daemon_export *e = vbd_daemon_export_find(id);
    if (!e)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Export '%s' is not found", id);
    return e;
}

static struct json_object *block_export_del(struct json_object *args, struct vbd_qmp_error *err)
{
    static const char *const modes[] = {"safe", "hard", NULL};
    if (!qmp_check_enum(args, "mode", "", modes, err))
        return NULL;
    const char *mode = str_of(args, "mode");
    struct vbd_daemon_export *e = find_export(str_of(args, "id"), err);
    if (!e)
        return NULL;
    bool hard = mode && !strcmp(mode, "hard");
    /* A client that closed its socket just before this command is still
     * counted until its connection has read the EOF (on its own loop,
     * maybe after this command in the same iteration): wait for such
     * connections to end, up to a second, rather than refusing at random
     * (a script's qemu-io then block-export-del); live clients refuse at
     * once, as QEMU's (refcount > 1). */
    const char *id = str_of(args, "id");
    for (int waited_ms = 0; !hard && e->type->in_use && e->type->in_use(e->exp) && e->type->clients_leaving &&
                            e->type->clients_leaving(e->exp) && waited_ms < 1000;
         waited_ms++) {
        vbd_co_sleep_ns(1000 * 1000);
        if (!(e = find_export(id, err))) /* deleted by another monitor meanwhile */
            return NULL;
    }
    if (!hard && e->type->in_use && e->type->in_use(e->exp)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "export '%s' still in use", e->id);
        return NULL;
    }
    export_remove_hard(e);
    return vbd_qmp_ok();
}

/* QEMU's legacy nbd-server-add: block-export-add type=nbd whose id and
 * name are the name given, else the device, with one bitmap at most */
static struct json_object *nbd_server_add(struct json_object *args, struct vbd_qmp_error *err)
{
    if (!vbd_nbd_server_running()) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "NBD server not running");
        return NULL;
    }
    const char *device = str_of(args, "device"), *name = str_of(args, "name");
    struct vbd_node *n = qmp_lookup_node(device, err);
    if (!n)
        return NULL;
    struct json_object *opts = json_object_new_object(), *v;
    json_object_object_add(opts, "type", json_object_new_string("nbd"));
    json_object_object_add(opts, "id", json_object_new_string(name ? name : device));
    json_object_object_add(opts, "node-name", json_object_new_string(n->node_name));
    json_object_object_add(opts, "name", json_object_new_string(name ? name : device));
    if (json_object_object_get_ex(args, "description", &v))
        json_object_object_add(opts, "description", json_object_get(v));
    if (json_object_object_get_ex(args, "writable", &v))
        json_object_object_add(opts, "writable", json_object_get(v));
    if (json_object_object_get_ex(args, "bitmap", &v)) {
        struct json_object *list = json_object_new_array();
        json_object_array_add(list, json_object_get(v));
        json_object_object_add(opts, "bitmaps", list);
    }
    struct json_object *r = block_export_add(opts, err);
    json_object_put(opts);
    return r;
}

/* QEMU's legacy nbd-server-remove: block-export-del of an NBD export */
static struct json_object *nbd_server_remove(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *name = str_of(args, "name");
    struct vbd_daemon_export *e = vbd_daemon_export_find(name);
    if (e && e->type != &vbd_export_type_nbd) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block export '%s' is not an NBD export", name);
        return NULL;
    }
    struct json_object *del = json_object_new_object(), *v;
    json_object_object_add(del, "id", json_object_new_string(name));
    if (json_object_object_get_ex(args, "mode", &v))
        json_object_object_add(del, "mode", json_object_get(v));
    struct json_object *r = block_export_del(del, err);
    json_object_put(del);
    return r;
}

static struct json_object *query_block_exports(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args, (void)err;
    struct json_object *list = json_object_new_array();
    size_t n = 0;
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next)
        n++;
    /* newest first, as qsd lists them */
    for (size_t i = n; i-- > 0;) {
        struct vbd_daemon_export *e = vbd_daemon_export_first();
        for (size_t k = 0; k < i; k++)
            e = e->next;
        struct json_object *q = e->type->query ? e->type->query(e->exp) : NULL, *v;
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "type", json_object_new_string(e->type->type));
        json_object_object_add(o, "id", json_object_new_string(e->id));
        /* qsd's keys only: the type's extras (stopped requests ...) are in its log */
        if (q && json_object_object_get_ex(q, "node-name", &v))
            json_object_object_add(o, "node-name", json_object_get(v));
        json_object_object_add(o, "shutting-down", json_object_new_boolean(
                                                       q && json_object_object_get_ex(q, "shutting-down", &v) &&
                                                       json_object_get_boolean(v)));
        json_object_put(q);
        json_object_array_add(list, o);
    }
    return list;
}

/* vbd's own: retry the requests an error policy (werror/rerror=stop)
 * stopped, as SIGUSR1 does; one export, or all of them. */
static struct json_object *block_export_cont(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id");
    if (id) {
        struct vbd_daemon_export *e = find_export(id, err);
        if (!e)
            return NULL;
        if (!e->type->cont) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Export '%s' is of type %s, which never stops on errors (vhost-user-blk exports do, "
                               "with werror/rerror=stop)",
                               id, e->type->type);
            return NULL;
        }
        e->type->cont(e->exp);
        return vbd_qmp_ok();
    }
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next)
        if (e->type->cont)
            e->type->cont(e->exp);
    return vbd_qmp_ok();
}

const struct vbd_qmp_command vbd_qmp_cmds_export[] = {
    {"nbd-server-start", "addr:object ?tls-creds:str ?tls-authz:str ?max-connections:u32", nbd_server_start, 0},
    {"nbd-server-stop", "", nbd_server_stop, 0},
    {"block-export-add", NULL, block_export_add, 0},
    {"block-export-del", "id:str ?mode:str", block_export_del, 0},
    {"nbd-server-add", "device:str ?name:str ?description:str ?writable:bool ?bitmap:str", nbd_server_add, 0},
    {"nbd-server-remove", "name:str ?mode:str", nbd_server_remove, 0},
    {"query-block-exports", "", query_block_exports, 0},
    {VBD_QMP_RFQDN "block-export-cont", "?id:str", block_export_cont, 0},
    {"object-add", NULL, qmp_object_add, 0},
    {"object-del", "id:str", qmp_object_del, 0},
    {"qom-list", "path:str", qmp_qom_list, 0},
    {"qom-get", "path:str property:str", qmp_qom_get, 0},
    {"qom-set", "path:str property:str value:any", qmp_qom_set, 0},
    {"query-iothreads", "", qmp_query_iothreads, 0},
    {NULL, NULL, NULL, 0},
};
