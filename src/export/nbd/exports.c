/* SPDX-License-Identifier: MIT */
/* NBD server, exports: the export type table (type=nbd) and the list the
 * handshake looks names up in. */
#include "internal.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/backup.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/nbd.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

struct nbd_export *nbd_find_export(const char *name)
{
    struct nbd_export *only = srv.exports && !srv.exports->next ? srv.exports : NULL;
    for (struct nbd_export *e = srv.exports; e; e = e->next)
        if (!strcmp(e->name, name))
            return e;
    /* "" is the default export when there is just one, as with qemu-nbd */
    return !*name ? only : NULL;
}

static void free_bitmaps(char **names, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The exported bitmaps are no longer busy, their nodes no longer held. */
static void release_bitmaps(struct vbd_dirty_bitmap **mem, struct vbd_node **owners, uint32_t n)
{
    for (uint32_t i = 0; mem && i < n; i++)
        if (mem[i])
            vbd_dirty_bitmap_set_busy(mem[i], false);
    for (uint32_t i = 0; owners && i < n; i++)
        if (owners[i])
            vbd_node_unref(owners[i]);
    free(mem);
    free(owners);
}

/* Whether node n itself holds bitmap `name`: in memory (*mem) or persistent. */
static bool holds_bitmap(struct vbd_node *n, const char *name, struct vbd_dirty_bitmap **mem)
{
    uint64_t pnum;
    if ((*mem = vbd_dirty_bitmap_find(n, name)))
        return true;
    return vbd_node_co_persistent_bitmap_status(n, name, 0, vbd_node_size(n) ? vbd_node_size(n) : 1, &pnum) != -ENOENT;
}

/* Whether the persistent bitmap `name` of n records writes (qemu-img
 * info's flag "auto"). */
static bool persistent_enabled(struct vbd_node *n, const char *name)
{
    struct vbd_image_info info = {0};
    struct vbd_error *e = NULL;
    struct json_object *data, *list, *v, *f;
    bool enabled = false;
    if (vbd_node_get_info(n, &info, &e) < 0) {
        vbd_error_free(e);
        return false;
    }
    if (info.format_specific && json_object_object_get_ex(info.format_specific, "data", &data) &&
        json_object_object_get_ex(data, "bitmaps", &list))
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            struct json_object *b = json_object_array_get_idx(list, i);
            if (!json_object_object_get_ex(b, "name", &v) || strcmp(json_object_get_string(v), name) ||
                !json_object_object_get_ex(b, "flags", &f))
                continue;
            for (size_t k = 0; k < json_object_array_length(f); k++)
                enabled |= !strcmp(json_object_get_string(json_object_array_get_idx(f, k)), "auto");
        }
    json_object_put(info.format_specific);
    return enabled;
}

/* One element of bitmaps, found as QEMU 7.2's nbd_export_create finds it:
 * a name is looked for on the exported node, then down its chain (a
 * filter's child, a format's backing: bdrv_filter_or_cow_bs), in memory or
 * persistent; {"node", "name"} names the node that holds it, wherever it
 * is. Sets *owner (the node holding it) and *mem (the in-memory bitmap, or
 * NULL for a persistent one); the name is returned malloc'd. An enabled
 * bitmap named plainly on a writable node is refused for a read-only
 * export (a client would read a map that the node's writes keep changing;
 * QEMU does not check the {node, name} form). */
static char *bitmap_elem(struct json_object *b, struct vbd_node *n, const char *id, bool writable,
                         struct vbd_node **owner, struct vbd_dirty_bitmap **mem, struct vbd_error **err)
{
    const char *name;
    if (json_object_is_type(b, json_type_string)) {
        name = json_object_get_string(b);
        struct vbd_node *p = n;
        while (p && !holds_bitmap(p, name, mem))
            p = p->drv->kind == VBD_DRV_FILTER ? p->file : p->backing;
        if (!p) {
            vbd_error_setf(err, ENOENT, "Bitmap '%s' is not found", name);
            return NULL;
        }
        if (!writable && !p->read_only && (*mem ? vbd_dirty_bitmap_enabled(*mem) : persistent_enabled(p, name))) {
            vbd_error_setf(err, EINVAL, "Enabled bitmap '%s' incompatible with readonly export", name);
            return NULL;
        }
        *owner = p;
        return vbd_xstrdup(name);
    }
    struct json_object *bn, *bname;
    if (!json_object_is_type(b, json_type_object) || !json_object_object_get_ex(b, "node", &bn) ||
        !json_object_object_get_ex(b, "name", &bname) || json_object_object_length(b) != 2) {
        vbd_error_setf(err, EINVAL, "NBD export '%s': bitmaps: expected a bitmap name or {\"node\": ..., \"name\": ...}",
                       id);
        return NULL;
    }
    const char *node = json_object_get_string(bn);
    name = json_object_get_string(bname);
    /* QEMU's block_dirty_bitmap_lookup() */
    struct vbd_node *p = vbd_node_find(node);
    if (!p) {
        vbd_error_setf(err, ENOENT, "Node '%s' not found", node);
        return NULL;
    }
    if (!holds_bitmap(p, name, mem)) {
        vbd_error_setf(err, ENOENT, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    *owner = p;
    return vbd_xstrdup(name);
}

/* bitmaps: a list (JSON array, or keyval's bitmaps.0=A,bitmaps.1=B),
 * after vbd's own bitmap=NAME if given; each must exist, be consistent and
 * be free (QEMU's bdrv_dirty_bitmap_check): it is busy while exported
 * (an in-memory one flagged, a persistent one found in the exports' lists). */
static int take_bitmaps(struct json_object *opts, struct vbd_node *n, const char *id, char *bitmap, bool writable, char ***out,
                        struct vbd_dirty_bitmap ***mem_out, struct vbd_node ***owners_out, uint32_t *nout,
                        struct vbd_error **err)
{
    struct json_object *list = vbd_opt_take_obj(opts, "bitmaps");
    size_t count = 0;
    bool array = list && json_object_is_type(list, json_type_array);
    if (list && !array && !json_object_is_type(list, json_type_object)) {
        vbd_error_setf(err, EINVAL, "Invalid parameter type for 'bitmaps', expected: array"); /* QEMU's words */
        json_object_put(list);
        free(bitmap);
        return -EINVAL;
    }
    if (list)
        count = array ? json_object_array_length(list) : (size_t)json_object_object_length(list);
    char **names = vbd_xcalloc(count + 2, sizeof(*names));
    struct vbd_dirty_bitmap **mem = vbd_xcalloc(count + 2, sizeof(*mem)); /* the in-memory ones (else NULL) */
    struct vbd_node **owners = vbd_xcalloc(count + 2, sizeof(*owners));
    uint32_t k = 0;
    int rc = 0;
    struct json_object *own = bitmap ? json_object_new_string(bitmap) : NULL;
    free(bitmap);
    for (size_t i = 0; i < count + (own ? 1 : 0); i++) {
        char key[24];
        struct json_object *b = NULL;
        if (own && i == 0)
            b = own;
        else if (array)
            b = json_object_array_get_idx(list, i - (own ? 1 : 0));
        else {
            snprintf(key, sizeof(key), "%zu", i - (own ? 1 : 0));
            if (!json_object_object_get_ex(list, key, &b)) {
                vbd_error_setf(err, EINVAL, "Parameter 'bitmaps.%s' is missing", key); /* keyval's list with a gap */
                rc = -EINVAL;
                break;
            }
        }
        if (!(names[k] = bitmap_elem(b, n, id, writable, &owners[k], &mem[k], err))) {
            rc = -EINVAL;
            break;
        }
        uint64_t pnum;
        int st = strlen(names[k]) > NBD_MAX_NAME_LEN - 32
                     ? -ENOENT
                     : mem[k] ? 0 : vbd_node_co_persistent_bitmap_status(owners[k], names[k], 0, 1, &pnum);
        k++;
        if (mem[k - 1] ? vbd_dirty_bitmap_busy(mem[k - 1])
                       : vbd_nbd_bitmap_exported(owners[k - 1], names[k - 1]) ||
                             vbd_backup_uses_persistent_bitmap(owners[k - 1], names[k - 1])) {
            vbd_error_setf(err, EBUSY, "Bitmap '%s' is currently in use by another operation and cannot be used",
                           names[k - 1]);
            rc = -EBUSY;
        } else if (st == -EINVAL) {
            vbd_error_setf(err, EINVAL, "Bitmap '%s' is inconsistent and cannot be used", names[k - 1]);
            rc = st;
        } else if (st < 0) {
            vbd_error_setf(err, -st, "Bitmap '%s' is not found", names[k - 1]);
            rc = st;
        }
        if (rc < 0)
            break;
    }
    json_object_put(list);
    json_object_put(own);
    if (rc < 0) {
        free(mem);
        free(owners);
        for (uint32_t i = 0; i < k; i++)
            free(names[i]);
        free(names);
        return rc;
    }
    for (uint32_t i = 0; i < k; i++) {
        if (mem[i])
            vbd_dirty_bitmap_set_busy(mem[i], true);
        vbd_node_ref(owners[i]); /* served from it until the export goes (blockdev-del: in use) */
    }
    *out = names;
    *mem_out = mem;
    *owners_out = owners;
    *nout = k;
    return 0;
}

bool vbd_nbd_bitmap_exported(struct vbd_node *n, const char *name)
{
    for (struct nbd_export *e = srv.exports; e; e = e->next)
        for (uint32_t i = 0; i < e->nbitmaps; i++)
            if (!e->mem_bitmaps[i] && e->bitmap_nodes[i] == n && !strcmp(e->bitmaps[i], name))
                return true;
    return false;
}

/* Bitmap i of export e over [off, off + bytes): 1 dirty, 0 clean, *pnum
 * bytes alike; from the node that holds it, as found at the export's
 * creation (QEMU's export keeps the bitmap itself). */
int nbd_export_bitmap_status(struct nbd_export *e, uint32_t i, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
    if (e->mem_bitmaps[i])
        return vbd_dirty_bitmap_status(e->mem_bitmaps[i], off, bytes, pnum);
    return vbd_node_co_persistent_bitmap_status(e->bitmap_nodes[i], e->bitmaps[i], off, bytes, pnum);
}

static struct vbd_export *nbd_export_create(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL, *node = NULL, *name = NULL, *desc = NULL, *bitmap = NULL;
    bool writable = false, depth = false, writethrough = false;
    struct nbd_export *e = NULL;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "node-name", &node, err) < 0 ||
        vbd_opt_take_str(opts, "name", &name, err) < 0 || vbd_opt_take_str(opts, "description", &desc, err) < 0 ||
        vbd_opt_take_bool(opts, "writable", &writable, err) < 0 || vbd_opt_take_str(opts, "bitmap", &bitmap, err) < 0 ||
        vbd_opt_take_bool(opts, "allocation-depth", &depth, err) < 0 ||
        vbd_opt_take_bool(opts, "writethrough", &writethrough, err) < 0)
        goto fail;
    if (!id || !node) {
        vbd_error_setf(err, EINVAL, "NBD export: '%s' is required", id ? "node-name" : "id");
        goto fail;
    }
    /* qsd's order and words: the node is looked up before the server */
    struct vbd_node *n = vbd_node_find(node);
    if (!n) {
        vbd_error_setf(err, ENOENT, "Cannot find device='' nor node-name='%s'", node);
        goto fail;
    }
    if (!srv.running) {
        vbd_error_setf(err, EINVAL, "NBD server not running");
        goto fail;
    }
    if (!name)
        name = vbd_xstrdup(node);
    if (strlen(name) > NBD_MAX_NAME_LEN) {
        vbd_error_setf(err, EINVAL, "NBD export '%s': name longer than %d bytes", id, NBD_MAX_NAME_LEN);
        goto fail;
    }
    for (struct nbd_export *o = srv.exports; o; o = o->next)
        if (!strcmp(o->name, name) || !strcmp(o->id, id)) {
            /* qsd's words (a taken id was refused before, as qsd's) */
            if (!strcmp(o->name, name))
                vbd_error_setf(err, EEXIST, "NBD server already has export named '%s'", name);
            else
                vbd_error_setf(err, EEXIST, "Block export id '%s' is already in use", id);
            goto fail;
        }
    char **bitmaps = NULL;
    struct vbd_dirty_bitmap **mem_bitmaps = NULL;
    struct vbd_node **bitmap_nodes = NULL;
    uint32_t nbitmaps = 0;
    int brc = take_bitmaps(opts, n, id, bitmap, writable, &bitmaps, &mem_bitmaps, &bitmap_nodes, &nbitmaps, err);
    bitmap = NULL; /* taken (freed on failure) */
    if (brc < 0)
        goto fail;
    /* writethrough: every write is made durable before its reply (the
     * backend writes it with FUA), as QEMU's export with the BlockBackend's
     * write cache off (qemu-nbd --cache=writethrough/directsync) */
    struct vbd_backend_opts bo = {
        .read_only = !writable, .writethrough = writethrough, .discard_unmap = true, .name = id};
    struct vbd_backend *be = vbd_backend_new(n, &bo, err);
    if (!be) {
        vbd_error_prepend(err, "NBD export '%s': ", id);
        release_bitmaps(mem_bitmaps, bitmap_nodes, nbitmaps);
        free_bitmaps(bitmaps, nbitmaps);
        goto fail;
    }
    e = vbd_xcalloc(1, sizeof(*e));
    e->base.type = &vbd_export_type_nbd;
    e->id = id;
    e->name = name;
    e->description = desc;
    e->bitmaps = bitmaps;
    e->nbitmaps = nbitmaps;
    e->mem_bitmaps = mem_bitmaps;
    e->bitmap_nodes = bitmap_nodes;
    e->be = be;
    e->writable = writable;
    e->allocation_depth = depth;
    e->next = srv.exports;
    srv.exports = e;
    free(node);
    return &e->base;
fail:
    free(id);
    free(node);
    free(name);
    free(desc);
    free(bitmap);
    return NULL;
}

/* Closes the connections that use e (gracefully: in-flight replies still
 * go out) or are sending a handshake reply about it; true if any is left. */
static bool close_users(struct nbd_export *e)
{
    bool busy = false;
    for (struct nbd_conn *c = srv.conns; c; c = c->next) {
        if (c->exp != e && c->pinned != e)
            continue;
        busy = true;
        if (!c->closing) {
            c->closing = true;
            vbd_chan_shutdown(&c->ch, c->exp == e ? SHUT_RD : SHUT_RDWR);
        }
    }
    return busy;
}

/* NBD_STOP_GRACE_NS after the shutdown began: no more replies. The
 * requests in flight still finish on the node (the transmission loop waits
 * for them) before the export's flush. */
static void cut_users(void *arg)
{
    struct nbd_export *e = arg;
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        if (c->exp == e || c->pinned == e)
            vbd_chan_shutdown(&c->ch, SHUT_RDWR);
}

static void nbd_export_shutdown(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    /* first out of the list: no handshake finds it from now on */
    for (struct nbd_export **pp = &srv.exports; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    bool busy = close_users(e);
    if (vbd_in_co()) {
        struct vbd_timer cut = {.fn = cut_users, .arg = e};
        vbd_timer_arm(&cut, vbd_clock_ns() + NBD_STOP_GRACE_NS);
        /* a handshake that had found it may still pick it: look again each time */
        while (busy) {
            vbd_co_queue_wait(&srv.idle_q);
            busy = close_users(e);
        }
        vbd_timer_cancel(&cut);
        vbd_backend_co_flush(e->be);
    }
}

static void nbd_export_free(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    /* a connection still in its handshake may have selected its contexts */
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        if (c->meta_exp == e)
            nbd_meta_reset(c);
    release_bitmaps(e->mem_bitmaps, e->bitmap_nodes, e->nbitmaps); /* alive: their nodes are held */
    vbd_backend_free(e->be);
    free(e->id);
    free(e->name);
    free(e->description);
    free_bitmaps(e->bitmaps, e->nbitmaps);
    free(e);
}

/* A client negotiated this export (connections still in the handshake
 * have not chosen one). */
static bool nbd_export_in_use(struct vbd_export *base)
{
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        if (c->exp == (struct nbd_export *)base)
            return true;
    return false;
}

/* Every connection on the export has its client's end closed (POLLRDHUP:
 * it will send nothing more; its connection ends once it reads the EOF,
 * on its own loop). The fds are open while the connections are listed
 * (conn_free closes and unlinks in one step on this loop). */
static bool nbd_export_clients_leaving(struct vbd_export *base)
{
    assert(vbd_thread_is_main());
    bool any = false;
    for (struct nbd_conn *c = srv.conns; c; c = c->next) {
        if (c->exp != (struct nbd_export *)base)
            continue;
        struct pollfd p = {.fd = c->ch.fd, .events = POLLIN | POLLRDHUP};
        if (poll(&p, 1, 0) != 1 || !(p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return false;
        any = true;
    }
    return any;
}

/* block-export-del mode=hard: no more requests and no more replies; the
 * requests in flight still finish on the node before shutdown returns. */
static void nbd_export_disconnect(struct vbd_export *base)
{
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        if (c->exp == (struct nbd_export *)base || c->pinned == (struct nbd_export *)base) {
            c->closing = true;
            vbd_chan_shutdown(&c->ch, SHUT_RDWR);
        }
}

void nbd_export_io_error(struct nbd_export *e, bool write, int err)
{
    vbd_export_io_error_event(e->id, vbd_backend_node(e->be)->node_name, write, err, "report");
}

static struct json_object *nbd_export_query(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("nbd"));
    json_object_object_add(o, "id", json_object_new_string(e->id));
    json_object_object_add(o, "node-name", json_object_new_string(vbd_backend_node(e->be)->node_name));
    json_object_object_add(o, "shutting-down", json_object_new_boolean(false));
    return o;
}

static void nbd_export_moved(struct vbd_export *base)
{
    nbd_export_node_moved((struct nbd_export *)base);
}

static struct vbd_backend *nbd_export_backend(struct vbd_export *base)
{
    return ((struct nbd_export *)base)->be;
}

const struct vbd_export_type vbd_export_type_nbd = {
    .type = "nbd",
    .create = nbd_export_create,
    .shutdown = nbd_export_shutdown,
    .free = nbd_export_free,
    .in_use = nbd_export_in_use,
    .clients_leaving = nbd_export_clients_leaving,
    .disconnect = nbd_export_disconnect,
    .query = nbd_export_query,
    .backend = nbd_export_backend,
    .node_iothread = true, /* connections are served on the node's loop (transmission.c) */
    .node_moved = nbd_export_moved,
};
