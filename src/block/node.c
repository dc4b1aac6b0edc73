/* SPDX-License-Identifier: MIT */
/*
 * The node graph: opening nodes from a filename and/or options the way
 * QEMU's bdrv_open does (protocol by prefix, format by probing, children
 * by name), backing chains, names and references.
 */
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static struct vbd_node *named_nodes;
static unsigned auto_name_counter;
static uint64_t name_seq_counter; /* vbd_node.name_seq */

struct vbd_node *vbd_node_find(const char *name)
{
    for (struct vbd_node *n = named_nodes; n; n = n->next_named)
        if (!strcmp(n->node_name, name))
            return n;
    return NULL;
}

uint64_t vbd_graph_user_seq(void)
{
    static uint64_t seq;
    return ++seq;
}

struct vbd_node *vbd_node_next(struct vbd_node *prev)
{
    return prev ? prev->next_named : named_nodes;
}

/* The graph (references, names, children) changes only on the thread
 * that opened the node: vbd/block.h, the concurrency contract. */
void vbd_node_ref(struct vbd_node *n)
{
    assert(pthread_equal(n->home_thread, pthread_self()) && n->graph_loop == vbd_loop_current());
    n->refcnt++;
}

/* QEMU's child roles, as far as the image locks go: a format keeps
 * metadata in its "file" child (bdrv_default_perms_for_storage); raw (a
 * window on its file) and filters pass their parent's needs through. */
static bool passes_through(const struct vbd_node *n)
{
    return n->drv->kind == VBD_DRV_FILTER || (n->drv->caps & VBD_DRV_CAP_FILE_WINDOW) ||
           !strcmp(n->drv->name, "snapshot-access");
}

static bool keeps_metadata(const struct vbd_node *parent, const char *key)
{
    return parent && !strcmp(key, "file") && parent->drv->kind == VBD_DRV_FORMAT && !passes_through(parent);
}

/* Does parent write its child key only when its own users write (QEMU's
 * filter and raw child perms: nothing taken of their own)? */
static bool writes_only_for_users(const struct vbd_node *parent, const char *key)
{
    if (!parent || (strcmp(key, "file") && strcmp(key, "image")) || !passes_through(parent))
        return false;
    return strcmp(parent->drv->name, "copy-on-read") && strcmp(parent->drv->name, "snapshot-access");
}

bool vbd_node_passes_writes_down(const struct vbd_node *n)
{
    return writes_only_for_users(n, !strcmp(n->drv->name, "blkdebug") ? "image" : "file");
}

int vbd_node_check_metadata_writer(struct vbd_node *parent, struct vbd_node *c, bool rw, struct vbd_error **err)
{
    if (!keeps_metadata(parent, "file"))
        return 0;
    /* the other format on c: the one that writes (there is one at most),
     * else the newest (QEMU's parent list is newest first; so is ours) */
    struct vbd_node *other = NULL;
    for (struct vbd_node *m = vbd_node_next(NULL); m; m = vbd_node_next(m)) {
        if (m == parent || m->file != c || !keeps_metadata(m, "file"))
            continue;
        if (!m->read_only) {
            other = m;
            break;
        }
        if (!other)
            other = m;
    }
    if (!other || (!rw && other->read_only))
        return 0;
    const char *needs = other->read_only ? parent->node_name : other->node_name;
    const char *unshares = other->read_only ? other->node_name : parent->node_name;
    vbd_error_setf(err, EBUSY,
                   "Permission conflict on node '%s': permissions 'write, resize' are both required by node '%s' "
                   "(uses node '%s' as 'file' child) and unshared by node '%s' (uses node '%s' as 'file' child).",
                   c->node_name, needs, c->node_name, unshares, c->node_name);
    return -EBUSY;
}

/* A metadata parent came (+1) or went (-1) above an existing node: down
 * through raw and filters to the node that holds the locks. */
static int meta_claim(struct vbd_node *c, int delta, bool writes, struct vbd_error **err)
{
    while (c && !c->drv->meta_parent && c->file && c->file != c && passes_through(c))
        c = c->file;
    if (!c || !c->drv->meta_parent)
        return 0;
    return c->drv->meta_parent(c, delta, writes, err);
}

/* The parent lets go of its "file" child, and of the locks it added there. */
static void release_file(struct vbd_node *n)
{
    struct vbd_node *f = n->file;
    bool stays = f && f->refcnt > 1;
    if (n->file_meta && stays)
        meta_claim(f, -1, false, NULL);
    n->file_meta = false;
    vbd_node_unref(f);
    /* n is off the node list: a node it referenced may write-lock again
     * (best effort: another process may hold the lock meanwhile) */
    if (stays && n->file_ref)
        vbd_node_refresh_write_use(f, NULL);
}

static void node_unref_here(struct vbd_node *n);

void vbd_node_unref(struct vbd_node *n)
{
    if (!n)
        return;
    /* A driver's close runs on the node's home loop (below), an iothread's
     * for a node an export or x-blockdev-set-iothread moved there, and
     * drops there the children it holds itself: copy-before-write's target,
     * qcow2's data file, vmdk's extents. The graph is the graph thread's:
     * such an unref goes there and back (blockdev-del of a copy-before-write
     * node or of a qcow2 with a data file on an iothread aborted the daemon
     * on the assertion below; node-del-iothread.sh). */
    if (!pthread_equal(n->home_thread, pthread_self()) && vbd_in_co()) {
        struct vbd_loop *origin = vbd_loop_current();
        vbd_co_move_to(n->graph_loop);
        node_unref_here(n);
        vbd_co_move_to(origin);
        return;
    }
    node_unref_here(n);
}

static void node_unref_here(struct vbd_node *n)
{
    /* the graph thread still runs the loop it opened the node on: the loop
     * an unref from another thread went to (graph_loop, vbd/block.h) */
    assert(pthread_equal(n->home_thread, pthread_self()) && n->graph_loop == vbd_loop_current());
    if (--n->refcnt > 0)
        return;
    if (n->drv->close) {
        /* the driver's state is its home loop's (an iothread's, for a moved node) */
        struct vbd_loop *origin = vbd_node_co_enter_home(n);
        n->drv->close(n);
        vbd_node_co_leave_home(origin);
    }
    vbd_iothread_node_release(vbd_node_home_loop(n));
    vbd_dirty_bitmaps_release(n);
    for (struct vbd_node **pp = &named_nodes; *pp; pp = &(*pp)->next_named) {
        if (*pp == n) {
            *pp = n->next_named;
            break;
        }
    }
    vbd_node_unref(n->backing);
    release_file(n);
    json_object_put(n->options);
    json_object_put(n->given_options);
    pthread_mutex_destroy(&n->reqs_lock);
    free(n->opaque);
    free(n);
}

struct vbd_node *vbd_node_skip_filters(struct vbd_node *n)
{
    while (n && n->drv->kind == VBD_DRV_FILTER && n->file)
        n = n->file;
    return n;
}

struct vbd_node *vbd_node_bottom(struct vbd_node *n)
{
    while (n->file)
        n = n->file;
    return n;
}

static bool reaches(struct vbd_node *n, struct vbd_node *to, int depth)
{
    if (!n || depth > 4096)
        return n != NULL; /* deeper than any real graph: say yes, the change is refused */
    if (n == to)
        return true;
    if ((n->file != n && reaches(n->file, to, depth + 1)) || reaches(n->backing, to, depth + 1))
        return true;
    char name[32];
    struct vbd_node *c;
    for (int i = 0; n->drv->child_at && (c = n->drv->child_at(n, i, name, sizeof(name))); i++)
        if (reaches(c, to, depth + 1))
            return true;
    return false;
}

int vbd_node_data_owner(struct vbd_node *n, char *by, size_t len)
{
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p))
        /* an image format whose metadata is there (not raw, nor
         * snapshot-access, which only reads a copy-before-write node); a
         * read-only one too, as QEMU's formats share no WRITE on their
         * file however they are opened: a write under a live bochs, dmg
         * or read-only qcow2 changed the image it reads */
        if (p->file == n && p->drv->kind == VBD_DRV_FORMAT && strcmp(p->drv->name, "raw") &&
            strcmp(p->drv->name, "snapshot-access")) {
            snprintf(by, len, "node '%s' (uses node '%s' as 'file' child)", p->node_name, n->node_name);
            return p->read_only ? VBD_NODE_OWNER_FORMAT_RO : VBD_NODE_OWNER_FORMAT;
        }
    /* a quorum's children: each holds the quorum's data at the quorum's
     * size; a resize cut a replica under the live quorum, a write beside
     * the quorum made it disagree with the others */
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p)) {
        char name[32];
        struct vbd_node *c;
        for (int i = 0; p->drv->child_at && (c = p->drv->child_at(p, i, name, sizeof(name))); i++)
            if (c == n) {
                snprintf(by, len, "node '%s' (uses node '%s' as '%s' child)", p->node_name, n->node_name, name);
                return VBD_NODE_OWNER_QUORUM;
            }
    }
    return VBD_NODE_OWNER_NONE;
}

bool vbd_node_reaches(struct vbd_node *n, struct vbd_node *to)
{
    return reaches(n, to, 0);
}

bool vbd_node_chain_multi_loop(struct vbd_node *n)
{
    for (; n; n = n->file) {
        if (!(n->drv->caps & VBD_DRV_CAP_MULTI_LOOP))
            return false;
        if (n->backing && !vbd_node_chain_multi_loop(n->backing))
            return false;
    }
    return true;
}

bool vbd_node_writes_inline(struct vbd_node *n)
{
    struct vbd_node *b = vbd_node_bottom(n);
    return b->drv->writes_inline && b->drv->writes_inline(b);
}

static const struct vbd_driver *protocol_for(const char *filename)
{
    if (!filename)
        return NULL;
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    if (!colon || (slash && slash < colon))
        return NULL;
    size_t plen = colon - filename;
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++) {
        if (!(*d)->protocols)
            continue;
        for (const char *const *p = (*d)->protocols; *p; p++)
            if (strlen(*p) == plen && !strncmp(*p, filename, plen))
                return *d;
    }
    return NULL;
}

/* Generic options every node accepts; they turn into open flags. */
const char *const vbd_detect_zeroes_names[] = {"off", "on", "unmap", NULL};

static int take_generic(struct json_object *opts, unsigned *flags, int *dz, struct vbd_error **err)
{
    bool b;
    int rc;
    if ((rc = vbd_opt_take_bool(opts, "read-only", &b, err)) < 0)
        return rc;
    /* QEMU's update_flags_from_options: an explicit read-only=off opens
     * read-write even where the caller (qemu-img info, check) would not */
    if (rc > 0)
        *flags = b ? (*flags & ~VBD_OPEN_RDWR) : (*flags | VBD_OPEN_RDWR);
    if ((rc = vbd_opt_take_bool(opts, "auto-read-only", &b, err)) < 0)
        return rc;
    if ((rc = vbd_opt_take_bool(opts, "cache.direct", &b, err)) < 0)
        return rc;
    if (rc > 0)
        *flags = b ? (*flags | VBD_OPEN_NOCACHE) : (*flags & ~VBD_OPEN_NOCACHE);
    if ((rc = vbd_opt_take_bool(opts, "cache.no-flush", &b, err)) < 0)
        return rc;
    if (rc > 0)
        *flags = b ? (*flags | VBD_OPEN_NO_FLUSH) : (*flags & ~VBD_OPEN_NO_FLUSH);
    if ((rc = vbd_opt_take_bool(opts, "force-share", &b, err)) < 0)
        return rc;
    if (rc > 0)
        *flags = b ? (*flags | VBD_OPEN_FORCE_SHARE) : (*flags & ~VBD_OPEN_FORCE_SHARE);
    /* checked on the node named, as QEMU's bdrv_open_common (not only by the file below it) */
    if ((*flags & VBD_OPEN_FORCE_SHARE) && (*flags & VBD_OPEN_RDWR)) {
        vbd_error_setf(err, EINVAL, "force-share=on can only be used with read-only images");
        return -EINVAL;
    }
    static const char *const discard[] = {"ignore", "off", "unmap", "on", NULL};
    int i;
    if ((rc = vbd_opt_take_enum(opts, "discard", discard, &i, err)) < 0)
        return rc;
    if (rc > 0)
        *flags = i >= 2 ? (*flags | VBD_OPEN_UNMAP) : (*flags & ~VBD_OPEN_UNMAP);
    static const char *const aio[] = {"io_uring", "threads", "native", NULL};
    if ((rc = vbd_opt_take_enum(opts, "aio", aio, &i, err)) < 0)
        return rc;
    if (rc > 0)
        *flags = i == 1 ? (*flags | VBD_OPEN_AIO_THREADS) : (*flags & ~VBD_OPEN_AIO_THREADS);
    /* QEMU's file-posix: Linux AIO is O_DIRECT only, and QEMU refuses it
     * without (vbd's io_uring would run it fine; refused so that a
     * configuration qsd rejects is not taken here) */
    if (rc > 0 && i == 2 && !(*flags & VBD_OPEN_NOCACHE)) {
        vbd_error_setf(err, EINVAL, "aio=native was specified, but it requires cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    if ((rc = vbd_opt_take_enum(opts, "detect-zeroes", vbd_detect_zeroes_names, &i, err)) < 0)
        return rc;
    *dz = rc > 0 ? i : VBD_DZ_OFF;
    /* QEMU's bdrv_parse_detect_zeroes: checked against the node's own discard */
    if (*dz == VBD_DZ_UNMAP && !(*flags & VBD_OPEN_UNMAP)) {
        vbd_error_setf(err, EINVAL, "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
        return -EINVAL;
    }
    return 0;
}

static struct vbd_node *node_create(const struct vbd_driver *drv, const char *filename, struct json_object *opts,
                                    unsigned flags, struct vbd_error **err)
{
    char *name = NULL;
    struct vbd_node *n = NULL;
    if (vbd_opt_take_str(opts, "node-name", &name, err) < 0)
        goto fail;
    if (name && vbd_node_find(name)) {
        vbd_error_setf(err, EEXIST, "Duplicate nodes with node-name='%s'", name);
        goto fail;
    }
    int dz = VBD_DZ_OFF;
    if (take_generic(opts, &flags, &dz, err) < 0)
        goto fail;
    n = vbd_xcalloc(1, sizeof(*n));
    n->drv = drv;
    n->refcnt = 1;
    pthread_mutex_init(&n->reqs_lock, NULL);
    n->home_thread = pthread_self();
    /* the graph thread's loop, for the unrefs that come from another loop
     * (vbd_node_unref): a thread's loop is made once and lives as long as
     * the thread (vbd/block.h, graph_loop) */
    n->graph_loop = n->home_loop = vbd_loop_current();
    n->open_flags = flags;
    n->detect_zeroes = (uint8_t)dz;
    n->read_only = !(flags & VBD_OPEN_RDWR);
    n->bl.request_alignment = 1;
    if (name)
        snprintf(n->node_name, sizeof(n->node_name), "%s", name);
    else
        snprintf(n->node_name, sizeof(n->node_name), "#block%03u", auto_name_counter++);
    if (filename)
        snprintf(n->filename, sizeof(n->filename), "%s", filename);
    n->options = json_object_get(opts);
    if (drv->state_size) {
        n->opaque = vbd_xcalloc(1, drv->state_size);
    }
    /* Named before open so children opened by reference can be found. */
    n->name_seq = ++name_seq_counter;
    n->next_named = named_nodes;
    named_nodes = n;
    n->opening = true;
    int open_rc = drv->open(n, opts, flags, err);
    n->opening = false;
    if (open_rc < 0) {
        for (struct vbd_node **pp = &named_nodes; *pp; pp = &(*pp)->next_named)
            if (*pp == n) {
                *pp = n->next_named;
                break;
            }
        vbd_node_unref(n->backing);
        release_file(n);
        json_object_put(n->options);
        pthread_mutex_destroy(&n->reqs_lock);
        free(n->opaque);
        free(n);
        n = NULL;
        goto fail;
    }
    char what[128];
    snprintf(what, sizeof(what), "Block %s '%s'", drv->kind == VBD_DRV_PROTOCOL ? "protocol" : "format", drv->name);
    /* QEMU's words differ by kind: a protocol "doesn't support" an option */
    if (vbd_opts_check_empty_worded(opts, what, drv->kind == VBD_DRV_PROTOCOL ? "doesn't" : "does not", err) < 0) {
        vbd_node_unref(n);
        n = NULL;
        goto fail;
    }
    if (!n->filename[0] && n->file && !strncmp(n->file->filename, "json:{", 6))
        /* QEMU's bdrv_refresh_filename: a child named by its options (a
         * null-co of a given size) names its parent by them too, under
         * the parent's driver ("driver" hashes before "file" in QEMU's
         * QDict); a parent's own options are not added here */
        snprintf(n->filename, sizeof(n->filename), "json:{\"driver\": \"%s\", \"file\": %s}", n->drv->name,
                 n->file->filename + 5);
    else if (!n->filename[0] && n->file)
        snprintf(n->filename, sizeof(n->filename), "%s", n->file->filename);
    /* a read-only parent over a node it references: that node's write lock
     * goes if nothing else writes it (dropping locks cannot fail) */
    if (n->file_ref && n->file && n->file != n)
        vbd_node_refresh_write_use(n->file, NULL);
    if (n->bl.request_alignment == 0)
        n->bl.request_alignment = 1;
fail:
    free(name);
    return n;
}

static int probe_format(struct vbd_node *proto, const struct vbd_driver **out, struct vbd_error **err)
{
    uint8_t *buf = vbd_alloc_aligned(4096, 4096);
    uint64_t len = proto->size < 4096 ? proto->size : 4096;
    uint64_t alen = (len + 4095) & ~4095ull;
    int rc = 0;
    if (alen > proto->size)
        alen = len; /* tiny file: the generic layer does the RMW */
    memset(buf, 0, 4096);
    if (len)
        rc = vbd_node_co_pread(proto, 0, buf, len);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read image for determining its format: %s", strerror(-rc));
        free(buf);
        return rc;
    }
    *out = vbd_probe_buffer(buf, len, proto->filename);
    free(buf);
    return 0;
}

const struct vbd_driver *vbd_probe_buffer(const uint8_t *buf, size_t len, const char *filename)
{
    int best = 0;
    const struct vbd_driver *bestd = vbd_driver_find("raw");
    /* an empty image is raw without probing, as in QEMU (an empty buffer
     * would match every prefix probe: cloop's) */
    for (const struct vbd_driver *const *d = vbd_driver_list(); len && *d; d++) {
        if ((*d)->kind != VBD_DRV_FORMAT || !(*d)->probe)
            continue;
        int score = (*d)->probe(buf, len, filename);
        if (score > best) {
            best = score;
            bestd = *d;
        }
    }
    return bestd;
}

struct open_args {
    const char *filename;
    struct json_object *opts;
    unsigned flags;
    struct vbd_error **err;
    struct vbd_node *result;
};

static struct vbd_node *open_in_co(const char *filename, struct json_object *opts, unsigned flags,
                                   struct vbd_error **err);

static void open_entry(void *opaque)
{
    struct open_args *a = opaque;
    a->result = open_in_co(a->filename, a->opts, a->flags, a->err);
}

struct vbd_node *vbd_open(const char *filename, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct open_args a = {filename, opts, flags, err, NULL};
    vbd_co_run_sync(open_entry, &a);
    return a.result;
}

static struct vbd_node *open_in_co(const char *filename, struct json_object *opts, unsigned flags,
                                   struct vbd_error **err)
{
    struct vbd_node *result = NULL;
    char *fname = NULL, *drvname = NULL;
    if (!opts)
        opts = json_object_new_object();
    if (filename && !strncmp(filename, "json:", 5)) {
        struct json_object *j = vbd_json_parse_object(filename, err);
        if (!j)
            goto out;
        json_object_object_foreach(j, k, v) json_object_object_add(opts, k, json_object_get(v));
        json_object_put(j);
        filename = NULL;
    }
    if (vbd_opt_take_str(opts, "filename", &fname, err) < 0 || vbd_opt_take_str(opts, "driver", &drvname, err) < 0)
        goto out;
    if (fname) {
        if (filename) {
            vbd_error_setf(err, EINVAL, "Cannot give both a filename and the 'filename' option");
            goto out;
        }
        filename = fname;
    }
    const struct vbd_driver *drv = NULL;
    if (drvname) {
        drv = vbd_driver_find(drvname);
        if (!drv) {
            vbd_error_setf(err, EINVAL, "Unknown driver '%s'", drvname);
            goto out;
        }
    }
    if (drv && drv->kind == VBD_DRV_PROTOCOL) {
        if (filename && drv->parse_filename && protocol_for(filename) == drv) {
            if (drv->parse_filename(filename, opts, err) < 0)
                goto out;
        } else if (filename) {
            json_object_object_add(opts, "filename", json_object_new_string(filename));
        }
        if (!strcmp(drvname, "host_device"))
            flags |= VBD_OPEN_HOST_DEVICE;
        result = node_create(drv, filename, opts, flags, err);
        goto out;
    }
    if (!drv && (flags & VBD_OPEN_PROTOCOL)) {
        const struct vbd_driver *p = protocol_for(filename);
        if (!filename && !p) {
            vbd_error_setf(err, EINVAL, "A block device must be specified for \"file\"");
            goto out;
        }
        if (p) {
            if (p->parse_filename && p->parse_filename(filename, opts, err) < 0)
                goto out;
            result = node_create(p, filename, opts, flags, err);
        } else {
            /* QEMU's hdev_probe_device: a plain name of a character or
             * block device is opened by host_device (qemu-img info /dev/null) */
            struct stat st;
            if (stat(filename, &st) == 0 && (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)))
                flags |= VBD_OPEN_HOST_DEVICE;
            json_object_object_add(opts, "filename", json_object_new_string(filename));
            result = node_create(vbd_driver_find("file"), filename, opts, flags, err);
        }
        goto out;
    }
    /* Format or filter (given or probed) over a "file" child. */
    if (!drv) {
        if (!filename && !vbd_opt_get(opts, "file")) {
            vbd_error_setf(err, EINVAL, "Must specify either driver or file"); /* QEMU's bdrv_fill_options */
            goto out;
        }
        struct json_object *file_opts = vbd_opt_take_obj(opts, "file");
        struct vbd_node *proto;
        if (file_opts && json_object_is_type(file_opts, json_type_string)) {
            proto = vbd_node_find(json_object_get_string(file_opts));
            if (!proto) {
                vbd_error_setf(err, ENOENT, "Cannot find device='%s' nor node-name='%s'", /* QEMU's bdrv_lookup_bs */
                               json_object_get_string(file_opts), json_object_get_string(file_opts));
                json_object_put(file_opts);
                goto out;
            }
            vbd_node_ref(proto);
            json_object_put(file_opts);
        } else {
            /* discard=unmap unless its options say otherwise, as QEMU
             * gives every format's child (bdrv_inherited_options): the
             * format decides what reaches it (a qcow2 shrink's freed
             * clusters; a raw node's discards pass its own discard= first) */
            unsigned pflags = flags | VBD_OPEN_PROTOCOL | VBD_OPEN_UNMAP;
            /* generic options given at the top apply to the protocol too */
            struct json_object *fo = file_opts ? file_opts : json_object_new_object();
            proto = open_in_co(filename, fo, pflags, err);
            if (!proto)
                goto out;
        }
        if (probe_format(proto, &drv, err) < 0) {
            vbd_node_unref(proto);
            goto out;
        }
        if ((drv->caps & VBD_DRV_CAP_PROBE_FALLBACK) && (flags & VBD_OPEN_RDWR) && getenv("VBD_QUIET_PROBE") == NULL)
            /* QEMU's three lines, word for word (scripts filter them) */
            fprintf(stderr,
                    "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                    "         Automatically detecting the format is dangerous for raw images, write operations on "
                    "block 0 will be restricted.\n"
                    "         Specify the 'raw' format explicitly to remove the restrictions.\n",
                    proto->filename);
        json_object_object_add(opts, "file", json_object_new_string(proto->node_name));
        if (drv->caps & VBD_DRV_CAP_PROBE_FALLBACK)
            flags |= VBD_OPEN_PROBED_RAW;
        result = node_create(drv, filename, opts, flags, err);
        vbd_node_unref(proto); /* the format node holds its own reference */
        goto out;
    }
    struct json_object *given_file = vbd_opt_get(opts, "file");
    if (filename && !given_file) {
        struct json_object *fo = json_object_new_object();
        json_object_object_add(fo, "filename", json_object_new_string(filename));
        json_object_object_add(opts, "file", fo);
    } else if (filename && json_object_is_type(given_file, json_type_object) &&
               !vbd_opt_get(given_file, "filename") && !vbd_opt_get(given_file, "driver")) {
        /* file.* options beside a file name (qemu-io's "open -o
         * driver=raw,file.locking=off F"): the file child is F's, as
         * QEMU opens it */
        json_object_object_add(given_file, "filename", json_object_new_string(filename));
    }
    result = node_create(drv, filename, opts, flags, err);
out:
    if (result && result->filename[0] == 0 && filename)
        snprintf(result->filename, sizeof(result->filename), "%s", filename);
    /* a node name already taken is not about the file: qemu says it alone,
     * as it does file-posix's refusal of aio=native */
    if (!result && err && *err && filename && !strstr((*err)->msg, filename) &&
        strncmp((*err)->msg, "Duplicate nodes with", 20) && strncmp((*err)->msg, "aio=native was", 14) &&
        strncmp((*err)->msg, "Block protocol '", 16) && strncmp((*err)->msg, "Block format '", 14))
        vbd_error_prepend(err, "Could not open '%s': ", filename);
    free(fname);
    free(drvname);
    json_object_put(opts);
    return result;
}

struct vbd_node *vbd_open_driver(const struct vbd_driver *drv, struct json_object *opts, unsigned flags,
                                 struct vbd_error **err)
{
    struct vbd_node *n = node_create(drv, NULL, opts, flags, err);
    json_object_put(opts);
    return n;
}

/* A child named KEY without a driver is a protocol node, never probed for a
 * format: a format's or a filter's "file", and blkdebug's "image" (QEMU
 * 7.2's blkdebug is a protocol driver whose image child inherits that, so
 * qemu-io opens image.filename=FILE as the file itself: no raw node, no
 * "probing guessed raw" warning, block 0 writable). Backing files and
 * quorum's children are probed. */
static bool opened_as_protocol(const char *key)
{
    return !strcmp(key, "file") || !strcmp(key, "image");
}

struct vbd_node *vbd_open_child(struct vbd_node *parent, struct json_object *opts, const char *key,
                                const char *filename, unsigned flags, struct vbd_error **err)
{
    /* the image locks this child takes for its parent (VBD_OPEN_META_PARENT) */
    bool meta = keeps_metadata(parent, key) ||
                (parent && (flags & VBD_OPEN_META_PARENT) && passes_through(parent) &&
                 (!strcmp(key, "file") || !strcmp(key, "image")));
    flags = (flags & ~VBD_OPEN_META_PARENT) | (meta ? VBD_OPEN_META_PARENT : 0);
    struct json_object *v = vbd_opt_take_obj(opts, key);
    if (!v) {
        if (!filename) {
            vbd_error_setf(err, EINVAL, "A block device must be specified for \"%s\"", key);
            return NULL;
        }
        struct vbd_node *c = vbd_open(filename, NULL, flags | (opened_as_protocol(key) ? VBD_OPEN_PROTOCOL : 0), err);
        if (c && parent && !strcmp(key, "file") && parent->drv->kind != VBD_DRV_PROTOCOL)
            parent->name_seq = ++name_seq_counter; /* as below */
        return c;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *ref = json_object_get_string(v);
        struct vbd_node *c = vbd_node_find(ref);
        /* a node still opening is the one a child is opened for, or one
         * above it: taking it would make the graph a cycle (n->file == n:
         * endless recursion, a node never freed). QEMU does not find it
         * either: its name is not set yet when "file" opens */
        if (c && c->opening)
            c = NULL;
        if (!c) {
            vbd_error_setf(err, ENOENT, "Cannot find device='%s' nor node-name='%s'", ref, ref);
            json_object_put(v);
            return NULL;
        }
        /* a parent that writes it by itself (a format's metadata,
         * copy-on-read's copies) over a read-only node is refused now; one
         * that only passes its users' writes down (raw, throttle,
         * blkdebug) opens read-write, and a writer that comes above it is
         * refused then (vbd_qmp_perm_check's graph), as QEMU's
         * permissions do */
        if ((flags & VBD_OPEN_RDWR) && c->read_only && !writes_only_for_users(parent, key)) {
            vbd_error_setf(err, EACCES, "Block node is read-only"); /* QEMU's permission check, no name */
            json_object_put(v);
            return NULL;
        }
        /* a second format on one file: neither may write (the other's
         * metadata would go stale under it, or two would write it) */
        /* (a backing edge takes no write: a backing file may be another
         * format's file, as QEMU's COW role shares it) */
        if (parent && !strcmp(key, "file") &&
            vbd_node_check_metadata_writer(parent, c, (flags & VBD_OPEN_RDWR) != 0, err) < 0) {
            json_object_put(v);
            return NULL;
        }
        /* an existing node: its locks follow its new parent's needs now */
        if (meta && meta_claim(c, +1, (flags & VBD_OPEN_RDWR) != 0, err) < 0) {
            json_object_put(v);
            return NULL;
        }
        /* a read-write parent writes it from its open on: the write lock
         * first (a read-only one drops it once open: vbd_open's end) */
        if ((flags & VBD_OPEN_RDWR) && !c->read_only && c->drv->write_use &&
            c->drv->write_use(c, true, err) < 0) {
            if (meta)
                meta_claim(c, -1, false, NULL);
            json_object_put(v);
            return NULL;
        }
        if (meta)
            parent->file_meta = true;
        /* blkdebug's "image" is its n->file as a format's "file" is:
         * a reopen of the parent leaves it as it is (QEMU reopens only
         * the children that inherit from the parent) */
        if (parent && opened_as_protocol(key))
            parent->file_ref = true;
        vbd_node_ref(c);
        json_object_put(v);
        return c;
    }
    if (!json_object_is_type(v, json_type_object)) {
        vbd_error_setf(err, EINVAL, "Parameter '%s' expects a node name or options", key);
        json_object_put(v);
        return NULL;
    }
    char *fname = NULL;
    if (vbd_opt_take_str(v, "filename", &fname, err) < 0) {
        json_object_put(v);
        return NULL;
    }
    unsigned cflags = flags;
    if (opened_as_protocol(key) && !vbd_opt_get(v, "driver"))
        cflags |= VBD_OPEN_PROTOCOL;
    struct vbd_node *c = vbd_open(fname ? fname : filename, v, cflags, err);
    free(fname);
    /* QEMU opens a format's or filter's own "file" before it names the
     * node itself (bdrv_open_inherit), its other children after */
    if (c && parent && !strcmp(key, "file") && parent->drv->kind != VBD_DRV_PROTOCOL)
        parent->name_seq = ++name_seq_counter;
    return c;
}

static bool is_uri_or_json(const char *s)
{
    return !strncmp(s, "json:", 5) || protocol_for(s) != NULL;
}

/* The images of a backing chain being opened above this one: the backing
 * file name each of them gave (as resolved) and, for a local file, its
 * identity. vbd_open_backing refuses a backing file that is one of them. */
struct chain_link {
    const struct chain_link *up;
    const char *backing; /* the backing file name this image resolved */
    dev_t dev;
    ino_t ino;
    bool known; /* a local file (NBD, json: have no dev/ino to compare) */
};

/* vbd_co_local's key for the chain link of the image whose backing file
 * the current coroutine opens (vbd_co_call below) */
static const struct vbd_co_key chain_key = {"backing chain being opened"};

static bool chain_has_file(const struct chain_link *l, dev_t dev, ino_t ino)
{
    for (; l; l = l->up)
        if (l->known && l->dev == dev && l->ino == ino)
            return true;
    return false;
}

/* A backing file name that an image above already gave: opening it again
 * opens the same image, whose chain comes back here for ever. The only
 * check that sees a loop through json: or NBD (qemu-img info's, which
 * compares names too). */
static bool chain_has_name(const struct chain_link *l, const char *backing)
{
    for (; l; l = l->up)
        if (!strcmp(l->backing, backing))
            return true;
    return false;
}

int vbd_open_backing(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    /* the backing file's own format decides what its file shares (QEMU's
     * COW role: a reader's needs, convert's no-share passed down) */
    unsigned bflags = (flags & ~(VBD_OPEN_RDWR | VBD_OPEN_PROTOCOL | VBD_OPEN_CHECK | VBD_OPEN_META_PARENT));
    struct json_object *v = NULL;
    /* "backing": null (json-c holds JSON null as a NULL value, so ask
     * whether the key is there), or QEMU's deprecated "" for it: no backing */
    if (opts && json_object_object_get_ex(opts, "backing", &v) &&
        (!v || (json_object_is_type(v, json_type_string) && !*json_object_get_string(v)))) {
        json_object_object_del(opts, "backing");
        return 0;
    }
    if (v) {
        n->backing = vbd_open_child(n, opts, "backing", NULL, bflags, err);
        return n->backing ? 0 : -EINVAL;
    }
    if (!n->backing_file[0])
        return 0;
    /* resolved into the node, not onto the stack: a chain recurses through
     * here once per image */
    char *path = n->full_backing_filename;
    size_t pathsz = sizeof(n->full_backing_filename);
    if (n->backing_file[0] == '/' || is_uri_or_json(n->backing_file) || !n->file ||
        is_uri_or_json(n->file->filename) || !strchr(n->file->filename, '/')) { /* as qemu: no "./" prefix */
        snprintf(path, pathsz, "%s", n->backing_file);
    } else {
        char *dir = strdup(n->file->filename);
        if (!dir) {
            vbd_error_setf(err, ENOMEM, "Could not open backing file: %s", strerror(ENOMEM));
            return -ENOMEM;
        }
        snprintf(path, pathsz, "%s/%s", dirname(dir), n->backing_file);
        free(dir);
    }
    /* Resolved even when the chain is not opened: info shows it, as
     * qemu-img's "full-backing-filename" / "(actual path: ...)". */
    if (flags & VBD_OPEN_NO_BACKING)
        return 0;
    struct chain_link link = {vbd_co_local(&chain_key), path, 0, 0, false};
    struct stat st;
    if (n->file && !is_uri_or_json(n->file->filename) && stat(n->file->filename, &st) == 0) {
        link.dev = st.st_dev;
        link.ino = st.st_ino;
        link.known = true;
    }
    if (chain_has_name(link.up, path) ||
        (!is_uri_or_json(path) && stat(path, &st) == 0 && chain_has_file(&link, st.st_dev, st.st_ino))) {
        /* qemu-img info's words; QEMU's open itself recurses for ever */
        vbd_error_setf(err, ELOOP, "Could not open backing file: Backing file '%s' creates an infinite loop", path);
        return -EINVAL;
    }
    struct json_object *bo = json_object_new_object();
    if (n->backing_format[0])
        json_object_object_add(bo, "driver", json_object_new_string(n->backing_format));
    struct vbd_error *e = NULL;
    struct open_args a = {path, bo, bflags, &e, NULL};
    /* each image of the chain on a stack of its own: the depth is the
     * image's to choose (qemu-io opens chains of hundreds) */
    vbd_co_call(open_entry, &a, &chain_key, &link);
    n->backing = a.result;
    if (!n->backing && e && e->code == EAGAIN && !strcmp(n->backing_format, "raw") &&
        strstr(e->msg, " lock: Is another process using the image [")) {
        /* a raw backing file takes no locks of its own: the conflict is the
         * parent's (convert's no-share, passed down), which QEMU finds
         * when it attaches the chain, not as the backing file's open */
        vbd_error_propagate(err, e);
        return -EINVAL;
    }
    if (!n->backing) {
        /* QEMU's bdrv_open_backing_file puts its words before the backing
         * file's own, which name the file only where open(2) failed: the
         * name open_in_co put before any other reason goes */
        const char *m = e ? e->msg : "unknown error";
        size_t plen = strlen(path);
        if (e && !strncmp(m, "Could not open '", 16) && !strncmp(m + 16, path, plen) &&
            !strncmp(m + 16 + plen, "': ", 3) && strcmp(m + 16 + plen + 3, strerror(e->code)))
            m += 16 + plen + 3;
        vbd_error_setf(err, e ? e->code : EINVAL, "Could not open backing file: %s", m);
        vbd_error_free(e);
        return -EINVAL;
    }
    return 0;
}

/* ---------- home loop ---------- */

struct vbd_node *vbd_node_fixed_loop_below(struct vbd_node *n)
{
    for (; n; n = n->file != n ? n->file : NULL) {
        if (n->drv->caps & VBD_DRV_CAP_FIXED_LOOP)
            return n;
        struct vbd_node *b = vbd_node_fixed_loop_below(n->backing);
        if (b)
            return b;
    }
    return NULL;
}

static void move_one(struct vbd_node *n, struct vbd_loop *to)
{
    struct vbd_loop *from = vbd_node_home_loop(n);
    if (from == to)
        return;
    struct vbd_loop *origin = vbd_loop_current();
    if (n->drv->detach_loop) {
        vbd_co_move_to(from);
        n->drv->detach_loop(n);
    }
    __atomic_store_n(&n->home_loop, to, __ATOMIC_RELEASE);
    if (n->drv->attach_loop) {
        vbd_co_move_to(to);
        n->drv->attach_loop(n);
    }
    vbd_co_move_to(origin);
    vbd_iothread_node_hold(to); /* object-del keeps the thread while a node lives there */
    vbd_iothread_node_release(from);
}

static void move_below(struct vbd_node *n, struct vbd_loop *to)
{
    for (; n; n = n->file != n ? n->file : NULL) {
        move_one(n, to);
        if (n->backing)
            move_below(n->backing, to);
    }
}

int vbd_node_co_set_home(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err)
{
    assert(vbd_in_co() && pthread_equal(n->home_thread, pthread_self()));
    struct vbd_node *fixed = vbd_node_fixed_loop_below(n);
    if (fixed && vbd_node_home_loop(fixed) != loop) {
        vbd_error_setf(err, ENOTSUP,
                       "Node '%s' cannot change its event loop: node '%s' (driver %s) is bound to the loop it was "
                       "opened on",
                       n->node_name, fixed->node_name, fixed->drv->name);
        return -ENOTSUP;
    }
    move_below(n, loop);
    return 0;
}
