/* SPDX-License-Identifier: MIT */
/*
 * Filter driver "blkdebug": fails chosen requests of its child with a
 * chosen errno, for tests of error paths (werror/rerror, job error
 * policies) without tricks on the host. Options as QEMU's
 * BlockdevOptionsBlkdebug: the child is "image", the rules
 * inject-error.N.{event,iotype,errno,sector,once}. vbd's drivers emit no
 * debug events of their own, so an event names the request that triggers
 * the rule: read_aio a read, write_aio a write (zeroing and discard
 * included), flush_to_disk a flush; iotype narrows it (read, write,
 * write-zeroes, discard, flush). sector: only requests covering that 512-byte
 * sector (-1: any). once: the rule fires once, then is spent. vbd's own
 * x-skip=N lets the first N matching requests through: the (N+1)th fails.
 */
#include "block/filter/passthrough.h"
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
    unsigned types; /* 1 << enum io_type */
    int err;        /* positive errno */
    int64_t sector; /* -1: any */
    bool once, spent;
    uint64_t skip;  /* matching requests still to let through */
};

struct blkdebug_state {
    pthread_mutex_t lock; /* rules' counters: requests come from several loops */
    struct rule *rules;
    int nrules;
};

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
    vbd_opt_take_u64(o, "state", &(uint64_t){0}, NULL);
    int rc = -EINVAL;
    char what[160];
    snprintf(what, sizeof(what), "blkdebug %s", path);
    if (vbd_opts_check_empty(o, what, err) < 0)
        goto out;
    if (!event) {
        vbd_error_setf(err, EINVAL, "Parameter '%s.event' is missing", path);
        goto out;
    }
    if (!strcmp(event, "read_aio"))
        r->types = 1u << IO_READ;
    else if (!strcmp(event, "write_aio"))
        r->types = 1u << IO_WRITE | 1u << IO_WRITE_ZEROES | 1u << IO_DISCARD;
    else if (!strcmp(event, "flush_to_disk"))
        r->types = 1u << IO_FLUSH;
    else {
        vbd_error_setf(err, EINVAL,
                       "%s.event: '%s' is not an event vbd's blkdebug fires (read_aio, write_aio, flush_to_disk)",
                       path, event);
        goto out;
    }
    if (iotype) {
        int t = -1;
        for (int i = 0; io_names[i]; i++)
            if (!strcmp(io_names[i], iotype))
                t = i;
        if (t < 0) {
            vbd_error_setf(err, EINVAL, "Parameter '%s.iotype' does not accept value '%s'", path, iotype);
            goto out;
        }
        r->types = 1u << t;
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

static int do_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct blkdebug_state *s = n->opaque;
    struct json_object *rules = vbd_opt_take_obj(opts, "inject-error");
    if (rules) {
        /* keyval gives {"0":{...},"1":{...}}, JSON an array */
        int count = json_object_is_type(rules, json_type_array) ? (int)json_object_array_length(rules)
                    : json_object_is_type(rules, json_type_object) ? json_object_object_length(rules)
                                                                    : -1;
        if (count < 0) {
            vbd_error_setf(err, EINVAL, "Parameter 'inject-error' expects a list of rules");
            json_object_put(rules);
            return -EINVAL;
        }
        s->rules = calloc((size_t)count + 1, sizeof(*s->rules));
        for (int i = 0; i < count; i++) {
            char key[32], path[48];
            snprintf(key, sizeof(key), "%d", i);
            snprintf(path, sizeof(path), "inject-error.%d", i);
            struct json_object *r = json_object_is_type(rules, json_type_array) ? json_object_array_get_idx(rules, i)
                                                                                : json_object_object_get(rules, key);
            if (!r || !json_object_is_type(r, json_type_object)) {
                vbd_error_setf(err, EINVAL, "Parameter '%s' expects a rule object", path);
                json_object_put(rules);
                return -EINVAL;
            }
            if (parse_rule(r, path, &s->rules[i], err) < 0) {
                json_object_put(rules);
                return -EINVAL;
            }
        }
        s->nrules = count;
        json_object_put(rules);
    }
    /* QEMU takes these; the limits they set are not emulated by vbd */
    uint64_t ignore = 0;
    char *config = NULL;
    if (vbd_opt_take_str(opts, "config", &config, err) < 0)
        return -EINVAL;
    if (config) {
        vbd_error_setf(err, ENOTSUP, "blkdebug: config files are not supported by vbd (use inject-error)");
        free(config);
        return -ENOTSUP;
    }
    if (vbd_opt_take_u64(opts, "align", &ignore, err) < 0)
        return -EINVAL;
    n->file = vbd_open_child(n, opts, "image", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    /* QEMU 7.2's blkdebug_open: an alignment it could not honour is refused (0: none) */
    if (ignore && (ignore >= INT_MAX || (ignore & (ignore - 1)))) {
        vbd_error_setf(err, EINVAL, "Cannot meet constraints with align %llu", (unsigned long long)ignore);
        return -EINVAL;
    }
    vbd_filter_inherit(n);
    snprintf(n->filename, sizeof(n->filename), "blkdebug::%s", n->file->filename);
    return 0;
}

static void blkdebug_close(struct vbd_node *n)
{
    struct blkdebug_state *s = n->opaque;
    free(s->rules);
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

/* The errno of the first rule this request triggers, or 0. */
static int check(struct vbd_node *n, enum io_type t, uint64_t off, uint64_t bytes)
{
    struct blkdebug_state *s = n->opaque;
    if (!s->nrules)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nrules && !rc; i++) {
        struct rule *r = &s->rules[i];
        if (r->spent || !(r->types & (1u << t)))
            continue;
        if (r->sector >= 0 && t != IO_FLUSH) {
            uint64_t so = (uint64_t)r->sector * 512;
            if (so + 512 <= off || so >= off + bytes)
                continue;
        }
        if (r->skip) {
            r->skip--;
            continue;
        }
        if (r->once)
            r->spent = true;
        rc = -r->err;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int blkdebug_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                           unsigned flags)
{
    int rc = check(n, IO_READ, off, bytes);
    return rc ? rc : vbd_node_co_preadv(n->file, off, bytes, q, qoff, flags);
}

static int blkdebug_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                            unsigned flags)
{
    int rc = check(n, IO_WRITE, off, bytes);
    return rc ? rc : vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
}

static int blkdebug_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    int rc = check(n, IO_DISCARD, off, bytes);
    return rc ? rc : vbd_node_co_pdiscard(n->file, off, bytes);
}

static int blkdebug_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    int rc = check(n, IO_WRITE_ZEROES, off, bytes);
    return rc ? rc : vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
}

/* the generic layer flushes the child after this */
static int blkdebug_flush(struct vbd_node *n)
{
    return check(n, IO_FLUSH, 0, 0);
}

static int blkdebug_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                                 uint64_t *map, struct vbd_node **file)
{
    int rc = check(n, IO_BLOCK_STATUS, off, bytes);
    return rc ? rc : vbd_filter_co_block_status(n, want_zero, off, bytes, pnum, map, file);
}

static const struct vbd_driver blkdebug_driver = {
    .name = "blkdebug",
    .kind = VBD_DRV_FILTER,
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
    .refresh_size = vbd_filter_refresh_size,
    .reopen_rw = vbd_filter_reopen_rw,
};
VBD_DRIVER_REGISTER(blkdebug, blkdebug_driver);
