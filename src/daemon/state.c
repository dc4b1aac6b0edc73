/* SPDX-License-Identifier: MIT */
/*
 * vbd-daemon --state FILE (state.h). What is kept: the arguments each
 * configuration command got (blockdev-add, block-export-add, object-add,
 * nbd-server-start, x-blockdev-set-iothread), by name, dropped again by
 * the matching delete. FILE is not written from these alone but from the
 * live graph: the node an export serves now (a snapshot or an active
 * commit moved it), each node's backing now (a snapshot gave an overlay
 * its backing, a stream or commit dropped layers), the overlays
 * blockdev-snapshot-sync made and the targets drive-mirror pivoted to
 * that something still uses (added, then
 * released to their users again by "--release" once the exports are
 * back: not the monitor's, as in qsd). Replaying a log of commands would redo
 * side effects (create an image again, open a layer a job removed); a
 * description of what is there has none.
 *
 * The envelope: {"vbd-state": VERSION, "generator": ..., "commands":
 * [{"execute": ..., "arguments": ...}...], "crc32": N}, the CRC over the
 * commands as json-c prints them (plain): a damaged FILE that is still
 * JSON is refused too, never half applied.
 */
#include "daemon/state.h"
#include "daemon/objects.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/job.h"
#include "vbd/nbd.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define STATE_VERSION 1
/* A state file is a few KiB per node; anything near this is not ours. */
#define STATE_MAX_BYTES (64u << 20)

static char *state_path;
static char *last_written; /* FILE's text as this daemon last wrote it */
static bool replaying;
/* name -> the arguments it was made with (json objects, insertion order) */
static struct json_object *node_recs, *export_recs, *object_recs, *iothread_recs;
static struct json_object *nbd_rec;    /* nbd-server-start's arguments, or NULL */
static struct json_object *cmdline_nodes; /* node-names the command line made: never written */
/* the command line's nodes blockdev-reopen changed: name -> the entry it
 * last got (the node's whole set of options, as QEMU's reopen takes it),
 * replayed as one blockdev-reopen after the command line */
static struct json_object *cmdline_reopens;
/* the command line's exports (id -> their options) and those of them QMP
 * deleted: a pivot or a delete of one is written as a block-export-del
 * (and a block-export-add on the new node) replayed after the command line */
static struct json_object *cmdline_exports, *cmdline_exports_deleted;

static struct json_object *copy(struct json_object *o)
{
    struct json_object *c = NULL;
    if (json_object_deep_copy(o, &c, NULL) < 0) {
        vbd_error_report("out of memory copying a state record");
        abort(); /* alloc.h's policy for control-path allocations */
    }
    return c;
}

static const char *str_arg(struct json_object *args, const char *key)
{
    struct json_object *v;
    if (!args || !json_object_object_get_ex(args, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* An export of an in-memory dirty bitmap (fleecing) is kept without the
 * bitmap: the bitmap dies with the process, as in QEMU, so the replayed
 * export would name a bitmap that is not there and the daemon would not
 * start. A backup tool then finds no qemu:dirty-bitmap context and falls
 * back to a full backup, which is safe; an empty bitmap would not be. */
static struct json_object *export_record(const char *id, struct json_object *args)
{
    struct json_object *rec = copy(args), *bitmaps, *b;
    const char *exp_name = str_arg(args, "node-name");
    struct vbd_node *exp = exp_name ? vbd_node_find(exp_name) : NULL, *owner;
    if (!json_object_object_get_ex(rec, "bitmaps", &bitmaps) || !json_object_is_type(bitmaps, json_type_array))
        return rec;
    for (size_t i = 0; i < json_object_array_length(bitmaps); i++) {
        b = json_object_array_get_idx(bitmaps, i);
        const char *bname = json_object_is_type(b, json_type_string) ? json_object_get_string(b) : str_arg(b, "name");
        if (!json_object_is_type(b, json_type_string) || (exp && bname && vbd_dirty_bitmap_find_below(exp, bname, &owner))) {
            vbd_warn("--state: export '%s' is kept without its in-memory bitmap '%s', which does not survive a restart",
                     id, bname ? bname : "?");
            json_object_object_del(rec, "bitmaps");
            break;
        }
    }
    return rec;
}

/* x-blockdev-change gave node `name` (a quorum) other children: its
 * record lists them as they are now, by node name (the new list is its
 * children's order, so reads vote as before the restart). A child without
 * a name of its own (given inline) cannot be listed: the record stays. */
static void record_children(const char *name)
{
    struct json_object *rec;
    struct vbd_node *n = name ? vbd_node_find(name) : NULL;
    if (!n || !n->drv->child_at || !json_object_object_get_ex(node_recs, n->node_name, &rec))
        return;
    struct json_object *list = json_object_new_array();
    char cname[32];
    struct vbd_node *c;
    for (int i = 0; (c = n->drv->child_at(n, i, cname, sizeof(cname))); i++) {
        if (c->node_name[0] == '#') {
            vbd_warn("--state: node '%s': its child '%s' has no node-name; its children after x-blockdev-change "
                     "cannot be described for a restart",
                     n->node_name, cname);
            json_object_put(list);
            return;
        }
        json_object_array_add(list, json_object_new_string(c->node_name));
    }
    json_object_object_add(rec, "children", list);
}

/* Keep what a command that succeeded made or removed; false: the command
 * changes nothing FILE describes (queries, I/O, image-only changes). */
static bool record(const char *cmd, struct json_object *args)
{
    const char *name;
    if (!strcmp(cmd, "blockdev-add")) {
        if ((name = str_arg(args, "node-name")))
            json_object_object_add(node_recs, name, copy(args));
    } else if (!strcmp(cmd, "blockdev-del")) {
        if ((name = str_arg(args, "node-name"))) {
            json_object_object_del(node_recs, name);
            json_object_object_del(iothread_recs, name);
        }
    } else if (!strcmp(cmd, "blockdev-reopen")) {
        /* the options given are the node's whole new set, as QEMU's */
        struct json_object *list;
        if (json_object_object_get_ex(args, "options", &list) && json_object_is_type(list, json_type_array))
            for (size_t i = 0; i < json_object_array_length(list); i++) {
                struct json_object *o = json_object_array_get_idx(list, i);
                if ((name = str_arg(o, "node-name")) && json_object_object_get_ex(node_recs, name, NULL))
                    json_object_object_add(node_recs, name, copy(o));
                else if (name && json_object_object_get_ex(cmdline_nodes, name, NULL))
                    json_object_object_add(cmdline_reopens, name, copy(o));
            }
    } else if (!strcmp(cmd, "x-blockdev-change")) {
        record_children(str_arg(args, "parent"));
    } else if (!strcmp(cmd, "x-blockdev-set-iothread")) {
        if (!(name = str_arg(args, "node-name")))
            return true;
        if (!str_arg(args, "iothread")) {
            json_object_object_del(iothread_recs, name); /* back on the main loop */
        } else {
            struct json_object *a = copy(args);
            json_object_object_del(a, "force"); /* replayed before any export exists */
            json_object_object_add(iothread_recs, name, a);
        }
    } else if (!strcmp(cmd, "block-export-add")) {
        if ((name = str_arg(args, "id")))
            json_object_object_add(export_recs, name, export_record(name, args));
    } else if (!strcmp(cmd, "block-export-del")) {
        if ((name = str_arg(args, "id"))) {
            json_object_object_del(export_recs, name);
            if (json_object_object_get_ex(cmdline_exports, name, NULL))
                json_object_object_add(cmdline_exports_deleted, name, NULL);
        }
    } else if (!strcmp(cmd, "nbd-server-start")) {
        json_object_put(nbd_rec);
        nbd_rec = copy(args);
    } else if (!strcmp(cmd, "nbd-server-stop")) {
        json_object_put(nbd_rec);
        nbd_rec = NULL;
    } else if (!strcmp(cmd, "object-add")) {
        if ((name = str_arg(args, "id")))
            json_object_object_add(object_recs, name, copy(args));
    } else if (!strcmp(cmd, "object-del")) {
        if ((name = str_arg(args, "id")))
            json_object_object_del(object_recs, name);
    } else if (!strcmp(cmd, "qom-set")) {
        /* a throttle group's new limits are part of the object now */
        const char *path = str_arg(args, "path"), *prop = str_arg(args, "property");
        struct json_object *rec, *v;
        if (path && !strncmp(path, "/objects/", 9))
            path += 9;
        if (path && prop && json_object_object_get_ex(object_recs, path, &rec) &&
            json_object_object_get_ex(args, "value", &v))
            json_object_object_add(rec, prop, copy(v));
    } else if (strcmp(cmd, "blockdev-snapshot") && strcmp(cmd, "blockdev-snapshot-sync") &&
               strcmp(cmd, "transaction") && strcmp(cmd, "job-finalize")) {
        return false;
    }
    return true;
}

static bool implicit_name(const struct vbd_node *n)
{
    return n->node_name[0] == '#';
}

static bool is_ours(struct vbd_node *n)
{
    return vbd_daemon_node_find(n->node_name) == n && !json_object_object_get_ex(cmdline_nodes, n->node_name, NULL);
}

/* A node its users hold, not the monitor (blockdev-snapshot-sync's
 * overlay, drive-mirror's target after the pivot): described while
 * something uses it, and released again after the replay. */
static bool users_hold(struct vbd_node *n)
{
    return n->held_by_users && vbd_daemon_node_find(n->node_name) != n;
}

static bool described(struct json_object *done, const struct vbd_node *n);

/* An export's node with no user name: a drive-mirror target without
 * node-name the export pivoted to, or an overlay blockdev-snapshot-sync
 * made without snapshot-node-name. It must come back under the export:
 * the export's recorded node is the old one, which lacks every write
 * since the pivot. */
static bool implicit_export_root(struct vbd_node *n)
{
    if (!implicit_name(n))
        return false;
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next)
        if (vbd_job_filter_skip(vbd_daemon_export_node(e)) == n)
            return true;
    return false;
}

/* blockdev-add arguments for n as it is now, or NULL (not describable). */
static struct json_object *node_args(struct vbd_node *n, struct json_object *done)
{
    struct json_object *rec, *a;
    if (json_object_object_get_ex(node_recs, n->node_name, &rec)) {
        a = copy(rec);
    } else {
        /* an overlay blockdev-snapshot-sync made, a drive-mirror's target:
         * a format over a file */
        struct vbd_node *f = n->file;
        if ((implicit_name(n) && !implicit_export_root(n) && !users_hold(n)) || !f || f->file || f->backing) {
            vbd_warn("--state: node '%s' cannot be described for a restart; it is left out", n->node_name);
            return NULL;
        }
        a = json_object_new_object();
        json_object_object_add(a, "driver", json_object_new_string(n->drv->name));
        json_object_object_add(a, "node-name", json_object_new_string(n->node_name));
        struct json_object *fo;
        if (!implicit_name(f)) {
            fo = json_object_new_string(f->node_name);
        } else {
            fo = json_object_new_object();
            json_object_object_add(fo, "driver", json_object_new_string(f->drv->name));
            json_object_object_add(fo, "filename", json_object_new_string(f->filename));
        }
        json_object_object_add(a, "file", fo);
    }
    /* The backing now: a named node by its name; an implicit one as the
     * image header says (a stream or commit rewrote it), unless the user
     * described it inline; none: null where the options named one. */
    struct json_object *b = NULL;
    bool has = json_object_object_get_ex(a, "backing", &b);
    struct vbd_node *nb = vbd_job_filter_skip(n->backing); /* a job's filter is not there after a restart */
    if (nb && (!implicit_name(nb) || described(done, nb))) /* an overlay below: renamed at the replay */
        json_object_object_add(a, "backing", json_object_new_string(nb->node_name));
    else if (n->backing && has && !json_object_is_type(b, json_type_object))
        json_object_object_del(a, "backing");
    else if (!n->backing && has)
        json_object_object_add(a, "backing", NULL);
    /* below a snapshot's overlay the old node became read-only */
    struct json_object *ro;
    if (n->read_only && !(json_object_object_get_ex(a, "read-only", &ro) && json_object_get_boolean(ro)))
        json_object_object_add(a, "read-only", json_object_new_boolean(true));
    return a;
}

static void add_cmd(struct json_object *cmds, const char *execute, struct json_object *args)
{
    struct json_object *c = json_object_new_object();
    json_object_object_add(c, "execute", json_object_new_string(execute));
    json_object_object_add(c, "arguments", args);
    json_object_array_add(cmds, c);
}

static void emit_node(struct vbd_node *n, struct json_object *cmds, struct json_object *done, int depth);
static void emit_below(struct vbd_node *c, struct json_object *cmds, struct json_object *done, int depth);

/* a quorum's children (x-blockdev-change may have added newer nodes) */
static void emit_list_below(struct vbd_node *n, struct json_object *cmds, struct json_object *done, int depth)
{
    char name[32];
    struct vbd_node *c;
    for (int i = 0; n->drv->child_at && (c = n->drv->child_at(n, i, name, sizeof(name))); i++)
        emit_below(c, cmds, done, depth);
}

/* the nodes of ours below c must exist before the node above it */
static void emit_below(struct vbd_node *c, struct json_object *cmds, struct json_object *done, int depth)
{
    if (!c || depth > 256)
        return;
    if (is_ours(c) || users_hold(c)) {
        emit_node(c, cmds, done, depth + 1);
        return;
    }
    if (vbd_daemon_node_find(c->node_name) == c)
        return; /* the command line's: there before the replay */
    if (c->file != c)
        emit_below(c->file, cmds, done, depth + 1);
    emit_below(c->backing, cmds, done, depth + 1);
    emit_list_below(c, cmds, done, depth + 1);
}

static void emit_node(struct vbd_node *n, struct json_object *cmds, struct json_object *done, int depth)
{
    if (json_object_object_get_ex(done, n->node_name, NULL))
        return;
    json_object_object_add(done, n->node_name, NULL);
    if (n->file != n)
        emit_below(n->file, cmds, done, depth);
    emit_below(n->backing, cmds, done, depth);
    emit_list_below(n, cmds, done, depth);
    struct json_object *a = node_args(n, done);
    if (a) {
        add_cmd(cmds, "blockdev-add", a);
        json_object_object_add(done, n->node_name, json_object_new_boolean(true));
    }
}

static bool described(struct json_object *done, const struct vbd_node *n)
{
    return json_object_object_get(done, n->node_name) != NULL;
}

/* The command line's nodes that blockdev-reopen changed: one
 * blockdev-reopen of their last entries, after every node they may name
 * exists and before the exports. Each entry as the node is now: its
 * backing (a snapshot, stream or commit may have changed it since) and
 * read-only (a snapshot's overlay made it so). */
static void emit_cmdline_reopens(struct json_object *cmds, struct json_object *done)
{
    struct json_object *list = json_object_new_array(), *gone = json_object_new_array();
    json_object_object_foreach(cmdline_reopens, name, rec)
    {
        struct vbd_node *n = vbd_daemon_node_find(name);
        if (!n) {
            json_object_array_add(gone, json_object_new_string(name));
            continue;
        }
        struct json_object *a = copy(rec), *b = NULL;
        bool has = json_object_object_get_ex(a, "backing", &b);
        struct vbd_node *nb = vbd_job_filter_skip(n->backing);
        if (nb && (!implicit_name(nb) || described(done, nb)))
            json_object_object_add(a, "backing", json_object_new_string(nb->node_name));
        else if (!n->backing && has)
            json_object_object_add(a, "backing", NULL);
        json_object_object_add(a, "read-only", json_object_new_boolean(n->read_only));
        json_object_array_add(list, a);
    }
    for (size_t i = 0; i < json_object_array_length(gone); i++)
        json_object_object_del(cmdline_reopens, json_object_get_string(json_object_array_get_idx(gone, i)));
    json_object_put(gone);
    if (!json_object_array_length(list)) {
        json_object_put(list);
        return;
    }
    struct json_object *args = json_object_new_object();
    json_object_object_add(args, "options", list);
    add_cmd(cmds, "blockdev-reopen", args);
}

/* The commands that rebuild what QMP made, in an order that replays. */
static struct json_object *describe(void)
{
    /* drop what went away without a command of its own (an export an
     * nbd-server-stop took along, a node a job closed) */
    struct json_object *gone = json_object_new_array();
    json_object_object_foreach(node_recs, nn, nv)
    {
        (void)nv;
        if (!vbd_daemon_node_find(nn))
            json_object_array_add(gone, json_object_new_string(nn));
    }
    for (size_t i = 0; i < json_object_array_length(gone); i++) {
        const char *g = json_object_get_string(json_object_array_get_idx(gone, i));
        json_object_object_del(node_recs, g);
        json_object_object_del(iothread_recs, g);
    }
    json_object_put(gone);
    gone = json_object_new_array();
    json_object_object_foreach(export_recs, en, ev)
    {
        (void)ev;
        if (!vbd_daemon_export_find(en))
            json_object_array_add(gone, json_object_new_string(en));
    }
    for (size_t i = 0; i < json_object_array_length(gone); i++)
        json_object_object_del(export_recs, json_object_get_string(json_object_array_get_idx(gone, i)));
    json_object_put(gone);
    if (nbd_rec && !vbd_nbd_server_running()) {
        json_object_put(nbd_rec);
        nbd_rec = NULL;
    }

    struct json_object *cmds = json_object_new_array();
    /* the command line's exports QMP deleted or moved to another node go
     * first, before anything could use their ids */
    struct json_object *moved = json_object_new_array();
    json_object_object_foreach(cmdline_exports, cid, cargs)
    {
        struct vbd_daemon_export *e = vbd_daemon_export_find(cid);
        struct vbd_node *root = e ? vbd_job_filter_skip(vbd_daemon_export_node(e)) : NULL;
        const char *was = str_arg(cargs, "node-name");
        bool pivoted = e && !json_object_object_get_ex(cmdline_exports_deleted, cid, NULL) && root && was &&
                       strcmp(was, root->node_name);
        if (!json_object_object_get_ex(cmdline_exports_deleted, cid, NULL) && !pivoted)
            continue;
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "id", json_object_new_string(cid));
        add_cmd(cmds, "block-export-del", a);
        if (pivoted) {
            a = copy(cargs);
            json_object_object_add(a, "node-name", json_object_new_string(root->node_name));
            json_object_array_add(moved, a);
        }
    }
    json_object_object_foreach(object_recs, on, ov)
    {
        (void)on;
        add_cmd(cmds, "object-add", copy(ov));
    }
    struct json_object *done = json_object_new_object();
    for (struct vbd_node *n = vbd_daemon_node_next(NULL); n; n = vbd_daemon_node_next(n))
        if (is_ours(n) && (!implicit_name(n) || implicit_export_root(n)))
            emit_node(n, cmds, done, 0);
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct vbd_node *root = vbd_job_filter_skip(vbd_daemon_export_node(e));
        if (root && (implicit_name(root) || users_hold(root)))
            emit_node(root, cmds, done, 0); /* an implicit one under a fresh implicit name */
    }
    json_object_object_foreach(iothread_recs, tn, tv)
    {
        (void)tn;
        add_cmd(cmds, "x-blockdev-set-iothread", copy(tv));
    }
    emit_cmdline_reopens(cmds, done);
    if (nbd_rec)
        add_cmd(cmds, "nbd-server-start", copy(nbd_rec));
    /* in the command line's own form (keyval strings), replayed as
     * --export is, not as QMP's typed block-export-add */
    for (size_t i = 0; i < json_object_array_length(moved); i++) {
        struct json_object *a = json_object_array_get_idx(moved, i);
        const char *root_name = str_arg(a, "node-name");
        struct vbd_node *rn = root_name ? vbd_node_find(root_name) : NULL;
        if (root_name && (root_name[0] == '#' || (rn && users_hold(rn))) && !json_object_object_get(done, root_name))
            continue; /* its node was not described (warned): no export beats one on stale data */
        add_cmd(cmds, "--export", json_object_get(a));
    }
    json_object_put(moved);
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct json_object *rec;
        if (!json_object_object_get_ex(export_recs, e->id, &rec))
            continue;
        struct json_object *a = copy(rec);
        struct vbd_node *root = vbd_job_filter_skip(vbd_daemon_export_node(e));
        if (root && (implicit_name(root) || users_hold(root)) && !described(done, root)) {
            vbd_warn("--state: export '%s' is left out: its node cannot be described for a restart", e->id);
            json_object_put(a);
            continue;
        }
        if (root)
            json_object_object_add(a, "node-name", json_object_new_string(root->node_name));
        add_cmd(cmds, "block-export-add", a);
    }
    /* the overlays and drive-mirror targets go back to their users (the
     * exports, the nodes above them): closed with the last of them, as
     * before the restart */
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        if (users_hold(n) && described(done, n)) {
            struct json_object *a = json_object_new_object();
            json_object_object_add(a, "node-name", json_object_new_string(n->node_name));
            add_cmd(cmds, "--release", a);
        }
    json_object_put(done);
    return cmds;
}

static uint32_t cmds_crc(struct json_object *cmds)
{
    const char *s = json_object_to_json_string_ext(cmds, JSON_C_TO_STRING_PLAIN);
    return (uint32_t)crc32(0, (const unsigned char *)s, (uInt)strlen(s));
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* tmp file, fsync, rename, fsync the directory: a crash leaves the old
 * FILE or the new one, and the new one once this returns */
static int save(struct vbd_error **err)
{
    struct json_object *cmds = describe();
    struct json_object *top = json_object_new_object();
    json_object_object_add(top, "vbd-state", json_object_new_int(STATE_VERSION));
    json_object_object_add(top, "generator", json_object_new_string(VBD_QMP_PACKAGE));
    json_object_object_add(top, "commands", cmds);
    json_object_object_add(top, "crc32", json_object_new_int64(cmds_crc(cmds)));
    const char *text = json_object_to_json_string_ext(top, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (last_written && !strcmp(last_written, text)) {
        /* nothing changed (a pivot saved inside its drained section is
         * saved again by the dispatcher): no write, no fsync */
        json_object_put(top);
        return 0;
    }
    size_t plen = strlen(state_path);
    char *tmp = vbd_xmalloc(plen + 8), *dir = vbd_xstrdup(state_path);
    snprintf(tmp, plen + 8, "%s.tmp", state_path);
    int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = write_all(fd, text, strlen(text))) == 0)
        rc = write_all(fd, "\n", 1);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, state_path) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        goto out;
    }
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        rc = -errno;
    if (dfd >= 0)
        close(dfd);
out:
    free(last_written);
    last_written = rc < 0 ? NULL : vbd_xstrdup(text);
    if (rc < 0)
        vbd_error_setf(err, -rc, "the change is made but the state file '%s' could not be written: %s", state_path,
                       strerror(-rc));
    json_object_put(top);
    free(tmp);
    free(dir);
    return rc;
}

static int on_change(const char *cmd, struct json_object *args, struct vbd_error **err)
{
    if (!record(cmd, args) || replaying)
        return 0;
    return save(err);
}

static struct json_object *new_recs(struct json_object *old)
{
    json_object_put(old);
    return json_object_new_object();
}

void vbd_state_free(void)
{
    vbd_qmp_set_change_hook(NULL);
    json_object_put(node_recs);
    json_object_put(export_recs);
    json_object_put(object_recs);
    json_object_put(iothread_recs);
    json_object_put(cmdline_nodes);
    json_object_put(cmdline_reopens);
    cmdline_reopens = NULL;
    json_object_put(cmdline_exports);
    json_object_put(cmdline_exports_deleted);
    cmdline_exports = cmdline_exports_deleted = NULL;
    json_object_put(nbd_rec);
    node_recs = export_recs = object_recs = iothread_recs = cmdline_nodes = nbd_rec = NULL;
    free(state_path);
    free(last_written);
    state_path = last_written = NULL;
}

/* The file's commands, checked; NULL with *err naming what is wrong. */
static struct json_object *read_state(const char *path, bool *absent, struct vbd_error **err)
{
    *absent = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        *absent = true;
        return NULL;
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        vbd_error_setf(err, errno, "--state %s: cannot read it: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > STATE_MAX_BYTES) {
        vbd_error_setf(err, EINVAL, "--state %s: not a vbd-daemon state file (%s)", path,
                       S_ISREG(st.st_mode) ? "too large" : "not a regular file");
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size, got = 0;
    char *buf = vbd_xmalloc(len + 1);
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    struct json_object *top = NULL, *cmds = NULL;
    const char *why = NULL;
    char whybuf[160];
    struct json_tokener *tok = json_tokener_new_ex(64);
    top = json_tokener_parse_ex(tok, buf, (int)got);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!top || jerr != json_tokener_success) {
        snprintf(whybuf, sizeof(whybuf), "truncated or not JSON at byte %zu: %s", end,
                 jerr == json_tokener_continue ? "unexpected end of file" : json_tokener_error_desc(jerr));
        why = whybuf;
        goto out;
    }
    while (end < got && strchr(" \t\r\n", buf[end]))
        end++;
    if (end < got) {
        snprintf(whybuf, sizeof(whybuf), "unexpected data at byte %zu", end);
        why = whybuf;
        goto out;
    }
    struct json_object *ver, *crc, *list;
    if (!json_object_is_type(top, json_type_object) || !json_object_object_get_ex(top, "vbd-state", &ver) ||
        !json_object_is_type(ver, json_type_int)) {
        why = "no \"vbd-state\" version";
        goto out;
    }
    int64_t v = json_object_get_int64(ver);
    if (v > STATE_VERSION) {
        snprintf(whybuf, sizeof(whybuf), "written by a newer vbd-daemon (state version %lld; this one reads %d)",
                 (long long)v, STATE_VERSION);
        why = whybuf;
        goto out;
    }
    if (v < 1 || !json_object_object_get_ex(top, "commands", &list) ||
        !json_object_is_type(list, json_type_array) || !json_object_object_get_ex(top, "crc32", &crc) ||
        !json_object_is_type(crc, json_type_int)) {
        why = "bad version, \"commands\" or \"crc32\"";
        goto out;
    }
    if ((uint64_t)json_object_get_int64(crc) != cmds_crc(list)) {
        why = "checksum mismatch (the file was changed or damaged)";
        goto out;
    }
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        struct json_object *c = json_object_array_get_idx(list, i), *x, *a;
        if (!json_object_is_type(c, json_type_object) || !json_object_object_get_ex(c, "execute", &x) ||
            !json_object_is_type(x, json_type_string) || !json_object_object_get_ex(c, "arguments", &a) ||
            !json_object_is_type(a, json_type_object) || json_object_object_length(c) != 2) {
            snprintf(whybuf, sizeof(whybuf), "command %zu is not {\"execute\", \"arguments\"}", i + 1);
            why = whybuf;
            goto out;
        }
    }
    cmds = json_object_get(list);
out:
    if (why)
        vbd_error_setf(err, EINVAL, "--state %s: refusing a damaged state file (%s); it is left as it is", path, why);
    json_object_put(top);
    free(buf);
    return cmds;
}

void vbd_state_note_cmdline_export(struct json_object *opts)
{
    const char *id = str_arg(opts, "id");
    if (!id)
        return;
    if (!cmdline_exports)
        cmdline_exports = json_object_new_object();
    json_object_object_add(cmdline_exports, id, copy(opts));
}

/* Names in a replayed command that were implicit ('#blockNNN') in the
 * daemon that wrote FILE: the node is opened again under a fresh implicit
 * name (user names cannot start with '#', and the command line may hold
 * the old one), and later commands follow it there. */
static void rename_implicit(struct json_object *args, struct json_object *renamed)
{
    static const char *const refs[] = {"node-name", "backing", "file", NULL};
    for (int k = 0; refs[k]; k++) {
        const char *v = str_arg(args, refs[k]), *to;
        struct json_object *nv;
        if (v && v[0] == '#' && json_object_object_get_ex(renamed, v, &nv) && (to = json_object_get_string(nv)))
            json_object_object_add(args, refs[k], json_object_new_string(to));
    }
}

static int replay_implicit_node(struct json_object *args, struct json_object *renamed, struct vbd_error **err)
{
    char was[64];
    snprintf(was, sizeof(was), "%s", str_arg(args, "node-name"));
    struct json_object *a = copy(args);
    json_object_object_del(a, "node-name");
    /* locked by its users, as blockdev-add's nodes (and the overlay the
     * command that made it opened) */
    struct vbd_node *n = vbd_open(NULL, a, VBD_OPEN_RDWR | VBD_OPEN_LOCK_BY_USERS, err);
    if (!n)
        return -1;
    vbd_daemon_node_add(n);
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, err) < 0) {
        vbd_daemon_node_del(n->node_name, NULL);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        return -1;
    }
    json_object_object_add(renamed, was, json_object_new_string(n->node_name));
    return 0;
}

int vbd_state_load(const char *path, struct vbd_error **err)
{
    state_path = vbd_xstrdup(path);
    node_recs = new_recs(node_recs);
    export_recs = new_recs(export_recs);
    object_recs = new_recs(object_recs);
    iothread_recs = new_recs(iothread_recs);
    cmdline_nodes = new_recs(cmdline_nodes);
    cmdline_reopens = new_recs(cmdline_reopens);
    cmdline_exports_deleted = new_recs(cmdline_exports_deleted);
    if (!cmdline_exports)
        cmdline_exports = json_object_new_object();
    for (struct vbd_node *n = vbd_daemon_node_next(NULL); n; n = vbd_daemon_node_next(n))
        json_object_object_add(cmdline_nodes, n->node_name, NULL);
    bool absent;
    struct json_object *cmds = read_state(path, &absent, err);
    if (!cmds && !absent)
        return -EINVAL;
    vbd_qmp_set_change_hook(on_change);
    if (absent)
        return 0; /* written at the first change */
    int rc = 0;
    replaying = true; /* the hook keeps each command's arguments, FILE stays */
    struct json_object *renamed = json_object_new_object();
    for (size_t i = 0; i < json_object_array_length(cmds); i++) {
        struct json_object *req = json_object_array_get_idx(cmds, i);
        const char *x = json_object_get_string(json_object_object_get(req, "execute"));
        struct json_object *args = json_object_object_get(req, "arguments");
        if (json_object_is_type(args, json_type_object))
            rename_implicit(args, renamed);
        struct json_object *entries;
        if (!strcmp(x, "blockdev-reopen") && json_object_object_get_ex(args, "options", &entries) &&
            json_object_is_type(entries, json_type_array))
            for (size_t k = 0; k < json_object_array_length(entries); k++)
                if (json_object_is_type(json_object_array_get_idx(entries, k), json_type_object))
                    rename_implicit(json_object_array_get_idx(entries, k), renamed);
        const char *nn = str_arg(args, "node-name");
        if (!strcmp(x, "blockdev-add") && nn && nn[0] == '#') {
            struct vbd_error *ee = NULL;
            if (replay_implicit_node(args, renamed, &ee) < 0) {
                vbd_error_setf(err, EINVAL, "--state %s: command %zu (blockdev-add %s) failed: %s; not starting, the file is left as it is",
                               path, i + 1, nn, ee ? ee->msg : "error");
                vbd_error_free(ee);
                rc = -EINVAL;
                break;
            }
            continue;
        }
        if (!strcmp(x, "--release")) {
            /* an overlay or a drive-mirror target added above: its users hold it now */
            const char *rn = str_arg(args, "node-name");
            struct vbd_error *ee = NULL;
            if (!rn || vbd_daemon_node_release(rn, &ee) < 0) {
                vbd_error_setf(err, EINVAL, "--state %s: command %zu (--release %s) failed: %s; not starting, the file is left as it is",
                               path, i + 1, rn ? rn : "?", ee ? ee->msg : "no node-name");
                vbd_error_free(ee);
                rc = -EINVAL;
                break;
            }
            continue;
        }
        if (!strcmp(x, "--export")) {
            /* a command-line export moved to another node over QMP */
            struct json_object *a = copy(json_object_object_get(req, "arguments"));
            struct vbd_error *ee = NULL;
            const char *id = str_arg(a, "id");
            char *idbuf = vbd_xstrdup(id ? id : ""); /* a takes "id" out */
            if (vbd_daemon_export_add(a, "--state export", &ee) < 0) {
                vbd_error_setf(err, EINVAL, "--state %s: command %zu (--export %s) failed: %s; not starting, the file is left as it is",
                               path, i + 1, idbuf, ee ? ee->msg : "error");
                vbd_error_free(ee);
                json_object_put(a);
                free(idbuf);
                rc = -EINVAL;
                break;
            }
            json_object_put(a);
            json_object_object_del(cmdline_exports_deleted, idbuf); /* there again, on its new node */
            free(idbuf);
            continue;
        }
        struct json_object *reply = vbd_qmp_dispatch(req, true), *e, *desc;
        if (json_object_object_get_ex(reply, "error", &e)) {
            json_object_object_get_ex(e, "desc", &desc);
            vbd_error_setf(err, EINVAL, "--state %s: command %zu (%s) failed: %s; not starting, the file is left as it is",
                           path, i + 1, json_object_get_string(json_object_object_get(req, "execute")),
                           desc ? json_object_get_string(desc) : "error");
            rc = -EINVAL;
        }
        json_object_put(reply);
        if (rc)
            break;
    }
    replaying = false;
    vbd_qmp_image_locks_refresh(NULL); /* what the replay's opens claimed settles to what the users take */
    json_object_put(renamed);
    json_object_put(cmds);
    if (rc)
        vbd_qmp_set_change_hook(NULL);
    return rc;
}
