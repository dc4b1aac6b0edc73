/* SPDX-License-Identifier: MIT */
/*
 * A job's named filter node (filter-node-name): QEMU 7.2 inserts a filter
 * above the node a job works on (stream: copy-on-read, commit: commit_top,
 * mirror and active commit: mirror_top, backup: copy-before-write); given
 * a name, the user sees it in query-named-block-nodes, the exports and the
 * parent nodes sit on it, and it is gone when the job ends.
 *
 * vbd's jobs see the guest's writes through the node's write hook, so the
 * filter has nothing to do but be there: commit_top, mirror_top and the
 * backup's copy-before-write node pass every request to their file (one
 * more io.c entry per request, no lock, no allocation). Stream's is the
 * real copy-on-read driver, as QEMU's: a guest read through it copies into
 * the top while the stream runs. Without a name, every job still gets its
 * node, as QEMU's implicit ones ('#blockNNN' in query-named-block-nodes,
 * the node of the exports above in query-block-exports while the job
 * runs).
 *
 * The drivers are not in the registry: blockdev-add cannot make them, as
 * QEMU's commit_top and mirror_top (bdrv_new_open_driver).
 */
#include "job-internal.h"

#include "block/filter/passthrough.h"
#include "daemon/objects.h"
#include "vbd/error.h"
#include "vbd/qmp.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static int top_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    vbd_filter_inherit(n);
    return 0;
}

/* Its own state is nothing: requests may come from any loop (io.c hops to
 * the file's home when that one is single-loop). */
#define JOB_TOP_DRIVER(cname, qname)                                                                                   \
    static const struct vbd_driver cname = {                                                                           \
        .name = qname,                                                                                                 \
        .kind = VBD_DRV_FILTER,                                                                                        \
        .caps = VBD_DRV_CAP_MULTI_LOOP,                                                                                \
        .open = top_open,                                                                                              \
        .co_preadv = vbd_filter_co_preadv,                                                                             \
        .co_pwritev = vbd_filter_co_pwritev,                                                                           \
        .co_pdiscard = vbd_filter_co_pdiscard,                                                                         \
        .co_pwrite_zeroes = vbd_filter_co_pwrite_zeroes,                                                               \
        .co_block_status = vbd_filter_co_block_status,                                                                 \
        .refresh_size = vbd_filter_refresh_size,                                                                       \
        .reopen_rw = vbd_filter_reopen_rw,                                                                             \
    }
JOB_TOP_DRIVER(commit_top_driver, "commit_top");
JOB_TOP_DRIVER(mirror_top_driver, "mirror_top");
JOB_TOP_DRIVER(backup_top_driver, "copy-before-write");

/* The filters alive now: vbd-daemon --state describes the graph without
 * them (a restart has no job), and parents are told apart from them. */
#define MAX_JOB_FILTERS 64
static struct vbd_node *live[MAX_JOB_FILTERS];

static bool is_job_filter(const struct vbd_node *n)
{
    for (int i = 0; i < MAX_JOB_FILTERS; i++)
        if (live[i] && live[i] == n)
            return true;
    return false;
}

struct vbd_node *vbd_job_filter_skip(struct vbd_node *n)
{
    while (n && n->file && is_job_filter(n))
        n = n->file;
    return n;
}

/* QEMU's bdrv_assign_node_name */
static bool name_ok(const char *name, struct vbd_qmp_error *err)
{
    bool ok = isalpha((unsigned char)name[0]);
    for (const char *p = name; ok && *p; p++)
        ok = isalnum((unsigned char)*p) || strchr("-._", *p);
    if (!ok) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid node-name: '%s'", name);
        return false;
    }
    if (strlen(name) >= sizeof(((struct vbd_node *)0)->node_name) || strlen(name) > 31) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node name too long");
        return false;
    }
    if (vbd_node_find(name)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Duplicate nodes with node-name='%s'", name);
        return false;
    }
    return true;
}

/* Every parent (node, export) of `from` but `except` takes `to` instead.
 * Drained by the caller. */
static void repoint(struct vbd_node *from, struct vbd_node *to, struct vbd_node *except)
{
    for (struct vbd_node *p = vbd_node_next(NULL); p; p = vbd_node_next(p)) {
        if (p == except)
            continue;
        if (p->backing == from) {
            vbd_node_ref(to);
            p->backing = to;
            vbd_node_unref(from);
        }
        if (p->file == from && p != from) {
            vbd_node_ref(to);
            p->file = to;
            vbd_node_unref(from);
        }
    }
    struct vbd_error *e = NULL;
    if (vbd_daemon_replace_root(from, to, &e) < 0) {
        /* only a read-only `to` under a writable export fails, which the
         * filters never are where they go (they take their file's mode) */
        vbd_warn("%s", e ? e->msg : "an export could not be moved");
        vbd_error_free(e);
    }
}

int job_filter_insert(enum job_filter_kind kind, struct vbd_node *top, const char *name, const char *bottom,
                      struct vbd_node **out, struct vbd_qmp_error *err)
{
    *out = NULL;
    /* without a name too, as QEMU's: an implicit '#blockNNN' in
     * query-named-block-nodes, the node of the exports above while the
     * job runs */
    /* stream and backup insert with bdrv_insert_node, whose errors say so */
    bool prefixed = kind == JOB_FILTER_STREAM || kind == JOB_FILTER_BACKUP;
    struct vbd_qmp_error e0 = {0};
    if (name && !name_ok(name, prefixed ? &e0 : err)) {
        if (prefixed) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Could not create node: %s", e0.desc);
        }
        return -1;
    }
    int slot = 0;
    while (slot < MAX_JOB_FILTERS && live[slot])
        slot++;
    if (slot == MAX_JOB_FILTERS) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Too many job filter nodes");
        return -1;
    }
    struct json_object *o = json_object_new_object();
    if (name)
        json_object_object_add(o, "node-name", json_object_new_string(name));
    json_object_object_add(o, "file", json_object_new_string(top->node_name));
    /* commit_top is read-only, as QEMU's: nothing writes into an intermediate layer */
    unsigned flags = top->read_only || kind == JOB_FILTER_COMMIT ? 0 : VBD_OPEN_RDWR;
    struct vbd_error *e = NULL;
    struct vbd_node *f;
    if (kind == JOB_FILTER_STREAM) {
        json_object_object_add(o, "driver", json_object_new_string("copy-on-read"));
        if (bottom)
            json_object_object_add(o, "bottom", json_object_new_string(bottom));
        f = vbd_open(NULL, o, flags, &e);
    } else {
        const struct vbd_driver *d = kind == JOB_FILTER_COMMIT   ? &commit_top_driver
                                     : kind == JOB_FILTER_MIRROR ? &mirror_top_driver
                                                                 : &backup_top_driver;
        f = vbd_open_driver(d, o, flags, &e);
    }
    if (!f) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s%s", prefixed ? "Could not create node: " : "",
                           e ? e->msg : "the filter node could not be opened");
        vbd_error_free(e);
        return -1;
    }
    live[slot] = f;
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(top, &d);
    /* the filter runs where its file does (an iothread) */
    struct vbd_loop *home = vbd_node_home_loop(top);
    if (vbd_node_home_loop(f) != home && vbd_node_co_set_home(f, home, &e) < 0) {
        vbd_error_free(e);
        e = NULL;
    }
    repoint(top, f, f);
    vbd_daemon_drain_end(&d);
    *out = f;
    return 0;
}

void job_filter_drop(struct vbd_node **filter)
{
    struct vbd_node *f = *filter;
    if (!f)
        return;
    *filter = NULL;
    repoint(f, f->file, NULL);
    for (int i = 0; i < MAX_JOB_FILTERS; i++)
        if (live[i] == f)
            live[i] = NULL;
    vbd_node_unref(f); /* the job's: the name is free again */
}

void job_filter_co_remove(struct vbd_node **filter)
{
    if (!*filter)
        return;
    struct vbd_daemon_drain d;
    vbd_daemon_co_drain_begin(*filter, &d);
    job_filter_drop(filter);
    vbd_daemon_drain_end(&d);
}
