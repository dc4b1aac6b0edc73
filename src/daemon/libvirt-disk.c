/* SPDX-License-Identifier: MIT */
/*
 * --libvirt-disk: a libvirt <disk> element served by vbd-daemon. The node
 * chain is the one libvirt 9's qemu driver gives QEMU with -blockdev (a
 * protocol node and a format node per image, the backingStore chain
 * linked by node name, cache/aio/discard on each, a copy-on-read filter
 * above), so that a disk moved from QEMU to vbd behaves the same; iotune
 * becomes a throttle filter in a throttle group, as QEMU's BlockBackend
 * limits. The nodes go through blockdev-add's code, so they are checked
 * exactly as a QMP client's. What vbd cannot honour is refused naming the
 * element and attribute: a disk that silently lost its cache mode or its
 * limits would be worse than one that does not start.
 */
#include "daemon/libvirt-disk.h"

#include "qmp/cmd-block.h"
#include "util/dynlib.h"
#include "vbd-config.h"
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/throttle.h"

#include <dlfcn.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if VBD_HAVE_LIBXML2
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

/* libxml2 (with ICU and libstdc++) is loaded by the first --libvirt-disk,
 * not linked (see util/dynlib.h): every libxml2 function this file calls
 * is one of these pointers (xmllib.f; xmllib.free is xmlFree's value). */
#define XMLLIB_FUNCS(X) \
    X(xmlBufferCCat) \
    X(xmlBufferContent) \
    X(xmlBufferCreate) \
    X(xmlBufferFree) \
    X(xmlDocGetRootElement) \
    X(xmlFreeDoc) \
    X(xmlGetLastError) \
    X(xmlNodeDump) \
    X(xmlNodeGetContent) \
    X(xmlReadFile)
static struct {
#define X(f) __typeof__(f) *f;
    XMLLIB_FUNCS(X)
#undef X
    xmlFreeFunc free;
} xmllib;

static const char *xmllib_resolve(void *h)
{
#define X(f) \
    if (!(*(void **)&xmllib.f = dlsym(h, #f))) \
        return #f;
    XMLLIB_FUNCS(X)
#undef X
    /* xmlFree is a variable holding the function (the default, free, unless a
     * program sets its own with xmlMemSetup, which nothing here does) */
    xmlFreeFunc *free_fn = dlsym(h, "xmlFree");
    if (!free_fn || !*free_fn)
        return "xmlFree";
    xmllib.free = *free_fn;
    return NULL;
}

static struct vbd_dynlib xmllib_so = {
    .what = "libvirt XML",
    .soname = "libxml2.so.2",
    .resolve = xmllib_resolve,
};

/* A hostile chain must not recurse without bound; QEMU's own limit on
 * backing chains it follows is far below this in practice. */
#define MAX_CHAIN 32

struct ctx {
    const char *file;
    struct vbd_libvirt_disk *d;
    struct vbd_error **err;
    bool failed;
    /* from <driver>, shared by every layer as libvirt shares them */
    const char *cache_direct, *cache_no_flush; /* "true"/"false" or NULL: not set */
    const char *aio, *discard;
    const char *detect_zeroes; /* the top image's detect-zeroes, as libvirt sets it */
    bool shareable;
};

static void fail(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct ctx *c, const char *fmt, ...)
{
    if (c->failed)
        return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vbd_error_setf(c->err, EINVAL, "--libvirt-disk %s: %s", c->file, msg);
    c->failed = true;
}

static const char *attr(xmlNodePtr n, const char *name)
{
    for (xmlAttrPtr a = n->properties; a; a = a->next)
        if (!strcmp((const char *)a->name, name) && a->children && a->children->content)
            return (const char *)a->children->content;
    return NULL;
}

static bool in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(s, *list))
            return true;
    return false;
}

/* Attributes vbd does not know are an error, never dropped. */
static bool check_attrs(struct ctx *c, xmlNodePtr n, const char *where, const char *const *allowed)
{
    for (xmlAttrPtr a = n->properties; a; a = a->next)
        if (!in_list((const char *)a->name, allowed)) {
            /* "<driver>" -> "<driver sgio='filtered'>" */
            const char *v = a->children && a->children->content ? (const char *)a->children->content : "";
            fail(c, "%.*s %s='%s'>: not supported by vbd", (int)strlen(where) - 1, where, (const char *)a->name, v);
            return false;
        }
    return true;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr k = n->children; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && !strcmp((const char *)k->name, name))
            return k;
    return NULL;
}

static bool check_children(struct ctx *c, xmlNodePtr n, const char *where, const char *const *allowed)
{
    for (xmlNodePtr k = n->children; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && !in_list((const char *)k->name, allowed)) {
            fail(c, "%s<%s>: not supported by vbd", where, (const char *)k->name);
            return false;
        }
    return true;
}

static char *text(xmlNodePtr n)
{
    xmlChar *t = xmllib.xmlNodeGetContent(n);
    char *s = vbd_xstrdup(t ? (const char *)t : "");
    xmllib.free(t);
    return s;
}

static void put_str(struct json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v));
}

static void put_bool(struct json_object *o, const char *k, bool v)
{
    json_object_object_add(o, k, json_object_new_boolean(v));
}

/* Adds the node as blockdev-add does; takes o. */
static bool add_node(struct ctx *c, struct json_object *o)
{
    struct vbd_qmp_error qe = {0};
    char name[64];
    /* before the open: it takes the keys it uses out of o */
    snprintf(name, sizeof(name), "%s", json_object_get_string(json_object_object_get(o, "node-name")));
    struct vbd_node *n = c->failed ? NULL : vbd_qmp_blockdev_add_opts(o, &qe);
    if (!n && !c->failed)
        fail(c, "<target dev='%s'>: node '%s': %s", c->d->target, name, qe.desc);
    json_object_put(o);
    return n != NULL;
}

static void put_cache(struct ctx *c, struct json_object *o)
{
    if (!c->cache_direct)
        return;
    struct json_object *cache = json_object_new_object();
    put_bool(cache, "direct", !strcmp(c->cache_direct, "true"));
    put_bool(cache, "no-flush", !strcmp(c->cache_no_flush, "true"));
    json_object_object_add(o, "cache", cache);
}

/* <source> of a network disk -> the protocol node's options. */
static bool network_source(struct ctx *c, xmlNodePtr src, const char *where, struct json_object *o)
{
    const char *proto = attr(src, "protocol"), *name = attr(src, "name");
    if (!proto) {
        fail(c, "%s<source protocol=>: missing", where);
        return false;
    }
    if (!vbd_driver_find(proto) || (strcmp(proto, "nbd") && strcmp(proto, "rbd") && strcmp(proto, "iscsi"))) {
        fail(c, "%s<source protocol='%s'>: vbd has no %s driver (it has nbd%s%s)", where, proto, proto,
             vbd_driver_find("rbd") ? ", rbd" : "", vbd_driver_find("iscsi") ? ", iscsi" : "");
        return false;
    }
    static const char *const src_attrs[] = {"protocol", "name", "index", "tls", NULL};
    static const char *const src_kids[] = {"host", "auth", "reconnect", "config", "snapshot", NULL};
    if (!check_attrs(c, src, "<source>", src_attrs) || !check_children(c, src, "<source>", src_kids))
        return false;
    /* the children that mean something only for one protocol */
    static const char *const only[][2] = {{"reconnect", "nbd"}, {"config", "rbd"}, {"snapshot", "rbd"}};
    for (size_t i = 0; i < sizeof(only) / sizeof(only[0]); i++)
        if (child(src, only[i][0]) && strcmp(proto, only[i][1])) {
            fail(c, "%s<source protocol='%s'><%s>: only for protocol %s", where, proto, only[i][0], only[i][1]);
            return false;
        }
    const char *tls = attr(src, "tls");
    if (tls && strcmp(tls, "no")) {
        fail(c, "%s<source tls='%s'>: not supported by vbd (use --blockdev with tls-creds)", where, tls);
        return false;
    }
    put_str(o, "driver", proto);
    /* hosts, in order (rbd takes several monitors) */
    struct json_object *servers = json_object_new_array();
    for (xmlNodePtr h = src->children; h; h = h->next) {
        if (h->type != XML_ELEMENT_NODE || strcmp((const char *)h->name, "host"))
            continue;
        static const char *const host_attrs[] = {"name", "port", "transport", "socket", NULL};
        if (!check_attrs(c, h, "<source><host>", host_attrs))
            break;
        const char *tr = attr(h, "transport") ? attr(h, "transport") : "tcp";
        struct json_object *s = json_object_new_object();
        if (!strcmp(tr, "unix")) {
            if (!attr(h, "socket") || strcmp(proto, "nbd")) {
                fail(c, "%s<host transport='unix'>: needs socket= (and protocol nbd)", where);
                json_object_put(s);
                break;
            }
            put_str(s, "type", "unix");
            put_str(s, "path", attr(h, "socket"));
        } else if (!strcmp(tr, "tcp")) {
            if (!attr(h, "name")) {
                fail(c, "%s<host name=>: missing", where);
                json_object_put(s);
                break;
            }
            if (!strcmp(proto, "nbd"))
                put_str(s, "type", "inet");
            put_str(s, "host", attr(h, "name"));
            const char *port = attr(h, "port");
            put_str(s, "port", port ? port : !strcmp(proto, "nbd") ? "10809" : !strcmp(proto, "iscsi") ? "3260" : "6789");
        } else {
            fail(c, "%s<host transport='%s'>: not supported by vbd (tcp or unix)", where, tr);
            json_object_put(s);
            break;
        }
        json_object_array_add(servers, s);
    }
    size_t nserv = json_object_array_length(servers);
    const char *user = NULL, *secret = NULL;
    char uuid_id[96];
    xmlNodePtr auth = child(src, "auth");
    if (!auth && src->parent)
        auth = child(src->parent, "auth"); /* libvirt's older place for it */
    if (auth && !c->failed) {
        /* a libvirt secret lives in libvirt; vbd's is a --object secret whose
         * id is the secret's usage name, or "secret-" and its uuid (an id
         * must start with a letter, as QEMU's; a uuid may start with a digit) */
        xmlNodePtr sec = child(auth, "secret");
        user = attr(auth, "username");
        secret = sec ? attr(sec, "usage") : NULL;
        if (sec && !secret && attr(sec, "uuid")) {
            snprintf(uuid_id, sizeof(uuid_id), "secret-%s", attr(sec, "uuid"));
            secret = uuid_id;
        }
        if (!user || !secret)
            fail(c, "%s<auth>: needs username= and <secret usage= or uuid=>", where);
        else if (!strcmp(proto, "nbd"))
            fail(c, "%s<auth>: nbd has no authentication in vbd", where);
    }
    if (c->failed) {
        json_object_put(servers);
        return false;
    }
    if (!strcmp(proto, "nbd")) {
        if (nserv != 1) {
            fail(c, "%s<source protocol='nbd'>: needs exactly one <host>", where);
            json_object_put(servers);
            return false;
        }
        json_object_object_add(o, "server", json_object_get(json_object_array_get_idx(servers, 0)));
        if (name)
            put_str(o, "export", name);
        xmlNodePtr rc = child(src, "reconnect");
        if (rc && attr(rc, "delay"))
            json_object_object_add(o, "reconnect-delay", json_object_new_int64(atoll(attr(rc, "delay"))));
    } else if (!strcmp(proto, "rbd")) {
        const char *slash = name ? strchr(name, '/') : NULL;
        if (!slash || !slash[1]) {
            fail(c, "%s<source protocol='rbd' name='%s'>: expected POOL/IMAGE", where, name ? name : "");
            json_object_put(servers);
            return false;
        }
        char *pool = strndup(name, (size_t)(slash - name)), *image = vbd_xstrdup(slash + 1);
        char *at = strchr(image, '@');
        xmlNodePtr snap = child(src, "snapshot");
        if (at) {
            *at = 0;
            put_str(o, "snapshot", at + 1);
        } else if (snap && attr(snap, "name")) {
            put_str(o, "snapshot", attr(snap, "name"));
        }
        put_str(o, "pool", pool);
        put_str(o, "image", image);
        free(pool);
        free(image);
        if (nserv)
            json_object_object_add(o, "server", json_object_get(servers));
        xmlNodePtr conf = child(src, "config");
        if (conf && attr(conf, "file"))
            put_str(o, "conf", attr(conf, "file"));
        if (user) {
            put_str(o, "user", user);
            put_str(o, "key-secret", secret);
        }
    } else { /* iscsi: name is IQN/LUN */
        const char *slash = name ? strrchr(name, '/') : NULL;
        if (nserv != 1 || !name) {
            fail(c, "%s<source protocol='iscsi'>: needs name='IQN/LUN' and one <host>", where);
            json_object_put(servers);
            return false;
        }
        struct json_object *s0 = json_object_array_get_idx(servers, 0);
        char portal[300];
        snprintf(portal, sizeof(portal), "%s:%s", json_object_get_string(json_object_object_get(s0, "host")),
                 json_object_get_string(json_object_object_get(s0, "port")));
        put_str(o, "transport", "tcp");
        put_str(o, "portal", portal);
        char *target = slash ? strndup(name, (size_t)(slash - name)) : vbd_xstrdup(name);
        put_str(o, "target", target);
        free(target);
        json_object_object_add(o, "lun", json_object_new_int64(slash ? atoll(slash + 1) : 0));
        if (user) {
            put_str(o, "user", user);
            put_str(o, "password-secret", secret);
        }
    }
    json_object_put(servers);
    return true;
}

static bool has_backing_key(const char *fmt)
{
    return !strcmp(fmt, "qcow2") || !strcmp(fmt, "qed") || !strcmp(fmt, "vmdk");
}

/*
 * One image: e is the <disk> (depth 0) or a <backingStore>. Its backing
 * chain is opened first (bottom-up, as libvirt orders -blockdev), then
 * the protocol node, then the format node; returns the format node's name.
 */
static bool open_layer(struct ctx *c, xmlNodePtr e, int depth, bool ro, char *fmt_name, size_t fmt_len)
{
    char where[64], storage[64];
    where[0] = 0;
    if (depth)
        snprintf(where, sizeof(where), "<backingStore> (depth %d) ", depth);
    if (depth > MAX_CHAIN) {
        fail(c, "<backingStore>: chain deeper than %d", MAX_CHAIN);
        return false;
    }
    if (depth)
        snprintf(storage, sizeof(storage), "%s-b%d-storage", c->d->target, depth);
    else
        snprintf(storage, sizeof(storage), "%s-storage", c->d->target);
    if (depth)
        snprintf(fmt_name, fmt_len, "%s-b%d-format", c->d->target, depth);
    const char *type = attr(e, "type");
    const char *fmt;
    if (depth) {
        static const char *const bs_attrs[] = {"type", "index", NULL};
        static const char *const bs_kids[] = {"format", "source", "backingStore", NULL};
        if (!check_attrs(c, e, "<backingStore>", bs_attrs) || !check_children(c, e, "<backingStore>", bs_kids))
            return false;
        xmlNodePtr f = child(e, "format");
        fmt = f ? attr(f, "type") : NULL;
        if (!fmt) {
            fail(c, "%s<format type=>: missing", where);
            return false;
        }
    } else {
        xmlNodePtr drv = child(e, "driver");
        fmt = drv && attr(drv, "type") ? attr(drv, "type") : "raw"; /* libvirt's default: no probing */
    }
    const struct vbd_driver *fd = vbd_driver_find(fmt);
    if (!fd || fd->kind != VBD_DRV_FORMAT) {
        fail(c, "%s<%s type='%s'>: vbd has no %s format", where, depth ? "format" : "driver", fmt, fmt);
        return false;
    }
    xmlNodePtr src = child(e, "source");
    if (!type || !src) {
        fail(c, "%s%s: needs type= and a <source>", where, depth ? "<backingStore>" : "<disk>");
        return false;
    }
    /* the chain below first */
    char backing[64] = "";
    bool backing_null = false;
    xmlNodePtr bs = child(e, "backingStore");
    if (bs && (attr(bs, "type") || child(bs, "source"))) {
        if (!has_backing_key(fmt)) {
            fail(c, "%s<backingStore>: format %s has no backing file", where, fmt);
            return false;
        }
        if (!open_layer(c, bs, depth + 1, true, backing, sizeof(backing)))
            return false;
    } else if (bs) {
        backing_null = has_backing_key(fmt); /* <backingStore/>: the chain ends here */
    }
    struct json_object *so = json_object_new_object();
    if (!strcmp(type, "file") || !strcmp(type, "block")) {
        const char *path = attr(src, !strcmp(type, "file") ? "file" : "dev");
        static const char *const src_attrs[] = {"file", "dev", "index", NULL};
        static const char *const src_kids[] = {NULL};
        if (!check_attrs(c, src, "<source>", src_attrs) || !check_children(c, src, "<source>", src_kids)) {
            json_object_put(so);
            return false;
        }
        if (!path) {
            fail(c, "%s<source %s=>: missing (an empty drive cannot be served)", where,
                 !strcmp(type, "file") ? "file" : "dev");
            json_object_put(so);
            return false;
        }
        put_str(so, "driver", !strcmp(type, "file") ? "file" : "host_device");
        put_str(so, "filename", path);
        if (c->aio)
            put_str(so, "aio", c->aio);
        if (c->shareable)
            put_str(so, "locking", "off"); /* shared by several VMs: the image lock must not stop the others */
    } else if (!strcmp(type, "network")) {
        if (!network_source(c, src, where, so)) {
            json_object_put(so);
            return false;
        }
        if (c->aio && !depth) {
            fail(c, "<driver io='%s'>: only for file and block disks", c->aio);
            json_object_put(so);
            return false;
        }
    } else {
        fail(c, "%s%s type='%s': not supported by vbd (file, block, network)", where,
             depth ? "<backingStore>" : "<disk>", type);
        json_object_put(so);
        return false;
    }
    put_str(so, "node-name", storage);
    put_cache(c, so);
    /* QEMU opens a protocol node auto-read-only: read-only where only readers sit above */
    if (ro)
        put_bool(so, "read-only", true);
    else
        put_bool(so, "auto-read-only", true);
    /* libvirt lets every protocol node pass discards down; the format node
     * (driver discard=) decides whether the guest's reach it */
    put_str(so, "discard", "unmap");
    if (!add_node(c, so))
        return false;

    struct json_object *fo = json_object_new_object();
    put_str(fo, "driver", fmt);
    put_str(fo, "node-name", fmt_name);
    put_bool(fo, "read-only", ro);
    if (c->discard)
        put_str(fo, "discard", c->discard);
    /* libvirt's virDomainDiskGetDetectZeroesMode: unmap without
     * discard='unmap' is on; only the top image gets it */
    if (c->detect_zeroes && !depth) {
        bool unmap_ok = c->discard && !strcmp(c->discard, "unmap");
        put_str(fo, "detect-zeroes", !strcmp(c->detect_zeroes, "unmap") && !unmap_ok ? "on" : c->detect_zeroes);
    }
    put_cache(c, fo);
    put_str(fo, "file", storage);
    if (backing[0])
        put_str(fo, "backing", backing);
    else if (backing_null)
        json_object_object_add(fo, "backing", NULL);
    return add_node(c, fo);
}

static bool parse_u64(const char *s, uint64_t *v)
{
    char *end;
    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    *v = strtoull(s, &end, 10);
    return !*end && !errno;
}

/* <driver>: the options every layer shares, and the export's. */
static bool take_driver(struct ctx *c, xmlNodePtr drv, bool *cor)
{
    static const char *const drv_attrs[] = {"name", "type", "cache", "io", "discard", "detect_zeroes", "copy_on_read",
                                            "queues", "iothread", "error_policy", "rerror_policy", NULL};
    if (!check_attrs(c, drv, "<driver>", drv_attrs))
        return false;
    const char *v;
    if ((v = attr(drv, "name")) && strcmp(v, "qemu")) {
        fail(c, "<driver name='%s'>: expected qemu", v);
        return false;
    }
    /* libvirt's qemuDomainDiskCachemodeFlags: the node's cache.direct and
     * cache.no-flush, and the device's write cache */
    static const struct {
        const char *mode, *direct, *no_flush;
        bool wc;
    } modes[] = {
        {"default", NULL, NULL, true},           {"writeback", "false", "false", true},
        {"writethrough", "false", "false", false}, {"none", "true", "false", true},
        {"directsync", "true", "false", false},   {"unsafe", "false", "true", true},
    };
    if ((v = attr(drv, "cache"))) {
        size_t i;
        for (i = 0; i < sizeof(modes) / sizeof(modes[0]) && strcmp(v, modes[i].mode); i++)
            ;
        if (i == sizeof(modes) / sizeof(modes[0])) {
            fail(c, "<driver cache='%s'>: expected none, writethrough, writeback, directsync or unsafe", v);
            return false;
        }
        c->cache_direct = modes[i].direct;
        c->cache_no_flush = modes[i].no_flush;
        c->d->writethrough = !modes[i].wc;
    }
    if ((v = attr(drv, "io")) && strcmp(v, "default")) {
        static const char *const ios[] = {"native", "threads", "io_uring", NULL};
        if (!in_list(v, ios)) {
            fail(c, "<driver io='%s'>: expected native, threads or io_uring", v);
            return false;
        }
        c->aio = v;
    }
    if ((v = attr(drv, "discard")) && strcmp(v, "default")) {
        if (strcmp(v, "unmap") && strcmp(v, "ignore")) {
            fail(c, "<driver discard='%s'>: expected unmap or ignore", v);
            return false;
        }
        c->discard = v;
    }
    if ((v = attr(drv, "detect_zeroes")) && strcmp(v, "default")) {
        if (strcmp(v, "off") && strcmp(v, "on") && strcmp(v, "unmap")) {
            fail(c, "<driver detect_zeroes='%s'>: expected off, on or unmap", v);
            return false;
        }
        c->detect_zeroes = v;
    }
    if ((v = attr(drv, "copy_on_read"))) {
        if (strcmp(v, "on") && strcmp(v, "off") && strcmp(v, "default")) {
            fail(c, "<driver copy_on_read='%s'>: expected on or off", v);
            return false;
        }
        *cor = !strcmp(v, "on");
    }
    if ((v = attr(drv, "queues")) && (!parse_u64(v, &c->d->queues) || !c->d->queues)) {
        fail(c, "<driver queues='%s'>: expected a positive number", v);
        return false;
    }
    if ((v = attr(drv, "iothread"))) {
        uint64_t id;
        if (!parse_u64(v, &id)) {
            fail(c, "<driver iothread='%s'>: expected a number", v);
            return false;
        }
        /* libvirt names QEMU's iothread objects iothreadN: the same id in vbd */
        char buf[48];
        snprintf(buf, sizeof(buf), "iothread%llu", (unsigned long long)id);
        c->d->iothread = vbd_xstrdup(buf);
    }
    /* error policies: what the export does with a failed request */
    static const char *const pol_from[] = {"stop", "report", "enospace", NULL};
    static const char *const pol_to[] = {"stop", "report", "enospc"};
    const char *names[2] = {"error_policy", "rerror_policy"};
    char **dst[2] = {&c->d->werror, &c->d->rerror};
    for (int k = 0; k < 2; k++) {
        if (!(v = attr(drv, names[k])))
            continue;
        int i;
        for (i = 0; pol_from[i] && strcmp(v, pol_from[i]); i++)
            ;
        if (!pol_from[i] || (k == 1 && i == 2)) {
            fail(c, "<driver %s='%s'>: expected stop or report%s", names[k], v, k ? "" : " or enospace");
            return false;
        }
        *dst[k] = vbd_xstrdup(pol_to[i]);
    }
    if (c->d->werror && !c->d->rerror && strcmp(c->d->werror, "enospc"))
        c->d->rerror = vbd_xstrdup(c->d->werror); /* libvirt: rerror_policy defaults to error_policy */
    return true;
}

/* <iotune>: libvirt's names, then QEMU's throttling.* (ThrottleLimits). */
static bool take_iotune(struct ctx *c, xmlNodePtr io, struct vbd_throttle_config *cfg, char **group)
{
    static const struct {
        const char *lv, *q;
    } names[] = {
        {"total_bytes_sec", "bps-total"}, {"read_bytes_sec", "bps-read"}, {"write_bytes_sec", "bps-write"},
        {"total_iops_sec", "iops-total"}, {"read_iops_sec", "iops-read"}, {"write_iops_sec", "iops-write"},
    };
    struct json_object *t = json_object_new_object();
    for (xmlNodePtr k = io->children; k && !c->failed; k = k->next) {
        if (k->type != XML_ELEMENT_NODE)
            continue;
        const char *kn = (const char *)k->name;
        char *val = text(k);
        char key[64] = "";
        if (!strcmp(kn, "group_name")) {
            free(*group);
            *group = val;
            continue;
        }
        if (!strcmp(kn, "size_iops_sec"))
            snprintf(key, sizeof(key), "iops-size");
        for (size_t i = 0; !key[0] && i < sizeof(names) / sizeof(names[0]); i++) {
            size_t l = strlen(names[i].lv);
            if (strncmp(kn, names[i].lv, l))
                continue;
            if (!kn[l])
                snprintf(key, sizeof(key), "%s", names[i].q);
            else if (!strcmp(kn + l, "_max"))
                snprintf(key, sizeof(key), "%s-max", names[i].q);
            else if (!strcmp(kn + l, "_max_length"))
                snprintf(key, sizeof(key), "%s-max-length", names[i].q);
        }
        uint64_t n;
        if (!key[0])
            fail(c, "<iotune><%s>: not supported by vbd", kn);
        else if (!parse_u64(val, &n))
            fail(c, "<iotune><%s>%s</%s>: expected a number", kn, val, kn);
        else if (n) /* libvirt writes 0 for "no limit" */
            json_object_object_add(t, key, json_object_new_int64((int64_t)n));
        free(val);
    }
    if (c->failed) {
        json_object_put(t);
        return false;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "throttling", t);
    struct vbd_error *e = NULL;
    char *g = NULL;
    int rc = vbd_throttle_take_drive_opts(o, cfg, &g, &e);
    free(g);
    json_object_put(o);
    if (rc < 0) {
        fail(c, "<iotune>: %s", e ? e->msg : "invalid limits");
        vbd_error_free(e);
        return false;
    }
    return true;
}

static char *keep_front_end(xmlNodePtr disk)
{
    xmlBufferPtr buf = xmllib.xmlBufferCreate();
    for (xmlNodePtr k = disk->children; k; k = k->next) {
        if (k->type != XML_ELEMENT_NODE)
            continue;
        const char *kn = (const char *)k->name;
        if (strcmp(kn, "alias") && strcmp(kn, "address") && strcmp(kn, "boot"))
            continue;
        xmllib.xmlBufferCCat(buf, "\n  ");
        xmllib.xmlNodeDump(buf, disk->doc, k, 1, 0);
    }
    char *s = vbd_xstrdup((const char *)xmllib.xmlBufferContent(buf));
    xmllib.xmlBufferFree(buf);
    return s;
}

static bool target_ok(const char *t)
{
    if (!t || !*t || strlen(t) > 16)
        return false;
    for (; *t; t++)
        if (!((*t >= 'a' && *t <= 'z') || (*t >= '0' && *t <= '9')))
            return false;
    return true;
}

static bool map_disk(struct ctx *c, xmlNodePtr disk)
{
    static const char *const disk_attrs[] = {"type", "device", NULL};
    static const char *const disk_kids[] = {"driver", "source", "backingStore", "target", "readonly", "shareable",
                                            "serial", "blockio", "iotune", "geometry", "alias", "address", "boot",
                                            "auth", NULL};
    if (!check_attrs(c, disk, "<disk>", disk_attrs) || !check_children(c, disk, "<disk>", disk_kids))
        return false;
    const char *dtype = attr(disk, "type");
    if (child(disk, "auth") && (!dtype || strcmp(dtype, "network"))) {
        fail(c, "<disk type='%s'><auth>: only for network disks", dtype ? dtype : "");
        return false;
    }
    const char *dev = attr(disk, "device");
    if (dev && strcmp(dev, "disk")) {
        fail(c, "<disk device='%s'>: vbd serves disks only", dev);
        return false;
    }
    xmlNodePtr tg = child(disk, "target");
    const char *tdev = tg ? attr(tg, "dev") : NULL;
    if (!target_ok(tdev)) {
        fail(c, "<disk><target dev='%s'>: expected a name such as vda", tdev ? tdev : "");
        return false;
    }
    snprintf(c->d->target, sizeof(c->d->target), "%s", tdev);
    c->d->lbs = 512;
    xmlNodePtr k;
    bool cor = false;
    if ((k = child(disk, "driver")) && !take_driver(c, k, &cor))
        return false;
    c->d->readonly = child(disk, "readonly") != NULL;
    c->shareable = child(disk, "shareable") != NULL;
    if ((k = child(disk, "serial")))
        c->d->serial = text(k);
    if ((k = child(disk, "blockio"))) {
        static const char *const bio_attrs[] = {"logical_block_size", "physical_block_size", NULL};
        if (!check_attrs(c, k, "<blockio>", bio_attrs))
            return false;
        const char *l = attr(k, "logical_block_size"), *p = attr(k, "physical_block_size");
        if ((l && !parse_u64(l, &c->d->lbs)) || (p && !parse_u64(p, &c->d->pbs))) {
            fail(c, "<blockio>: block sizes must be numbers");
            return false;
        }
    }
    if ((k = child(disk, "geometry")))
        vbd_warn("--libvirt-disk %s: <target dev='%s'>: <geometry> ignored (a virtio disk has no CHS geometry)",
                 c->file, tdev);
    struct vbd_throttle_config tcfg;
    char *group = NULL;
    xmlNodePtr io = child(disk, "iotune");
    if (io && !take_iotune(c, io, &tcfg, &group)) {
        free(group);
        return false;
    }
    c->d->keep_xml = keep_front_end(disk);

    /* names from the top down: the top one is the target itself */
    char fmt[64], cor_name[64], thr[64];
    bool throttled = io != NULL;
    snprintf(thr, sizeof(thr), "%s", tdev);
    snprintf(cor_name, sizeof(cor_name), throttled ? "%s-cor" : "%s", tdev);
    snprintf(fmt, sizeof(fmt), (throttled || cor) ? "%s-format" : "%s", tdev);
    bool ok = open_layer(c, disk, 0, c->d->readonly, fmt, sizeof(fmt));
    if (ok && cor) {
        struct json_object *o = json_object_new_object();
        put_str(o, "driver", "copy-on-read");
        put_str(o, "node-name", cor_name);
        put_str(o, "file", fmt);
        if (c->discard)
            put_str(o, "discard", c->discard);
        ok = add_node(c, o);
    }
    if (ok && throttled) {
        /* as QEMU: disks without a group_name are each their own group, named after the device */
        const char *g = group ? group : tdev;
        struct vbd_error *e = NULL;
        struct vbd_throttle_config have;
        /* a throttle-group object, so that qom-get/qom-set see and change the
         * limits later (libvirt's blkdeviotune); a second disk naming the
         * group sets them, as block_set_io_throttle does in QEMU */
        int rc = vbd_throttle_group_get(g, &have) ? vbd_throttle_group_set(g, &tcfg, &e)
                                                   : vbd_throttle_group_add(g, &tcfg, &e);
        if (rc < 0) {
            fail(c, "<iotune><group_name>%s</group_name>: %s", g, e ? e->msg : "cannot configure");
            vbd_error_free(e);
            ok = false;
        } else {
            struct json_object *o = json_object_new_object();
            put_str(o, "driver", "throttle");
            put_str(o, "node-name", thr);
            put_str(o, "throttle-group", g);
            put_str(o, "file", cor ? cor_name : fmt);
            ok = add_node(c, o);
        }
    }
    free(group);
    snprintf(c->d->top, sizeof(c->d->top), "%s", tdev);
    return ok && !c->failed;
}

int vbd_libvirt_disk_add(const char *arg, struct vbd_libvirt_disk **out, int *n, struct vbd_error **err)
{
    *out = NULL;
    *n = 0;
    if (vbd_dynlib_load(&xmllib_so, err) < 0)
        return -ENOTSUP;
    char *file = vbd_xstrdup(arg), *want = strrchr(file, '#');
    if (want)
        *want++ = 0;
    struct ctx c = {.file = file, .err = err};
    /* no network, no entity expansion (the default without XML_PARSE_NOENT), no DTD loading */
    xmlDocPtr doc = xmllib.xmlReadFile(file, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc) {
        const xmlError *xe = xmllib.xmlGetLastError();
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", xe && xe->message ? xe->message : "cannot read the file");
        msg[strcspn(msg, "\n")] = 0;
        if (xe && xe->line)
            fail(&c, "not XML (line %d: %s)", xe->line, msg);
        else
            fail(&c, "%s", msg);
        free(file);
        return -EINVAL;
    }
    xmlNodePtr root = xmllib.xmlDocGetRootElement(doc);
    xmlNodePtr disks[64];
    int nd = 0;
    if (root && !strcmp((const char *)root->name, "disk")) {
        disks[nd++] = root;
    } else if (root && !strcmp((const char *)root->name, "domain")) {
        xmlNodePtr devs = child(root, "devices");
        for (xmlNodePtr k = devs ? devs->children : NULL; k; k = k->next)
            if (k->type == XML_ELEMENT_NODE && !strcmp((const char *)k->name, "disk")) {
                if (nd == (int)(sizeof(disks) / sizeof(disks[0]))) {
                    fail(&c, "<domain>: more than %d disks", nd);
                    break;
                }
                disks[nd++] = k;
            }
    } else {
        fail(&c, "expected a <disk> or <domain> element, not <%s>", root ? (const char *)root->name : "");
    }
    if (!c.failed && want) {
        int keep = -1;
        for (int i = 0; i < nd; i++) {
            xmlNodePtr tg = child(disks[i], "target");
            if (tg && attr(tg, "dev") && !strcmp(attr(tg, "dev"), want))
                keep = i;
        }
        if (keep < 0)
            fail(&c, "no <disk> with <target dev='%s'>", want);
        else
            disks[0] = disks[keep], nd = 1;
    }
    if (!c.failed && !nd)
        fail(&c, "no <disk> in the <domain>");
    struct vbd_libvirt_disk *d = c.failed ? NULL : vbd_xcalloc((size_t)nd, sizeof(*d));
    int done = 0;
    for (int i = 0; !c.failed && i < nd; i++) {
        c.d = &d[i];
        c.cache_direct = c.cache_no_flush = c.aio = c.discard = c.detect_zeroes = NULL;
        c.shareable = false;
        map_disk(&c, disks[i]);
        done = i + 1;
    }
    xmllib.xmlFreeDoc(doc);
    free(file);
    if (c.failed) {
        /* the nodes already added stay: the daemon exits on this error */
        vbd_libvirt_disks_free(d, done);
        return -EINVAL;
    }
    *out = d;
    *n = nd;
    return 0;
}

static void xml_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '\'': fputs("&apos;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

char *vbd_libvirt_disk_vhostuser_xml(const struct vbd_libvirt_disk *d, const char *sock, uint64_t queues)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    /* the write cache, serial and block sizes come from the back end
     * (virtio-blk config space), so the element carries none of them */
    fprintf(f, "<disk type='vhostuser' device='disk'>\n  <driver name='qemu' type='raw' queues='%llu'/>\n",
            (unsigned long long)queues);
    fputs("  <source type='unix' path='", f);
    xml_escape(f, sock);
    fputs("'>\n    <reconnect enabled='yes' timeout='1'/>\n  </source>\n", f);
    fprintf(f, "  <target dev='%s' bus='virtio'/>", d->target);
    if (d->keep_xml)
        fputs(d->keep_xml, f);
    fputs("\n</disk>\n", f);
    fclose(f);
    return buf;
}

#else /* !VBD_HAVE_LIBXML2 */

int vbd_libvirt_disk_add(const char *arg, struct vbd_libvirt_disk **out, int *n, struct vbd_error **err)
{
    *out = NULL;
    *n = 0;
    vbd_error_setf(err, ENOTSUP, "--libvirt-disk %s: vbd was built without libxml2", arg);
    return -ENOTSUP;
}

char *vbd_libvirt_disk_vhostuser_xml(const struct vbd_libvirt_disk *d, const char *sock, uint64_t queues)
{
    return NULL;
}

#endif

void vbd_libvirt_disks_free(struct vbd_libvirt_disk *d, int n)
{
    for (int i = 0; d && i < n; i++) {
        free(d[i].serial);
        free(d[i].werror);
        free(d[i].rerror);
        free(d[i].iothread);
        free(d[i].keep_xml);
    }
    free(d);
}
