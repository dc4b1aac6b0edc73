/* SPDX-License-Identifier: MIT */
/*
 * Filter driver "blkdebug": fails chosen requests of its child with a
 * chosen errno, for tests of error paths (werror/rerror, job error
 * policies) without tricks on the host. Options as QEMU's
 * BlockdevOptionsBlkdebug: the child is "image", the rules
 * inject-error.N.{event,state,iotype,errno,sector,once} and
 * set-state.N.{event,state,new_state}. vbd's drivers emit no debug events
 * of their own, so the request that reaches this node is the event:
 * read_aio a read, write_aio a write (zeroing and discard included),
 * flush_to_disk a flush. As in QEMU 7.2, an event makes the error rules it
 * names active (replacing those an earlier event made active) and the
 * request, and those after it, fail by the active rules whose iotype
 * (default: read, write, write-zeroes, discard, flush) and sector (-1:
 * any) they match; once: a rule that failed a request is spent. The node
 * starts in state 1; a rule with state=N (0 or none: any) is live only in
 * state N; set-state rules move it to new_state when their event fires.
 * vbd's own x-skip=N lets the first N requests a rule would fail through.
 * The limits align, max-transfer, opt-write-zero, max-write-zero,
 * opt-discard and max-discard are checked as QEMU 7.2 checks them and set
 * the node's limits, which the generic layer honours (requests aligned,
 * split) and the NBD server advertises (NBD_INFO_BLOCK_SIZE); vbd has no
 * write-zeroes alignment, so opt-write-zero only bounds max-write-zero.
 * Breakpoints (qemu-io's break/resume/wait_break/remove_break, through
 * vbd_node_debug_*) stop a request at its event until resumed, announced
 * on stdout in QEMU's words as QEMU's blkdebug does; besides the three
 * events above they take the ones QEMU's generic write path fires on the
 * node written (pwritev, pwritev_zero, pwritev_done). QEMU's drivers' own
 * events (l2_load, cluster_alloc, cor_write...) are known names that
 * never fire here: break refuses them (ENOTSUP) rather than wait for ever.
 */
#include "block/filter/passthrough.h"
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum io_type { IO_READ, IO_WRITE, IO_WRITE_ZEROES, IO_DISCARD, IO_FLUSH, IO_BLOCK_STATUS };
static const char *const io_names[] = {"read", "write", "write-zeroes", "discard", "flush", "block-status", NULL};

struct rule {
    unsigned events;  /* the requests (1 << enum io_type) that fire its event */
    unsigned iotypes; /* the requests it fails while active */
    bool active;      /* its event fired (and no other error rule's since) */
    int err;        /* positive errno; 0: a set-state rule */
    uint64_t state, new_state; /* live only in state (0: any); set-state: moves to new_state */
    int64_t sector; /* -1: any */
    bool once, spent;
    uint64_t skip;  /* matching requests still to let through */
};

/* The events of QEMU's generic write path that a breakpoint may also name
 * (bdrv_aligned_pwritev fires them on the node written, here the blkdebug
 * node): a write (pwritev) or write-zeroes (pwritev_zero) about to run,
 * and either one done (pwritev_done, before its result goes up). Bits
 * above those of enum io_type. */
#define BP_PWRITEV      (1u << 8)
#define BP_PWRITEV_ZERO (1u << 9)
#define BP_PWRITEV_DONE (1u << 10)

/* qemu-io's break: the next request that fires events stops, tagged tag */
struct breakpoint {
    unsigned events; /* 1 << enum io_type, BP_* */
    char *tag;
};

/* a request stopped at a breakpoint, until resume (or remove_break) */
struct suspended {
    char *tag;
    struct vbd_co *co;
    struct suspended *next;
};

struct blkdebug_state {
    pthread_mutex_t lock; /* rules' counters and the state: requests come from several loops */
    struct rule *rules;
    int nrules;
    uint64_t state; /* QEMU's: 1 at open */
    struct breakpoint *bps; /* oldest first; the newest fires first, as QEMU's list */
    _Atomic int nbps; /* read unlocked on the request path: 0 is the common case */
    struct suspended *suspended; /* newest first: resume lets the newest go */
};

/* event= in both kinds of rules: the request types it names */
static int parse_event(const char *event, const char *path, unsigned *events, struct vbd_error **err)
{
    if (!event) {
        vbd_error_setf(err, EINVAL, "Parameter '%s.event' is missing", path);
        return -EINVAL;
    }
    if (!strcmp(event, "read_aio"))
        *events = 1u << IO_READ;
    else if (!strcmp(event, "write_aio"))
        *events = 1u << IO_WRITE | 1u << IO_WRITE_ZEROES | 1u << IO_DISCARD;
    else if (!strcmp(event, "flush_to_disk"))
        *events = 1u << IO_FLUSH;
    else {
        vbd_error_setf(err, EINVAL,
                       "%s.event: '%s' is not an event vbd's blkdebug fires (read_aio, write_aio, flush_to_disk)",
                       path, event);
        return -EINVAL;
    }
    return 0;
}

static int parse_set_state(struct json_object *o, const char *path, struct rule *r, struct vbd_error **err)
{
    char *event = NULL;
    uint64_t state = 0, new_state = 0;
    int has_new = 0;
    if (vbd_opt_take_str(o, "event", &event, err) < 0 || vbd_opt_take_u64(o, "state", &state, err) < 0 ||
        (has_new = vbd_opt_take_u64(o, "new_state", &new_state, err)) < 0) {
        free(event);
        return -EINVAL;
    }
    int rc = -EINVAL;
    char what[160];
    snprintf(what, sizeof(what), "blkdebug %s", path);
    if (vbd_opts_check_empty(o, what, err) < 0 || parse_event(event, path, &r->events, err) < 0)
        goto out;
    if (!has_new) {
        vbd_error_setf(err, EINVAL, "Parameter '%s.new_state' is missing", path);
        goto out;
    }
    r->state = state;
    r->new_state = new_state;
    r->sector = -1;
    rc = 0;
out:
    free(event);
    return rc;
}

static int parse_rule(struct json_object *o, const char *path, struct rule *r, struct vbd_error **err)
{
    char *event = NULL, *iotype = NULL;
    uint64_t e = EIO, skip = 0;
    int64_t sector = -1;
    bool once = false, immediately = false;
    struct json_object *sv = vbd_opt_get(o, "sector");
    if (sv) {
        const char *s = json_object_get_string(sv);
        char *end;
        errno = 0;
        sector = strtoll(s, &end, 10);
        if (!*s || *end || errno || sector < -1) {
            vbd_error_setf(err, EINVAL, "%s.sector: expected a sector number or -1, not '%s'", path, s);
            return -EINVAL;
        }
        json_object_object_del(o, "sector");
    }
    if (vbd_opt_take_str(o, "event", &event, err) < 0 || vbd_opt_take_str(o, "iotype", &iotype, err) < 0 ||
        vbd_opt_take_u64(o, "errno", &e, err) < 0 || vbd_opt_take_bool(o, "once", &once, err) < 0 ||
        vbd_opt_take_bool(o, "immediately", &immediately, err) < 0 || vbd_opt_take_u64(o, "x-skip", &skip, err) < 0) {
        free(event);
        free(iotype);
        return -EINVAL;
    }
    uint64_t state = 0;
    if (vbd_opt_take_u64(o, "state", &state, err) < 0) {
        free(event);
        free(iotype);
        return -EINVAL;
    }
    r->state = state;
    int rc = -EINVAL;
    char what[160];
    snprintf(what, sizeof(what), "blkdebug %s", path);
    if (vbd_opts_check_empty(o, what, err) < 0 || parse_event(event, path, &r->events, err) < 0)
        goto out;
    /* QEMU 7.2's default: every type but block-status */
    r->iotypes = 1u << IO_READ | 1u << IO_WRITE | 1u << IO_WRITE_ZEROES | 1u << IO_DISCARD | 1u << IO_FLUSH;
    if (iotype) {
        int t = -1;
        for (int i = 0; io_names[i]; i++)
            if (!strcmp(io_names[i], iotype))
                t = i;
        if (t < 0) {
            vbd_error_setf(err, EINVAL, "Parameter '%s.iotype' does not accept value '%s'", path, iotype);
            goto out;
        }
        r->iotypes = 1u << t;
    }
    if (e == 0 || e > 4095) {
        vbd_error_setf(err, EINVAL, "%s.errno: %llu is not an errno value", path, (unsigned long long)e);
        goto out;
    }
    r->err = (int)e;
    r->sector = sector;
    r->once = once;
    r->skip = skip;
    rc = 0;
out:
    free(event);
    free(iotype);
    return rc;
}

/* Appends the rules of list key (inject-error or set-state): keyval gives
 * {"0":{...},"1":{...}}, JSON an array. */
static int take_rules(struct blkdebug_state *s, struct json_object *opts, const char *key, struct vbd_error **err)
{
    struct json_object *rules = vbd_opt_take_obj(opts, key);
    if (!rules)
        return 0;
    bool array = json_object_is_type(rules, json_type_array);
    int count = array ? (int)json_object_array_length(rules)
                : json_object_is_type(rules, json_type_object) ? json_object_object_length(rules)
                                                                : -1;
    if (count < 0) {
        vbd_error_setf(err, EINVAL, "Parameter '%s' expects a list of rules", key);
        json_object_put(rules);
        return -EINVAL;
    }
    s->rules = vbd_xrealloc(s->rules, (size_t)(s->nrules + count + 1) * sizeof(*s->rules));
    memset(s->rules + s->nrules, 0, (size_t)(count + 1) * sizeof(*s->rules));
    for (int i = 0; i < count; i++) {
        char k[32], path[48];
        snprintf(k, sizeof(k), "%d", i);
        snprintf(path, sizeof(path), "%s.%d", key, i);
        struct json_object *r = array ? json_object_array_get_idx(rules, i) : json_object_object_get(rules, k);
        if (!r || !json_object_is_type(r, json_type_object)) {
            vbd_error_setf(err, EINVAL, "Parameter '%s' expects a rule object", path);
            json_object_put(rules);
            return -EINVAL;
        }
        struct rule *rule = &s->rules[s->nrules];
        if ((!strcmp(key, "set-state") ? parse_set_state(r, path, rule, err) : parse_rule(r, path, rule, err)) < 0) {
            json_object_put(rules);
            return -EINVAL;
        }
        s->nrules++;
    }
    json_object_put(rules);
    return 0;
}

/* One of the limits: 0 (none), or below INT_MAX and a multiple of align,
 * else QEMU 7.2's blkdebug_open words. */
static int take_limit(struct json_object *opts, const char *key, uint64_t align, uint64_t *out, struct vbd_error **err)
{
    *out = 0;
    if (vbd_opt_take_size(opts, key, out, err) < 0)
        return -EINVAL;
    if (*out && (*out >= INT_MAX || *out % align)) {
        vbd_error_setf(err, EINVAL, "Cannot meet constraints with %s %llu", key, (unsigned long long)*out);
        return -EINVAL;
    }
    return 0;
}

/* vbd reads no rules from a config file (inject-error options give them),
 * but one without rules (empty lines and comments only) changes nothing,
 * so it is taken as QEMU takes it; one with anything else is refused
 * rather than ignored. */
static int check_config_has_no_rules(const char *path, struct vbd_error **err)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        vbd_error_setf(err, e, "Could not read blkdebug config file: %s", strerror(e)); /* QEMU 7.2's words */
        return -e;
    }
    char line[512];
    bool has_rules = false, blank = false;
    /* QEMU's qemu_config_parse skips empty lines and those starting with
     * '#'; a line of blanks is its "parse error" */
    while (!has_rules && !blank && fgets(line, sizeof(line), f)) {
        if (line[0] == '\n' || line[0] == '#')
            continue;
        blank = line[strspn(line, " \t\r\n")] == 0;
        has_rules = !blank;
    }
    fclose(f);
    if (blank) {
        vbd_error_setf(err, EINVAL, "parse error");
        return -EINVAL;
    }
    if (has_rules) {
        vbd_error_setf(err, ENOTSUP, "blkdebug: config files are not supported by vbd (use inject-error)");
        return -ENOTSUP;
    }
    return 0;
}

/* QEMU's "blkdebug:[CONFIG]:IMAGE" (an empty CONFIG: none); the node is a
 * protocol node then, and a format is probed above it, as QEMU does. */
static int blkdebug_parse_filename(const char *filename, struct json_object *opts, struct vbd_error **err)
{
    const char *config = filename + strlen("blkdebug:");
    const char *colon = strchr(config, ':');
    if (!colon) {
        vbd_error_setf(err, EINVAL, "blkdebug requires both config file and image path"); /* QEMU 7.2's words */
        return -EINVAL;
    }
    if (colon > config)
        json_object_object_add(opts, "config", json_object_new_string_len(config, (int)(colon - config)));
    json_object_object_add(opts, "x-image", json_object_new_string(colon + 1));
    return 0;
}

static int do_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct blkdebug_state *s = n->opaque;
    s->state = 1;
    if (take_rules(s, opts, "inject-error", err) < 0 || take_rules(s, opts, "set-state", err) < 0)
        return -EINVAL;
    char *config = NULL;
    if (vbd_opt_take_str(opts, "config", &config, err) < 0)
        return -EINVAL;
    char config_name[sizeof(n->filename)] = ""; /* for the node's filename */
    if (config) {
        int rc = check_config_has_no_rules(config, err);
        snprintf(config_name, sizeof(config_name), "%s", config);
        free(config);
        if (rc < 0)
            return rc;
    }
    char *image_filename = NULL; /* "blkdebug:CONFIG:IMAGE"'s IMAGE */
    if (vbd_opt_take_str(opts, "x-image", &image_filename, err) < 0)
        return -EINVAL;
    uint64_t align = 0;
    if (vbd_opt_take_size(opts, "align", &align, err) < 0)
        return -EINVAL;
    n->file = vbd_open_child(n, opts, "image", image_filename, flags, err);
    free(image_filename);
    if (!n->file)
        return -EINVAL;
    /* QEMU 7.2's blkdebug_open: an alignment it could not honour is refused (0: none) */
    if (align && (align >= INT_MAX || (align & (align - 1)))) {
        vbd_error_setf(err, EINVAL, "Cannot meet constraints with align %llu", (unsigned long long)align);
        return -EINVAL;
    }
    vbd_filter_inherit(n);
    uint64_t a = align > n->bl.request_alignment ? align : n->bl.request_alignment;
    uint64_t max_transfer, opt_wz, max_wz, opt_discard, max_discard;
    if (take_limit(opts, "max-transfer", a, &max_transfer, err) < 0 ||
        take_limit(opts, "opt-write-zero", a, &opt_wz, err) < 0 ||
        take_limit(opts, "max-write-zero", opt_wz > a ? opt_wz : a, &max_wz, err) < 0 ||
        take_limit(opts, "opt-discard", a, &opt_discard, err) < 0 ||
        take_limit(opts, "max-discard", opt_discard > a ? opt_discard : a, &max_discard, err) < 0)
        return -EINVAL;
    /* QEMU's blkdebug_refresh_limits: what is given replaces the child's */
    n->bl.request_alignment = (uint32_t)a;
    if (max_transfer)
        n->bl.max_transfer = max_transfer;
    if (max_wz)
        n->bl.max_pwrite_zeroes = max_wz;
    if (opt_discard)
        n->bl.pdiscard_alignment = (uint32_t)opt_discard;
    if (max_discard)
        n->bl.max_pdiscard = max_discard;
    /* QEMU's blkdebug_refresh_filename: the config file named too */
    snprintf(n->filename, sizeof(n->filename), "blkdebug:%s:%s", config_name, n->file->filename);
    return 0;
}

static void blkdebug_close(struct vbd_node *n)
{
    struct blkdebug_state *s = n->opaque;
    free(s->rules);
    for (int i = 0; i < s->nbps; i++)
        free(s->bps[i].tag);
    free(s->bps);
    /* a stopped request keeps its node open: nothing is left here */
    pthread_mutex_destroy(&s->lock);
}

static int blkdebug_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct blkdebug_state *s = n->opaque;
    pthread_mutex_init(&s->lock, NULL);
    int rc = do_open(n, opts, flags, err);
    if (rc < 0)
        blkdebug_close(n); /* a failed open is not closed */
    return rc;
}

static bool is_stopped(struct blkdebug_state *s, struct vbd_co *co)
{
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (struct suspended *r = s->suspended; r && !found; r = r->next)
        found = r->co == co;
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* Breakpoints on one of the events (1 << enum io_type: the request type's
 * own, or a BP_* one): each one that fires stops the request (the newest
 * first, as QEMU's) and goes; the request goes on once each of its stops
 * is resumed. QEMU's blkdebug announces both on stdout (qemu-io's tests
 * read it) and so does this. */
static void stop_at_breakpoints(struct vbd_node *n, unsigned events)
{
    struct blkdebug_state *s = n->opaque;
    bool stops = false;
    pthread_mutex_lock(&s->lock);
    for (int i = s->nbps - 1; i >= 0; i--) {
        if (!(s->bps[i].events & events))
            continue;
        struct suspended *r = vbd_xmalloc(sizeof(*r));
        r->tag = s->bps[i].tag;
        r->co = vbd_co_self();
        r->next = s->suspended;
        s->suspended = r;
        printf("blkdebug: Suspended request '%s'\n", r->tag);
        memmove(&s->bps[i], &s->bps[i + 1], (size_t)(s->nbps - i - 1) * sizeof(*s->bps));
        s->nbps--;
        stops = true;
    }
    pthread_mutex_unlock(&s->lock);
    fflush(stdout);
    /* two resumes before it runs make one wake: it goes when none is left */
    if (stops)
        do
            vbd_co_yield();
        while (is_stopped(s, vbd_co_self()));
}

static int blkdebug_breakpoint(struct vbd_node *n, const char *event, const char *tag)
{
    struct blkdebug_state *s = n->opaque;
    unsigned events;
    struct vbd_error *err = NULL;
    if (!strcmp(event, "pwritev"))
        events = BP_PWRITEV;
    else if (!strcmp(event, "pwritev_zero"))
        events = BP_PWRITEV_ZERO;
    else if (!strcmp(event, "pwritev_done"))
        events = BP_PWRITEV_DONE;
    else if (parse_event(event, "break", &events, &err) < 0) {
        vbd_error_free(err);
        /* QEMU's other events (its drivers' metadata steps) never fire here */
        static const char *const qemu_events[] = {
            "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table", "l2_load",
            "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write", "read_backing_aio",
            "read_compressed", "write_compressed", "vmstate_load", "vmstate_save", "cow_read", "cow_write",
            "reftable_load", "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
            "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
            "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
            "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "pwritev_rmw_head",
            "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "empty_image_prepare", "l1_shrink_write_table", "l1_shrink_free_l2_clusters",
            "cor_write", "cluster_alloc_space", "none", NULL};
        for (int i = 0; qemu_events[i]; i++)
            if (!strcmp(qemu_events[i], event))
                return -ENOTSUP;
        return -ENOENT;
    }
    pthread_mutex_lock(&s->lock);
    s->bps = vbd_xrealloc(s->bps, (size_t)(s->nbps + 1) * sizeof(*s->bps));
    s->bps[s->nbps].events = events;
    s->bps[s->nbps].tag = vbd_xstrdup(tag);
    s->nbps++;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int blkdebug_resume(struct vbd_node *n, const char *tag)
{
    struct blkdebug_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    for (struct suspended **p = &s->suspended; *p; p = &(*p)->next) {
        struct suspended *r = *p;
        if (strcmp(r->tag, tag))
            continue;
        *p = r->next;
        pthread_mutex_unlock(&s->lock);
        printf("blkdebug: Resuming request '%s'\n", r->tag);
        fflush(stdout);
        vbd_co_wake(r->co);
        free(r->tag);
        free(r);
        return 0;
    }
    pthread_mutex_unlock(&s->lock);
    return -ENOENT;
}

/* as QEMU's: the requests stopped with tag go on, its breakpoints go;
 * -ENOENT if there was no breakpoint (even when a request went on) */
static int blkdebug_remove_breakpoint(struct vbd_node *n, const char *tag)
{
    struct blkdebug_state *s = n->opaque;
    while (blkdebug_resume(n, tag) == 0)
        ;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nbps;) {
        if (strcmp(s->bps[i].tag, tag)) {
            i++;
            continue;
        }
        free(s->bps[i].tag);
        memmove(&s->bps[i], &s->bps[i + 1], (size_t)(s->nbps - i - 1) * sizeof(*s->bps));
        s->nbps--;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static bool blkdebug_is_suspended(struct vbd_node *n, const char *tag)
{
    struct blkdebug_state *s = n->opaque;
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (struct suspended *r = s->suspended; r && !found; r = r->next)
        found = !strcmp(r->tag, tag);
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* The request is the event: the rules it fires (error rules become the
 * active ones, set-state rules move the state), then the errno of the
 * first active rule that fails it, or 0. then: the BP_* event QEMU's
 * generic layer fires next (0: none). */
static int check(struct vbd_node *n, enum io_type t, unsigned then, uint64_t off, uint64_t bytes)
{
    struct blkdebug_state *s = n->opaque;
    /* QEMU fires the events before the request reaches blkdebug's error rules */
    if (s->nbps)
        stop_at_breakpoints(n, 1u << t);
    if (then && s->nbps)
        stop_at_breakpoints(n, then);
    if (!s->nrules)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    uint64_t new_state = s->state;
    bool fired = false;
    for (int i = 0; i < s->nrules; i++) {
        struct rule *r = &s->rules[i];
        if (!(r->events & (1u << t)) || (r->state && r->state != s->state))
            continue;
        if (!r->err) {
            new_state = r->new_state; /* set-state */
        } else if (!r->spent) {
            if (!fired)
                for (int k = 0; k < s->nrules; k++)
                    s->rules[k].active = false;
            fired = true;
            r->active = true;
        }
    }
    s->state = new_state;
    for (int i = 0; i < s->nrules && !rc; i++) {
        struct rule *r = &s->rules[i];
        if (!r->active || !(r->iotypes & (1u << t)))
            continue;
        if (r->sector >= 0) { /* a flush covers no sector */
            uint64_t so = (uint64_t)r->sector * 512;
            if (!bytes || so + 512 <= off || so >= off + bytes)
                continue;
        }
        if (r->skip) {
            r->skip--;
            continue;
        }
        if (r->once) {
            r->spent = true;
            r->active = false;
        }
        rc = -r->err;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int blkdebug_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                           unsigned flags)
{
    int rc = check(n, IO_READ, 0, off, bytes);
    return rc ? rc : vbd_node_co_preadv(n->file, off, bytes, q, qoff, flags);
}

static int blkdebug_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                            unsigned flags)
{
    struct blkdebug_state *s = n->opaque;
    int rc = check(n, IO_WRITE, BP_PWRITEV, off, bytes);
    if (!rc)
        rc = vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
    if (s->nbps) /* QEMU's pwritev_done: after the write, whatever it returned */
        stop_at_breakpoints(n, BP_PWRITEV_DONE);
    return rc;
}

static int blkdebug_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    int rc = check(n, IO_DISCARD, 0, off, bytes);
    return rc ? rc : vbd_node_co_pdiscard(n->file, off, bytes);
}

static int blkdebug_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct blkdebug_state *s = n->opaque;
    int rc = check(n, IO_WRITE_ZEROES, BP_PWRITEV_ZERO, off, bytes);
    if (!rc)
        rc = vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
    if (s->nbps)
        stop_at_breakpoints(n, BP_PWRITEV_DONE);
    return rc;
}

/* the generic layer flushes the child after this */
static int blkdebug_flush(struct vbd_node *n)
{
    return check(n, IO_FLUSH, 0, 0, 0);
}

static int blkdebug_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                                 uint64_t *map, struct vbd_node **file)
{
    int rc = check(n, IO_BLOCK_STATUS, 0, off, bytes);
    return rc ? rc : vbd_filter_co_block_status(n, want_zero, off, bytes, pnum, map, file);
}

/* QEMU 7.2's blkdebug is a protocol driver without an allocated size:
 * qemu-img info says "disk size: unavailable" at it and at a format above */
static int64_t blkdebug_allocated_size(struct vbd_node *n)
{
    (void)n;
    return -1;
}

static const char *const blkdebug_protocols[] = {"blkdebug", NULL};

static const struct vbd_driver blkdebug_driver = {
    .name = "blkdebug",
    .kind = VBD_DRV_FILTER,
    .protocols = blkdebug_protocols,
    .parse_filename = blkdebug_parse_filename,
    .state_size = sizeof(struct blkdebug_state),
    .caps = VBD_DRV_CAP_MULTI_LOOP,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .co_preadv = blkdebug_preadv,
    .co_pwritev = blkdebug_pwritev,
    .co_flush = blkdebug_flush,
    .co_pdiscard = blkdebug_pdiscard,
    .co_pwrite_zeroes = blkdebug_pwrite_zeroes,
    .co_block_status = blkdebug_block_status,
    /* through to the image, as QEMU's blkdebug_co_truncate: the formats that
     * grow their file by truncating it (vhdx, parallels) and block_resize */
    .co_truncate = vbd_filter_co_truncate,
    .refresh_size = vbd_filter_refresh_size,
    .get_allocated_size = blkdebug_allocated_size,
    .reopen_rw = vbd_filter_reopen_rw,
    .debug_breakpoint = blkdebug_breakpoint,
    .debug_remove_breakpoint = blkdebug_remove_breakpoint,
    .debug_resume = blkdebug_resume,
    .debug_is_suspended = blkdebug_is_suspended,
};
VBD_DRIVER_REGISTER(blkdebug, blkdebug_driver);
