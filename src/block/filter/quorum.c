/* SPDX-License-Identifier: MIT */
/*
 * Filter driver "quorum" (QEMU's block/quorum.c, options as QEMU 7.2's
 * BlockdevOptionsQuorum): N children holding the same data. Writes go to
 * every child at once and succeed when at least vote-threshold children
 * took them. Reads (read-pattern=quorum) read every child at once and
 * vote: children whose data is byte for byte the same form a version, the
 * version with most votes wins if it has at least vote-threshold of them;
 * the children outside it are reported with QUORUM_REPORT_BAD and, with
 * rewrite-corrupted, given the winner's data, unless a write of the range
 * ran during the read (then the losers may hold the newer data: QEMU 7.2
 * rewrites them anyway, below). No quorum: QUORUM_FAILURE
 * and EIO. A child failing with an I/O error is reported and simply has no
 * vote, so the node works on while a quorum of children is left.
 * read-pattern=fifo reads the first child that answers without error.
 * x-blockdev-change adds a child (appended, named "children.N" with N
 * counting on as QEMU's next_child_index) or removes one by that name.
 *
 * Ties go as QEMU's: among versions with the same count the one the
 * highest-indexed child first voted for wins, and reports come in QEMU's
 * order (its lists are built at the head): by version, newest first, and
 * within one by child, highest index first.
 *
 * The children are not file/backing, so the graph walks that move nodes
 * between loops do not see them: the node keeps the loop it was opened on
 * (VBD_DRV_CAP_FIXED_LOOP), and its requests run there, one loop, so the
 * per-request state needs no lock. Each request allocates its children's
 * read buffers (bytes a client chose: -ENOMEM fails that request only).
 */
#include "block/filter/passthrough.h"
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct quorum_state {
    struct vbd_node **children;
    unsigned *index; /* children[i] is named "children.<index[i]>" (QEMU's names: kept across changes) */
    int nchildren;
    unsigned next_index; /* the name the next child added gets */
    int threshold;
    bool rewrite_corrupted;
    bool fifo;
    /* x-blockdev-change: requests in flight (they index children after
     * yielding), and the gate a change closes until they are done. One
     * loop: plain counters. */
    unsigned in_flight;
    bool changing;
    struct vbd_co_queue gate, idle;
    /* rewrite-corrupted: the guest writes and the quorum reads in flight
     * (one loop: plain lists), and the writes waiting for a read's
     * rewrite of their range to end */
    struct qreq *writes, *reads;
    struct vbd_co_queue rewrite_done;
    /* the writes and write-zeroes in flight (always kept): one that
     * overlaps another waits for it, and the queue they wait on */
    struct qreq *mutations;
    struct vbd_co_queue mutation_done;
};

enum qop { QOP_READ, QOP_WRITE, QOP_ZEROES };

/* One request through the quorum: what every child does, and its result. */
struct qreq {
    struct vbd_node *n;
    enum qop op;
    uint64_t off, bytes;
    struct vbd_qiov *qiov;
    size_t qoff;
    unsigned flags;
    uint8_t **buf; /* reads: one buffer per child; rewrites: buf[0] is the winner's data */
    int *ret;
    int success, running;
    bool quiet; /* rewrites: a failure is not reported */
    struct vbd_co_queue done;
    /* in s->writes or s->reads while in flight */
    struct qreq *next_inflight;
    struct qreq *next_mutation; /* in s->mutations while in flight */
    bool raced;     /* a read: a write of its range was in flight during it (its losers may hold newer data) */
    bool rewriting; /* a read: its rewrite of the losers is in flight */
};

struct qchild {
    struct qreq *r;
    int idx;
};

/* ---------- events (qapi/block-core.json) ---------- */

static void report_bad(const char *type, uint64_t off, uint64_t bytes, const char *node_name, int ret)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "type", json_object_new_string(type));
    if (ret < 0)
        json_object_object_add(d, "error", json_object_new_string(strerror(-ret)));
    json_object_object_add(d, "node-name", json_object_new_string(node_name));
    uint64_t start = off / 512, end = (off + bytes + 511) / 512;
    json_object_object_add(d, "sector-num", json_object_new_int64((int64_t)start));
    json_object_object_add(d, "sectors-count", json_object_new_int64((int64_t)(end - start)));
    vbd_qmp_event("QUORUM_REPORT_BAD", d);
}

static void report_failure(struct qreq *r)
{
    struct json_object *d = json_object_new_object();
    uint64_t start = r->off / 512, end = (r->off + r->bytes + 511) / 512;
    json_object_object_add(d, "reference", json_object_new_string(r->n->node_name));
    json_object_object_add(d, "sector-num", json_object_new_int64((int64_t)start));
    json_object_object_add(d, "sectors-count", json_object_new_int64((int64_t)(end - start)));
    vbd_qmp_event("QUORUM_FAILURE", d);
}

/* ---------- options ---------- */

/* vote-threshold comes as a JSON integer or a keyval string; QEMU words
 * every bad value the same way. */
static int take_threshold(struct json_object *opts, int *out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, "vote-threshold");
    if (!v) {
        vbd_error_setf(err, EINVAL, "Parameter 'vote-threshold' is missing");
        return -EINVAL;
    }
    long long t = 0;
    if (json_object_is_type(v, json_type_int)) {
        t = json_object_get_int64(v);
    } else if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        char *end;
        errno = 0;
        t = strtoll(s, &end, 0);
        if (!*s || *end || errno) {
            vbd_error_setf(err, EINVAL, "Parameter 'vote-threshold' expects a number");
            return -EINVAL;
        }
    } else {
        vbd_error_setf(err, EINVAL, "Invalid parameter type for 'vote-threshold', expected: integer");
        return -EINVAL;
    }
    json_object_object_del(opts, "vote-threshold");
    *out = t < 0 ? 0 : t > 1000000 ? 1000000 : (int)t;
    return 0;
}

static void quorum_close(struct vbd_node *n)
{
    struct quorum_state *s = n->opaque;
    for (int i = 0; i < s->nchildren; i++)
        vbd_node_unref(s->children[i]);
    free(s->children);
    free(s->index);
    s->children = NULL;
    s->index = NULL;
    s->nchildren = 0;
}

static int open_children(struct vbd_node *n, struct json_object *list, int count, unsigned flags,
                         struct vbd_error **err)
{
    struct quorum_state *s = n->opaque;
    s->children = vbd_xcalloc((size_t)count, sizeof(*s->children));
    s->index = vbd_xcalloc((size_t)count, sizeof(*s->index));
    for (int i = 0; i < count; i++) {
        char key[32], path[48];
        snprintf(key, sizeof(key), "%d", i);
        snprintf(path, sizeof(path), "children.%d", i);
        struct json_object *c = json_object_is_type(list, json_type_array) ? json_object_array_get_idx(list, (size_t)i)
                                                                           : json_object_object_get(list, key);
        /* vbd_open_child takes its child by key out of an object */
        struct json_object *holder = json_object_new_object();
        json_object_object_add(holder, path, json_object_get(c));
        s->children[i] = vbd_open_child(n, holder, path, NULL, flags, err);
        json_object_put(holder);
        if (!s->children[i])
            return -EINVAL;
        s->index[i] = (unsigned)i;
        s->nchildren = i + 1;
        s->next_index = (unsigned)i + 1;
    }
    return 0;
}

static int do_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct quorum_state *s = n->opaque;
    struct json_object *list = vbd_opt_get(opts, "children");
    if (!list) {
        vbd_error_setf(err, EINVAL, "Parameter 'children' is missing");
        return -EINVAL;
    }
    /* keyval gives {"0":...,"1":...}, JSON a list: both as QEMU's qdict array */
    int count = -1;
    if (json_object_is_type(list, json_type_array)) {
        count = (int)json_object_array_length(list);
    } else if (json_object_is_type(list, json_type_object)) {
        count = json_object_object_length(list);
        for (int i = 0; i < count; i++) {
            char key[32];
            snprintf(key, sizeof(key), "%d", i);
            if (!json_object_object_get_ex(list, key, NULL))
                count = -1;
        }
    }
    if (count < 0) {
        vbd_error_setf(err, EINVAL, "Option children is not a valid array");
        return -EINVAL;
    }
    if (count < 1) {
        vbd_error_setf(err, EINVAL, "Number of provided children must be 1 or more");
        return -EINVAL;
    }
    bool blkverify = false;
    char *pattern = NULL;
    if (take_threshold(opts, &s->threshold, err) < 0 || vbd_opt_take_bool(opts, "blkverify", &blkverify, err) < 0 ||
        vbd_opt_take_bool(opts, "rewrite-corrupted", &s->rewrite_corrupted, err) < 0 ||
        vbd_opt_take_str(opts, "read-pattern", &pattern, err) < 0)
        return -EINVAL;
    if (s->threshold < 1) {
        vbd_error_setf(err, EINVAL, "Parameter 'vote-threshold' expects a value >= 1");
        free(pattern);
        return -ERANGE;
    }
    if (s->threshold > count) {
        vbd_error_setf(err, EINVAL, "threshold may not exceed children count");
        free(pattern);
        return -ERANGE;
    }
    if (pattern && strcmp(pattern, "quorum") && strcmp(pattern, "fifo")) {
        vbd_error_setf(err, EINVAL, "Parameter 'read-pattern' does not accept value '%s'", pattern);
        free(pattern);
        return -EINVAL;
    }
    s->fifo = pattern && !strcmp(pattern, "fifo");
    free(pattern);
    if (s->fifo) {
        /* QEMU reads neither with fifo: a lone reader has nobody to vote with */
        blkverify = false;
        s->rewrite_corrupted = false;
    }
    if (blkverify && (count != 2 || s->threshold != 2)) {
        vbd_error_setf(err, EINVAL, "blkverify=on can only be set if there are exactly two files and vote-threshold is 2");
        return -EINVAL;
    }
    if (blkverify && s->rewrite_corrupted) {
        vbd_error_setf(err, EINVAL, "rewrite-corrupted=on cannot be used with blkverify=on");
        return -EINVAL;
    }
    if (blkverify) {
        /* QEMU's blkverify mode ends the process at the first mismatch: a
         * debugging aid that has no place in a daemon serving guests */
        vbd_error_setf(err, ENOTSUP, "quorum: blkverify=on is not supported by vbd");
        return -ENOTSUP;
    }
    list = vbd_opt_take_obj(opts, "children");
    int rc = open_children(n, list, count, flags, err);
    json_object_put(list);
    if (rc < 0)
        return rc;
    uint64_t size = vbd_node_size(s->children[0]);
    for (int i = 1; i < count; i++)
        if (vbd_node_size(s->children[i]) != size) {
            vbd_error_setf(err, EIO, "quorum: children differ in size: '%s' has %llu bytes, '%s' %llu",
                           s->children[0]->node_name, (unsigned long long)size, s->children[i]->node_name,
                           (unsigned long long)vbd_node_size(s->children[i]));
            return -EIO;
        }
    n->size = size;
    /* the loosest child's limits: every request reaches every child, and
     * each child's own entry point aligns and splits for it */
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = 1;
    for (int i = 0; i < count; i++) {
        const struct vbd_limits *l = &s->children[i]->bl;
        if (l->request_alignment > n->bl.request_alignment)
            n->bl.request_alignment = l->request_alignment;
        if (l->min_mem_alignment > n->bl.min_mem_alignment)
            n->bl.min_mem_alignment = l->min_mem_alignment;
    }
    /* FUA is emulated with a flush of every child, as QEMU's quorum lists
     * no write flag; zeroing keeps the flags every child has */
    n->supported_write_flags = 0;
    n->supported_zero_flags = VBD_REQ_FUA | VBD_REQ_MAY_UNMAP | VBD_REQ_NO_FALLBACK;
    for (int i = 0; i < count; i++)
        n->supported_zero_flags &= s->children[i]->supported_zero_flags;
    snprintf(n->filename, sizeof(n->filename), "quorum:%s", s->children[0]->filename);
    return 0;
}

static int quorum_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    int rc = do_open(n, opts, flags, err);
    if (rc < 0)
        quorum_close(n); /* a failed open is not closed */
    return rc;
}

/* ---------- requests on every child at once ---------- */

static void child_entry(void *arg)
{
    struct qchild *c = arg;
    struct qreq *r = c->r;
    struct quorum_state *s = r->n->opaque;
    struct vbd_node *child = s->children[c->idx];
    int rc;
    switch (r->op) {
    case QOP_READ:
        rc = vbd_node_co_pread(child, r->off, r->buf[c->idx], r->bytes);
        break;
    case QOP_WRITE:
        rc = vbd_node_co_pwritev(child, r->off, r->bytes, r->qiov, r->qoff, r->flags);
        break;
    default:
        rc = vbd_node_co_pwrite_zeroes(child, r->off, r->bytes, r->flags);
        break;
    }
    r->ret[c->idx] = rc;
    if (rc == 0)
        r->success++;
    else if (!r->quiet)
        report_bad(r->op == QOP_READ ? "read" : "write", r->off, r->bytes, child->node_name, rc);
    if (--r->running == 0)
        vbd_co_queue_wake_all(&r->done);
}

/* ---------- rewrites against the writes in flight ----------
 *
 * A read that races a write of its range can see the write on some
 * children and not yet on others; the vote may then pick the old data and
 * call the children that already have the new data corrupted. Rewriting
 * them would put the old data back over a write the guest is told is done
 * (and a rewrite still in flight when the next write comes could land
 * after it). So a read whose range a write touched while it ran rewrites
 * nothing (the write is bringing every child to the same data anyway), and
 * a write waits for the rewrites in flight on its range. */

static bool overlaps(uint64_t a, uint64_t al, uint64_t b, uint64_t bl) { return a < b + bl && b < a + al; }

static void list_remove(struct qreq **head, struct qreq *r)
{
    for (struct qreq **pp = head; *pp; pp = &(*pp)->next_inflight)
        if (*pp == r) {
            *pp = r->next_inflight;
            return;
        }
}

static void write_begin(struct quorum_state *s, struct qreq *w)
{
    if (!s->rewrite_corrupted)
        return;
    for (;;) {
        bool busy = false;
        for (struct qreq *r = s->reads; r; r = r->next_inflight)
            if (overlaps(r->off, r->bytes, w->off, w->bytes)) {
                r->raced = true;
                busy |= r->rewriting;
            }
        if (!busy)
            break;
        vbd_co_queue_wait(&s->rewrite_done);
    }
    w->next_inflight = s->writes;
    s->writes = w;
}

static void read_begin(struct quorum_state *s, struct qreq *r)
{
    if (!s->rewrite_corrupted)
        return;
    for (struct qreq *w = s->writes; w && !r->raced; w = w->next_inflight)
        r->raced = overlaps(r->off, r->bytes, w->off, w->bytes);
    r->next_inflight = s->reads;
    s->reads = r;
}

/* Run r->op on the children in mask (all: ~0) in parallel and wait. */
static void run_children(struct qreq *r, struct qchild *cs, const bool *mask)
{
    struct quorum_state *s = r->n->opaque;
    r->running = 1; /* held until every child is started */
    for (int i = 0; i < s->nchildren; i++) {
        if (mask && !mask[i])
            continue;
        cs[i] = (struct qchild){r, i};
        r->running++;
        vbd_co_wake(vbd_co_create(child_entry, &cs[i]));
    }
    r->running--;
    while (r->running)
        vbd_co_queue_wait(&r->done);
}

/* The errno most children failed with (QEMU's quorum_vote_error): ties go
 * to the error the highest-indexed child saw first. */
static int vote_error(struct qreq *r)
{
    struct quorum_state *s = r->n->opaque;
    int best = 0, best_count = 0;
    for (int i = s->nchildren - 1; i >= 0; i--) {
        if (!r->ret[i])
            continue;
        /* a value's weight, counted where it first appears from index 0 */
        bool first = true;
        for (int j = 0; j < i; j++)
            if (r->ret[j] == r->ret[i])
                first = false;
        if (!first)
            continue;
        int count = 0;
        for (int j = 0; j < s->nchildren; j++)
            count += r->ret[j] == r->ret[i];
        if (count > best_count) {
            best_count = count;
            best = r->ret[i];
        }
    }
    return best;
}

/* Too few children succeeded: QUORUM_FAILURE and the majority's error. */
static int too_few(struct qreq *r)
{
    struct quorum_state *s = r->n->opaque;
    if (r->success >= s->threshold)
        return 0;
    report_failure(r);
    int e = vote_error(r);
    return e ? e : -EIO;
}

static uint64_t hash64(const uint8_t *p, uint64_t len)
{
    /* FNV-1a over 8-byte words: only groups candidates, buffers are compared */
    uint64_t h = 0xcbf29ce484222325ull;
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Vote among the children that read without error; the winner's index, or
 * -1 (no quorum). version[i]: the version child i voted for (-1: no vote). */
static int vote(struct qreq *r, int *version, int *nversions)
{
    struct quorum_state *s = r->n->opaque;
    int first = -1;
    bool all_same = true;
    for (int i = 0; i < s->nchildren; i++) {
        version[i] = -1;
        if (r->ret[i])
            continue;
        if (first < 0)
            first = i;
        else if (all_same && memcmp(r->buf[first], r->buf[i], r->bytes))
            all_same = false;
    }
    if (all_same) {
        for (int i = 0; i < s->nchildren; i++)
            if (!r->ret[i])
                version[i] = 0;
        *nversions = 1;
        return first;
    }
    uint64_t *hash = vbd_xcalloc((size_t)s->nchildren, sizeof(*hash));
    int *rep = vbd_xcalloc((size_t)s->nchildren, sizeof(*rep)), *count = vbd_xcalloc((size_t)s->nchildren, sizeof(*count));
    int nv = 0;
    for (int i = 0; i < s->nchildren; i++) {
        if (r->ret[i])
            continue;
        uint64_t h = hash64(r->buf[i], r->bytes);
        int v = 0;
        while (v < nv && !(hash[v] == h && !memcmp(r->buf[rep[v]], r->buf[i], r->bytes)))
            v++;
        if (v == nv) {
            hash[nv] = h;
            rep[nv] = i;
            count[nv++] = 0;
        }
        count[v]++;
        version[i] = v;
    }
    int win = -1, max = 0;
    for (int v = nv - 1; v >= 0; v--) /* QEMU's list is newest first, strictly greater wins */
        if (count[v] > max) {
            max = count[v];
            win = v;
        }
    int winner = max >= s->threshold ? rep[win] : -1;
    free(hash);
    free(rep);
    free(count);
    *nversions = nv;
    return winner;
}

static int read_quorum(struct qreq *r)
{
    struct quorum_state *s = r->n->opaque;
    int nc = s->nchildren;
    size_t align = r->n->bl.min_mem_alignment > 4096 ? r->n->bl.min_mem_alignment : 4096;
    r->buf = calloc((size_t)nc, sizeof(*r->buf));
    struct qchild *cs = calloc((size_t)nc, sizeof(*cs));
    int *version = calloc((size_t)nc, sizeof(*version));
    int rc = (r->buf && cs && version) ? 0 : -ENOMEM;
    for (int i = 0; i < nc && rc == 0; i++)
        if (posix_memalign((void **)&r->buf[i], align, r->bytes))
            rc = -ENOMEM;
    if (rc < 0)
        goto out;
    run_children(r, cs, NULL);
    rc = too_few(r);
    if (rc < 0)
        goto out;
    int nv = 0, winner = vote(r, version, &nv);
    if (winner < 0) {
        report_failure(r);
        rc = -EIO;
        goto out;
    }
    vbd_iov_from_buf(r->qiov->iov, r->qiov->niov, r->qoff, r->buf[winner], r->bytes);
    if (nv == 1)
        goto out;
    int wv = version[winner];
    bool *bad = vbd_xcalloc((size_t)nc, sizeof(*bad));
    for (int v = nv - 1; v >= 0; v--) {
        if (v == wv)
            continue;
        for (int i = nc - 1; i >= 0; i--)
            if (version[i] == v) {
                report_bad("read", r->off, r->bytes, s->children[i]->node_name, 0);
                bad[i] = true;
            }
    }
    if (s->rewrite_corrupted && !r->raced) {
        /* in parallel, errors ignored: a correction attempt changes
         * nothing for the reader (QEMU's quorum_rewrite_entry) */
        struct iovec one = {r->buf[winner], r->bytes};
        struct vbd_qiov wq = {&one, 1, r->bytes};
        struct qreq w = {.n = r->n, .op = QOP_WRITE, .off = r->off, .bytes = r->bytes, .qiov = &wq, .ret = r->ret,
                         .quiet = true};
        w.done = (struct vbd_co_queue)VBD_CO_QUEUE_INIT;
        r->rewriting = true;
        run_children(&w, cs, bad);
        r->rewriting = false;
        vbd_co_queue_wake_all(&s->rewrite_done);
    }
    free(bad);
out:
    for (int i = 0; r->buf && i < nc; i++)
        free(r->buf[i]);
    free(r->buf);
    free(cs);
    free(version);
    return rc;
}

static int read_fifo(struct qreq *r)
{
    struct quorum_state *s = r->n->opaque;
    int rc = -EIO;
    for (int i = 0; i < s->nchildren; i++) {
        rc = vbd_node_co_preadv(s->children[i], r->off, r->bytes, r->qiov, r->qoff, 0);
        if (rc == 0)
            break;
        report_bad("read", r->off, r->bytes, s->children[i]->node_name, rc);
    }
    return rc;
}

static int quorum_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                         unsigned flags)
{
    struct quorum_state *s = n->opaque;
    int *ret = calloc((size_t)s->nchildren, sizeof(*ret));
    if (!ret)
        return -ENOMEM;
    struct qreq r = {.n = n, .op = QOP_READ, .off = off, .bytes = bytes, .qiov = q, .qoff = qoff, .flags = flags,
                     .ret = ret};
    r.done = (struct vbd_co_queue)VBD_CO_QUEUE_INIT;
    int rc;
    if (s->fifo) {
        rc = read_fifo(&r); /* no vote, no rewrite */
    } else {
        read_begin(s, &r);
        rc = read_quorum(&r);
        list_remove(&s->reads, &r);
    }
    free(ret);
    return rc;
}

static int write_all(struct vbd_node *n, enum qop op, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                     unsigned flags)
{
    struct quorum_state *s = n->opaque;
    int *ret = calloc((size_t)s->nchildren, sizeof(*ret));
    struct qchild *cs = calloc((size_t)s->nchildren, sizeof(*cs));
    int rc = -ENOMEM;
    if (ret && cs) {
        struct qreq r = {.n = n, .op = op, .off = off, .bytes = bytes, .qiov = q, .qoff = qoff, .flags = flags,
                         .ret = ret};
        r.done = (struct vbd_co_queue)VBD_CO_QUEUE_INIT;
        /* Two mutations in flight on the same bytes would land on the
         * children in different orders (each child runs its own), and the
         * children would then hold different data there: a read finds no
         * version with enough votes and fails, though both writes completed
         * (vbd-stress --overlap; quorum-overlap.sh). One at a time on a
         * range, so every child sees the same order. One loop: a list. */
        for (bool busy = true; busy;) {
            busy = false;
            for (struct qreq *o = s->mutations; o && !busy; o = o->next_mutation)
                busy = overlaps(o->off, o->bytes, off, bytes);
            if (busy)
                vbd_co_queue_wait(&s->mutation_done);
        }
        r.next_mutation = s->mutations;
        s->mutations = &r;
        write_begin(s, &r);
        run_children(&r, cs, NULL);
        list_remove(&s->writes, &r);
        for (struct qreq **pp = &s->mutations; *pp; pp = &(*pp)->next_mutation)
            if (*pp == &r) {
                *pp = r.next_mutation;
                break;
            }
        vbd_co_queue_wake_all(&s->mutation_done);
        rc = too_few(&r);
    }
    free(ret);
    free(cs);
    return rc;
}

static int quorum_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                          unsigned flags)
{
    return write_all(n, QOP_WRITE, off, bytes, q, qoff, flags);
}

static int quorum_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    return write_all(n, QOP_ZEROES, off, bytes, NULL, 0, flags);
}

/* One child after the other, as QEMU; success when enough children flushed. */
static int quorum_flush(struct vbd_node *n)
{
    struct quorum_state *s = n->opaque;
    int *ret = vbd_xcalloc((size_t)s->nchildren, sizeof(*ret));
    int ok = 0;
    for (int i = 0; i < s->nchildren; i++) {
        ret[i] = vbd_node_co_flush(s->children[i]);
        if (ret[i])
            report_bad("flush", 0, 0, s->children[i]->node_name, ret[i]);
        else
            ok++;
    }
    struct qreq r = {.n = n, .ret = ret, .success = ok};
    int rc = ok >= s->threshold ? 0 : vote_error(&r);
    free(ret);
    return rc;
}

/* Data if any child has data there (the longest such run), zeroes only
 * where every child reads zeroes (the shortest run): QEMU's answer. */
static int quorum_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                               uint64_t *map, struct vbd_node **file)
{
    struct quorum_state *s = n->opaque;
    uint64_t pzero = bytes, pdata = 0;
    (void)map, (void)file;
    for (int i = 0; i < s->nchildren; i++) {
        uint64_t got = 0;
        int rc = vbd_node_co_block_status_above(s->children[i], NULL, want_zero, off, bytes, &got, NULL, NULL, NULL);
        if (rc < 0) {
            report_bad("read", off, bytes, s->children[i]->node_name, rc);
            pdata = bytes;
            break;
        }
        if (got == 0 || got > bytes)
            got = bytes;
        if (rc & VBD_BS_ZERO) {
            if (got < pzero)
                pzero = got;
        } else if (got > pdata) {
            pdata = got;
        }
    }
    if (pdata) {
        *pnum = pdata;
        return VBD_BS_DATA;
    }
    *pnum = pzero;
    return VBD_BS_ZERO;
}

static int quorum_refresh_size(struct vbd_node *n)
{
    struct quorum_state *s = n->opaque;
    uint64_t size = vbd_node_size(s->children[0]);
    for (int i = 1; i < s->nchildren; i++)
        if (vbd_node_size(s->children[i]) != size)
            return -EIO;
    vbd_node_set_size(n, size);
    return 0;
}

/* ---------- x-blockdev-change: children come and go ---------- */

/* Every request holds the children list as it found it until it ends. */
static void request_begin(struct quorum_state *s)
{
    while (s->changing)
        vbd_co_queue_wait(&s->gate);
    s->in_flight++;
}

static void request_end(struct quorum_state *s)
{
    if (--s->in_flight == 0 && s->changing)
        vbd_co_queue_wake_all(&s->idle);
}

/* QEMU's bdrv_drained_begin/end around its quorum_add/del_child. */
static void change_begin(struct quorum_state *s)
{
    s->changing = true;
    while (s->in_flight)
        vbd_co_queue_wait(&s->idle);
}

static void change_end(struct quorum_state *s)
{
    s->changing = false;
    vbd_co_queue_wake_all(&s->gate);
}

static struct vbd_node *quorum_child_at(struct vbd_node *n, int i, char *name, size_t len)
{
    struct quorum_state *s = n->opaque;
    if (i < 0 || i >= s->nchildren)
        return NULL;
    snprintf(name, len, "children.%u", s->index[i]);
    return s->children[i];
}

static int quorum_add_child(struct vbd_node *n, struct vbd_node *child, struct vbd_error **err)
{
    struct quorum_state *s = n->opaque;
    /* QEMU's checks in its order (quorum_add_child, bdrv_attach_child) */
    if (s->next_index == UINT_MAX || s->nchildren == INT_MAX / (int)sizeof(*s->children)) {
        vbd_error_setf(err, ENOSPC, "Too many children");
        return -ENOSPC;
    }
    if (vbd_node_reaches(child, n)) {
        vbd_error_setf(err, ELOOP, "Making '%s' a children.%u child of '%s' would create a cycle", child->node_name,
                       s->next_index, n->node_name);
        return -ELOOP;
    }
    /* QEMU's words when the quorum has a writer (it takes a read-only
     * child of a quorum nobody writes yet, that a writer then cannot use) */
    if (child->read_only && !n->read_only) {
        vbd_error_setf(err, EACCES, "Block node is read-only");
        return -EACCES;
    }
    /* QEMU 7.2 takes a child of another size, whose writes past its end
     * then fail and whose reads vote against the others: refused here */
    if (vbd_node_size(child) != vbd_node_size(n)) {
        vbd_error_setf(err, EINVAL, "quorum: node '%s' has %llu bytes, quorum '%s' %llu: a child must have the quorum's size",
                       child->node_name, (unsigned long long)vbd_node_size(child), n->node_name,
                       (unsigned long long)vbd_node_size(n));
        return -EINVAL;
    }
    change_begin(s);
    vbd_node_ref(child);
    s->children = vbd_xrealloc(s->children, ((size_t)s->nchildren + 1) * sizeof(*s->children));
    s->index = vbd_xrealloc(s->index, ((size_t)s->nchildren + 1) * sizeof(*s->index));
    s->children[s->nchildren] = child;
    s->index[s->nchildren++] = s->next_index++;
    n->supported_zero_flags &= child->supported_zero_flags;
    change_end(s);
    return 0;
}

static int quorum_del_child(struct vbd_node *n, const char *name, struct vbd_error **err)
{
    struct quorum_state *s = n->opaque;
    int i = 0;
    char nm[32];
    while (i < s->nchildren && (quorum_child_at(n, i, nm, sizeof(nm)), strcmp(nm, name)))
        i++;
    if (i == s->nchildren) {
        vbd_error_setf(err, ENOENT, "Node '%s' does not have child '%s'", n->node_name, name);
        return -ENOENT;
    }
    if (s->nchildren <= s->threshold) {
        vbd_error_setf(err, EINVAL, "The number of children cannot be lower than the vote threshold %d", s->threshold);
        return -EINVAL;
    }
    /* the last name given is given again, as QEMU's next_child_index */
    if (s->index[i] == s->next_index - 1)
        s->next_index--;
    change_begin(s);
    struct vbd_node *child = s->children[i];
    memmove(&s->children[i], &s->children[i + 1], (size_t)(s->nchildren - i - 1) * sizeof(*s->children));
    memmove(&s->index[i], &s->index[i + 1], (size_t)(s->nchildren - i - 1) * sizeof(*s->index));
    s->nchildren--;
    if (i == 0)
        snprintf(n->filename, sizeof(n->filename), "quorum:%s", s->children[0]->filename);
    vbd_node_unref(child);
    change_end(s);
    return 0;
}

static int quorum_co_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                            unsigned flags)
{
    request_begin(n->opaque);
    int rc = quorum_preadv(n, off, bytes, q, qoff, flags);
    request_end(n->opaque);
    return rc;
}

static int quorum_co_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                             unsigned flags)
{
    request_begin(n->opaque);
    int rc = quorum_pwritev(n, off, bytes, q, qoff, flags);
    request_end(n->opaque);
    return rc;
}

static int quorum_co_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    request_begin(n->opaque);
    int rc = quorum_pwrite_zeroes(n, off, bytes, flags);
    request_end(n->opaque);
    return rc;
}

static int quorum_co_flush(struct vbd_node *n)
{
    request_begin(n->opaque);
    int rc = quorum_flush(n);
    request_end(n->opaque);
    return rc;
}

static int quorum_co_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                                  uint64_t *map, struct vbd_node **file)
{
    request_begin(n->opaque);
    int rc = quorum_block_status(n, want_zero, off, bytes, pnum, map, file);
    request_end(n->opaque);
    return rc;
}

static const struct vbd_driver quorum_driver = {
    .name = "quorum",
    .kind = VBD_DRV_FILTER,
    .state_size = sizeof(struct quorum_state),
    .caps = VBD_DRV_CAP_FIXED_LOOP,
    .open = quorum_open,
    .close = quorum_close,
    .co_preadv = quorum_co_preadv,
    .co_pwritev = quorum_co_pwritev,
    .co_flush = quorum_co_flush,
    .co_pwrite_zeroes = quorum_co_pwrite_zeroes,
    .co_block_status = quorum_co_block_status,
    .refresh_size = quorum_refresh_size,
    .reopen_rw = vbd_filter_reopen_rw,
    .child_at = quorum_child_at,
    .add_child = quorum_add_child,
    .del_child = quorum_del_child,
};
VBD_DRIVER_REGISTER(quorum, quorum_driver);
