/* SPDX-License-Identifier: MIT */
/*
 * Throttle groups (vbd/throttle.h): QEMU's leaky buckets and its sharing
 * of one set of limits between the nodes of a group.
 *
 * Waiting: a request that must wait queues itself on its member's FIFO
 * (one per direction) and yields; nothing polls. One timer per group, on
 * the loop that made the group, fires when the buckets will have drained
 * enough for the next request, and grants requests in round-robin order
 * over the members with requests queued (QEMU's token), waking each on its
 * own loop. A request from another loop that needs the timer armed asks
 * the group's loop with a bottom half. Once anything is queued in a
 * direction, newcomers queue behind it, so order is kept and no member
 * starves.
 */
#include "vbd/throttle.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------- configuration ---------- */

static const struct {
    const char *name; /* ThrottleLimits member without -max / -max-length */
    int bucket;
} limit_names[] = {
    {"iops-total", VBD_THR_OPS_TOTAL}, {"iops-read", VBD_THR_OPS_READ}, {"iops-write", VBD_THR_OPS_WRITE},
    {"bps-total", VBD_THR_BPS_TOTAL},  {"bps-read", VBD_THR_BPS_READ},  {"bps-write", VBD_THR_BPS_WRITE},
};
#define NLIMITS (sizeof(limit_names) / sizeof(limit_names[0]))

void vbd_throttle_config_init(struct vbd_throttle_config *c)
{
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < VBD_THR_BUCKETS; i++)
        c->b[i].burst_length = 1;
}

int vbd_throttle_config_check(const struct vbd_throttle_config *c, struct vbd_error **err)
{
    const struct vbd_throttle_bucket *b = c->b;
    bool bps = b[VBD_THR_BPS_TOTAL].avg && (b[VBD_THR_BPS_READ].avg || b[VBD_THR_BPS_WRITE].avg);
    bool ops = b[VBD_THR_OPS_TOTAL].avg && (b[VBD_THR_OPS_READ].avg || b[VBD_THR_OPS_WRITE].avg);
    bool bps_max = b[VBD_THR_BPS_TOTAL].max && (b[VBD_THR_BPS_READ].max || b[VBD_THR_BPS_WRITE].max);
    bool ops_max = b[VBD_THR_OPS_TOTAL].max && (b[VBD_THR_OPS_READ].max || b[VBD_THR_OPS_WRITE].max);
    if (bps || ops || bps_max || ops_max) {
        vbd_error_setf(err, EINVAL, "bps/iops/max total values and read/write values cannot be used at the same time");
        return -EINVAL;
    }
    if (c->op_size && !b[VBD_THR_OPS_TOTAL].avg && !b[VBD_THR_OPS_READ].avg && !b[VBD_THR_OPS_WRITE].avg) {
        vbd_error_setf(err, EINVAL, "iops size requires an iops value to be set");
        return -EINVAL;
    }
    for (int i = 0; i < VBD_THR_BUCKETS; i++) {
        if (b[i].avg > VBD_THROTTLE_VALUE_MAX || b[i].max > VBD_THROTTLE_VALUE_MAX) {
            vbd_error_setf(err, EINVAL, "bps/iops/max values must be within [0, %llu]", VBD_THROTTLE_VALUE_MAX);
            return -EINVAL;
        }
        if (!b[i].burst_length) {
            vbd_error_setf(err, EINVAL, "the burst length cannot be 0");
            return -EINVAL;
        }
        if (b[i].burst_length > 1 && !b[i].max) {
            vbd_error_setf(err, EINVAL, "burst length set without burst rate");
            return -EINVAL;
        }
        if (b[i].max && b[i].burst_length > VBD_THROTTLE_VALUE_MAX / b[i].max) {
            vbd_error_setf(err, EINVAL, "burst length too high for this burst rate");
            return -EINVAL;
        }
        if (b[i].max && !b[i].avg) {
            vbd_error_setf(err, EINVAL, "bps_max/iops_max require corresponding bps/iops values");
            return -EINVAL;
        }
        if (b[i].max && b[i].max < b[i].avg) {
            vbd_error_setf(err, EINVAL, "bps_max/iops_max cannot be lower than bps/iops");
            return -EINVAL;
        }
    }
    return 0;
}

/* An int member, from JSON or keyval text. QAPI ints are int64; QEMU
 * stores them unsigned, so -1 becomes a value over the maximum. */
static int get_int(struct json_object *v, const char *path, bool drive, int64_t *out, struct vbd_error **err)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (*s && !*end && !errno) {
            *out = x;
            return 0;
        }
    }
    if (drive)
        vbd_error_setf(err, EINVAL, "Parameter '%s' expects a number", path);
    else
        vbd_error_setf(err, EINVAL, "Invalid parameter type for '%s', expected: integer", path);
    return -EINVAL;
}

static int limits_apply(struct vbd_throttle_config *c, struct json_object *limits, const char *prefix, bool drive,
                        bool check, struct vbd_error **err)
{
    /* unknown members first, as the QAPI visitor */
    json_object_object_foreach(limits, key, val)
    {
        (void)val;
        bool known = !strcmp(key, "iops-size");
        for (size_t i = 0; i < NLIMITS && !known; i++) {
            size_t l = strlen(limit_names[i].name);
            known = !strncmp(key, limit_names[i].name, l) &&
                    (!key[l] || !strcmp(key + l, "-max") || !strcmp(key + l, "-max-length"));
        }
        if (!known) {
            if (drive)
                vbd_error_setf(err, EINVAL, "Invalid parameter '%s%s'", prefix, key);
            else
                vbd_error_setf(err, EINVAL, "Parameter '%s%s' is unexpected", prefix, key);
            return -EINVAL;
        }
    }
    /* in throttle_limits_to_config()'s order: averages, maxima, lengths, size */
    static const char *const suffix[3] = {"", "-max", "-max-length"};
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < NLIMITS; i++) {
            char mkey[64], path[160];
            snprintf(mkey, sizeof(mkey), "%s%s", limit_names[i].name, suffix[pass]);
            snprintf(path, sizeof(path), "%s%s", prefix, mkey);
            struct json_object *v;
            int64_t x;
            if (!json_object_object_get_ex(limits, mkey, &v))
                continue;
            if (get_int(v, path, drive, &x, err) < 0)
                return -EINVAL;
            struct vbd_throttle_bucket *b = &c->b[limit_names[i].bucket];
            if (pass == 0)
                b->avg = (uint64_t)x;
            else if (pass == 1)
                b->max = (uint64_t)x;
            else if (x > (int64_t)UINT_MAX) {
                vbd_error_setf(err, EINVAL, "%s value must be in the range [0, %u]", mkey, UINT_MAX);
                return -EINVAL;
            } else
                b->burst_length = (uint64_t)x;
        }
    }
    struct json_object *v;
    if (json_object_object_get_ex(limits, "iops-size", &v)) {
        int64_t x;
        char path[160];
        snprintf(path, sizeof(path), "%siops-size", prefix);
        if (get_int(v, path, drive, &x, err) < 0)
            return -EINVAL;
        c->op_size = (uint64_t)x;
    }
    return check ? vbd_throttle_config_check(c, err) : 0;
}

int vbd_throttle_limits_apply(struct vbd_throttle_config *c, struct json_object *limits, const char *prefix,
                              struct vbd_error **err)
{
    if (!json_object_is_type(limits, json_type_object)) {
        char p[128];
        snprintf(p, sizeof(p), "%s", prefix);
        size_t l = strlen(p);
        if (l && p[l - 1] == '.')
            p[l - 1] = 0;
        vbd_error_setf(err, EINVAL, "Invalid parameter type for '%s', expected: object", p);
        return -EINVAL;
    }
    return limits_apply(c, limits, prefix, false, true, err);
}

struct json_object *vbd_throttle_limits_json(const struct vbd_throttle_config *c)
{
    struct json_object *o = json_object_new_object();
    static const char *const suffix[3] = {"", "-max", "-max-length"};
    for (size_t i = 0; i < NLIMITS; i++) {
        const struct vbd_throttle_bucket *b = &c->b[limit_names[i].bucket];
        const uint64_t val[3] = {b->avg, b->max, b->burst_length};
        for (int s = 0; s < 3; s++) {
            char key[64];
            snprintf(key, sizeof(key), "%s%s", limit_names[i].name, suffix[s]);
            json_object_object_add(o, key, json_object_new_int64((int64_t)val[s]));
        }
    }
    json_object_object_add(o, "iops-size", json_object_new_int64((int64_t)c->op_size));
    return o;
}

/* QEMU's -drive aliases (blockdev.c: qemu_opt_rename) */
static const char *const drive_aliases[][2] = {
    {"iops", "iops-total"},         {"iops_rd", "iops-read"},         {"iops_wr", "iops-write"},
    {"bps", "bps-total"},           {"bps_rd", "bps-read"},           {"bps_wr", "bps-write"},
    {"iops_max", "iops-total-max"}, {"iops_rd_max", "iops-read-max"}, {"iops_wr_max", "iops-write-max"},
    {"bps_max", "bps-total-max"},   {"bps_rd_max", "bps-read-max"},   {"bps_wr_max", "bps-write-max"},
    {"iops_size", "iops-size"},     {"group", "group"},
};

int vbd_throttle_take_drive_opts(struct json_object *opts, struct vbd_throttle_config *c, char **group,
                                 struct vbd_error **err)
{
    struct json_object *t = NULL, *v;
    if (json_object_object_get_ex(opts, "throttling", &v)) {
        if (!json_object_is_type(v, json_type_object)) {
            vbd_error_setf(err, EINVAL, "Invalid parameter 'throttling'");
            return -EINVAL;
        }
        t = json_object_get(v);
        json_object_object_del(opts, "throttling");
    } else {
        t = json_object_new_object();
    }
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof(drive_aliases) / sizeof(drive_aliases[0]); i++) {
        if (!json_object_object_get_ex(opts, drive_aliases[i][0], &v))
            continue;
        if (json_object_object_get_ex(t, drive_aliases[i][1], NULL)) {
            vbd_error_setf(err, EINVAL, "'%s' and its alias 'throttling.%s' can't be used at the same time",
                           drive_aliases[i][0], drive_aliases[i][1]);
            goto out;
        }
        json_object_object_add(t, drive_aliases[i][1], json_object_get(v));
        json_object_object_del(opts, drive_aliases[i][0]);
    }
    if (json_object_object_get_ex(t, "group", &v)) {
        free(*group);
        *group = vbd_xstrdup(json_object_get_string(v));
        json_object_object_del(t, "group");
    }
    bool any = json_object_object_length(t) > 0;
    vbd_throttle_config_init(c);
    if (limits_apply(c, t, "throttling.", true, true, err) < 0)
        goto out;
    rc = any;
out:
    json_object_put(t);
    return rc;
}

/* ---------- the buckets (QEMU's util/throttle.c) ---------- */

static void leak(struct vbd_throttle_config *c, uint64_t *previous, uint64_t now)
{
    if (now <= *previous)
        return;
    double secs = (double)(now - *previous) * 1e-9;
    *previous = now;
    for (int i = 0; i < VBD_THR_BUCKETS; i++) {
        struct vbd_throttle_bucket *b = &c->b[i];
        if (!b->avg) /* unlimited: its level is never looked at */
            continue;
        double l = b->level - (double)b->avg * secs;
        b->level = l > 0 ? l : 0;
        if (b->burst_length > 1) {
            l = b->burst_level - (double)b->max * secs;
            b->burst_level = l > 0 ? l : 0;
        }
    }
}

static uint64_t bucket_wait(const struct vbd_throttle_bucket *b)
{
    if (!b->avg)
        return 0;
    double size, burst_size;
    if (!b->max) {
        /* without a burst rate, still let a tenth of a second's worth
         * through at once: short bursts of a guest are not slowed */
        size = (double)b->avg / 10;
        burst_size = 0;
    } else {
        /* the whole burst goes at max before the average applies */
        size = (double)b->max * (double)b->burst_length;
        burst_size = (double)b->max / 10;
    }
    double extra = b->level - size;
    if (extra > 0)
        return (uint64_t)(extra * 1e9 / (double)b->avg);
    if (b->burst_length > 1) {
        extra = b->burst_level - burst_size;
        if (extra > 0)
            return (uint64_t)(extra * 1e9 / (double)b->max);
    }
    return 0;
}

static uint64_t wait_for(const struct vbd_throttle_config *c, int is_write)
{
    static const int check[2][4] = {
        {VBD_THR_BPS_TOTAL, VBD_THR_OPS_TOTAL, VBD_THR_BPS_READ, VBD_THR_OPS_READ},
        {VBD_THR_BPS_TOTAL, VBD_THR_OPS_TOTAL, VBD_THR_BPS_WRITE, VBD_THR_OPS_WRITE},
    };
    uint64_t w = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t x = bucket_wait(&c->b[check[is_write][i]]);
        if (x > w)
            w = x;
    }
    return w;
}

static void account(struct vbd_throttle_config *c, int is_write, uint64_t bytes)
{
    double units = 1.0;
    if (c->op_size && bytes > c->op_size)
        units = (double)bytes / (double)c->op_size;
    const int bps[2] = {VBD_THR_BPS_TOTAL, is_write ? VBD_THR_BPS_WRITE : VBD_THR_BPS_READ};
    const int ops[2] = {VBD_THR_OPS_TOTAL, is_write ? VBD_THR_OPS_WRITE : VBD_THR_OPS_READ};
    /* unlimited buckets (avg 0) are skipped: nothing reads their level
     * (new limits start from empty buckets) */
    for (int i = 0; i < 2; i++) {
        struct vbd_throttle_bucket *b = &c->b[bps[i]];
        if (b->avg) {
            b->level += (double)bytes;
            if (b->burst_length > 1)
                b->burst_level += (double)bytes;
        }
        b = &c->b[ops[i]];
        if (b->avg) {
            b->level += units;
            if (b->burst_length > 1)
                b->burst_level += units;
        }
    }
}

/* n requests of direction is_write, together `bytes`, each at most
 * op_size (one operation each): what account() adds for each of them. */
static void account_many(struct vbd_throttle_config *c, int is_write, uint64_t n, uint64_t bytes)
{
    const int bps[2] = {VBD_THR_BPS_TOTAL, is_write ? VBD_THR_BPS_WRITE : VBD_THR_BPS_READ};
    const int ops[2] = {VBD_THR_OPS_TOTAL, is_write ? VBD_THR_OPS_WRITE : VBD_THR_OPS_READ};
    for (int i = 0; i < 2; i++) {
        struct vbd_throttle_bucket *b = &c->b[bps[i]];
        if (b->avg) {
            b->level += (double)bytes;
            if (b->burst_length > 1)
                b->burst_level += (double)bytes;
        }
        b = &c->b[ops[i]];
        if (b->avg) {
            b->level += (double)n;
            if (b->burst_length > 1)
                b->burst_level += (double)n;
        }
    }
}

/* What bucket b can still take before a request would have to wait:
 * bucket_wait() is 0 while level <= size (and burst_level <= burst size). */
static double bucket_room(const struct vbd_throttle_bucket *b)
{
    if (!b->avg)
        return 1e30;
    double size = b->max ? (double)b->max * (double)b->burst_length : (double)b->avg / 10;
    double room = size - b->level;
    if (b->burst_length > 1) {
        double burst = (double)b->max / 10 - b->burst_level;
        if (burst < room)
            room = burst;
    }
    return room;
}

/* ---------- the lock-free path ----------
 * A request that the limits are far from holding back need not take the
 * group's lock, read the precise clock and walk six buckets: under the
 * lock, after a request went through, each direction is granted a credit
 * of operations and bytes that many more requests can take with one
 * compare-and-swap, chosen so that none of them could have been held by
 * QEMU's model: the room left in each bucket it fills (shared buckets, the
 * totals, split between the two directions), without counting what the
 * buckets leak meanwhile. It is good for one tick of the coarse clock
 * (4 ms at HZ=250); the next request under the lock (a new tick, a request
 * the credit does not cover, the timer) takes back what is left, accounts
 * what was used as of the tick it was granted in, and grants again. The
 * levels thus lag QEMU's by at most one tick's leak. A request larger than
 * iops-size (more than one operation) always takes the lock. */
#define CREDIT_BYTES_BITS 40
#define CREDIT(ops, bytes) (((uint64_t)(ops) << CREDIT_BYTES_BITS) | (uint64_t)(bytes))
#define CREDIT_OPS(c) ((c) >> CREDIT_BYTES_BITS)
#define CREDIT_BYTES(c) ((c) & ((1ull << CREDIT_BYTES_BITS) - 1))
#define CREDIT_OPS_MAX ((1ull << (64 - CREDIT_BYTES_BITS)) - 1)
#define CREDIT_BYTES_MAX ((1ull << CREDIT_BYTES_BITS) - 1)

/* ---------- groups ---------- */

struct waiter {
    struct vbd_co *co;
    uint64_t bytes;
    struct waiter *next;
};

struct vbd_throttle_member {
    struct group *g;
    struct waiter *head[2], *tail[2];
    unsigned drained; /* drained sections over the node (g->lock): no waiting */
    struct vbd_throttle_member *next;
};

struct group {
    char *name; /* the id as given, however long (QEMU keeps it whole) */
    bool object;  /* made by the user; else lives while it has members */
    int nmembers;
    pthread_mutex_t lock; /* everything below; never held across a yield */
    struct vbd_throttle_config cfg;
    uint64_t previous_leak;
    struct vbd_throttle_member *members;
    struct vbd_throttle_member *token[2]; /* the member served last */
    unsigned queued[2];
    pthread_t home_thread; /* the timer's loop */
    struct vbd_loop *home;
    struct vbd_timer timer;
    bool timer_armed;
    uint64_t timer_deadline;
    struct vbd_bh bh;
    bool bh_pending;
    uint64_t bh_deadline;
    bool dead; /* removed while its bottom half was pending: the bh frees it */
    /* The lock-free path (vbd_throttle_co_intercept): credit[d] is what
     * requests of direction d may take without the lock during the
     * coarse-clock tick credit_tick, packed as CREDIT(ops, bytes); granted[d]
     * what was handed out (under the lock). */
    _Atomic uint64_t credit[2];
    _Atomic uint64_t credit_tick;
    _Atomic uint64_t op_size; /* cfg.op_size, for the lock-free path */
    uint64_t granted[2];
    struct group *next;
};

static struct group *groups; /* main loop only */

static struct group *find(const char *name)
{
    for (struct group *g = groups; g; g = g->next)
        if (!strcmp(g->name, name))
            return g;
    return NULL;
}

static void arm(struct group *g, uint64_t deadline)
{
    if (!g->timer_armed || deadline < g->timer_deadline) {
        vbd_timer_arm(&g->timer, deadline);
        g->timer_armed = true;
        g->timer_deadline = deadline;
    }
}

/* g->lock held: have the timer fire at `deadline` (or earlier). */
static void want_timer(struct group *g, uint64_t deadline)
{
    if (pthread_equal(g->home_thread, pthread_self())) {
        arm(g, deadline);
        return;
    }
    if (g->bh_pending) {
        if (deadline < g->bh_deadline)
            g->bh_deadline = deadline;
        return;
    }
    g->bh_pending = true;
    g->bh_deadline = deadline;
    vbd_loop_schedule_bh(g->home, &g->bh);
}

static struct vbd_throttle_member *next_queued(struct group *g, int d)
{
    struct vbd_throttle_member *start = g->token[d] && g->token[d]->next ? g->token[d]->next : g->members;
    struct vbd_throttle_member *m = start;
    do {
        if (m->head[d])
            return m;
        m = m->next ? m->next : g->members;
    } while (m != start);
    return NULL;
}

/* g->lock held: take back the credit; what was used goes into the buckets
 * as of the tick it was granted in. */
static void reconcile(struct group *g)
{
    for (int d = 0; d < 2; d++) {
        if (!g->granted[d])
            continue;
        uint64_t left = atomic_exchange(&g->credit[d], 0);
        uint64_t ops = CREDIT_OPS(g->granted[d]) - CREDIT_OPS(left);
        uint64_t bytes = CREDIT_BYTES(g->granted[d]) - CREDIT_BYTES(left);
        g->granted[d] = 0;
        if (ops) {
            leak(&g->cfg, &g->previous_leak, atomic_load_explicit(&g->credit_tick, memory_order_relaxed));
            account_many(&g->cfg, d, ops, bytes);
        }
    }
}

/* g->lock held, the credit taken back: grant the rooms left, for the
 * coarse tick `tick`, to each direction that has nothing queued. */
static void grant(struct group *g, uint64_t tick)
{
    atomic_store_explicit(&g->credit_tick, tick, memory_order_relaxed);
    for (int d = 0; d < 2; d++) {
        if (g->queued[d])
            continue;
        const struct vbd_throttle_config *c = &g->cfg;
        double ops = bucket_room(&c->b[VBD_THR_OPS_TOTAL]) / 2, bytes = bucket_room(&c->b[VBD_THR_BPS_TOTAL]) / 2;
        double o = bucket_room(&c->b[d ? VBD_THR_OPS_WRITE : VBD_THR_OPS_READ]);
        double b = bucket_room(&c->b[d ? VBD_THR_BPS_WRITE : VBD_THR_BPS_READ]);
        if (o < ops)
            ops = o;
        if (b < bytes)
            bytes = b;
        if (ops < 1 || bytes < 1)
            continue;
        uint64_t no = ops >= (double)CREDIT_OPS_MAX ? CREDIT_OPS_MAX : (uint64_t)ops;
        uint64_t nb = bytes >= (double)CREDIT_BYTES_MAX ? CREDIT_BYTES_MAX : (uint64_t)bytes;
        g->granted[d] = CREDIT(no, nb);
        atomic_store_explicit(&g->credit[d], g->granted[d], memory_order_release);
    }
}

/* g->lock held: let through every queued request the buckets allow, in
 * round-robin order over the members; returns when the next one may go
 * (0: nothing left waiting). */
static uint64_t dispatch(struct group *g)
{
    uint64_t now = vbd_clock_ns(), next = 0;
    reconcile(g);
    for (int d = 0; d < 2; d++) {
        while (g->queued[d]) {
            leak(&g->cfg, &g->previous_leak, now);
            uint64_t w = wait_for(&g->cfg, d);
            if (w) {
                if (!next || now + w < next)
                    next = now + w;
                break;
            }
            struct vbd_throttle_member *m = next_queued(g, d);
            assert(m);
            struct waiter *wt = m->head[d];
            m->head[d] = wt->next;
            if (!m->head[d])
                m->tail[d] = NULL;
            g->queued[d]--;
            g->token[d] = m;
            account(&g->cfg, d, wt->bytes);
            /* wt lives on the waiter's stack: not touched after the wake */
            vbd_co_wake(wt->co);
        }
    }
    return next;
}

static void timer_cb(void *arg)
{
    struct group *g = arg;
    pthread_mutex_lock(&g->lock);
    g->timer_armed = false;
    uint64_t next = dispatch(g);
    if (next)
        arm(g, next);
    pthread_mutex_unlock(&g->lock);
}

static void group_free(struct group *g)
{
    vbd_timer_cancel(&g->timer);
    pthread_mutex_destroy(&g->lock);
    free(g->name);
    free(g);
}

static void bh_cb(void *arg)
{
    struct group *g = arg;
    pthread_mutex_lock(&g->lock);
    g->bh_pending = false;
    if (g->dead) {
        pthread_mutex_unlock(&g->lock);
        group_free(g);
        return;
    }
    arm(g, g->bh_deadline);
    pthread_mutex_unlock(&g->lock);
}

static struct group *group_new(const char *name, const struct vbd_throttle_config *cfg, bool object)
{
    struct group *g = vbd_xcalloc(1, sizeof(*g));
    g->name = vbd_xstrdup(name);
    g->object = object;
    pthread_mutex_init(&g->lock, NULL);
    g->cfg = *cfg;
    atomic_store_explicit(&g->op_size, cfg->op_size, memory_order_relaxed);
    for (int i = 0; i < VBD_THR_BUCKETS; i++)
        g->cfg.b[i].level = g->cfg.b[i].burst_level = 0;
    g->previous_leak = vbd_clock_ns();
    g->home_thread = pthread_self();
    g->home = vbd_loop_current();
    g->timer.fn = timer_cb;
    g->timer.arg = g;
    g->bh.fn = bh_cb;
    g->bh.arg = g;
    struct group **tail = &groups;
    while (*tail)
        tail = &(*tail)->next;
    *tail = g;
    return g;
}

static void group_unlink(struct group *g)
{
    for (struct group **p = &groups; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            break;
        }
    pthread_mutex_lock(&g->lock);
    bool pending = g->bh_pending;
    g->dead = true;
    pthread_mutex_unlock(&g->lock);
    if (!pending)
        group_free(g);
}

int vbd_throttle_group_add(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main loop's */
    if (find(name)) {
        vbd_error_setf(err, EEXIST, "A group with this name already exists");
        return -EEXIST;
    }
    if (vbd_throttle_config_check(cfg, err) < 0)
        return -EINVAL;
    group_new(name, cfg, true);
    return 0;
}

int vbd_throttle_group_remove(const char *name, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main loop's */
    struct group *g = find(name);
    if (!g || !g->object) {
        vbd_error_setf(err, ENOENT, "object '%s' not found", name);
        return -ENOENT;
    }
    if (g->nmembers) {
        vbd_error_setf(err, EBUSY, "object '%s' is in use, can not be deleted", name);
        return -EBUSY;
    }
    group_unlink(g);
    return 0;
}

bool vbd_throttle_group_is_object(const char *name)
{
    struct group *g = find(name);
    return g && g->object;
}

const char *vbd_throttle_group_next(const char *prev)
{
    assert(vbd_thread_is_main()); /* the registry is the main loop's */
    struct group *g = groups;
    if (prev) {
        while (g && strcmp(g->name, prev))
            g = g->next;
        g = g ? g->next : NULL;
    }
    while (g && !g->object)
        g = g->next;
    return g ? g->name : NULL;
}

bool vbd_throttle_group_get(const char *name, struct vbd_throttle_config *cfg)
{
    struct group *g = find(name);
    if (!g)
        return false;
    pthread_mutex_lock(&g->lock);
    *cfg = g->cfg;
    pthread_mutex_unlock(&g->lock);
    for (int i = 0; i < VBD_THR_BUCKETS; i++)
        cfg->b[i].level = cfg->b[i].burst_level = 0;
    return true;
}

static void set_config(struct group *g, const struct vbd_throttle_config *cfg)
{
    pthread_mutex_lock(&g->lock);
    reconcile(g); /* the credit was measured against the old limits */
    g->cfg = *cfg;
    atomic_store_explicit(&g->op_size, cfg->op_size, memory_order_relaxed);
    /* as QEMU's throttle_config(): the buckets start empty */
    for (int i = 0; i < VBD_THR_BUCKETS; i++)
        g->cfg.b[i].level = g->cfg.b[i].burst_level = 0;
    g->previous_leak = vbd_clock_ns();
    /* the waiting requests are measured against the new limits now */
    uint64_t next = dispatch(g);
    if (next)
        want_timer(g, next);
    pthread_mutex_unlock(&g->lock);
}

int vbd_throttle_group_set(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err)
{
    struct group *g = find(name);
    if (!g) {
        vbd_error_setf(err, ENOENT, "Throttle group '%s' does not exist", name);
        return -ENOENT;
    }
    if (vbd_throttle_config_check(cfg, err) < 0)
        return -EINVAL;
    set_config(g, cfg);
    return 0;
}

int vbd_throttle_group_configure(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main loop's */
    if (vbd_throttle_config_check(cfg, err) < 0)
        return -EINVAL;
    struct group *g = find(name);
    if (g)
        set_config(g, cfg);
    else
        group_new(name, cfg, false);
    return 0;
}

struct vbd_throttle_member *vbd_throttle_member_join(const char *name, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main loop's */
    struct group *g = find(name);
    if (!g) {
        vbd_error_setf(err, ENOENT, "Throttle group '%s' does not exist", name);
        return NULL;
    }
    struct vbd_throttle_member *m = vbd_xcalloc(1, sizeof(*m));
    m->g = g;
    pthread_mutex_lock(&g->lock);
    struct vbd_throttle_member **tail = &g->members;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;
    g->nmembers++;
    pthread_mutex_unlock(&g->lock);
    return m;
}

void vbd_throttle_member_leave(struct vbd_throttle_member *m)
{
    if (!m)
        return;
    struct group *g = m->g;
    pthread_mutex_lock(&g->lock);
    assert(!m->head[0] && !m->head[1]);
    for (struct vbd_throttle_member **p = &g->members; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    for (int d = 0; d < 2; d++)
        if (g->token[d] == m)
            g->token[d] = NULL;
    int left = --g->nmembers;
    pthread_mutex_unlock(&g->lock);
    free(m);
    if (!left && !g->object)
        group_unlink(g);
}

const char *vbd_throttle_member_group(const struct vbd_throttle_member *m)
{
    return m->g->name;
}

/* CLOCK_MONOTONIC as of the last tick: a quarter of the precise clock's
 * cost, never ahead of it (the same clock, read late). */
static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The lock-free path: true if the credit of this tick covers the request. */
static bool take_credit(struct group *g, int d, uint64_t bytes)
{
    if (bytes > CREDIT_BYTES_MAX)
        return false;
    uint64_t c = atomic_load_explicit(&g->credit[d], memory_order_acquire);
    if (!c || coarse_ns() != atomic_load_explicit(&g->credit_tick, memory_order_relaxed))
        return false;
    do {
        if (!CREDIT_OPS(c) || CREDIT_BYTES(c) < bytes)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&g->credit[d], &c, c - CREDIT(1, bytes), memory_order_acq_rel,
                                                    memory_order_acquire));
    return true;
}

void vbd_throttle_co_intercept(struct vbd_throttle_member *m, bool is_write, uint64_t bytes)
{
    struct group *g = m->g;
    int d = is_write;
    /* op_size changes only with the limits, which take the credit back */
    uint64_t op_size = atomic_load_explicit(&g->op_size, memory_order_relaxed);
    bool one_op = !op_size || bytes <= op_size;
    if (one_op && take_credit(g, d, bytes))
        return;
    pthread_mutex_lock(&g->lock);
    reconcile(g);
    if (m->drained) { /* accounted, not held: a drain waits for it */
        account(&g->cfg, d, bytes);
        pthread_mutex_unlock(&g->lock);
        return;
    }
    uint64_t now = 0, w = 0;
    if (!g->queued[d]) {
        /* The usual case of limits not reached is decided on the coarse
         * clock: it can only leak less than the precise one (what it
         * misses is leaked at the next reading), so a request it lets
         * through the precise clock would let through too; one it would
         * hold is looked at again with the precise clock. */
        uint64_t tick = coarse_ns();
        leak(&g->cfg, &g->previous_leak, tick);
        if (!wait_for(&g->cfg, d)) {
            account(&g->cfg, d, bytes);
            grant(g, tick);
            pthread_mutex_unlock(&g->lock);
            return;
        }
        now = vbd_clock_ns();
        leak(&g->cfg, &g->previous_leak, now);
        w = wait_for(&g->cfg, d);
        if (!w) {
            account(&g->cfg, d, bytes);
            grant(g, tick);
            pthread_mutex_unlock(&g->lock);
            return;
        }
    } else {
        now = vbd_clock_ns();
    }
    struct waiter self = {.co = vbd_co_self(), .bytes = bytes};
    assert(self.co);
    if (m->tail[d])
        m->tail[d]->next = &self;
    else
        m->head[d] = &self;
    m->tail[d] = &self;
    /* the first to queue in a direction sets the timer; later ones find it set */
    if (g->queued[d]++ == 0)
        want_timer(g, now + w);
    pthread_mutex_unlock(&g->lock);
    vbd_co_yield(); /* until dispatch() grants it */
}

void vbd_throttle_member_drain_begin(struct vbd_throttle_member *m)
{
    struct group *g = m->g;
    pthread_mutex_lock(&g->lock);
    if (m->drained++ == 0) {
        /* its queued requests go now, in order; the group's timer may fire
         * for nothing once they are gone (dispatch finds nothing) */
        for (int d = 0; d < 2; d++) {
            while (m->head[d]) {
                struct waiter *wt = m->head[d];
                m->head[d] = wt->next;
                g->queued[d]--;
                account(&g->cfg, d, wt->bytes);
                vbd_co_wake(wt->co); /* wt lives on the waiter's stack: not touched after the wake */
            }
            m->tail[d] = NULL;
        }
    }
    pthread_mutex_unlock(&g->lock);
}

void vbd_throttle_member_drain_end(struct vbd_throttle_member *m)
{
    struct group *g = m->g;
    pthread_mutex_lock(&g->lock);
    assert(m->drained > 0);
    m->drained--;
    pthread_mutex_unlock(&g->lock);
}

void vbd_throttle_member_take_drains(struct vbd_throttle_member *to, struct vbd_throttle_member *from)
{
    pthread_mutex_lock(&from->g->lock);
    unsigned n = from->drained;
    pthread_mutex_unlock(&from->g->lock);
    pthread_mutex_lock(&to->g->lock);
    to->drained = n;
    pthread_mutex_unlock(&to->g->lock);
}

int vbd_throttle_group_add_opts(struct json_object *opts, struct vbd_error **err)
{
    struct json_object *v;
    if (!json_object_object_get_ex(opts, "id", &v) || !json_object_is_type(v, json_type_string)) {
        vbd_error_setf(err, EINVAL, "Parameter 'id' is missing");
        return -EINVAL;
    }
    const char *name = json_object_get_string(v); /* opts keeps it */
    struct vbd_throttle_config cfg;
    vbd_throttle_config_init(&cfg);
    /* the unstable flat properties (x-iops-total, ...) first, then limits */
    struct json_object *flat = json_object_new_object();
    json_object_object_foreach(opts, key, val)
    {
        if (strncmp(key, "x-", 2))
            continue;
        int64_t x;
        if (get_int(val, key, false, &x, err) < 0) {
            json_object_put(flat);
            return -EINVAL;
        }
        if (x < 0) {
            vbd_error_setf(err, EINVAL, "Property values cannot be negative");
            json_object_put(flat);
            return -EINVAL;
        }
        json_object_object_add(flat, key + 2, json_object_get(val));
    }
    int rc = limits_apply(&cfg, flat, "x-", false, false, err);
    json_object_put(flat);
    if (rc < 0)
        return -EINVAL;
    if (json_object_object_get_ex(opts, "limits", &v)) {
        if (!json_object_is_type(v, json_type_object)) {
            vbd_error_setf(err, EINVAL, "Invalid parameter type for 'limits', expected: object");
            return -EINVAL;
        }
        if (limits_apply(&cfg, v, "limits.", false, false, err) < 0)
            return -EINVAL;
    }
    json_object_object_foreach(opts, k2, v2)
    {
        (void)v2;
        if (strcmp(k2, "id") && strcmp(k2, "limits") && strncmp(k2, "x-", 2)) {
            vbd_error_setf(err, EINVAL, "Parameter '%s' is unexpected", k2);
            return -EINVAL;
        }
    }
    return vbd_throttle_group_add(name, &cfg, err);
}
