/* SPDX-License-Identifier: MIT */
/*
 * x-debug-query-block-graph (QEMU 7.2's bdrv_get_xdbg_block_graph): the
 * block graph as nodes and edges, for a user debugging it. Nodes: the
 * exports' backends ("block-backend", named "" as qsd's anonymous ones),
 * the block jobs ("block-job", their id) and every node ("block-driver",
 * its node-name). Edges: parent -> child with the child's name ("root",
 * "file", "backing", "children.N", a job's "main node", ...) and the
 * permissions the parent takes on the child and shares with other users.
 *
 * The permissions are derived here as QEMU derives them (block.c's
 * bdrv_default_perms by the child's role, and the few drivers with their
 * own child_perm), from what the exports and jobs take, down through the
 * graph, so that a user sees what qsd takes on a graph of the same shape.
 * The drivers with their own rule are picked by name in rule_of(): a
 * debugging command's table, in one place, rather than a hook in every
 * driver for it. Ids are numbered as QEMU numbers them: by first mention,
 * the backends first (with their roots), then the jobs (with theirs), then
 * the nodes in creation order; each list is built newest first, as QEMU's.
 *
 * The same derivation gives the daemon's file nodes their image locks
 * (vbd_qmp_image_locks_follow): each one's cumulative permissions, as
 * QEMU's file-posix locks them, whenever the users of the graph change;
 * and before a change that adds a user, QEMU's check of every node's
 * users against each other (users_conflict), which the OS locks cannot
 * make: one open file description holds all of a file node's users.
 */
#include "qmp/commands.h"

#include "daemon/objects.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/cbw.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/job.h"
#include "vbd/loop.h"
#include "vbd/qmp.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* BLK_PERM_*, in QAPI's BlockPermission order */
#define PERM_READ 0x1u
#define PERM_WRITE 0x2u
#define PERM_WRITE_UNCHANGED 0x4u
#define PERM_RESIZE 0x8u
#define PERM_ALL 0xfu
#define PERM_PASSTHROUGH PERM_ALL /* QEMU's DEFAULT_PERM_PASSTHROUGH: every permission (7.2 has four) */
static const char *const perm_names[] = {"consistent-read", "write", "write-unchanged", "resize"};

/* How a parent derives what it takes on a child from what its own parents take. */
enum rule {
    RULE_FIXED,        /* what the parent says (backends, jobs, cbw's target) */
    RULE_FILTER,       /* BDRV_CHILD_FILTERED: passed through */
    RULE_COW,          /* a backing file */
    RULE_IMAGE,        /* a format's file: BDRV_CHILD_METADATA | BDRV_CHILD_DATA */
    RULE_RAW_FILTER,   /* raw without offset/size (a filter), raw_child_perm */
    RULE_RAW_DATA,     /* raw with offset or size: BDRV_CHILD_DATA, raw_child_perm */
    RULE_COR,          /* copy-on-read's cor_child_perm */
    RULE_QUORUM,       /* quorum_child_perm */
    RULE_CBW_SOURCE,   /* copy-before-write's file: cbw_child_perm */
    RULE_NONE_ALL,     /* takes nothing, shares everything (commit_top, snapshot-access) */
    RULE_COMMIT_MIRROR_TOP, /* an active commit's mirror_top: no consistent read, writes shared */
};

struct gedge {
    const void *parent, *child;
    char name[40];
    enum rule rule;
    bool parent_writable; /* the parent node is read-write (bdrv_is_writable_after_reopen) */
    bool rewrite;         /* quorum's rewrite-corrupted */
    bool child_force_share; /* a node parent's child opened with force-share: it shares everything */
    bool node_parent;     /* the parent is a node (not an export, a job or a user about to come) */
    unsigned perm, shared;
    char user[160];       /* the parent, as QEMU's bdrv_child_user_desc names it */
};

struct graph {
    const void **ids; /* ids[i] has id i + 1 */
    size_t nids, cap_ids;
    struct gedge *edges;
    size_t nedges, cap_edges;
    struct json_object *nodes; /* built in order; reversed at the end */
    const void *job;           /* the job whose edges are being added */
    size_t job_backends;       /* how many backends that job has shown */
};

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap * 2 : 32;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * size);
    if (!q)
        abort(); /* a debugging command's few dozen entries */
    *cap = c;
    return q;
}

static int id_of(struct graph *g, const void *p)
{
    for (size_t i = 0; i < g->nids; i++)
        if (g->ids[i] == p)
            return (int)i + 1;
    g->ids = grow(g->ids, &g->cap_ids, g->nids + 1, sizeof(*g->ids));
    g->ids[g->nids++] = p;
    return (int)g->nids;
}

static void add_node(struct graph *g, const void *p, const char *type, const char *name)
{
    if (!g->nodes) { /* the permissions only (vbd_qmp_image_locks_follow) */
        id_of(g, p);
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int(id_of(g, p)));
    json_object_object_add(o, "type", json_object_new_string(type));
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_array_add(g->nodes, o);
}

static struct gedge *add_edge(struct graph *g, const void *parent, const void *child, const char *name, enum rule r)
{
    id_of(g, parent);
    id_of(g, child);
    g->edges = grow(g->edges, &g->cap_edges, g->nedges + 1, sizeof(*g->edges));
    struct gedge *e = &g->edges[g->nedges++];
    memset(e, 0, sizeof(*e));
    e->parent = parent;
    e->child = child;
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->rule = r;
    return e;
}

static void job_edge(void *opaque, struct vbd_node *parent, const char *name, struct vbd_node *child, unsigned perm,
                     unsigned shared)
{
    struct graph *g = opaque;
    struct gedge *e = add_edge(g, parent ? (const void *)parent : g->job, child, name, RULE_FIXED);
    e->perm = perm;
    e->shared = shared;
    const struct vbd_job *j = g->job;
    if (parent)
        snprintf(e->user, sizeof(e->user), "node '%s'", parent->node_name);
    else /* QEMU's child_job_get_parent_desc */
        snprintf(e->user, sizeof(e->user), "%s job '%s'", j->drv->type, j->id);
}

/* A job's own backend (mirror's on its target, commit's two): a node of
 * its own, named "" as QEMU's anonymous ones, keyed by an address inside
 * the job's progress counters (one byte further for each further backend
 * of the job: addresses no other node has). */
static void job_backend(void *opaque, struct vbd_node *parent, const char *name, struct vbd_node *child, unsigned perm,
                        unsigned shared)
{
    struct graph *g = opaque;
    (void)parent;
    const void *key = (const char *)g->job + g->job_backends++;
    add_node(g, key, "block-backend", "");
    struct gedge *e = add_edge(g, key, child, name, RULE_FIXED);
    e->perm = perm;
    e->shared = shared;
    snprintf(e->user, sizeof(e->user), "an unnamed block device");
}

static bool has_option(const struct vbd_node *n, const char *key)
{
    return n->options && json_object_object_get_ex(n->options, key, NULL);
}

/* The rule of n's "file" child and the child's name. */
static enum rule rule_of(const struct vbd_node *n, const char **name)
{
    const char *d = n->drv->name;
    *name = "file";
    if (!strcmp(d, "raw"))
        return has_option(n, "offset") || has_option(n, "size") ? RULE_RAW_DATA : RULE_RAW_FILTER;
    if (!strcmp(d, "copy-on-read"))
        return RULE_COR;
    if (!strcmp(d, "copy-before-write"))
        return RULE_CBW_SOURCE;
    if (!strcmp(d, "snapshot-access"))
        return RULE_NONE_ALL;
    if (!strcmp(d, "commit_top") || !strcmp(d, "mirror_top")) {
        *name = "backing"; /* QEMU appends them above the node as its backing child */
        /* mirror_top passes through what its parents take (the job's
         * consistent reads, a writer's writes), as qsd 7.2 shows it */
        return d[0] == 'c' ? RULE_NONE_ALL : RULE_FILTER;
    }
    if (!strcmp(d, "blkdebug"))
        *name = "image";
    return n->drv->kind == VBD_DRV_FILTER ? RULE_FILTER : RULE_IMAGE;
}

/* Is n the "main node" of a commit job (an active commit's mirror_top)?
 * The jobs' edges come before the nodes' and name the job as parent. */
static bool commit_main_node(const struct graph *g, const struct vbd_node *n)
{
    for (size_t i = 0; i < g->nedges; i++)
        if (g->edges[i].child == n && !strcmp(g->edges[i].name, "main node") &&
            !strcmp(((const struct vbd_job *)g->edges[i].parent)->drv->type, "commit"))
            return true;
    return false;
}

/* An edge from node n to its child c: named as QEMU names a node parent;
 * a child opened with force-share shares everything with its node parents
 * (QEMU's bdrv_child_perm), a backend's own sharing stays as it is. */
static struct gedge *add_node_edge(struct graph *g, struct vbd_node *n, struct vbd_node *c, const char *name,
                                   enum rule r)
{
    struct gedge *e = add_edge(g, n, c, name, r);
    snprintf(e->user, sizeof(e->user), "node '%s'", n->node_name);
    e->child_force_share = (c->open_flags & VBD_OPEN_FORCE_SHARE) != 0;
    e->node_parent = true;
    return e;
}

/* A node's children, newest first as QEMU's bs->children (the file is
 * attached at open, the backing after it, quorum's children in order). */
static void node_edges(struct graph *g, struct vbd_node *n)
{
    bool writable = !n->read_only;
    if (n->backing && !n->backing_at_job_end) {
        struct gedge *e = add_node_edge(g, n, n->backing, "backing", RULE_COW);
        e->parent_writable = writable;
    }
    struct vbd_node *target = vbd_cbw_node_target(n);
    if (target) {
        struct gedge *e = add_node_edge(g, n, target, "target", RULE_FIXED);
        e->perm = PERM_WRITE; /* cbw_child_perm: the target is written, never resized */
        e->shared = PERM_ALL & ~PERM_RESIZE;
    }
    if (n->drv->child_at) {
        char name[32];
        int count = 0;
        while (n->drv->child_at(n, count, name, sizeof(name)))
            count++;
        struct json_object *v;
        bool rewrite = n->options && json_object_object_get_ex(n->options, "rewrite-corrupted", &v) &&
                       json_object_get_boolean(v);
        for (int i = count - 1; i >= 0; i--) {
            struct vbd_node *c = n->drv->child_at(n, i, name, sizeof(name));
            struct gedge *e = add_node_edge(g, n, c, name, RULE_QUORUM);
            e->rewrite = rewrite;
        }
    }
    if (n->file && n->file != n) {
        const char *name;
        enum rule r = rule_of(n, &name);
        if (r == RULE_FILTER && !strcmp(n->drv->name, "mirror_top") && commit_main_node(g, n))
            r = RULE_COMMIT_MIRROR_TOP;
        struct gedge *e = add_node_edge(g, n, n->file, name, r);
        e->parent_writable = writable;
    }
}

/* What the parents of p take (OR) and share (AND), QEMU's bdrv_get_cumulative_perm. */
static void cumulative(const struct graph *g, const void *p, unsigned *perm, unsigned *shared, bool *has_parents)
{
    *perm = 0;
    *shared = PERM_ALL;
    *has_parents = false;
    for (size_t i = 0; i < g->nedges; i++)
        if (g->edges[i].child == p) {
            *perm |= g->edges[i].perm;
            *shared &= g->edges[i].shared;
            *has_parents = true;
        }
}

static void filter_perms(unsigned perm, unsigned shared, unsigned *np, unsigned *ns)
{
    *np = perm & PERM_PASSTHROUGH;
    *ns = (shared & PERM_PASSTHROUGH) | (PERM_ALL & ~PERM_PASSTHROUGH);
}

/* bdrv_default_perms_for_storage */
static void storage_perms(bool metadata, bool writable, unsigned perm, unsigned shared, unsigned *np, unsigned *ns)
{
    filter_perms(perm, shared, &perm, &shared);
    if (metadata) {
        if (writable)
            perm |= PERM_WRITE | PERM_RESIZE; /* a format writes its metadata even if nobody writes data */
        perm |= PERM_READ;
        shared &= ~(PERM_WRITE | PERM_RESIZE);
    }
    shared &= ~PERM_RESIZE;
    if (perm & PERM_WRITE_UNCHANGED)
        perm |= PERM_WRITE;
    if (perm & PERM_WRITE)
        perm |= PERM_RESIZE;
    *np = perm;
    *ns = shared;
}

static void derive_rule(const struct graph *g, struct gedge *e, unsigned *np, unsigned *ns)
{
    unsigned perm, shared;
    bool has_parents;
    cumulative(g, e->parent, &perm, &shared, &has_parents);
    *np = e->perm; /* a rule below that sets nothing keeps the edge as it is */
    *ns = e->shared;
    switch (e->rule) {
    case RULE_FIXED:
        *np = e->perm;
        *ns = e->shared;
        return;
    case RULE_FILTER:
        filter_perms(perm, shared, np, ns);
        return;
    case RULE_COMMIT_MIRROR_TOP:
        /* bdrv_mirror_top_child_perm with is_commit: everything above the
         * base unshares consistent reads, and the base's writes must pass */
        filter_perms(perm, shared, np, ns);
        *np &= ~PERM_READ;
        *ns |= PERM_WRITE;
        return;
    case RULE_COW:
        *np = perm & PERM_READ;
        *ns = (shared & PERM_WRITE ? PERM_WRITE | PERM_RESIZE : 0) | PERM_READ | PERM_WRITE_UNCHANGED;
        return;
    case RULE_IMAGE:
        storage_perms(true, e->parent_writable, perm, shared, np, ns);
        return;
    case RULE_RAW_FILTER:
    case RULE_RAW_DATA:
        if (e->rule == RULE_RAW_DATA)
            storage_perms(false, e->parent_writable, perm, shared, np, ns);
        else
            filter_perms(perm, shared, np, ns);
        *np = (*np & ~(PERM_WRITE | PERM_RESIZE)) | (perm & (PERM_WRITE | PERM_RESIZE));
        return;
    case RULE_COR: {
        const unsigned pass = PERM_READ | PERM_WRITE | PERM_RESIZE;
        *np = (perm & pass) | PERM_WRITE_UNCHANGED; /* it writes what it copies */
        *ns = (shared & pass) | (PERM_ALL & ~pass);
        return;
    }
    case RULE_QUORUM:
        *np = (perm & PERM_PASSTHROUGH) | (e->rewrite ? PERM_WRITE : 0);
        /* neither writes nor resizes shared: the children would differ */
        *ns = (shared & (PERM_READ | PERM_WRITE_UNCHANGED)) | (PERM_ALL & ~PERM_PASSTHROUGH);
        return;
    case RULE_CBW_SOURCE:
        filter_perms(perm, shared, np, ns);
        if (has_parents) {
            if (perm & PERM_WRITE)
                *np |= PERM_READ; /* old data is read before a write */
            *ns &= ~(PERM_WRITE | PERM_RESIZE);
        }
        return;
    case RULE_NONE_ALL:
        *np = 0;
        *ns = PERM_ALL;
        return;
    }
}

static void derive(const struct graph *g, struct gedge *e, unsigned *np, unsigned *ns)
{
    derive_rule(g, e, np, ns);
    if (e->child_force_share)
        *ns = PERM_ALL;
}

static struct json_object *perm_list(unsigned p)
{
    struct json_object *a = json_object_new_array();
    for (int i = 3; i >= 0; i--) /* QEMU prepends them: the last first */
        if (p & (1u << i))
            json_object_array_add(a, json_object_new_string(perm_names[i]));
    return a;
}

static struct json_object *reversed(struct json_object *a)
{
    struct json_object *r = json_object_new_array();
    for (size_t i = json_object_array_length(a); i-- > 0;)
        json_object_array_add(r, json_object_get(json_object_array_get_idx(a, i)));
    json_object_put(a);
    return r;
}

/* The graph as QEMU would have it: the backends, the jobs and every node,
 * with their edges (the permissions not yet derived). */
static void graph_build(struct graph *g)
{
    /* the backends, each with its root: the exports' and the jobs' own,
     * in the order they were made (QEMU's list of BlockBackends) */
    struct vbd_daemon_export *x = vbd_daemon_export_first();
    struct vbd_job *bj = vbd_job_next(NULL);
    for (;;) {
        while (bj && (bj->drv->plain || bj->status == VBD_JOB_NULL || !bj->drv->graph_backends))
            bj = vbd_job_next(bj);
        if (!x && !bj)
            break;
        if (bj && (!x || bj->created < x->created)) {
            g->job = &bj->ctl;
            g->job_backends = 0;
            bj->drv->graph_backends(bj, job_backend, g);
            bj = vbd_job_next(bj);
            continue;
        }
        struct vbd_backend *be = x->type->backend ? x->type->backend(x->exp) : NULL;
        struct vbd_node *root = be ? vbd_backend_node(be) : NULL;
        add_node(g, x, "block-backend", "");
        if (root) {
            struct gedge *e = add_edge(g, x, root, "root", RULE_FIXED);
            snprintf(e->user, sizeof(e->user), "an unnamed block device"); /* qsd's exports' are anonymous */
            /* block_export_add: consistent reads, writes if writable, everything shared */
            e->perm = PERM_READ | (vbd_backend_read_only(be) ? 0 : PERM_WRITE);
            e->shared = PERM_ALL;
            if (!strcmp(x->type->type, "nbd"))
                e->shared &= ~PERM_RESIZE; /* nbd_export_create: no resize while it is exported */
        }
        x = x->next;
    }
    /* the block jobs, each with the nodes it holds */
    for (struct vbd_job *j = vbd_job_next(NULL); j; j = vbd_job_next(j)) {
        if (j->drv->plain || j->status == VBD_JOB_NULL)
            continue;
        add_node(g, j, "block-job", j->id);
        g->job = j;
        if (j->drv->graph_edges)
            j->drv->graph_edges(j, job_edge, g);
    }
    /* every node, in creation order (the list keeps the newest first) */
    size_t count = 0;
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        count++;
    struct vbd_node **all = calloc(count ? count : 1, sizeof(*all));
    if (!all)
        abort();
    size_t i = count;
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        all[--i] = n;
    /* QEMU opens a node's file given inline before it names the node (vbd
     * names the node first, then its open opens the file): such a file,
     * made after its parent, goes right before it, as in QEMU's list */
    for (i = 0; i < count; i++) {
        struct vbd_node *f = all[i]->file;
        size_t k = i + 1;
        while (f && f != all[i] && k < count && all[k] != f)
            k++;
        if (!f || k >= count)
            continue;
        memmove(&all[i + 1], &all[i], (k - i) * sizeof(*all));
        all[i] = f;
        i--; /* the parent moved one up: look at the moved file's own file next */
    }
    for (i = 0; i < count; i++) {
        add_node(g, all[i], "block-driver", all[i]->node_name);
        node_edges(g, all[i]);
    }
    free(all);
}

/* Does node n reach node m through the edges of g (its children, and the
 * edges a job or a user about to come gives it)? */
static bool reaches(const struct graph *g, const void *n, const void *m, size_t depth)
{
    if (n == m)
        return true;
    if (depth > g->nedges)
        return false; /* a cycle: nothing below it to find */
    for (size_t i = 0; i < g->nedges; i++)
        if (g->edges[i].parent == n && reaches(g, g->edges[i].child, m, depth + 1))
            return true;
    return false;
}

/* A backup's copy-before-write node over its source takes the source's
 * node parents, as QEMU's bdrv_replace_node gives them to it (a format
 * over the source now writes through it: vbd's write hook on the source
 * sees its writes too), except a parent the filter reaches itself (a
 * fleecing target whose backing is the source: QEMU's should_update_child
 * keeps that edge where it is, else the graph would be a cycle). */
static void graph_filters_take_parents(struct graph *g)
{
    for (size_t k = 0; k < g->nedges; k++) {
        if (g->edges[k].rule != RULE_CBW_SOURCE)
            continue;
        const void *filter = g->edges[k].parent, *source = g->edges[k].child;
        for (size_t i = 0; i < g->nedges; i++) {
            struct gedge *e = &g->edges[i];
            if (e->child == source && e->node_parent && e->parent != filter && !reaches(g, filter, e->parent, 0))
                e->child = filter;
        }
    }
}

/* the permissions, from the top down: a DAG settles within as many rounds as it has edges */
static void graph_derive(struct graph *g)
{
    for (size_t round = 0; round <= g->nedges; round++) {
        bool changed = false;
        for (size_t k = 0; k < g->nedges; k++) {
            unsigned p, s;
            derive(g, &g->edges[k], &p, &s);
            if (p != g->edges[k].perm || s != g->edges[k].shared) {
                g->edges[k].perm = p;
                g->edges[k].shared = s;
                changed = true;
            }
        }
        if (!changed)
            break;
    }
}

static struct json_object *x_debug_query_block_graph(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args;
    (void)err;
    struct graph g = {.nodes = json_object_new_array()};
    graph_build(&g);
    graph_filters_take_parents(&g);
    graph_derive(&g);
    struct json_object *edges = json_object_new_array();
    for (size_t k = g.nedges; k-- > 0;) {
        struct gedge *e = &g.edges[k];
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "parent", json_object_new_int(id_of(&g, e->parent)));
        json_object_object_add(o, "child", json_object_new_int(id_of(&g, e->child)));
        json_object_object_add(o, "name", json_object_new_string(e->name));
        json_object_object_add(o, "perm", perm_list(e->perm));
        json_object_object_add(o, "shared-perm", perm_list(e->shared));
        json_object_array_add(edges, o);
    }
    struct json_object *r = json_object_new_object();
    json_object_object_add(r, "nodes", reversed(g.nodes));
    json_object_object_add(r, "edges", edges);
    free(g.ids);
    free(g.edges);
    return r;
}

/* ---------- the image locks those permissions take ---------- */

struct lock_change {
    struct vbd_node *n;
    unsigned old_perm, old_shared; /* held before */
    unsigned perm, shared;         /* the users' now */
};

/* Only what both the old and the new set allow: never a new conflict */
static void lock_change_between(const struct lock_change *c, unsigned *perm, unsigned *shared)
{
    *perm = c->old_perm & c->perm;
    *shared = c->old_shared | c->shared;
}

/* QEMU's bdrv_perm_names */
static void perm_text(unsigned p, char *buf, size_t size)
{
    static const char *const names[] = {"consistent read", "write", "write unchanged", "resize"};
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < 4; i++)
        if (p & (1u << i))
            len += (size_t)snprintf(buf + len, len < size ? size - len : 0, "%s%s", len ? ", " : "", names[i]);
}

/* QEMU's bdrv_parent_perms_conflict on every node: each user's permissions
 * against what every other user of the node shares (bdrv_a_allow_b, both
 * ways round), so that no user gets what another refuses to share (two
 * writers where one shares no write: a mirror's target an export writes,
 * a format over a file node a job writes). The users are looked at newest
 * first, as QEMU's list of a node's parents. */
static int users_conflict(const struct graph *g, struct vbd_error **err)
{
    for (size_t i = g->nedges; i-- > 0;) {
        const struct gedge *a = &g->edges[i];
        for (size_t k = g->nedges; k-- > 0;) {
            const struct gedge *b = &g->edges[k];
            unsigned clash = b->perm & ~a->shared & PERM_ALL;
            if (k == i || b->child != a->child || !clash)
                continue;
            const char *node = ((const struct vbd_node *)a->child)->node_name;
            char perms[80];
            perm_text(clash, perms, sizeof(perms));
            vbd_error_setf(err, EPERM,
                           "Permission conflict on node '%s': permissions '%s' are both required by %s (uses node "
                           "'%s' as '%s' child) and unshared by %s (uses node '%s' as '%s' child).",
                           node, perms, b->user, node, b->name, a->user, node, a->name);
            return -EPERM;
        }
    }
    /* QEMU's bdrv_node_refresh_perm: no write through a read-only node
     * (a raw or filter node opens read-write over one: its writers are
     * refused as they come, an export, a job's target, a format above) */
    for (size_t i = g->nedges; i-- > 0;) {
        const struct gedge *a = &g->edges[i];
        if ((a->perm & (PERM_WRITE | PERM_WRITE_UNCHANGED)) && ((const struct vbd_node *)a->child)->read_only) {
            vbd_error_setf(err, EPERM, "Block node is read-only");
            return -EPERM;
        }
    }
    return 0;
}

/* The graph as it is plus the users about to come (extra[0..nextra)),
 * its permissions derived; check: first QEMU's check of every node's
 * users against each other (users_conflict), 0 or -EPERM with err set
 * (the graph freed). */
static int graph_with(struct graph *g, const struct vbd_qmp_perm_user *extra, size_t nextra, bool check,
                      struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the graph, the exports and the jobs are the main loop's */
    graph_build(g);
    for (size_t i = 0; i < nextra; i++) {
        /* keyed by the entry's own address (no node, export or job has
         * it) unless a node is its parent */
        const void *key = extra[i].parent ? (const void *)extra[i].parent : (const void *)&extra[i];
        struct gedge *e = add_edge(g, key, extra[i].node, extra[i].child, RULE_FIXED);
        e->perm = extra[i].perm;
        e->shared = extra[i].shared;
        if (extra[i].parent)
            snprintf(e->user, sizeof(e->user), "node '%s'", extra[i].parent->node_name);
        else
            snprintf(e->user, sizeof(e->user), "%s", extra[i].user);
        e->node_parent = extra[i].parent != NULL;
    }
    graph_filters_take_parents(g);
    graph_derive(g);
    if (check && users_conflict(g, err) < 0) {
        free(g->ids);
        free(g->edges);
        return -EPERM;
    }
    return 0;
}

int vbd_qmp_perm_check(const struct vbd_qmp_perm_user *extra, size_t nextra, struct vbd_error **err)
{
    struct graph g = {0};
    if (graph_with(&g, extra, nextra, true, err) < 0)
        return -EPERM;
    free(g.ids);
    free(g.edges);
    return 0;
}

/* check: refuse a conflict between two users of one node (users_conflict)
 * before any lock changes */
static int locks_follow_users(const struct vbd_qmp_perm_user *extra, size_t nextra, bool check,
                              struct vbd_error **err)
{
    struct graph g = {0};
    if (graph_with(&g, extra, nextra, check, err) < 0)
        return -EPERM;
    size_t count = 0, n = 0;
    for (struct vbd_node *m = vbd_node_next(NULL); m; m = vbd_node_next(m))
        count++;
    struct lock_change *ch = calloc(count ? count : 1, sizeof(*ch));
    if (!ch)
        abort(); /* a few dozen entries */
    for (struct vbd_node *m = vbd_node_next(NULL); m; m = vbd_node_next(m)) {
        struct lock_change *c = &ch[n];
        bool has_parents;
        if (!vbd_file_lock_perm(m, &c->old_perm, &c->old_shared))
            continue;
        c->n = m;
        cumulative(&g, m, &c->perm, &c->shared, &has_parents);
        if (c->perm != c->old_perm || c->shared != c->old_shared)
            n++;
    }
    free(g.ids);
    free(g.edges);
    /* first every lock that goes (cannot fail), then the ones taken: a
     * lock one of our nodes gives up is not seen as another's conflict */
    unsigned p, s;
    for (size_t i = 0; i < n; i++) {
        lock_change_between(&ch[i], &p, &s);
        vbd_file_set_lock_perm(ch[i].n, p, s, NULL);
    }
    int rc = 0;
    size_t done;
    for (done = 0; done < n && rc == 0; done++)
        rc = vbd_file_set_lock_perm(ch[done].n, ch[done].perm, ch[done].shared, err);
    if (rc < 0) {
        /* as it was: the new ones go, then the old ones back (best
         * effort: another process may have taken what they exclude) */
        for (size_t i = 0; i + 1 < done; i++) {
            lock_change_between(&ch[i], &p, &s);
            vbd_file_set_lock_perm(ch[i].n, p, s, NULL);
        }
        for (size_t i = 0; i < n; i++)
            vbd_file_set_lock_perm(ch[i].n, ch[i].old_perm, ch[i].old_shared, NULL);
    }
    free(ch);
    return rc;
}

static int locks_follow(struct vbd_node *extra, unsigned perm, unsigned shared, const char *user, const char *child,
                        bool check, struct vbd_error **err)
{
    struct vbd_qmp_perm_user u = {.node = extra, .perm = perm, .shared = shared, .user = user, .child = child};
    return locks_follow_users(&u, extra ? 1 : 0, check, err);
}

int vbd_qmp_image_locks_follow_users(const struct vbd_qmp_perm_user *extra, size_t nextra, struct vbd_error **err)
{
    return locks_follow_users(extra, nextra, err != NULL, err);
}

int vbd_qmp_image_locks_follow(struct vbd_node *extra, unsigned perm, unsigned shared, struct vbd_error **err)
{
    /* an export's or a job's backend */
    return locks_follow(extra, perm, shared, "an unnamed block device", "root", err != NULL, err);
}

int vbd_qmp_image_locks_follow_as(struct vbd_node *extra, unsigned perm, unsigned shared, const char *user,
                                  const char *child, struct vbd_error **err)
{
    return locks_follow(extra, perm, shared, user, child, err != NULL, err);
}

int vbd_qmp_image_locks_refresh(struct vbd_error **err)
{
    return locks_follow(NULL, 0, 0, "", "", false, err);
}

const struct vbd_qmp_command vbd_qmp_cmds_graph[] = {
    {"x-debug-query-block-graph", "", x_debug_query_block_graph, 0},
    {NULL, NULL, NULL, 0},
};
