/* SPDX-License-Identifier: MIT */
/* The daemon's user-created nodes and exports (objects.h). */
#include "daemon/objects.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/iothread.h"
#include "vbd/job.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/qmp.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reaches(const struct vbd_node *top, const struct vbd_node *n);
static struct vbd_backend *export_backend(struct vbd_daemon_export *e);
static int co_move(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err);
static bool subtree_on(struct vbd_node *n, struct vbd_loop *loop);
static struct vbd_daemon_export *export_touching(struct vbd_node *n, const struct vbd_daemon_export *except,
                                                 const struct vbd_loop *unless_fixed_on);

/* The lists below and the graph moves are the main loop's (objects.h):
 * they are not locked, and a coroutine that moved to an iothread
 * (vbd_co_move_to) must come back before it walks or changes them. A
 * wrong-thread call would race the main loop's walks (SIGHUP's, SIGUSR1's,
 * QMP's), so it stops here, in every build. */
#define MAIN_THREAD_ONLY() assert(vbd_thread_is_main())

static struct vbd_node **nodes;
static int nnodes;
static struct vbd_daemon_export *exports;

void vbd_daemon_node_add(struct vbd_node *n)
{
    MAIN_THREAD_ONLY();
    nodes = vbd_xrealloc(nodes, sizeof(*nodes) * (nnodes + 1));
    nodes[nnodes++] = n;
}

struct vbd_node *vbd_daemon_node_find(const char *name)
{
    MAIN_THREAD_ONLY();
    for (int i = 0; i < nnodes; i++)
        if (!strcmp(nodes[i]->node_name, name))
            return nodes[i];
    return NULL;
}

struct vbd_node *vbd_daemon_node_next(struct vbd_node *prev)
{
    MAIN_THREAD_ONLY();
    int i = 0;
    if (prev)
        while (i < nnodes && nodes[i++] != prev)
            ;
    return i < nnodes ? nodes[i] : NULL;
}

int vbd_daemon_node_del(const char *name, struct vbd_error **err)
{
    MAIN_THREAD_ONLY();
    for (int i = 0; i < nnodes; i++) {
        struct vbd_node *n = nodes[i];
        if (strcmp(n->node_name, name))
            continue;
        if (n->refcnt > 1) {
            vbd_error_setf(err, EBUSY, "Node '%s' is busy: it is in use (by an export, another node or a job)", name);
            return -EBUSY;
        }
        memmove(&nodes[i], &nodes[i + 1], sizeof(*nodes) * (size_t)(nnodes - i - 1));
        nnodes--;
        vbd_node_co_flush(n);
        vbd_node_unref(n);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* fewer users: only locks that go */
        return 0;
    }
    vbd_error_setf(err, ENOENT, "Failed to find node with node-name='%s'", name);
    return -ENOENT;
}

int vbd_daemon_node_release(const char *name, struct vbd_error **err)
{
    for (int i = 0; i < nnodes; i++) {
        struct vbd_node *n = nodes[i];
        if (strcmp(n->node_name, name))
            continue;
        memmove(&nodes[i], &nodes[i + 1], sizeof(*nodes) * (size_t)(nnodes - i - 1));
        nnodes--;
        n->held_by_users = true;
        if (n->refcnt == 1)
            vbd_node_co_flush(n); /* nothing uses it: it closes now */
        vbd_node_unref(n);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        return 0;
    }
    vbd_error_setf(err, ENOENT, "Failed to find node with node-name='%s'", name);
    return -ENOENT;
}

/* A multi-loop graph (raw over file) runs on every ring's loop already:
 * moving it would change nothing. */
static bool single_loop_below(struct vbd_node *n)
{
    for (; n; n = n->file != n ? n->file : NULL)
        if (!(n->drv->caps & VBD_DRV_CAP_MULTI_LOOP) || (n->backing && single_loop_below(n->backing)))
            return true;
    return false;
}

/* An export whose requests arrive on an iothread takes the graph there if
 * it is its only user, the graph is single-loop and can move (no nbd
 * client node): the graph then runs where the requests arrive. Otherwise
 * it stays, and the requests hop to it (backend.c). */
static void follow_export(struct vbd_daemon_export *ent)
{
    struct vbd_backend *be = export_backend(ent);
    struct vbd_loop *loop = ent->type->request_loop ? ent->type->request_loop(ent->exp) : NULL;
    if (!be || !loop || !vbd_in_co())
        return;
    struct vbd_node *root = vbd_backend_node(be);
    if (!subtree_on(root, vbd_loop_current()) || !single_loop_below(root) || vbd_node_fixed_loop_below(root) ||
        export_touching(root, ent, NULL))
        return;
    struct vbd_error *e = NULL;
    if (co_move(root, loop, &e) == 0)
        ent->moved_to = loop;
    vbd_error_free(e);
}

struct move_call {
    struct vbd_node *n;
    struct vbd_loop *loop;
    struct vbd_error **err;
    int rc;
};

static void move_co(void *arg)
{
    struct move_call *m = arg;
    m->rc = co_move(m->n, m->loop, m->err);
}

/* An export served on its node's loop (vbd_export_type.node_iothread)
 * takes qsd 7.2's iothread and fixed-iothread as blk_exp_add does: the
 * node and everything below it move to the iothread (after the node was
 * found: qsd's order); a move that fails is ignored unless fixed-iothread
 * is true, which also keeps the graph on the loop it ends up on while the
 * export lives (*fixed). Without iothread nothing moves: the export
 * follows its node. */
static int export_iothread(struct json_object *opts, struct vbd_node *target, struct vbd_loop **fixed,
                           struct vbd_error **err)
{
    char *name = NULL;
    bool pin = false;
    if (vbd_opt_take_str(opts, "iothread", &name, err) < 0 ||
        vbd_opt_take_bool(opts, "fixed-iothread", &pin, err) < 0) {
        free(name);
        return -EINVAL;
    }
    int rc = 0;
    if (target && name) {
        struct vbd_loop *loop = vbd_iothread_loop(name);
        if (!loop) {
            vbd_error_setf(err, ENOENT, "iothread \"%s\" not found", name); /* qsd's words */
            rc = -ENOENT;
        } else if (!subtree_on(target, loop)) {
            struct vbd_error *ignored = NULL;
            struct move_call m = {.n = target, .loop = loop, .err = pin ? err : &ignored};
            vbd_co_run_sync(move_co, &m); /* --export on the command line comes outside a coroutine */
            vbd_error_free(ignored);
            rc = pin ? m.rc : 0;
        }
    }
    free(name);
    if (rc == 0 && pin && target)
        *fixed = vbd_node_home_loop(target);
    return rc;
}

/* writable=: a bool from QMP, on/off from the command line (a wrong value
 * is the export's create() to refuse) */
static bool export_writable(struct json_object *opts)
{
    struct json_object *w = vbd_opt_get(opts, "writable");
    bool writable = false;
    if (w && json_object_is_type(w, json_type_boolean))
        writable = json_object_get_boolean(w);
    else if (w && json_object_is_type(w, json_type_string))
        (void)vbd_parse_bool(json_object_get_string(w), &writable);
    return writable;
}

int vbd_daemon_export_add(struct json_object *opts, const char *what, struct vbd_error **err)
{
    MAIN_THREAD_ONLY();
    char *type = NULL;
    struct json_object *idv = vbd_opt_get(opts, "id");
    const char *id = idv && json_object_is_type(idv, json_type_string) ? json_object_get_string(idv) : NULL;
    int rc = vbd_opt_take_str(opts, "type", &type, err);
    const struct vbd_export_type *t = NULL;
    if (rc == 0)
        vbd_error_setf(err, EINVAL, "Parameter 'type' is missing"); /* QAPI's words, as qsd */
    for (const struct vbd_export_type *const *p = vbd_export_types(); rc > 0 && *p; p++)
        if (!strcmp((*p)->type, type))
            t = *p;
    if (rc > 0 && !t)
        vbd_error_setf(err, EINVAL, "Parameter 'type' does not accept value '%s'", type);
    free(type);
    if (!t)
        return -EINVAL;
    if (!id) {
        vbd_error_setf(err, EINVAL, "Parameter 'id' is missing");
        return -EINVAL;
    }
    /* BlockExportOptions' required members in QAPI's order and words, as
     * qsd checks them before it looks at the node or the server */
    if (!vbd_opt_get(opts, "node-name")) {
        vbd_error_setf(err, EINVAL, "Parameter 'node-name' is missing");
        return -EINVAL;
    }
    if (!strcmp(t->type, "vhost-user-blk")) {
        struct json_object *at = vbd_opt_get(opts, "addr.type");
        const char *miss = NULL;
        if (!vbd_opt_get(opts, "addr") && !at && !vbd_opt_get(opts, "addr.path"))
            miss = "addr";
        else if (!at)
            miss = "addr.type";
        else if (!strcmp(json_object_get_string(at), "unix") && !vbd_opt_get(opts, "addr.path"))
            miss = "addr.path";
        if (miss) {
            vbd_error_setf(err, EINVAL, "Parameter '%s' is missing", miss);
            return -EINVAL;
        }
    }
    if (vbd_daemon_export_find(id)) {
        vbd_error_setf(err, EEXIST, "Block export id '%s' is already in use", id);
        return -EEXIST;
    }
    struct json_object *nv = vbd_opt_get(opts, "node-name");
    struct vbd_node *target = nv && json_object_is_type(nv, json_type_string) ? vbd_node_find(json_object_get_string(nv))
                                                                            : NULL;
    struct vbd_loop *fixed = NULL;
    if (t->node_iothread && export_iothread(opts, target, &fixed, err) < 0)
        return -EINVAL;
    /* QEMU's blk_exp_add, before the permissions (a read-write node over
     * a read-only one is refused by those: "Block node is read-only") */
    if (target && export_writable(opts) && target->read_only) {
        vbd_error_setf(err, EACCES, "Cannot export read-only node as writable");
        return -EACCES;
    }
    /* a writable export's write lock, if a parent's going left its node
     * without (another process may have taken the image since) */
    if (target && export_writable(opts) && (rc = vbd_node_refresh_write_use(target, err)) < 0)
        return rc;
    /* the locks of what it will take (block_export_add's BlockBackend:
     * consistent reads, writes if writable; an NBD export shares no
     * resize), before a client can come */
    if (target) {
        unsigned perm = 0x1 | (export_writable(opts) && !target->read_only ? 0x2 : 0);
        unsigned shared = !strcmp(t->type, "nbd") ? 0xf & ~0x8u : 0xf;
        /* QEMU's blk_exp_add attaches the export sharing everything, and
         * nbd_export_create unshares resize after: a conflict of what the
         * export takes is the one reported first */
        struct vbd_qmp_perm_user u = {.node = target, .perm = perm, .shared = 0xf, .user = "an unnamed block device",
                                      .child = "root"};
        if ((rc = vbd_qmp_perm_check(&u, 1, err)) < 0)
            return rc;
        if ((rc = vbd_qmp_image_locks_follow(target, perm, shared, err)) < 0)
            return rc;
    }
    struct vbd_daemon_export *ent = vbd_xcalloc(1, sizeof(*ent));
    ent->id = vbd_xstrdup(id); /* before create() takes "id" out */
    struct vbd_export *e = t->create(opts, err);
    if (e && vbd_opts_check_empty(opts, what, err) < 0) {
        t->shutdown(e);
        t->free(e);
        e = NULL;
    }
    if (!e) {
        free(ent->id);
        free(ent);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* what it was to take goes */
        return -EINVAL;
    }
    ent->type = t;
    ent->exp = e;
    ent->fixed_loop = fixed;
    ent->created = vbd_graph_user_seq();
    struct vbd_daemon_export **tail = &exports;
    while (*tail)
        tail = &(*tail)->next;
    *tail = ent; /* in creation order, as query-block-exports lists them */
    follow_export(ent);
    return 0;
}

struct vbd_daemon_export *vbd_daemon_export_find(const char *id)
{
    MAIN_THREAD_ONLY();
    for (struct vbd_daemon_export *e = exports; e; e = e->next)
        if (!strcmp(e->id, id))
            return e;
    return NULL;
}

struct vbd_daemon_export *vbd_daemon_export_first(void)
{
    MAIN_THREAD_ONLY();
    return exports;
}

struct vbd_node *vbd_daemon_export_node(struct vbd_daemon_export *e)
{
    struct vbd_backend *be = export_backend(e);
    return be ? vbd_backend_node(be) : NULL;
}

void vbd_daemon_export_remove(struct vbd_daemon_export *e)
{
    MAIN_THREAD_ONLY();
    for (struct vbd_daemon_export **p = &exports; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    e->type->shutdown(e->exp);
    /* the graph it took comes back to the main loop unless another export
     * uses it (then it stays where it is: that one's requests hop) */
    struct vbd_backend *be = export_backend(e);
    struct vbd_node *root = be ? vbd_backend_node(be) : NULL;
    if (e->moved_to && root && vbd_in_co() && !export_touching(root, e, NULL)) {
        struct vbd_error *err = NULL;
        if (co_move(root, vbd_loop_current(), &err) < 0) {
            vbd_error_report("%s", err ? err->msg : "could not move a node back to the main loop");
            vbd_error_free(err);
        }
    }
    e->type->free(e->exp);
    free(e->id);
    free(e);
    vbd_qmp_image_locks_follow(NULL, 0, 0, NULL); /* one user fewer: only locks that go */
}

static bool reaches(const struct vbd_node *top, const struct vbd_node *n)
{
    for (; top; top = top->file) {
        if (top == n)
            return true;
        if (top->backing && reaches(top->backing, n))
            return true;
    }
    return false;
}

static struct vbd_backend *export_backend(struct vbd_daemon_export *e)
{
    return e->type->backend ? e->type->backend(e->exp) : NULL;
}

static void drain_add_exports_over(struct vbd_node *node, struct vbd_daemon_drain *d)
{
    for (struct vbd_daemon_export *e = exports; e; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (!be || !reaches(vbd_backend_node(be), node))
            continue;
        bool have = false;
        for (int i = 0; i < d->n && !have; i++)
            have = d->be[i] == be;
        if (!have) {
            d->be = vbd_xrealloc(d->be, sizeof(*d->be) * (size_t)(d->n + 1));
            d->be[d->n++] = be;
        }
    }
}

/* Does job j use node or a node above it (whose requests reach it)? QEMU
 * drains a node's parents, a job's own edge among them (child_job). */
static bool job_touches(struct vbd_job *j, struct vbd_node *node)
{
    for (struct vbd_node *x = vbd_node_next(NULL); x; x = vbd_node_next(x))
        if (j->drv->uses_node && j->drv->uses_node(j, x) && reaches(x, node))
            return true;
    return false;
}

static bool in_set(struct vbd_node *const *v, int cnt, const struct vbd_node *n)
{
    for (int i = 0; i < cnt; i++)
        if (v[i] == n)
            return true;
    return false;
}

static void drain_pause_job(struct vbd_daemon_drain *d, struct vbd_job *j)
{
    for (int k = 0; k < d->njobs; k++)
        if (d->jobs[k] == j)
            return;
    d->jobs = vbd_xrealloc(d->jobs, sizeof(*d->jobs) * (size_t)(d->njobs + 1));
    d->jobs[d->njobs++] = j;
    vbd_job_drain_pause(j, d->quiet);
}

/* The jobs whose drain of node x pauses them, paused (in d) */
static void drain_pause_jobs_over(struct vbd_node *x, struct vbd_daemon_drain *d)
{
    struct vbd_co *self = vbd_co_self();
    for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j))
        if (vbd_job_is_running_copy(j) && j->co != self && job_touches(j, x))
            drain_pause_job(d, j);
}

/* n and every node below it whose driver holds requests back (a throttle
 * node) lets them go for the drained section d, once each (QEMU drains a
 * throttle node over the drained one and its queue goes without limits):
 * else the drain waits for the group's limits, minutes to hours for a few
 * MiB queued under a low bps limit, the QMP command (a reopen, a job's
 * pivot, a snapshot) with it. */
static void drain_release_below(struct vbd_node *n, struct vbd_daemon_drain *d)
{
    for (; n; n = n->file != n ? n->file : NULL) {
        if (n->drv->drain_begin && !in_set(d->held, d->nheld, n)) {
            vbd_node_ref(n);
            d->held = vbd_xrealloc(d->held, sizeof(*d->held) * (size_t)(d->nheld + 1));
            d->held[d->nheld++] = n;
            n->drv->drain_begin(n);
        }
        if (n->backing)
            drain_release_below(n->backing, d);
        char name[64];
        struct vbd_node *c;
        for (int i = 0; n->drv->child_at && (c = n->drv->child_at(n, i, name, sizeof(name))); i++)
            drain_release_below(c, d);
    }
}

/* A drained section of every node of set[] (one, the nodes a move takes
 * along, or all of them) */
static void co_drain_begin_set(struct vbd_node *const *set, int cnt, struct vbd_daemon_drain *d, bool quiet)
{
    *d = (struct vbd_daemon_drain){.quiet = quiet};
    /* The block jobs using the node (or a node above it) pause, as QEMU's
     * drain pauses them: their requests bypass the exports' gates. The
     * exports over every node such a job uses are drained too: a guest
     * write there copies into the job's other nodes (a backup's
     * copy-before-write into its target; QEMU drains the copy-before-write
     * filter as the target's parent). The job the caller runs is left
     * alone (its own drains, in its prepare). */
    /* In QEMU's order (its events show it): the nodes as they were made
     * (the node list is newest first), each pausing the jobs above it that
     * are not paused yet (bdrv_drain_all_begin walks the nodes so) */
    struct vbd_node **all = NULL;
    int nall = 0;
    for (struct vbd_node *x = vbd_node_next(NULL); x; x = vbd_node_next(x)) {
        all = vbd_xrealloc(all, sizeof(*all) * (size_t)(nall + 1));
        all[nall++] = x;
    }
    for (int i = nall - 1; i >= 0; i--)
        if (in_set(set, cnt, all[i]))
            drain_pause_jobs_over(all[i], d);
    free(all);
    for (int i = 0; i < cnt; i++)
        drain_pause_jobs_over(set[i], d);
    for (int i = 0; i < cnt; i++)
        drain_add_exports_over(set[i], d);
    for (int k = 0; k < d->njobs; k++)
        for (struct vbd_node *x = vbd_node_next(NULL); x; x = vbd_node_next(x))
            if (d->jobs[k]->drv->uses_node && d->jobs[k]->drv->uses_node(d->jobs[k], x))
                drain_add_exports_over(x, d);
    /* what the exports and the jobs have in flight must not wait in a
     * throttle group meanwhile */
    for (int i = 0; i < d->n; i++)
        drain_release_below(vbd_backend_node(d->be[i]), d);
    for (int k = 0; k < d->njobs; k++)
        for (struct vbd_node *x = vbd_node_next(NULL); x; x = vbd_node_next(x))
            if (d->jobs[k]->drv->uses_node && d->jobs[k]->drv->uses_node(d->jobs[k], x))
                drain_release_below(x, d);
    /* one after the other: a drained export's requests wait at its gate
     * while the next one's in-flight requests finish */
    for (int i = 0; i < d->n; i++)
        vbd_backend_co_drain_begin(d->be[i]);
    for (int k = 0; k < d->njobs; k++)
        vbd_job_co_drain_wait(d->jobs[k]);
}

static void co_drain_begin(struct vbd_node *node, struct vbd_daemon_drain *d, bool quiet)
{
    co_drain_begin_set(&node, 1, d, quiet);
}

void vbd_daemon_co_drain_begin(struct vbd_node *node, struct vbd_daemon_drain *d)
{
    MAIN_THREAD_ONLY();
    co_drain_begin(node, d, false);
}

void vbd_daemon_co_drain_begin_quiet(struct vbd_node *node, struct vbd_daemon_drain *d)
{
    MAIN_THREAD_ONLY();
    co_drain_begin(node, d, true);
}

void vbd_daemon_co_drain_all(void)
{
    MAIN_THREAD_ONLY();
    struct vbd_node **all = NULL;
    int nall = 0;
    for (struct vbd_node *x = vbd_node_next(NULL); x; x = vbd_node_next(x)) {
        all = vbd_xrealloc(all, sizeof(*all) * (size_t)(nall + 1));
        all[nall++] = x;
    }
    struct vbd_daemon_drain d;
    co_drain_begin_set(all, nall, &d, false);
    vbd_daemon_drain_end(&d);
    free(all);
}

void vbd_daemon_drain_add_job(struct vbd_daemon_drain *d, struct vbd_job *job)
{
    drain_pause_job(d, job);
}

void vbd_daemon_drain_end(struct vbd_daemon_drain *d)
{
    MAIN_THREAD_ONLY();
    /* the oldest job first, as qsd's events show its drains end (QEMU
     * resumes a job when the last node it reaches ends its drain: its own
     * filter node, made with it) */
    for (int a = 1; a < d->njobs; a++)
        for (int b = a; b > 0 && d->jobs[b - 1]->created > d->jobs[b]->created; b--) {
            struct vbd_job *t = d->jobs[b];
            d->jobs[b] = d->jobs[b - 1];
            d->jobs[b - 1] = t;
        }
    /* limits again before the jobs and the exports send requests */
    for (int i = 0; i < d->nheld; i++) {
        d->held[i]->drv->drain_end(d->held[i]);
        vbd_node_unref(d->held[i]);
    }
    for (int k = 0; k < d->njobs; k++)
        vbd_job_drain_resume(d->jobs[k], d->quiet);
    for (int i = 0; i < d->n; i++)
        vbd_backend_drain_end(d->be[i]);
    free(d->held);
    free(d->be);
    free(d->jobs);
    *d = (struct vbd_daemon_drain){0};
}

int vbd_daemon_replace_root(struct vbd_node *old, struct vbd_node *new_root, struct vbd_error **err)
{
    MAIN_THREAD_ONLY();
    int n = 0;
    for (struct vbd_daemon_export *e = exports; e; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (be && vbd_backend_node(be) == old && !vbd_backend_read_only(be) && new_root->read_only) {
            vbd_error_setf(err, EACCES, "Block node '%s' is read-only (export '%s' writes)", new_root->node_name, e->id);
            return -EACCES;
        }
    }
    for (struct vbd_daemon_export *e = exports; e; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (be && vbd_backend_node(be) == old) {
            int rc = vbd_backend_set_root(be, new_root, err);
            assert(rc == 0); /* the only reason it fails was checked above */
            (void)rc;
            n++;
        }
    }
    return n;
}

void vbd_daemon_shutdown_exports(void)
{
    MAIN_THREAD_ONLY();
    /* as qsd's blk_exp_close_all: each export's event once its requests are done */
    for (struct vbd_daemon_export *e = exports; e; e = e->next) {
        e->type->shutdown(e->exp);
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "id", json_object_new_string(e->id));
        vbd_qmp_event("BLOCK_EXPORT_DELETED", d);
    }
}

void vbd_daemon_flush_nodes(void)
{
    MAIN_THREAD_ONLY();
    /* the exports have stopped: every node goes back to the main loop
     * before the iothreads stop (nothing to drain any more), the user's
     * and the overlays and drive-mirror targets their users hold (an
     * export's node: its guest's last writes are there) */
    struct vbd_node **v = NULL;
    int cnt = 0;
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        if (n->held_by_users && vbd_daemon_node_find(n->node_name) != n) {
            v = vbd_xrealloc(v, sizeof(*v) * (size_t)(cnt + 1));
            v[cnt++] = n;
        }
    for (int i = 0; i < nnodes; i++) {
        v = vbd_xrealloc(v, sizeof(*v) * (size_t)(cnt + 1));
        v[cnt++] = nodes[i];
    }
    for (int i = 0; i < cnt; i++) {
        struct vbd_error *e = NULL;
        if (vbd_node_co_set_home(v[i], vbd_loop_current(), &e) < 0) {
            vbd_error_report("%s", e ? e->msg : "could not move a node back to the main loop");
            vbd_error_free(e);
        }
    }
    for (int i = 0; i < cnt; i++)
        vbd_node_co_flush(v[i]);
    free(v);
}

/* ---------- home loops (vbd/block.h, the concurrency contract) ---------- */

/* n and every node below it, once each */
static void collect(struct vbd_node *n, struct vbd_node ***v, int *cnt)
{
    for (; n; n = n->file != n ? n->file : NULL) {
        for (int i = 0; i < *cnt; i++)
            if ((*v)[i] == n)
                return;
        *v = vbd_xrealloc(*v, sizeof(**v) * (size_t)(*cnt + 1));
        (*v)[(*cnt)++] = n;
        collect(n->backing, v, cnt);
    }
}

static bool subtree_on(struct vbd_node *n, struct vbd_loop *loop)
{
    for (; n; n = n->file != n ? n->file : NULL)
        if (vbd_node_home_loop(n) != loop || (n->backing && !subtree_on(n->backing, loop)))
            return false;
    return true;
}

/* An export (other than `except`; only one with fixed-iothread that is
 * not on `unless_fixed_on` if that is given) whose graph shares a node
 * with n's. */
static struct vbd_daemon_export *export_touching(struct vbd_node *n, const struct vbd_daemon_export *except,
                                                 const struct vbd_loop *unless_fixed_on)
{
    struct vbd_node **v = NULL;
    int cnt = 0;
    collect(n, &v, &cnt);
    struct vbd_daemon_export *found = NULL;
    for (struct vbd_daemon_export *e = exports; e && !found; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (e == except || !be || (unless_fixed_on && (!e->fixed_loop || e->fixed_loop == unless_fixed_on)))
            continue;
        for (int i = 0; i < cnt && !found; i++)
            if (reaches(vbd_backend_node(be), v[i]))
                found = e;
    }
    free(v);
    return found;
}

bool vbd_daemon_node_pinned(struct vbd_node *n, struct vbd_loop *loop)
{
    MAIN_THREAD_ONLY();
    return !subtree_on(n, loop) && export_touching(n, NULL, loop);
}

/* The nodes a move of n takes along: n and every node below it, and for
 * each block job using one of them, every node the job uses and the nodes
 * below those, until no job adds one (QEMU moves a job's nodes together:
 * child_job's change of AioContext visits the job's other nodes). roots:
 * n first, then the job's nodes that were not below it yet (each moved
 * with the nodes below it). */
static void collect_with_jobs(struct vbd_node *n, struct vbd_node ***roots, int *nroots, struct vbd_node ***v,
                              int *cnt)
{
    *roots = vbd_xrealloc(NULL, sizeof(**roots));
    (*roots)[0] = n;
    *nroots = 1;
    collect(n, v, cnt);
    for (bool added = true; added;) {
        added = false;
        for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j)) {
            if (!j->drv->uses_node)
                continue;
            bool uses = false;
            for (int i = 0; i < *cnt && !uses; i++)
                uses = j->drv->uses_node(j, (*v)[i]);
            for (struct vbd_node *x = vbd_node_next(NULL); uses && x; x = vbd_node_next(x)) {
                if (in_set(*v, *cnt, x) || !j->drv->uses_node(j, x))
                    continue;
                *roots = vbd_xrealloc(*roots, sizeof(**roots) * (size_t)(*nroots + 1));
                (*roots)[(*nroots)++] = x;
                collect(x, v, cnt);
                added = true;
            }
        }
    }
}

static int co_move(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err)
{
    struct vbd_node **roots = NULL, **v = NULL;
    int nroots = 0, cnt = 0, rc = 0;
    collect_with_jobs(n, &roots, &nroots, &v, &cnt);
    bool there = true; /* nothing to do (QEMU's move to the same context: no drain) */
    for (int i = 0; i < nroots; i++)
        there = there && subtree_on(roots[i], loop);
    /* all or nothing: every node that goes is checked before one moves.
     * An export with fixed-iothread keeps its graph where it is, and so
     * does a job whose own BlockBackends stay (qsd's BlockBackend without
     * allow_aio_context_change, and its words). QEMU finds those while it
     * walks the graph, draining every node whose subgraph it has been
     * through: one over n is found before anything is drained, one over a
     * job's other node after n's side was (the job's paused and running
     * events come before the refusal). */
    bool refuse_drained = false;
    for (struct vbd_job *j = vbd_job_next(NULL); j && !there && rc == 0; j = vbd_job_next(j))
        for (int i = 0; i < cnt && rc == 0; i++)
            if (j->drv->nodes_stay && !j->drv->plain && vbd_job_is_running_copy(j) && j->drv->uses_node &&
                j->drv->uses_node(j, v[i])) {
                vbd_error_setf(err, EBUSY, "Cannot change iothread of active block backend");
                rc = -EBUSY;
            }
    for (int i = 0; i < nroots && rc == 0 && !there; i++) {
        struct vbd_node *fixed = vbd_node_fixed_loop_below(roots[i]);
        if (vbd_daemon_node_pinned(roots[i], loop)) {
            vbd_error_setf(err, EBUSY, "Cannot change iothread of active block backend");
            rc = -EBUSY;
            refuse_drained = i > 0;
        } else if (fixed && vbd_node_home_loop(fixed) != loop) {
            vbd_error_setf(err, ENOTSUP,
                           "Node '%s' cannot change its event loop: node '%s' (driver %s) is bound to the loop it was "
                           "opened on",
                           roots[i]->node_name, fixed->node_name, fixed->drv->name);
            rc = -ENOTSUP;
        }
    }
    if (refuse_drained) {
        struct vbd_daemon_drain d;
        co_drain_begin_set(v, cnt, &d, false);
        vbd_daemon_drain_end(&d);
    }
    if (rc < 0 || there) {
        free(roots);
        free(v);
        return rc;
    }
    /* The exports served on the nodes' loop, told after the move */
    struct vbd_daemon_export **over = NULL;
    int nover = 0;
    for (struct vbd_daemon_export *e = exports; e; e = e->next) {
        struct vbd_backend *b = export_backend(e);
        for (int i = 0; b && i < cnt; i++)
            if (reaches(vbd_backend_node(b), v[i])) {
                over = vbd_xrealloc(over, sizeof(*over) * (size_t)(nover + 1));
                over[nover++] = e;
                break;
            }
    }
    /* Nothing may enter the nodes while they move, as QEMU drains them for
     * a change of AioContext: every export over any of them drained, and
     * the block jobs using them paused at a pause point with nothing in
     * flight (JOB_STATUS_CHANGE paused and back, as qsd's): a job request
     * that had looked up a node's loop and gone there would otherwise run
     * the driver on the old loop beside requests on the new one. The jobs
     * go on where their nodes are now (io.c looks the loop up per request). */
    struct vbd_daemon_drain d;
    co_drain_begin_set(v, cnt, &d, false);
    for (int i = 0; i < nroots && rc == 0; i++)
        rc = vbd_node_co_set_home(roots[i], loop, err);
    assert(rc == 0); /* checked above */
    vbd_daemon_drain_end(&d);
    /* exports served on their node's loop follow it before the reply (qsd
     * moves them in its drained section; ours wait for their requests in
     * flight, which need the drain ended) */
    for (int i = 0; rc == 0 && i < nover; i++)
        if (over[i]->type->node_moved)
            over[i]->type->node_moved(over[i]->exp);
    free(over);
    free(roots);
    free(v);
    return rc;
}

int vbd_daemon_co_move_node(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err)
{
    MAIN_THREAD_ONLY();
    return co_move(n, loop ? loop : vbd_loop_current(), err);
}

void vbd_daemon_co_join_source_loop(struct vbd_node *target, struct vbd_node *source)
{
    MAIN_THREAD_ONLY();
    struct vbd_loop *home = vbd_node_home_loop(source);
    if (vbd_node_home_loop(target) == home && subtree_on(target, home))
        return;
    struct vbd_error *e = NULL;
    if (co_move(target, home, &e) < 0)
        vbd_log(VBD_LOG_DEBUG, "node '%s' stays on its thread: %s", target->node_name, e ? e->msg : "");
    vbd_error_free(e);
}

void vbd_daemon_free_all(void)
{
    MAIN_THREAD_ONLY();
    for (struct vbd_daemon_export *e = exports, *n; e; e = n) {
        n = e->next;
        e->type->free(e->exp);
        free(e->id);
        free(e);
    }
    exports = NULL;
    for (int i = nnodes - 1; i >= 0; i--)
        vbd_node_unref(nodes[i]);
    free(nodes);
    nodes = NULL;
    nnodes = 0;
}
