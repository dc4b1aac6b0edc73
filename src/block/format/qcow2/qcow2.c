/* SPDX-License-Identifier: MIT */
/*
 * The qcow2 format driver: open, reads through the cluster map (backing
 * file, zero and compressed clusters, subclusters), allocating writes with
 * copy-on-write, block status, info and create.
 *
 * Crash safety of an allocating write: the data and the new cluster's
 * refcount are written and flushed before the L2 entry that makes the
 * cluster visible; a new L2 table is written and flushed before the L1
 * entry that points to it. A crash leaves at worst leaked clusters.
 */
#include "qcow2.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#define DEFAULT_L2_CACHE_BYTES (8u << 20)
#define DEFAULT_REFCOUNT_CACHE_BYTES (256u << 10) /* 4 blocks of 64 KiB, at least 2 */

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* as QEMU: version 1 is the qcow driver's; later versions here, so that
     * an unknown one gets qcow2's error */
    return len >= 8 && get_be32p(buf) == QCOW2_MAGIC && get_be32p(buf + 4) >= 2 ? 100 : 0;
}

static void qcow2_close(struct vbd_node *n);

/* cache-clean-interval: cached tables not used during the last interval
 * give their memory back (clean ones only; nothing is written here). */
static void clean_caches(void *arg)
{
    struct qcow2_state *s = arg;
    if (!s->lock.locked) { /* no coroutine is inside the metadata code */
        for (int i = 0; i < s->l2_cache_slots; i++) {
            struct qcow2_l2_slot *sl = &s->l2_cache[i];
            if (sl->table && !sl->dirty && sl->lru <= s->lru_at_last_clean) {
                free(sl->table);
                sl->table = NULL;
                sl->offset = 0;
            }
        }
        for (int i = 0; i < s->rc_nslots; i++) {
            struct qcow2_rc_slot *sl = &s->rc_slots[i];
            if (sl->data && !sl->dirty && sl->lru <= s->lru_at_last_clean && sl != s->rc_cur) {
                free(sl->data);
                sl->data = NULL;
                sl->offset = 0;
            }
        }
        s->lru_at_last_clean = s->lru_clock;
    }
    if (s->cache_clean_interval) /* a reopen may have set it to 0 (never) */
        vbd_timer_arm(&s->clean_timer, vbd_clock_ns() + s->cache_clean_interval * 1000000000ull);
}

/* The data file: the "data-file" option, or the name in the header
 * (relative to the image's directory, as backing file names are). */
static int open_data_file(struct vbd_node *n, struct qcow2_state *s, struct json_object *opts, unsigned flags,
                          struct vbd_error **err)
{
    uint32_t len;
    const char *name = qcow2_data_file_name(s, &len);
    char path[4096] = "";
    if (name && len) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", n->file->filename);
        char *slash = strrchr(dir, '/');
        if (name[0] == '/' || !slash)
            snprintf(path, sizeof(path), "%.*s", (int)len, name);
        else {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%.*s", dir, (int)len, name);
        }
    }
    if (!path[0] && !vbd_opt_get(opts, "data-file")) {
        vbd_error_setf(err, EINVAL, "qcow2 image '%s' has an external data file but no name for it: 'data-file' is required",
                       n->filename);
        return -EINVAL;
    }
    s->data = vbd_open_child(n, opts, "data-file", path[0] ? path : NULL, (flags | VBD_OPEN_PROTOCOL) & ~VBD_OPEN_NO_BACKING,
                             err);
    if (!s->data) {
        if (err && *err)
            vbd_error_prepend(err, "Could not open the data file of '%s': ", n->filename);
        s->data = NULL;
        return -EINVAL;
    }
    return 0;
}

/* An open for writing, check -r's too, clears the autoclear bits of
 * features vbd does not know (it cannot keep them up to date), as QEMU's
 * open does. */
static int clear_unknown_autoclear(struct vbd_node *n, struct qcow2_state *s, struct vbd_error **err)
{
    uint64_t known = QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    if (s->version < 3 || !(s->autoclear & ~known))
        return 0;
    s->autoclear &= known;
    return qcow2_rewrite_header(s, n->backing_file, n->backing_format, err);
}

/* Before the first write: a dirty image (lazy refcounts, not closed
 * cleanly) gets its refcounts rebuilt, as QEMU does at open; bitmaps we do
 * not keep up to date are marked invalid (the autoclear rule). */
static int open_for_writing(struct vbd_node *n, struct qcow2_state *s, bool take_bitmaps, struct vbd_error **err)
{
    int rc = 0;
    if (s->incompat & QCOW2_INCOMPAT_DIRTY) {
        struct vbd_check_result res = {0};
        /* what it finds and repairs is printed, as QEMU's open prints it */
        rc = qcow2_co_check(n, &res, VBD_CHECK_FIX_LEAKS | VBD_CHECK_FIX_ERRORS, err);
        if (rc == 0 && (res.corruptions || res.check_errors)) {
            vbd_error_setf(err, EIO, "qcow2: the image was not closed cleanly and its refcounts could not be repaired "
                           "(%llu corruptions left); run 'vbd-img check -r all'", (unsigned long long)res.corruptions);
            return -EIO;
        }
        if (rc == 0)
            rc = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
    }
    if (rc == 0)
        rc = clear_unknown_autoclear(n, s, err); /* features we do not keep up to date stop being valid */
    /* QEMU's close stores every consistent bitmap anew after a read-write
     * open; not after an open that does no I/O (vbd-img commit's look at
     * the chain before its real open: qemu-img opens once, and the
     * bitmaps moved twice) */
    if (rc == 0 && take_bitmaps) {
        rc = qcow2_bitmaps_open(s, err);
        s->bitmaps_store_anew = true;
    }
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qcow2: could not prepare the image for writing: %s", strerror(-rc));
    return rc;
}

/* overlap-check (QEMU's Qcow2OverlapChecks): a template name or an object
 * of a template and per-kind flags, which override the template's bits
 * (QEMU 7.2's qcow2_update_options_prepare, its words). *mask gets the
 * kinds of metadata a data write may not hit (QCOW2_OL_*); left out,
 * "cached", QEMU's default. */
static int take_overlap_check(struct json_object *opts, uint16_t *mask, struct vbd_error **err)
{
    static const char *const templates[] = {"none", "constant", "cached", "all", NULL};
    static const uint16_t template_masks[] = {0, QCOW2_OL_CONSTANT, QCOW2_OL_CACHED, QCOW2_OL_ALL};
    static const char *const flags[] = {"main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
                                        "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory"};
    struct json_object *v = vbd_opt_take_obj(opts, "overlap-check");
    int idx, rc = 0;
    *mask = QCOW2_OL_CACHED;
    if (!v)
        return 0;
    if (json_object_is_type(v, json_type_string)) {
        const char *t = json_object_get_string(v);
        for (idx = 0; templates[idx] && strcmp(templates[idx], t); idx++)
            ;
        if (!templates[idx]) {
            vbd_error_setf(err, EINVAL, "Parameter 'overlap-check' does not accept value '%s'", t);
            rc = -EINVAL;
        } else
            *mask = template_masks[idx];
    } else if (!json_object_is_type(v, json_type_object)) {
        vbd_error_setf(err, EINVAL, "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks");
        rc = -EINVAL;
    } else {
        struct json_object *t;
        /* QAPI names the template member without the prefix */
        if (json_object_object_get_ex(v, "template", &t) && json_object_is_type(t, json_type_string)) {
            for (idx = 0; templates[idx] && strcmp(templates[idx], json_object_get_string(t)); idx++)
                ;
            if (!templates[idx]) {
                vbd_error_setf(err, EINVAL, "Parameter 'template' does not accept value '%s'", json_object_get_string(t));
                rc = -EINVAL;
            } else
                *mask = template_masks[idx];
            json_object_object_del(v, "template");
        }
        for (size_t i = 0; rc == 0 && i < sizeof(flags) / sizeof(flags[0]); i++) {
            bool b;
            int got = vbd_opt_take_bool(v, flags[i], &b, err);
            if (got < 0)
                rc = -EINVAL;
            else if (got)
                *mask = (uint16_t)(b ? *mask | (1u << i) : *mask & ~(1u << i));
        }
        json_object_object_foreach(v, key, val)
        {
            (void)val;
            if (rc == 0) {
                vbd_error_setf(err, EINVAL, "Parameter 'overlap-check.%s' is unexpected", key);
                rc = -EINVAL;
            }
        }
    }
    json_object_put(v);
    return rc;
}

/* The runtime options an open and a blockdev-reopen take (QEMU 7.2's
 * qcow2_update_options_prepare and read_cache_sizes, their words). */
struct runtime_opts {
    uint64_t l2_cache, rc_cache, clean_interval, l2_entry;
    int has_entry, has_lazy;
    bool lazy;
    uint16_t overlap_mask;
    uint8_t discard_request_opt; /* as qcow2_state's */
    bool discard_snapshot, discard_other;
};

static int take_runtime_opts(struct json_object *opts, struct runtime_opts *r, struct vbd_error **err)
{
    uint64_t total = 0;
    *r = (struct runtime_opts){.l2_cache = DEFAULT_L2_CACHE_BYTES, .rc_cache = DEFAULT_REFCOUNT_CACHE_BYTES};
    bool has_l2 = vbd_opt_get(opts, "l2-cache-size") != NULL, has_rc = vbd_opt_get(opts, "refcount-cache-size") != NULL;
    bool has_total = vbd_opt_get(opts, "cache-size") != NULL;
    if (vbd_opt_take_size(opts, "l2-cache-size", &r->l2_cache, err) < 0 ||
        vbd_opt_take_size(opts, "refcount-cache-size", &r->rc_cache, err) < 0 ||
        vbd_opt_take_size(opts, "cache-size", &total, err) < 0 ||
        vbd_opt_take_u64(opts, "cache-clean-interval", &r->clean_interval, err) < 0)
        return -EINVAL;
    if (has_total && has_l2 && has_rc) {
        vbd_error_setf(err, EINVAL, "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
        return -EINVAL;
    }
    if (has_total && has_l2 && r->l2_cache > total) {
        vbd_error_setf(err, EINVAL, "l2-cache-size may not exceed cache-size");
        return -EINVAL;
    }
    if (has_total && has_rc && r->rc_cache > total) {
        vbd_error_setf(err, EINVAL, "refcount-cache-size may not exceed cache-size");
        return -EINVAL;
    }
    r->has_entry = vbd_opt_take_size(opts, "l2-cache-entry-size", &r->l2_entry, err);
    r->has_lazy = r->has_entry < 0 ? -1 : vbd_opt_take_bool(opts, "lazy-refcounts", &r->lazy, err);
    if (r->has_lazy < 0)
        return -EINVAL;
    /* QEMU's defaults: requests as discard=unmap says, snapshots on, the rest off */
    bool req = false;
    int has_req = vbd_opt_take_bool(opts, "pass-discard-request", &req, err);
    r->discard_snapshot = true;
    if (has_req < 0 || vbd_opt_take_bool(opts, "pass-discard-snapshot", &r->discard_snapshot, err) < 0 ||
        vbd_opt_take_bool(opts, "pass-discard-other", &r->discard_other, err) < 0)
        return -EINVAL;
    r->discard_request_opt = has_req ? (req ? 2 : 1) : 0;
    if (take_overlap_check(opts, &r->overlap_mask, err) < 0)
        return -EINVAL;
    if (r->clean_interval > UINT_MAX) {
        vbd_error_setf(err, EINVAL, "Cache clean interval too big");
        return -EINVAL;
    }
    if (has_total && !has_l2 && !has_rc) { /* QEMU's split: the L2 cache first, refcounts a quarter of it */
        r->rc_cache = total / 5;
        r->l2_cache = total - r->rc_cache;
    } else if (has_total && has_l2 && !has_rc) {
        r->rc_cache = total > r->l2_cache ? total - r->l2_cache : 0;
    } else if (has_total && has_rc && !has_l2) {
        r->l2_cache = total > r->rc_cache ? total - r->rc_cache : 0;
    }
    return 0;
}

/* What the image's header allows of them (known once it is read). */
static int check_runtime_opts(struct qcow2_state *s, const struct runtime_opts *r, struct vbd_error **err)
{
    /* vbd's L2 cache holds whole tables: the entry size is only checked as QEMU does */
    if (r->has_entry && (r->l2_entry < 512 || r->l2_entry > s->cluster_size || (r->l2_entry & (r->l2_entry - 1)))) {
        vbd_error_setf(err, EINVAL, "L2 cache entry size must be a power of two between 512 and the cluster size (%llu)",
                       (unsigned long long)s->cluster_size);
        return -EINVAL;
    }
    if (r->has_lazy && r->lazy && s->version < 3) {
        vbd_error_setf(err, EINVAL, "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level");
        return -EINVAL;
    }
    return 0;
}

/* The caches' sizes in tables (whole clusters) for the options' bytes: an
 * L2 cache never larger than the image needs, at least 4 tables; a
 * refcount cache of 2 to 1024 blocks. */
static int l2_cache_slots(struct qcow2_state *s, uint64_t bytes)
{
    uint64_t per_table = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t want = (s->n->size + per_table - 1) / per_table + 1;
    uint64_t cap = bytes / s->cluster_size;
    uint64_t slots = want < cap ? want : cap;
    return slots < 4 ? 4 : (int)slots;
}

static int refcount_cache_slots(struct qcow2_state *s, uint64_t bytes)
{
    uint64_t slots = bytes / s->cluster_size;
    return slots < 2 ? 2 : slots > 1024 ? 1024 : (int)slots;
}

static int qcow2_open_inner(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    s->n = n;
    struct runtime_opts ro;
    if (take_runtime_opts(opts, &ro, err) < 0)
        return -EINVAL;
    uint64_t l2_cache = ro.l2_cache, rc_cache = ro.rc_cache;
    s->cache_clean_interval = ro.clean_interval;
    /* discard=unmap on the file unless its options say otherwise, as QEMU
     * gives a format's children (bdrv_inherited_options): qcow2 decides
     * what reaches the file (a shrink's freed clusters, nothing else yet) */
    n->file = vbd_open_child(n, opts, "file", NULL, flags | VBD_OPEN_UNMAP, err);
    if (!n->file)
        return -EINVAL;
    int rc = qcow2_read_header(n, s, flags, err);
    if (rc < 0)
        return rc;
    if (check_runtime_opts(s, &ro, err) < 0)
        return -EINVAL;
    if (ro.has_lazy)
        s->lazy_opt = ro.lazy ? 2 : 1;
    s->overlap_mask = ro.overlap_mask;
    s->discard_request_opt = ro.discard_request_opt;
    s->pass_discard_snapshot = ro.discard_snapshot;
    s->pass_discard_other = ro.discard_other;
    s->rc_nslots = refcount_cache_slots(s, rc_cache);
    rc = qcow2_load_reftable(s, (flags & VBD_OPEN_CHECK) != 0, err);
    if (rc < 0)
        return rc;
    if (s->nb_snapshots) {
        rc = qcow2_snapshot_l1_ranges(s);
        if (rc < 0) {
            vbd_error_setf(err, EINVAL, "qcow2 snapshot table (%u snapshots at 0x%llx) cannot be read or is too large",
                           s->nb_snapshots, (unsigned long long)s->snapshots_offset);
            return -EINVAL;
        }
    }
    s->data = n->file;
    if (s->external) {
        rc = open_data_file(n, s, opts, flags, err);
        if (rc < 0)
            return rc;
    } else if (vbd_opt_get(opts, "data-file")) {
        vbd_error_setf(err, EINVAL, "'data-file' can only be set for images with an external data file");
        return -EINVAL;
    }
    s->read_only = !(flags & VBD_OPEN_RDWR);
    s->file_end = (vbd_node_size(n->file) + s->cluster_size - 1) & ~(s->cluster_size - 1);
    if (!s->read_only && (rc = qcow2_skip_counted_tail(s)) < 0) {
        vbd_error_setf(err, -rc, "Could not read the qcow2 refcount blocks: %s", strerror(-rc));
        return rc;
    }
    s->l2_cache_slots = l2_cache_slots(s, l2_cache);
    s->l2_cache = calloc((size_t)s->l2_cache_slots, sizeof(*s->l2_cache));
    s->cluster_buf = vbd_alloc_aligned(4096, s->cluster_size);
    s->cbuf = vbd_alloc_aligned(4096, 2 * s->cluster_size + 512);
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.max_transfer = 0;
    n->bl.opt_transfer = (uint32_t)s->cluster_size;
    n->supported_write_flags = s->external ? 0 : VBD_REQ_COMPRESSED; /* no compressed clusters in a data file */
    /* zero_or_discard fails rather than write zero data; version 3 has
     * zero clusters, so a write of zeroes may deallocate (QEMU's flags) */
    n->supported_zero_flags = VBD_REQ_NO_FALLBACK | (s->version >= 3 ? VBD_REQ_MAY_UNMAP : 0);
    if (s->cache_clean_interval) {
        s->clean_timer.fn = clean_caches;
        s->clean_timer.arg = s;
        vbd_timer_arm(&s->clean_timer, vbd_clock_ns() + s->cache_clean_interval * 1000000000ull);
    }
    if (!s->read_only && !(flags & VBD_OPEN_CHECK)) {
        rc = open_for_writing(n, s, !(flags & VBD_OPEN_NO_IO), err);
        if (rc < 0)
            return rc;
    } else if (!s->read_only) {
        rc = clear_unknown_autoclear(n, s, err);
        if (rc < 0)
            return rc;
        s->check_open = true; /* the bitmaps wait for the repair (qcow2_co_check) */
    }
    return vbd_open_backing(n, opts, flags, err);
}

/* The node layer frees only the node on a failed open: the driver frees its state. */
static int qcow2_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    int rc = qcow2_open_inner(n, opts, flags, err);
    if (rc < 0)
        qcow2_close(n);
    return rc;
}

static void writeback_co(void *arg);
static void close_co(void *arg);

static void qcow2_close(struct vbd_node *n)
{
    struct qcow2_state *s = n->opaque;
    if (s->l2_cache && !s->read_only) {
        /* metadata still in the cache reaches the disk before the image is closed */
        if (vbd_in_co())
            close_co(s);
        else
            vbd_co_run_sync(close_co, s);
    }
    if (s->clean_timer.armed)
        vbd_timer_cancel(&s->clean_timer);
    for (int i = 0; s->l2_cache && i < s->l2_cache_slots; i++)
        free(s->l2_cache[i].table);
    free(s->l2_cache);
    s->l2_cache = NULL;
    free(s->reftable);
    free(s->reftable_bad);
    s->reftable_bad = NULL;
    qcow2_free_refcount_cache(s);
    free(s->cluster_buf);
    free(s->cbuf);
    s->reftable = NULL;
    s->cluster_buf = s->cbuf = NULL;
    free(s->frees);
    s->frees = NULL;
    free(s->to_punch);
    s->to_punch = NULL;
    while (s->nbufpool)
        free(s->bufpool[--s->nbufpool]);
    qcow2_bitmaps_free(s);
    free(s->snap_l1);
    s->snap_l1 = NULL;
    free(s->meta_index);
    s->meta_index = NULL;
    s->meta_valid = false;
    if (s->data && s->data != n->file)
        vbd_node_unref(s->data);
    s->data = NULL;
    qcow2_free_header(s);
}

struct extent {
    enum qcow2_cluster_type type;
    uint64_t host; /* for NORMAL: host offset of off */
    uint64_t len;
    uint64_t entry;
};

/* The mapping of off and how far it stays the same kind (contiguous on the host). */
static int map_extent(struct qcow2_state *s, uint64_t off, uint64_t max, struct extent *x)
{
    uint64_t entry, bitmap;
    int rc = qcow2_get_entry(s, off, &entry, &bitmap);
    if (rc < 0)
        return rc;
    uint64_t in_cluster = off & (s->cluster_size - 1);
    uint64_t unit = s->extended_l2 ? (1ull << s->subcluster_bits) : s->cluster_size;
    uint64_t len = unit - (off & (unit - 1));
    enum qcow2_cluster_type t = qcow2_entry_type(s, entry);
    /* bits 56-61 of a compressed entry are part of its sector count */
    if (t != QCOW2_COMPRESSED && (entry & L2E_STD_RESERVED)) {
        vbd_error_report("qcow2 image '%s': the L2 entry of guest offset 0x%llx has reserved bits set (0x%llx)",
                         s->n->filename, (unsigned long long)off, (unsigned long long)entry);
        return -EIO;
    }
    if (t == QCOW2_COMPRESSED && s->external) /* its bytes would come from the metadata file */
        return qcow2_signal_corruption(s, "compressed cluster entry in an image with an external data file", off);
    if (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) {
        if ((entry & L2E_OFFSET_MASK) & (s->cluster_size - 1)) {
            vbd_error_report("qcow2: cluster allocation offset 0x%llx unaligned (L2 entry 0x%llx)",
                             (unsigned long long)(entry & L2E_OFFSET_MASK), (unsigned long long)entry);
            return -EIO;
        }
    }
    if (s->extended_l2 && t != QCOW2_COMPRESSED) {
        int sc = (int)(in_cluster >> s->subcluster_bits);
        bool alloc = (bitmap >> sc) & 1, zero = (bitmap >> (32 + sc)) & 1;
        if (alloc && zero)
            return -EIO; /* both bits set is invalid */
        bool mapped = t == QCOW2_NORMAL; /* a host cluster (offset 0 counts in a data file) */
        if (zero)
            t = QCOW2_ZERO_PLAIN;
        else if (!alloc)
            t = mapped ? QCOW2_UNALLOC_ALLOC : QCOW2_UNALLOCATED;
        else if (!mapped)
            return -EIO;
        else
            t = QCOW2_NORMAL;
    }
    x->type = t;
    x->entry = entry;
    x->host = (entry & L2E_OFFSET_MASK) + in_cluster;
    if (len > max)
        len = max;
    x->len = len;
    /* extend over following units of the same kind */
    while (x->len < max && t != QCOW2_COMPRESSED) {
        struct extent y;
        uint64_t next = off + x->len;
        uint64_t e2, b2;
        if (qcow2_get_entry(s, next, &e2, &b2) < 0)
            break;
        enum qcow2_cluster_type t2 = qcow2_entry_type(s, e2);
        if (t2 != QCOW2_COMPRESSED && (e2 & L2E_STD_RESERVED))
            break; /* reported when the next extent starts there */
        if (s->extended_l2 && t2 != QCOW2_COMPRESSED) {
            int sc = (int)((next & (s->cluster_size - 1)) >> s->subcluster_bits);
            bool a = (b2 >> sc) & 1, z = (b2 >> (32 + sc)) & 1;
            t2 = (a && z) ? QCOW2_COMPRESSED /* stop */
                 : z      ? QCOW2_ZERO_PLAIN
                 : !a     ? (t2 == QCOW2_NORMAL ? QCOW2_UNALLOC_ALLOC : QCOW2_UNALLOCATED)
                          : QCOW2_NORMAL;
        }
        y.host = (e2 & L2E_OFFSET_MASK) + (next & (s->cluster_size - 1));
        if (t2 != t || ((t == QCOW2_NORMAL || t == QCOW2_UNALLOC_ALLOC) && y.host != x->host + x->len))
            break;
        uint64_t l = unit < max - x->len ? unit : max - x->len;
        x->len += l;
    }
    return 0;
}

static struct qcow2_range *range_conflict(struct qcow2_state *s, uint64_t start, uint64_t end, bool exclusive)
{
    for (struct qcow2_range *r = s->ranges; r; r = r->next)
        if (r->start < end && start < r->end && (exclusive || r->exclusive))
            return r;
    return NULL;
}

/* Lock held. Registers r for [start, end) once nothing conflicting is in
 * flight. Returns true when it had to wait: the lock was dropped, so what
 * the caller looked up before may have changed. */
static bool range_lock(struct qcow2_state *s, struct qcow2_range *r, uint64_t start, uint64_t end, bool exclusive)
{
    bool waited = false;
    struct qcow2_range *busy;
    while ((busy = range_conflict(s, start, end, exclusive))) {
        waited = true;
        vbd_co_mutex_unlock(&s->lock);
        vbd_co_queue_wait(&busy->waiters); /* its owner wakes us before its frame is gone */
        vbd_co_mutex_lock(&s->lock);
    }
    *r = (struct qcow2_range){.start = start, .end = end, .exclusive = exclusive, .next = s->ranges};
    s->ranges = r;
    return waited;
}

static void range_unlock(struct qcow2_state *s, struct qcow2_range *r)
{
    for (struct qcow2_range **p = &s->ranges; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    vbd_co_queue_wake_all(&r->waiters);
}

static uint64_t cluster_floor(const struct qcow2_state *s, uint64_t off)
{
    return off & ~(s->cluster_size - 1);
}

static uint64_t cluster_ceil(const struct qcow2_state *s, uint64_t off)
{
    return (off + s->cluster_size - 1) & ~(s->cluster_size - 1);
}

/* range_held: the caller holds an exclusive range over [off, off+bytes)
 * (a copy-on-write reading the cluster it is about to replace). flags: the
 * read's VBD_REQ_INLINE (a caller reading one chunk at a time: the data
 * file's page-cache copy is made on its thread, not handed to the pool),
 * passed to the data file and the backing file. */
static int read_range(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      bool range_held, unsigned flags)
{
    struct qcow2_state *s = n->opaque;
    while (bytes) {
        struct extent x;
        struct qcow2_range r;
        bool ranged = false;
        vbd_co_mutex_lock(&s->lock);
        int rc = map_extent(s, off, bytes, &x);
        if (rc == 0 && !range_held &&
            (x.type == QCOW2_NORMAL ||
             (n->backing && (x.type == QCOW2_UNALLOCATED || x.type == QCOW2_UNALLOC_ALLOC)))) {
            /* NORMAL: the host clusters stay ours until the read is done.
             * Read through to the backing: a write allocating these
             * clusters waits until the backing's data is read. A backup's
             * copy-before-write into a fleecing image whose backing is the
             * source would otherwise let the guest write that follows it
             * land in the source under this read, which then returns data
             * newer than the point in time (QEMU serialises those writes,
             * block-copy's serialising requests). */
            ranged = true;
            if (range_lock(s, &r, cluster_floor(s, off), cluster_ceil(s, off + x.len), false))
                rc = map_extent(s, off, x.len, &x);
        }
        if (rc == 0 && x.type == QCOW2_COMPRESSED) {
            rc = qcow2_read_compressed(s, x.entry, s->cluster_buf);
            if (rc == 0) /* copied out before the shared buffer is released */
                vbd_iov_from_buf(q->iov, q->niov, qoff, s->cluster_buf + (off & (s->cluster_size - 1)), x.len);
        }
        vbd_co_mutex_unlock(&s->lock);
        if (rc == 0) {
            switch (x.type) {
            case QCOW2_UNALLOCATED:
            case QCOW2_UNALLOC_ALLOC:
                rc = vbd_node_co_read_backing(n, off, x.len, q, qoff, flags);
                break;
            case QCOW2_ZERO_PLAIN:
            case QCOW2_ZERO_ALLOC:
                vbd_iov_memset(q->iov, q->niov, qoff, 0, x.len);
                break;
            case QCOW2_NORMAL:
                rc = vbd_node_co_preadv(s->data, x.host, x.len, q, qoff, flags & VBD_REQ_INLINE);
                break;
            case QCOW2_COMPRESSED:
                break;
            }
        }
        if (ranged)
            range_unlock(s, &r);
        if (rc < 0)
            return rc;
        off += x.len;
        qoff += x.len;
        bytes -= x.len;
    }
    return 0;
}

static int qcow2_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    return read_range(n, off, bytes, q, qoff, false, flags);
}

/* Host clusters for guest clusters [guest, +count): with a data file the
 * same offsets there (nothing to count), else the first free ones. */
static int64_t alloc_data(struct qcow2_state *s, uint64_t guest, uint64_t count)
{
    if (s->external)
        return (int64_t)(guest & ~(s->cluster_size - 1));
    return qcow2_alloc_clusters(s, count);
}

static uint8_t *get_buf(struct qcow2_state *s)
{
    return s->nbufpool ? s->bufpool[--s->nbufpool] : vbd_alloc_aligned(4096, s->cluster_size);
}

static void put_buf(struct qcow2_state *s, uint8_t *b)
{
    if (s->nbufpool < 16)
        s->bufpool[s->nbufpool++] = b;
    else
        free(b);
}

/* A write of [in, in+len) of a cluster with this entry goes to the mapped
 * host cluster as it is, changing no metadata. */
static bool plain_overwrite(const struct qcow2_state *s, uint64_t entry, uint64_t bitmap, uint64_t in, uint64_t len)
{
    if (entry & (QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO) || !(entry & QCOW_OFLAG_COPIED))
        return false;
    if (!(entry & L2E_OFFSET_MASK) && !s->external)
        return false;
    if (!s->extended_l2)
        return true;
    if ((bitmap >> 32) & bitmap)
        return false; /* invalid: the copy-on-write path reports it, as QEMU does */
    /* every subcluster written to must be allocated (and so not zero) already */
    uint32_t first = (uint32_t)(in >> s->subcluster_bits), last = (uint32_t)((in + len - 1) >> s->subcluster_bits);
    uint32_t want = (uint32_t)(((2ull << last) - 1) & ~((1ull << first) - 1));
    return ((uint32_t)bitmap & want) == want && !((bitmap >> 32) & want);
}

/* Subclusters [first, last] of a cluster as bits of its L2 bitmap's lower half. */
static uint64_t sub_mask(uint32_t first, uint32_t last)
{
    return ((2ull << last) - 1) & ~((1ull << first) - 1);
}

/*
 * Extended L2: the bytes [*from, *to) of the cluster that a write of
 * [in, in+len) puts on the host: the data and the copy-on-write around it,
 * whole subclusters where they were not allocated (QEMU 7.2's
 * calculate_l2_meta). Into its own (COPIED) cluster: only the edge
 * subclusters written to that are not allocated yet are filled up, and no
 * other subcluster changes. Into a new cluster: where the old one was
 * unallocated, just the subclusters written to (the rest stay unallocated,
 * reading from the backing file, or zero); from a compressed one the whole
 * cluster; from one shared with a snapshot, also every subcluster the old
 * cluster had allocated (from its first to its last).
 */
static void sub_cow_span(const struct qcow2_state *s, enum qcow2_cluster_type t, bool in_place, uint64_t bitmap,
                         uint64_t in, uint64_t len, uint64_t *from, uint64_t *to)
{
    uint32_t sb = s->subcluster_bits, first = (uint32_t)(in >> sb), last = (uint32_t)((in + len - 1) >> sb);
    uint32_t alloc = (uint32_t)bitmap;
    uint64_t sc = 1ull << sb;
    if (in_place) {
        *from = (alloc >> first) & 1 ? in : (uint64_t)first << sb;
        *to = (alloc >> last) & 1 ? in + len : (uint64_t)(last + 1) << sb;
        return;
    }
    if (t == QCOW2_COMPRESSED) {
        *from = 0;
        *to = s->cluster_size;
        return;
    }
    if (t == QCOW2_NORMAL && alloc) {
        uint32_t lo = (uint32_t)__builtin_ctz(alloc), hi = 31 - (uint32_t)__builtin_clz(alloc);
        first = lo < first ? lo : first;
        last = hi > last ? hi : last;
    }
    *from = (uint64_t)first * sc;
    *to = (uint64_t)(last + 1) * sc;
}

static bool reads_zero(struct vbd_node *n, uint64_t a, uint64_t b, bool want_zero);

/* Reads [a, b) of the cluster at cstart into buf (the same offsets) through the read path. */
static int cow_read(struct vbd_node *n, uint64_t cstart, uint64_t a, uint64_t b, uint8_t *buf)
{
    struct qcow2_state *s = n->opaque;
    if (a >= b)
        return 0;
    struct iovec one = {buf, s->cluster_size};
    struct vbd_qiov cq;
    vbd_qiov_init(&cq, &one, 1);
    return read_range(n, cstart + a, b - a, &cq, (size_t)a, true, 0);
}

/*
 * One cluster's worth of a write whose mapping must change (lock held, the
 * caller holds the cluster's range exclusively): the cluster gets a host
 * cluster (new unless in_place) holding its current content overlaid with
 * the data, then the L2 entry is switched to it. With extended L2 only the
 * subclusters sub_cow_span names are written and become allocated.
 */
static int cow_fill_and_write(struct vbd_node *n, uint64_t off, uint64_t len, struct vbd_qiov *q, size_t qoff,
                              uint8_t *buf)
{
    struct qcow2_state *s = n->opaque;
    uint64_t cstart = cluster_floor(s, off);
    uint64_t in = off - cstart;
    uint64_t *table, *ep;
    uint32_t index;
    struct qcow2_l2_slot *slot = NULL;
    int rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
    if (rc == -ENOTSUP)
        vbd_error_report("qcow2: writing to clusters shared with an internal snapshot is not supported yet");
    if (rc < 0)
        return rc;
    ep = &table[s->extended_l2 ? 2 * index : index];
    uint64_t entry = be64(ep[0]), bitmap = s->extended_l2 ? be64(ep[1]) : 0;
    enum qcow2_cluster_type t = qcow2_entry_type(s, entry);
    if (t == QCOW2_COMPRESSED && s->external)
        return qcow2_signal_corruption(s, "compressed cluster entry in an image with an external data file", cstart);
    uint64_t host = entry & L2E_OFFSET_MASK;
    bool in_place = (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) && (entry & QCOW_OFLAG_COPIED);
    uint64_t from = 0, to = s->cluster_size, new_bitmap = 0;
    if (s->extended_l2) {
        if (t != QCOW2_COMPRESSED && (((bitmap >> 32) & bitmap) || (t == QCOW2_UNALLOCATED && (uint32_t)bitmap)))
            return qcow2_signal_corruption(s, "invalid subcluster bitmap in an L2 entry", cstart);
        sub_cow_span(s, t, in_place, bitmap, in, len, &from, &to);
        uint64_t m = sub_mask((uint32_t)(from >> s->subcluster_bits), (uint32_t)((to - 1) >> s->subcluster_bits));
        /* a compressed cluster's bitmap means nothing (QEMU writes 0) */
        new_bitmap = ((t == QCOW2_COMPRESSED ? 0 : bitmap) | m) & ~(m << 32);
    }
    /* the data alone: written straight from the caller's buffers */
    bool direct = from == in && to == in + len;
    /* what is copied reads as zeroes (by the metadata: a new cluster with
     * nothing below it, a preallocated zero cluster): the host range gets
     * zeroes without data (a file range left unwritten, as QEMU's
     * handle_alloc_space leaves it), then the data alone - not a cluster of
     * zeroes written around a small write */
    bool zero_cow = false;
    if (!direct && t != QCOW2_COMPRESSED && !s->data_no_zero_range &&
        cstart + to <= n->size) { /* past the end: not zeroes to QEMU */
        vbd_co_mutex_unlock(&s->lock); /* block status takes it; the exclusive range keeps the entry as it is */
        zero_cow = reads_zero(n, cstart + from, cstart + in, false) && reads_zero(n, cstart + in + len, cstart + to, false);
        vbd_co_mutex_lock(&s->lock);
    }
    if (!direct && !zero_cow) {
        if (t == QCOW2_COMPRESSED) {
            rc = qcow2_read_compressed(s, entry, buf);
        } else if (t == QCOW2_ZERO_PLAIN || t == QCOW2_ZERO_ALLOC) {
            memset(buf, 0, s->cluster_size);
        } else if (t == QCOW2_UNALLOCATED && !s->extended_l2) {
            struct iovec one = {buf, s->cluster_size};
            struct vbd_qiov cq;
            vbd_qiov_init(&cq, &one, 1);
            vbd_co_mutex_unlock(&s->lock); /* the backing file is read without blocking this image */
            rc = vbd_node_co_read_backing(n, cstart, s->cluster_size, &cq, 0, 0);
            vbd_co_mutex_lock(&s->lock);
        } else {
            /* extended L2 or a shared cluster: per-subcluster content through
             * the read path, around the data only; both sides of a small
             * write in one read rather than two (as QEMU's perform_cow) */
            vbd_co_mutex_unlock(&s->lock);
            if (from < in && in + len < to && len <= 16384) {
                rc = cow_read(n, cstart, from, to, buf); /* the data goes over the middle below */
            } else {
                rc = cow_read(n, cstart, from, in, buf);
                if (rc == 0)
                    rc = cow_read(n, cstart, in + len, to, buf);
            }
            vbd_co_mutex_lock(&s->lock);
            /* the L2 slot may have been evicted meanwhile: look it up again */
            if (rc == 0)
                rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
            if (rc == 0) {
                ep = &table[s->extended_l2 ? 2 * index : index];
                if (be64(ep[0]) != entry || (s->extended_l2 && be64(ep[1]) != bitmap))
                    return qcow2_signal_corruption(s, "L2 entry changed under an exclusive range", cstart);
            }
        }
        if (rc < 0)
            return rc;
        vbd_iov_to_buf(q->iov, q->niov, qoff, buf + in, len);
    }
    uint64_t target = host;
    if (!in_place) {
        int64_t a = alloc_data(s, cstart, 1);
        if (a < 0)
            return (int)a;
        target = (uint64_t)a;
    }
    if (qcow2_data_overlaps(s, target, s->cluster_size))
        return qcow2_signal_corruption(s, "data cluster would overwrite metadata", target);
    /* the data goes out without the lock: other clusters' requests proceed meanwhile */
    vbd_co_mutex_unlock(&s->lock);
    rc = 0;
    if (zero_cow) {
        /* in place, subclusters between the edges may hold data that the
         * write replaces: only the edges get zeroes (a crash before the data
         * is written must not leave zeroes there); a new cluster at once */
        if (!in_place)
            rc = vbd_node_co_pwrite_zeroes(s->data, target + from, to - from, VBD_REQ_NO_FALLBACK);
        if (in_place && from < in)
            rc = vbd_node_co_pwrite_zeroes(s->data, target + from, in - from, VBD_REQ_NO_FALLBACK);
        if (in_place && rc == 0 && in + len < to)
            rc = vbd_node_co_pwrite_zeroes(s->data, target + in + len, to - in - len, VBD_REQ_NO_FALLBACK);
        if (rc == 0) {
            direct = true;
        } else if (rc == -ENOTSUP) {
            /* zeroes as data then, and from now on if the edges were
             * aligned to the file's requests (a misaligned fast zeroing is
             * refused whatever the file can do) */
            uint64_t am = s->data->bl.request_alignment - 1;
            if (!(((target + from) | (target + in) | (target + in + len) | (target + to)) & am))
                s->data_no_zero_range = true;
            memset(buf + from, 0, to - from);
            vbd_iov_to_buf(q->iov, q->niov, qoff, buf + in, len);
            rc = 0;
        }
    }
    if (rc == 0)
        rc = direct ? vbd_node_co_pwritev(s->data, target + in, len, q, qoff, 0)
                    : vbd_node_co_pwrite(s->data, target + from, buf + from, to - from, 0);
    vbd_co_mutex_lock(&s->lock);
    if (rc < 0) {
        if (!in_place && !s->external)
            qcow2_update_refcount(s, target, -1); /* never referenced: give it back */
        return rc;
    }
    /* look up again: the slot may have been evicted while the lock was dropped */
    rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
    if (rc < 0)
        return rc;
    ep = &table[s->extended_l2 ? 2 * index : index];
    ep[0] = be64(target | QCOW_OFLAG_COPIED);
    if (s->extended_l2)
        ep[1] = be64(new_bitmap);
    slot->dirty = true; /* written after the next flush of the refcounts (qcow2_writeback) */
    if (!in_place && entry)
        qcow2_release_entry(s, entry); /* the snapshot (or nobody) keeps the old copy */
    return 0;
}

/* The start of a write over clusters this layer alone holds (COPIED,
 * plainly overwritable, as write_cluster's overwrite) at consecutive host
 * offsets, as one request to the data file instead of one per cluster
 * (commit of an overlay into an allocated base wrote 16 x 64 KiB per MiB;
 * QEMU's qcow2 writes such a run at once too). Under one shared range over
 * the clusters the write touches, taken first: what changes an entry holds
 * an exclusive one, so the entries read under it stay. Returns the bytes
 * written, or 0 when the run would be under two clusters, the range was
 * busy, or anything is off (write_cluster then takes the first cluster,
 * waiting, reporting a corruption as it does). Lock held on entry and
 * on return. */
static int64_t overwrite_run(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff)
{
    struct qcow2_state *s = n->opaque;
    uint64_t cs = s->cluster_size, cstart = cluster_floor(s, off), end = cluster_ceil(s, off + bytes);
    if (end - cstart < 2 * cs)
        return 0;
    struct qcow2_range r;
    if (range_lock(s, &r, cstart, end, false)) {
        range_unlock(s, &r);
        return 0;
    }
    uint64_t host0 = 0, run = 0; /* bytes of [off, off + bytes) in the run */
    for (uint64_t c = cstart; c < end; c += cs) {
        uint64_t entry, bitmap, in = c < off ? off - c : 0;
        uint64_t len = off + bytes - (c + in) < cs - in ? off + bytes - (c + in) : cs - in;
        uint64_t l1_index = c >> (s->l2_bits + s->cluster_bits);
        if (qcow2_get_entry(s, c, &entry, &bitmap) < 0 || l1_index >= s->l1_size ||
            !(s->l1[l1_index] & QCOW_OFLAG_COPIED) || !plain_overwrite(s, entry, bitmap, in, len) ||
            (entry & L2E_OFFSET_MASK & (cs - 1)))
            break;
        uint64_t host = entry & L2E_OFFSET_MASK;
        if (c == cstart)
            host0 = host;
        else if (host != host0 + (c - cstart))
            break;
        run += len;
    }
    int64_t rc = 0;
    if (run > cs && !qcow2_data_overlaps(s, host0 + (off - cstart), run)) {
        vbd_co_mutex_unlock(&s->lock);
        rc = vbd_node_co_pwritev(s->data, host0 + (off - cstart), run, q, qoff, 0);
        vbd_co_mutex_lock(&s->lock);
        if (rc == 0)
            rc = (int64_t)run;
    }
    range_unlock(s, &r);
    return rc;
}

/* One cluster's worth of a write (lock held on entry and on return). */
static int write_cluster(struct vbd_node *n, uint64_t off, uint64_t len, struct vbd_qiov *q, size_t qoff)
{
    struct qcow2_state *s = n->opaque;
    uint64_t cstart = cluster_floor(s, off), in = off - cstart;
    struct qcow2_range r;
    bool held = false, exclusive = false, overwrite;
    uint64_t entry, bitmap;
    for (;;) {
        int rc = qcow2_get_entry(s, cstart, &entry, &bitmap);
        if (rc < 0) {
            if (held)
                range_unlock(s, &r);
            return rc;
        }
        uint64_t l1_index = cstart >> (s->l2_bits + s->cluster_bits);
        /* a table shared with a snapshot is copied first, whatever its entries say */
        overwrite = l1_index < s->l1_size && (s->l1[l1_index] & QCOW_OFLAG_COPIED) &&
                    plain_overwrite(s, entry, bitmap, in, len);
        if (held && (exclusive || overwrite))
            break; /* what we hold covers what the write needs */
        if (held)
            range_unlock(s, &r);
        exclusive = !overwrite;
        held = true;
        if (!range_lock(s, &r, cstart, cstart + s->cluster_size, exclusive))
            break; /* took it without waiting: the entry is still current */
    }
    int rc;
    /* an allocated entry whose offset is not a cluster's start is corrupt
     * (the read path refuses it too): written to as it is, the data would
     * land across the next cluster, another guest offset's or metadata */
    if (!(entry & QCOW_OFLAG_COMPRESSED) && (entry & L2E_OFFSET_MASK & (s->cluster_size - 1))) {
        rc = qcow2_signal_corruption(s, "Cluster allocation offset unaligned", entry & L2E_OFFSET_MASK);
        range_unlock(s, &r);
        return rc;
    }
    if (overwrite) {
        uint64_t host = (entry & L2E_OFFSET_MASK) + in;
        if (qcow2_data_overlaps(s, host, len)) {
            rc = qcow2_signal_corruption(s, "data write would overwrite metadata", host);
        } else {
            vbd_co_mutex_unlock(&s->lock);
            rc = vbd_node_co_pwritev(s->data, host, len, q, qoff, 0);
            vbd_co_mutex_lock(&s->lock);
        }
    } else {
        uint8_t *buf = get_buf(s);
        rc = cow_fill_and_write(n, off, len, q, qoff, buf);
        put_buf(s, buf);
    }
    range_unlock(s, &r);
    return rc;
}


/* Compressed data is packed, as QEMU packs it: a chunk starts where the
 * previous one ended (one more reference on that cluster) and runs on
 * into the next clusters when they are allocated right behind it; else it
 * starts new clusters. Never in a cluster that was freed meanwhile: that
 * resets compress_pos (refcount.c), and a full counter (refcount_bits=1)
 * cannot take the extra reference. */
static int64_t alloc_bytes(struct qcow2_state *s, uint64_t len)
{
    uint64_t cs = s->cluster_size, in = s->compress_pos & (cs - 1), cur = 0;
    if (s->compress_pos && in) {
        uint64_t at = s->compress_pos, cluster_end = (at | (cs - 1)) + 1;
        int rc = qcow2_get_refcount(s, at >> s->cluster_bits, &cur);
        if (rc < 0)
            return rc;
        if (cur && cs - in >= len) {
            if (qcow2_update_refcount(s, at, 1) == 0) {
                s->compress_pos += len;
                return (int64_t)at;
            }
        } else if (cur) {
            uint64_t more = (len - (cs - in) + cs - 1) >> s->cluster_bits;
            int64_t next = qcow2_alloc_clusters(s, more);
            if (next < 0)
                return next;
            if ((uint64_t)next == cluster_end && qcow2_update_refcount(s, at, 1) == 0) {
                s->compress_pos = at + len;
                return (int64_t)at;
            }
            /* not right behind it (or the counter is full): give them back */
            for (uint64_t k = 0; k < more; k++) {
                rc = qcow2_update_refcount(s, (uint64_t)next + (k << s->cluster_bits), -1);
                if (rc < 0)
                    return rc;
            }
        }
    }
    int64_t at = qcow2_alloc_clusters(s, (len + cs - 1) >> s->cluster_bits);
    if (at >= 0)
        s->compress_pos = (uint64_t)at + len;
    return at;
}

static size_t compress_cluster(struct qcow2_state *s, const uint8_t *in, uint8_t *out, size_t cap)
{
    if (s->compression_type == 1) {
        size_t r = ZSTD_compress(out, cap, in, s->cluster_size, 3);
        return ZSTD_isError(r) ? 0 : r;
    }
    z_stream z = {0};
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (uint8_t *)in;
    z.avail_in = (uInt)s->cluster_size;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int zr = deflate(&z, Z_FINISH);
    size_t got = cap - z.avail_out;
    deflateEnd(&z);
    return zr == Z_STREAM_END ? got : 0;
}

/* The clusters of one compressed write, compressed on the thread pool
 * several at once before any is written: compression is nearly all of
 * convert -c's time, and convert writes its chunks in order, so done
 * cluster by cluster on the loop thread it used one core (qemu-img
 * compresses a request's clusters in parallel threads too). */
#define COMPRESS_PARALLEL 8
struct compress_job {
    struct qcow2_state *s;
    uint8_t *plain, *packed;
    size_t clen;
};
struct compress_batch {
    struct compress_job *jobs;
    unsigned njobs, next, running;
    struct vbd_co_queue done_q;
};

static long compress_job_run(void *arg)
{
    struct compress_job *j = arg;
    j->clen = compress_cluster(j->s, j->plain, j->packed, j->s->cluster_size - 1); /* as QEMU: any saving pays */
    return 0;
}

static void compress_worker(void *arg)
{
    struct compress_batch *b = arg;
    while (b->next < b->njobs)
        vbd_co_run_in_thread(compress_job_run, &b->jobs[b->next++]);
    if (--b->running == 0)
        vbd_co_queue_wake_all(&b->done_q);
}

/* jobs[i].plain filled: sets every jobs[i].clen (0: does not pay) */
static void compress_clusters(struct compress_job *jobs, unsigned njobs)
{
    struct compress_batch b = {.jobs = jobs, .njobs = njobs};
    b.running = njobs < COMPRESS_PARALLEL ? njobs : COMPRESS_PARALLEL;
    unsigned workers = b.running;
    for (unsigned i = 0; i < workers; i++)
        vbd_co_wake(vbd_co_create(compress_worker, &b));
    while (b.running)
        vbd_co_queue_wait(&b.done_q);
}

/* One whole cluster, already compressed to clen bytes of packed (convert
 * -c). Returns 1 when compression does not pay: the caller writes it
 * normally. */
static int write_compressed_cluster(struct vbd_node *n, uint64_t cstart, const uint8_t *packed, size_t clen)
{
    struct qcow2_state *s = n->opaque;
    int rc = 1;
    if (!clen)
        return 1;
    struct qcow2_range r;
    vbd_co_mutex_lock(&s->lock);
    range_lock(s, &r, cstart, cstart + s->cluster_size, true);
    uint64_t *table;
    uint32_t index;
    struct qcow2_l2_slot *slot = NULL;
    rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
    if (rc < 0) {
        rc = rc == -ENOTSUP ? 1 : rc;
        goto unlock;
    }
    /* Only into a cluster with no host cluster behind it, as QEMU 7.2
     * (qcow2_alloc_compressed_cluster_offset: -EIO, qemu-io says "write
     * failed: Input/output error"): the image stays as it was. */
    if (be64(table[s->extended_l2 ? 2 * index : index]) & L2E_OFFSET_MASK) {
        rc = -EIO;
        goto unlock;
    }
    int64_t at = alloc_bytes(s, clen);
    uint64_t extra = (((uint64_t)at + clen - 1) >> 9) - ((uint64_t)at >> 9);
    if (at < 0 || extra > s->csize_mask || (uint64_t)at > s->coffset_mask) {
        rc = at < 0 ? (int)at : 1;
        goto unlock;
    }
    if (qcow2_data_overlaps(s, (uint64_t)at, clen)) {
        rc = qcow2_signal_corruption(s, "compressed data would overwrite metadata", (uint64_t)at);
        goto unlock;
    }
    rc = vbd_node_co_pwrite(n->file, (uint64_t)at, packed, clen, 0);
    if (rc == 0)
        rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
    if (rc == 0) {
        uint64_t *ep = &table[s->extended_l2 ? 2 * index : index];
        uint64_t old = be64(ep[0]);
        ep[0] = be64(QCOW_OFLAG_COMPRESSED | (extra << s->csize_shift) | (uint64_t)at);
        if (s->extended_l2)
            ep[1] = 0;
        slot->dirty = true;
        if (old)
            qcow2_release_entry(s, old);
    }
unlock:
    range_unlock(s, &r);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* Lock held. Up to max whole clusters at off (cluster aligned, bytes of
 * them) that are unallocated and not being allocated: registered in r and
 * given host clusters from *host on, one contiguous run. Returns how many
 * (0: fewer than min (>= 1) such clusters, nothing held) or -errno. */
static int64_t new_run_begin(struct vbd_node *n, uint64_t off, uint64_t bytes, uint64_t min, uint64_t max,
                             struct qcow2_range *r, uint64_t *host)
{
    struct qcow2_state *s = n->opaque;
    uint64_t k = 0;
    if (bytes >> s->cluster_bits < max)
        max = bytes >> s->cluster_bits;
    /* The run's L2 table before its data, and a run inside one table: as
     * QEMU's handle_alloc, so that the clusters land where qemu-img's do
     * (qemu-img map's host offsets equal; data first, the first data
     * cluster took the table's place). A table is linked empty: nothing
     * points at unwritten data, a failure after this only leaves it. */
    uint64_t per_l2 = 1ull << s->l2_bits;
    uint64_t in_l2 = per_l2 - ((off >> s->cluster_bits) & (per_l2 - 1));
    if (in_l2 < max)
        max = in_l2;
    uint64_t *table;
    uint32_t index;
    int rc = qcow2_get_l2(s, off, true, &table, &index, NULL);
    if (rc < 0)
        return rc;
    bool backed = n->backing != NULL;
    /* the lock stays held from here to range_lock: nobody registers a range meanwhile */
    for (; k < max; k++) {
        uint64_t c = off + (k << s->cluster_bits), e, b;
        if (range_conflict(s, c, c + s->cluster_size, true) || qcow2_get_entry(s, c, &e, &b) < 0)
            break;
        enum qcow2_cluster_type t = qcow2_entry_type(s, e);
        if (!(t == QCOW2_UNALLOCATED || (t == QCOW2_ZERO_PLAIN && !backed)) || (e & L2E_OFFSET_MASK))
            break;
    }
    if (k < min)
        return 0;
    uint64_t len = k << s->cluster_bits;
    if (range_lock(s, r, off, off + len, true)) {
        range_unlock(s, r); /* cannot happen (see above); the cluster path copes either way */
        return 0;
    }
    int64_t start = alloc_data(s, off, k);
    rc = start < 0 ? (int)start : 0;
    if (rc == 0 && qcow2_data_overlaps(s, (uint64_t)start, len))
        rc = qcow2_signal_corruption(s, "data clusters would overwrite metadata", (uint64_t)start);
    if (rc < 0) {
        range_unlock(s, r);
        return rc;
    }
    *host = (uint64_t)start;
    return (int64_t)k;
}

/* Lock held. The end of new_run_begin's run once its data write returned
 * rc: the L2 entries point at the data (which is written: a crash before the
 * next writeback only leaks the clusters), or on failure the clusters are
 * given back. The range is released either way. */
static int new_run_end(struct vbd_node *n, uint64_t off, uint64_t k, uint64_t start, struct qcow2_range *r, int rc)
{
    struct qcow2_state *s = n->opaque;
    if (rc < 0 && !s->external)
        for (uint64_t i = 0; i < k; i++) /* never referenced: give them back */
            qcow2_update_refcount(s, start + (i << s->cluster_bits), -1);
    for (uint64_t i = 0; rc == 0 && i < k; i++) {
        uint64_t *table;
        uint32_t index;
        struct qcow2_l2_slot *slot = NULL;
        rc = qcow2_get_l2(s, off + (i << s->cluster_bits), true, &table, &index, &slot);
        if (rc < 0)
            break;
        table[index] = be64((start + (i << s->cluster_bits)) | QCOW_OFLAG_COPIED);
        slot->dirty = true; /* written after the refcounts (qcow2_writeback) */
    }
    range_unlock(s, r);
    return rc;
}

/* Several whole clusters that are unallocated (and not being allocated):
 * one contiguous host run, one data write. Returns the bytes written (0 when
 * the fast path does not apply) or -errno. */
#define RUN_MAX 64
static int64_t write_new_run(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff)
{
    struct qcow2_state *s = n->opaque;
    if ((off & (s->cluster_size - 1)) || bytes < 2 * s->cluster_size || s->extended_l2)
        return 0;
    vbd_co_mutex_lock(&s->lock);
    struct qcow2_range r;
    uint64_t start = 0;
    int64_t k = new_run_begin(n, off, bytes, 2, RUN_MAX, &r, &start); /* a single cluster goes the cluster path */
    if (k <= 0) {
        vbd_co_mutex_unlock(&s->lock);
        return k;
    }
    uint64_t len = (uint64_t)k << s->cluster_bits;
    vbd_co_mutex_unlock(&s->lock);
    int rc = vbd_node_co_pwritev(s->data, start, len, q, qoff, 0);
    vbd_co_mutex_lock(&s->lock);
    rc = new_run_end(n, off, (uint64_t)k, start, &r, rc);
    vbd_co_mutex_unlock(&s->lock);
    return rc < 0 ? rc : (int64_t)len;
}

/* The split write (vbd_split_write): whole new clusters are placed as
 * write_new_run places them, up to a copy's chunk at a time; anything else
 * (a part of a cluster, an allocated or preallocated cluster, a
 * copy-on-write, extended L2 subclusters) goes the normal path, one
 * cluster at a time. */
#define SPLIT_MAX 4096
struct split_priv {
    struct qcow2_range r;
    uint64_t k;
};
_Static_assert(sizeof(struct split_priv) <= sizeof(((struct vbd_split_write *)0)->priv), "split_priv fits");

static int qcow2_write_prepare(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_split_write *w)
{
    struct qcow2_state *s = n->opaque;
    assert(!n->read_only);
    if (s->corrupt)
        return -EIO;
    uint64_t to_next = cluster_floor(s, off) + s->cluster_size - off;
    w->normal = to_next < bytes ? to_next : bytes;
    if ((off & (s->cluster_size - 1)) || bytes < s->cluster_size || s->extended_l2 ||
        !vbd_node_chain_multi_loop(s->data))
        return 0;
    struct split_priv *p = (struct split_priv *)w->priv;
    vbd_co_mutex_lock(&s->lock);
    int64_t k = new_run_begin(n, off, bytes, 1, SPLIT_MAX, &p->r, &w->host);
    vbd_co_mutex_unlock(&s->lock);
    if (k <= 0)
        return (int)k;
    qcow2_bitmaps_dirty(s, off, (uint64_t)k << s->cluster_bits); /* as qcow2_pwritev, before the data */
    p->k = (uint64_t)k;
    w->len = (uint64_t)k << s->cluster_bits;
    w->file = s->data;
    return 0;
}

static int qcow2_write_commit(struct vbd_node *n, struct vbd_split_write *w, int rc)
{
    struct qcow2_state *s = n->opaque;
    struct split_priv *p = (struct split_priv *)w->priv;
    vbd_co_mutex_lock(&s->lock);
    rc = new_run_end(n, w->off, p->k, w->host, &p->r, rc);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static int qcow2_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                         unsigned flags)
{
    struct qcow2_state *s = n->opaque;
    /* io.c: no writes to a read-only node; only supported_write_flags pass
     * (no COMPRESSED with a data file). A corrupt image is not a request error. */
    assert(!n->read_only && !(s->external && (flags & VBD_REQ_COMPRESSED)));
    if (s->corrupt)
        return -EIO;
    qcow2_bitmaps_dirty(s, off, bytes);
    /* compressed: the whole clusters of the request, compressed up front */
    struct compress_job *jobs = NULL;
    unsigned njobs = 0, ji = 0;
    if (flags & VBD_REQ_COMPRESSED) {
        uint64_t first = (off + s->cluster_size - 1) & ~(s->cluster_size - 1);
        uint64_t last = (off + bytes) & ~(s->cluster_size - 1);
        /* the disk's last cluster, when the disk ends inside it, is
         * compressed too, padded with zeroes (as QEMU's compressed write) */
        uint64_t end = off + bytes == n->size && last >= first ? off + bytes : last;
        njobs = end > first ? (unsigned)((end - first + s->cluster_size - 1) >> s->cluster_bits) : 0;
        jobs = njobs ? vbd_xcalloc(njobs, sizeof(*jobs)) : NULL;
        for (unsigned i = 0; i < njobs; i++) {
            uint64_t at = first + ((uint64_t)i << s->cluster_bits);
            uint64_t have = end - at < s->cluster_size ? end - at : s->cluster_size;
            jobs[i].s = s;
            jobs[i].plain = vbd_alloc_aligned(4096, s->cluster_size);
            jobs[i].packed = vbd_alloc_aligned(4096, s->cluster_size);
            vbd_iov_to_buf(q->iov, q->niov, qoff + (at - off), jobs[i].plain, have);
            memset(jobs[i].plain + have, 0, s->cluster_size - have);
        }
        compress_clusters(jobs, njobs);
    }
    int rc = 0;
    while (bytes) {
        uint64_t in = off & (s->cluster_size - 1);
        uint64_t len = s->cluster_size - in < bytes ? s->cluster_size - in : bytes;
        if (!(flags & VBD_REQ_COMPRESSED)) {
            int64_t done = write_new_run(n, off, bytes, q, qoff);
            if (done < 0)
                return (int)done;
            if (done > 0) {
                off += (uint64_t)done;
                qoff += (size_t)done;
                bytes -= (uint64_t)done;
                continue;
            }
        }
        rc = 1;
        if ((flags & VBD_REQ_COMPRESSED) && ji < njobs && !in && (len == s->cluster_size || off + len == n->size)) {
            rc = write_compressed_cluster(n, off, jobs[ji].packed, jobs[ji].clen); /* 1: does not pay, written normally */
            ji++;
        }
        if (rc == 1) {
            vbd_co_mutex_lock(&s->lock);
            int64_t done = flags & VBD_REQ_COMPRESSED ? 0 : overwrite_run(n, off, bytes, q, qoff);
            if (done > 0)
                len = (uint64_t)done;
            rc = done < 0 ? (int)done : done > 0 ? 0 : write_cluster(n, off, len, q, qoff);
            vbd_co_mutex_unlock(&s->lock);
        }
        if (rc < 0)
            break;
        rc = 0;
        off += len;
        qoff += len;
        bytes -= len;
    }
    for (unsigned i = 0; i < njobs; i++) {
        free(jobs[i].plain);
        free(jobs[i].packed);
    }
    free(jobs);
    return rc;
}

/* The VM state (savevm's; qemu-io's read/write -b) lives where QEMU's
 * qcow2 keeps it: at guest offsets from the first L1 entry past the
 * virtual disk (l1_vm_state_index), through the same tables as the disk,
 * so reads of what was never written are zeroes and writes allocate as
 * any other. The L1 table grows to cover it first (as QEMU's
 * get_cluster_table does). No dirty bitmap bit is set: the bitmaps cover
 * the disk only (qcow2_bitmaps_dirty clamps to them anyway). */
static int qcow2_vmstate(struct vbd_node *n, uint64_t pos, uint64_t bytes, struct vbd_qiov *q, bool save)
{
    struct qcow2_state *s = n->opaque;
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t start = (n->size + per_l1 - 1) / per_l1 * per_l1;
    if (pos > INT64_MAX - start || bytes > INT64_MAX - start - pos)
        return save ? -EFBIG : -EINVAL;
    uint64_t off = start + pos;
    if (!save)
        return read_range(n, off, bytes, q, 0, false, 0);
    if (s->corrupt)
        return -EIO;
    if (!bytes)
        return 0;
    uint64_t need = (off + bytes - 1) / per_l1 + 1;
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    if (need > s->l1_size)
        rc = qcow2_grow_l1(s, need);
    vbd_co_mutex_unlock(&s->lock);
    return rc < 0 ? rc : qcow2_pwritev(n, off, bytes, q, 0, 0);
}

/* Drops this image's reference to what an L2 entry points at (after the
 * entry itself changed on disk: a crash in between only leaks). */
void qcow2_release_entry(struct qcow2_state *s, uint64_t entry)
{
    enum qcow2_cluster_type t = qcow2_entry_type(s, entry);
    if (t == QCOW2_COMPRESSED) {
        if (s->external)
            return; /* never valid there: what it names in the metadata file is not its own */
        uint64_t coff = entry & s->coffset_mask;
        uint64_t nsect = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        uint64_t last = (coff + nsect * 512 - (coff & 511) - 1) & ~(s->cluster_size - 1);
        for (uint64_t c = coff & ~(s->cluster_size - 1); c <= last; c += s->cluster_size)
            qcow2_defer_free(s, c);
    } else if ((entry & L2E_OFFSET_MASK) && !s->external &&
               (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC || s->extended_l2)) {
        qcow2_defer_free(s, entry & L2E_OFFSET_MASK);
    }
}

/* Zeroes and discards leave the metadata QEMU's qcow2 leaves (7.2:
 * qcow2_co_pwrite_zeroes, qcow2_subcluster_zeroize, qcow2_co_pdiscard and
 * the block layer's splitting of both), so that qemu-img map, commit and
 * rebase, and a backing file changed later, see what they see after QEMU. */

/* One cluster's metadata, lock held and its range locked: zeroes over its
 * subclusters [sc0, sc1) (the whole cluster when `whole`), or a discard of
 * the whole cluster. Returns 1 when the range needs a data write instead. */
static int zero_cluster_meta(struct vbd_node *n, uint64_t cstart, unsigned sc0, unsigned sc1, bool whole, bool unmap,
                             bool discard)
{
    struct qcow2_state *s = n->opaque;
    /* opened with backing=null, the header may still name one that a later
     * open shows through: counted as backed, so that zeroes stay zeroes
     * then (QEMU looks at the open backing file only) */
    bool backed = n->backing || n->backing_file[0];
    uint64_t *table;
    uint32_t index;
    struct qcow2_l2_slot *slot = NULL;
    int rc = qcow2_get_l2(s, cstart, false, &table, &index, &slot);
    if (rc < 0)
        return rc;
    uint64_t entry = table ? be64(table[s->extended_l2 ? 2 * index : index]) : 0;
    uint64_t bitmap = table && s->extended_l2 ? be64(table[2 * index + 1]) : 0;
    enum qcow2_cluster_type t = qcow2_entry_type(s, entry);
    bool allocated = t == QCOW2_NORMAL || t == QCOW2_COMPRESSED || t == QCOW2_ZERO_ALLOC;
    uint64_t ne = entry, nb = bitmap;
    bool release = false;
    if (discard || s->version < 3) {
        /* v2 has no zero flag: without a backing file zeroes are a discard
         * (reads as zeroes), with one they are data */
        if (!discard && backed)
            return 1;
        /* a discard that reads back as zeroes: a zero flag where the cluster
         * held something or a backing file shows through; v2 can only unmap */
        if (backed || allocated) {
            ne = s->version >= 3 && !s->extended_l2 ? QCOW_OFLAG_ZERO : 0;
            nb = s->extended_l2 ? 0xffffffff00000000ull : 0; /* all subclusters zero */
            release = true;
        }
    } else if (!whole) {
        /* extended L2, some subclusters: zero bits, the host cluster stays */
        if (t == QCOW2_COMPRESSED)
            return 1; /* cannot be zeroed in part */
        uint64_t m = (sc1 >= 32 ? 0xffffffffull : (1ull << sc1) - 1) & ~((1ull << sc0) - 1);
        nb = (bitmap | (m << 32)) & ~m;
    } else {
        /* the host cluster is given up when asked (and always a compressed one) */
        release = t == QCOW2_COMPRESSED || (unmap && allocated);
        ne = release ? 0 : entry;
        if (s->extended_l2)
            nb = 0xffffffff00000000ull;
        else
            ne |= QCOW_OFLAG_ZERO;
    }
    if (ne == entry && nb == bitmap)
        return 0;
    rc = qcow2_get_l2(s, cstart, true, &table, &index, &slot);
    if (rc == -ENOTSUP)
        return discard ? 0 : 1; /* shared with a snapshot */
    if (rc < 0)
        return rc;
    uint64_t *ep = &table[s->extended_l2 ? 2 * index : index];
    ep[0] = be64(ne);
    if (s->extended_l2)
        ep[1] = be64(nb);
    slot->dirty = true;
    if (release && entry) {
        s->frees_requested = true; /* a guest's discard or zeroes */
        qcow2_release_entry(s, entry);
        s->frees_requested = false;
    }
    return 0;
}

/* [a, b) reads as zeroes through the backing chain (b clamped to the size);
 * !want_zero: as far as the metadata says (holes of files not looked for) */
static bool reads_zero(struct vbd_node *n, uint64_t a, uint64_t b, bool want_zero)
{
    if (b > n->size)
        b = n->size;
    while (a < b) {
        uint64_t pnum = 0;
        int depth;
        int st = vbd_node_co_block_status_above(n, NULL, want_zero, a, b - a, &pnum, NULL, NULL, &depth);
        if (st < 0 || !(st & VBD_BS_ZERO) || !pnum)
            return false;
        a += pnum;
    }
    return true;
}

/* The metadata for [zs, ze) inside one cluster (ze may pass the image's
 * end); `partial` (zeroes only): only if the (sub)cluster at zs is still
 * unallocated or zero. Returns 1 when a data write is needed instead. */
static int zero_meta(struct vbd_node *n, uint64_t zs, uint64_t ze, uint64_t size, bool partial, unsigned flags,
                     bool discard)
{
    struct qcow2_state *s = n->opaque;
    uint64_t cstart = cluster_floor(s, zs);
    uint64_t cend = cstart + s->cluster_size;
    if (ze > cend)
        ze = cend;
    /* up to the image's end counts as up to the cluster's end (as QEMU) */
    bool whole = zs == cstart && (ze == cend || ze >= size);
    unsigned sc0 = (unsigned)((zs - cstart) >> s->subcluster_bits);
    unsigned sc1 = (unsigned)((ze - cstart + (1ull << s->subcluster_bits) - 1) >> s->subcluster_bits);
    if (ze >= size)
        sc1 = 1u << (s->cluster_bits - s->subcluster_bits);
    struct qcow2_range r;
    vbd_co_mutex_lock(&s->lock);
    range_lock(s, &r, cstart, cend, true);
    int rc = 0;
    if (partial) {
        /* written since the caller looked at the rest of it: data then */
        struct extent x;
        rc = map_extent(s, zs, 1, &x);
        if (rc == 0 && x.type != QCOW2_UNALLOCATED && x.type != QCOW2_UNALLOC_ALLOC && x.type != QCOW2_ZERO_PLAIN &&
            x.type != QCOW2_ZERO_ALLOC)
            rc = 1;
    }
    if (rc == 0)
        rc = zero_cluster_meta(n, cstart, sc0, sc1, whole, (flags & VBD_REQ_MAY_UNMAP) != 0, discard);
    range_unlock(s, &r);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}
/* Zeroes written as data: where no zero flag can stand (part of a
 * subcluster, or the cluster's other bytes are not zeroes). */
static int write_zero_data(struct vbd_node *n, uint64_t off, uint64_t len)
{
    uint8_t *z = vbd_alloc_aligned(4096, len);
    memset(z, 0, len);
    struct iovec one = {z, len};
    struct vbd_qiov q = {&one, 1, len};
    int rc = qcow2_pwritev(n, off, len, &q, 0, 0);
    free(z);
    return rc;
}


static int zero_or_discard(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags, bool discard)
{
    struct qcow2_state *s = n->opaque;
    assert(!n->read_only); /* io.c refuses zeroes and discards on a read-only node */
    if (s->corrupt)
        return -EIO;
    qcow2_bitmaps_dirty(s, off, bytes);
    if (s->data_raw) {
        if (discard) {
            /* whole clusters only: a partial discard does nothing (QEMU) */
            uint64_t cs = s->cluster_size, a = (off + cs - 1) & ~(cs - 1), e = off + bytes;
            uint64_t b = e >= n->size ? e : e & ~(cs - 1);
            if (b <= a)
                return 0;
            off = a;
            bytes = b - a;
        }
        /* the data file must read as the image does: zeroes go there too
         * (an unmapped cluster gets its 1:1 place back when written) */
        int rc = vbd_node_co_pwrite_zeroes(s->data, off, bytes, flags & VBD_REQ_MAY_UNMAP);
        if (rc < 0)
            return rc;
    }
    /* v2 has no zero flag: an unmapped cluster would show the backing file */
    if (discard && s->version < 3 && (n->backing || n->backing_file[0]))
        return 0;
    /* zeroes work in subclusters, discards in clusters */
    uint64_t unit = discard ? s->cluster_size : 1ull << s->subcluster_bits;
    uint64_t end = off + bytes;
    while (off < end) {
        /* QEMU's pieces: an unaligned head or tail inside one unit, whole
         * units between (here one cluster at a time) */
        uint64_t us = off & ~(unit - 1), pe;
        if (off != us || end - off < unit)
            pe = us + unit < end ? us + unit : end;
        else {
            uint64_t ce = cluster_floor(s, off) + s->cluster_size;
            pe = end & ~(unit - 1);
            if (pe > ce)
                pe = ce;
        }
        bool partial = off != us || ((pe & (unit - 1)) && pe < n->size);
        int rc = 0;
        if (!partial)
            rc = zero_meta(n, off, pe, n->size, false, flags, discard);
        else if (!discard) /* a partial discard does nothing: it is advisory */
            /* the whole unit if the rest of it reads as zeroes already */
            rc = reads_zero(n, us, off, true) && reads_zero(n, pe, us + unit, true) ? zero_meta(n, us, us + unit, n->size, true, flags, false)
                                                                         : 1;
        if (rc < 0)
            return rc;
        if (rc == 1) {
            if (flags & VBD_REQ_NO_FALLBACK)
                return -ENOTSUP;
            rc = write_zero_data(n, off, pe - off);
            if (rc < 0)
                return rc;
        }
        off = pe;
    }
    return 0;
}

/* Growing from old to size over a backing file that is longer than old:
 * the new range reads as zeroes, not as the backing file (as QEMU: zero
 * (sub)clusters, zero data up to the first subcluster boundary). Before
 * the new size is published: nobody reads the range meanwhile. */
int qcow2_zero_grown(struct vbd_node *n, uint64_t old, uint64_t size)
{
    struct qcow2_state *s = n->opaque;
    uint64_t sub = 1ull << s->subcluster_bits;
    uint64_t zs = (old + sub - 1) & ~(sub - 1);
    int rc = 0;
    for (uint64_t off = zs; rc == 0 && off < size;) {
        uint64_t ce = cluster_floor(s, off) + s->cluster_size;
        rc = zero_meta(n, off, ce < size ? ce : size, size, false, 0, false);
        off = ce;
    }
    if (rc == 0 && zs > old) {
        rc = write_zero_data(n, old, (zs < size ? zs : size) - old);
    }
    return rc == 1 ? -ENOTSUP : rc;
}

static int qcow2_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    return zero_or_discard(n, off, bytes, flags, false);
}

static int qcow2_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    return zero_or_discard(n, off, bytes, VBD_REQ_MAY_UNMAP, true);
}

static int qcow2_flush(struct vbd_node *n)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    /* the generic layer flushes n->file only: data in a data file first */
    int rc = s->external ? vbd_node_co_flush(s->data) : 0;
    if (rc == 0)
        rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_write_refcounts(s); /* the file child is flushed by the caller afterwards */
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static void writeback_co(void *arg)
{
    struct qcow2_state *s = arg;
    if (qcow2_writeback(s) == 0 && qcow2_flush_refcounts(s) == 0 && (s->incompat & QCOW2_INCOMPAT_DIRTY))
        qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY); /* refcounts are on disk: clean */
}

/* The bitmaps at a close or a reopen read-only (lock held, metadata
 * written back): stored anew as QEMU's qcow2_store_persistent_dirty_bitmaps
 * stores them after every read-write open (qemu-img's snapshot -c, check -r,
 * rebase -u, commit, qemu-io's writes leave them so), or, where this open
 * laid the directory out itself (a bitmap change, a resize), their bits
 * written back in place. *stored: something was written. */
static int store_bitmaps(struct qcow2_state *s, bool *stored)
{
    *stored = false;
    if (s->corrupt)
        return 0;
    if (s->bitmaps_store_anew && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        *stored = true;
        return qcow2_bitmaps_store_anew(s);
    }
    if (!s->nbitmaps)
        return 0;
    *stored = true;
    return qcow2_bitmaps_store(s);
}

/* At close: metadata, then the bitmaps' bits (their new clusters need refcounts on disk) */
static void close_co(void *arg)
{
    struct qcow2_state *s = arg;
    writeback_co(s);
    bool stored;
    if (store_bitmaps(s, &stored) < 0)
        vbd_warn("qcow2 '%s': the persistent bitmaps could not be stored; they stay marked inconsistent", s->n->filename);
    if (stored)
        writeback_co(s);
}

/*
 * Does the image look metadata-preallocated: many more clusters in use (by
 * the refcounts) than the file really holds? QEMU's test, so that map tells
 * the same: then allocated clusters can lie over holes of the file, and
 * block status asks the file about them. Looked at once per open.
 */
static bool metadata_preallocated(struct qcow2_state *s)
{
    if (s->metadata_prealloc)
        return s->metadata_prealloc == 2;
    s->metadata_prealloc = 1;
    int64_t real = vbd_node_get_allocated_size(s->n->file);
    if (real < 0)
        return false;
    uint64_t real_clusters = (uint64_t)real >> s->cluster_bits;
    uint64_t threshold = real_clusters * 10 / 9 > real_clusters + 2 ? real_clusters * 10 / 9 : real_clusters + 2;
    uint64_t end = (vbd_node_size(s->n->file) + s->cluster_size - 1) >> s->cluster_bits, in_use = 0;
    for (uint64_t k = 0; k < end && in_use < threshold; k++) {
        uint64_t rc;
        if (qcow2_get_refcount(s, k, &rc) < 0)
            return false;
        in_use += rc != 0;
    }
    if (in_use >= threshold)
        s->metadata_prealloc = 2;
    return s->metadata_prealloc == 2;
}

static int qcow2_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                              uint64_t *map, struct vbd_node **file)
{
    struct qcow2_state *s = n->opaque;
    struct extent x;
    vbd_co_mutex_lock(&s->lock);
    int rc = map_extent(s, off, bytes, &x);
    bool ask_file = rc == 0 && want_zero && x.type == QCOW2_NORMAL && metadata_preallocated(s);
    vbd_co_mutex_unlock(&s->lock);
    if (rc < 0)
        return rc;
    *pnum = x.len;
    switch (x.type) {
    case QCOW2_UNALLOCATED:
    case QCOW2_UNALLOC_ALLOC: {
        int st = 0;
        if (x.type == QCOW2_UNALLOC_ALLOC) { /* qemu-img map shows where it would go */
            *map = x.host;
            *file = s->data;
            st = VBD_BS_OFFSET_VALID;
        }
        /* without a backing file (or past its end) the range reads as zeroes */
        uint64_t bsize = n->backing ? vbd_node_size(n->backing) : 0;
        if (!n->backing || off >= bsize)
            return st | VBD_BS_ZERO;
        if (x.len > bsize - off)
            *pnum = bsize - off;
        return st;
    }
    case QCOW2_ZERO_PLAIN:
        if (s->extended_l2 && qcow2_entry_type(s, x.entry) == QCOW2_NORMAL) {
            /* zero subclusters of an allocated cluster: qemu-img map shows where they live;
             * the next cluster may lie elsewhere on the host */
            uint64_t to_cluster_end = s->cluster_size - (off & (s->cluster_size - 1));
            if (*pnum > to_cluster_end)
                *pnum = to_cluster_end;
            *map = x.host;
            *file = s->data;
            return VBD_BS_ZERO | VBD_BS_ALLOCATED | VBD_BS_OFFSET_VALID;
        }
        return VBD_BS_ZERO | VBD_BS_ALLOCATED;
    case QCOW2_ZERO_ALLOC:
        *map = x.host;
        *file = s->data;
        return VBD_BS_ZERO | VBD_BS_ALLOCATED | VBD_BS_OFFSET_VALID;
    case QCOW2_NORMAL: {
        *map = x.host;
        *file = s->data;
        int st = VBD_BS_DATA | VBD_BS_ALLOCATED | VBD_BS_OFFSET_VALID;
        if (ask_file) {
            /* data over a hole of the file reads as zeroes (as QEMU's BDRV_BLOCK_RECURSE) */
            uint64_t file_pnum = 0;
            int fst = vbd_node_co_block_status(s->data, true, x.host, *pnum, &file_pnum, NULL, NULL);
            if (fst >= 0) {
                if ((fst & VBD_BS_EOF) && (!file_pnum || (fst & VBD_BS_ZERO))) {
                    st |= VBD_BS_ZERO; /* past the end of the file */
                } else {
                    *pnum = file_pnum;
                    st |= fst & VBD_BS_ZERO;
                }
            }
        }
        return st;
    }
    case QCOW2_COMPRESSED:
        return VBD_BS_DATA | VBD_BS_ALLOCATED | VBD_BS_COMPRESSED;
    }
    return 0;
}

static int64_t qcow2_allocated(struct vbd_node *n)
{
    return vbd_node_get_allocated_size(n->file);
}

/* The persistent bitmaps' names, flags and granularities, as qemu-img info lists them. */
static struct json_object *qcow2_bitmap_list(struct qcow2_state *s)
{
    if (s->version < 3 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return NULL;
    for (int i = 0; i < s->nexts; i++) {
        struct qcow2_ext *x = &s->exts[i];
        if (x->type != QCOW2_EXT_BITMAPS || x->len < 24)
            continue;
        uint32_t nb = get_be32p(x->data);
        uint64_t size = get_be64p(x->data + 8), off = get_be64p(x->data + 16);
        if (!nb || size > (1u << 20) || nb > 65535)
            return NULL;
        uint8_t *dir = malloc(size);
        if (!dir || vbd_node_co_pread(s->n->file, off, dir, size) < 0) {
            free(dir);
            return NULL;
        }
        struct json_object *arr = json_object_new_array();
        for (uint64_t p = 0, k = 0; k < nb && p + 24 <= size; k++) {
            uint32_t flags = get_be32p(dir + p + 12);
            uint8_t gbits = dir[p + 17];
            uint32_t name = ((uint32_t)dir[p + 18] << 8) | dir[p + 19], extra = get_be32p(dir + p + 20);
            if (p + 24 + extra + name > size || gbits > 63)
                break;
            struct json_object *b = json_object_new_object(), *f = json_object_new_array();
            if (flags & 1)
                json_object_array_add(f, json_object_new_string("in-use"));
            if (flags & 2)
                json_object_array_add(f, json_object_new_string("auto"));
            json_object_object_add(b, "flags", f);
            json_object_object_add(b, "name", json_object_new_string_len((const char *)dir + p + 24 + extra, (int)name));
            json_object_object_add(b, "granularity", json_object_new_int64((int64_t)1 << gbits));
            json_object_array_add(arr, b);
            p += (24 + extra + name + 7) & ~7ull;
        }
        free(dir);
        return arr;
    }
    return NULL;
}

static int qcow2_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    (void)err;
    info->cluster_size = (uint32_t)s->cluster_size;
    info->has_dirty_flag = true;
    info->dirty_flag = (s->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
    info->corrupt = s->corrupt;
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "compat", json_object_new_string(s->version == 2 ? "0.10" : "1.1"));
    json_object_object_add(d, "compression-type", json_object_new_string(s->compression_type ? "zstd" : "zlib"));
    if (s->version >= 3)
        json_object_object_add(d, "lazy-refcounts",
                               json_object_new_boolean((s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0));
    struct json_object *bm = qcow2_bitmap_list(s);
    if (bm)
        json_object_object_add(d, "bitmaps", bm);
    json_object_object_add(d, "refcount-bits", json_object_new_int(1 << s->refcount_order));
    if (s->external) {
        uint32_t len;
        const char *name = qcow2_data_file_name(s, &len);
        if (name) {
            char buf[4096];
            snprintf(buf, sizeof(buf), "%.*s", (int)len, name);
            json_object_object_add(d, "data-file", json_object_new_string(buf));
        }
        json_object_object_add(d, "data-file-raw", json_object_new_boolean(s->data_raw));
    }
    if (s->version >= 3) {
        json_object_object_add(d, "corrupt", json_object_new_boolean(s->corrupt));
        json_object_object_add(d, "extended-l2", json_object_new_boolean(s->extended_l2));
    }
    struct json_object *fs = json_object_new_object();
    json_object_object_add(fs, "type", json_object_new_string("qcow2"));
    json_object_object_add(fs, "data", d);
    info->format_specific = fs;
    return 0;
}

/* ------------------------------------------------------------------ */
/* create                                                              */

static const struct vbd_opt_desc qcow2_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"compat", VBD_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])", "1.1"},
    {"backing_file", VBD_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", VBD_OPT_STRING, "Image format of the base image", NULL},
    {"cluster_size", VBD_OPT_SIZE, "qcow2 cluster size", "65536"},
    {"preallocation", VBD_OPT_STRING, "Preallocation mode (allowed values: off, metadata, falloc, full)", "off"},
    {"lazy_refcounts", VBD_OPT_BOOL, "Postpone refcount updates", "off"},
    {"refcount_bits", VBD_OPT_NUMBER, "Width of a reference count entry in bits", "16"},
    {"compression_type", VBD_OPT_STRING, "Compression method used for image cluster compression", "zlib"},
    {"extended_l2", VBD_OPT_BOOL, "Extended L2 tables", "off"},
    {"data_file", VBD_OPT_STRING, "File name of an external data file", NULL},
    {"data_file_raw", VBD_OPT_BOOL, "The external data file must stay valid as a raw image", "off"},
    {NULL, 0, NULL, NULL},
};

/* create-layout.c's writes: into the new image's file node */
static int plan_pwrite(void *opaque, uint64_t off, const void *buf, uint64_t len)
{
    return vbd_node_co_pwrite(opaque, off, buf, len, 0);
}

static int plan_pread(void *opaque, uint64_t off, void *buf, uint64_t len)
{
    return vbd_node_co_pread(opaque, off, buf, len);
}

/* The image at filename (made here), or on target (an open protocol node
 * whose content is replaced: blockdev-create). */
static int create_image(const char *filename, struct vbd_node *target, struct json_object *opts,
                        struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0, cluster_size = 65536, refcount_bits = 16;
    char *compat = NULL, *backing = NULL, *backing_fmt = NULL, *prealloc = NULL, *ctype = NULL, *data_file = NULL;
    bool lazy = false, extl2 = false, data_raw = false;
    int rc = -EINVAL;
    uint8_t *h = NULL;
    struct qcow2_create_plan plan = {0};
    struct vbd_node *f = NULL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "compat", &compat, err) < 0 ||
        vbd_opt_take_str(opts, "backing_file", &backing, err) < 0 ||
        vbd_opt_take_str(opts, "backing_fmt", &backing_fmt, err) < 0 ||
        vbd_opt_take_size(opts, "cluster_size", &cluster_size, err) < 0 ||
        vbd_opt_take_str(opts, "preallocation", &prealloc, err) < 0 ||
        vbd_opt_take_bool(opts, "lazy_refcounts", &lazy, err) < 0 ||
        vbd_opt_take_u64(opts, "refcount_bits", &refcount_bits, err) < 0 ||
        vbd_opt_take_str(opts, "compression_type", &ctype, err) < 0 ||
        vbd_opt_take_bool(opts, "extended_l2", &extl2, err) < 0 ||
        vbd_opt_take_str(opts, "data_file", &data_file, err) < 0 ||
        vbd_opt_take_bool(opts, "data_file_raw", &data_raw, err) < 0)
        goto out;
    if (vbd_opts_check_empty(opts, "Block format 'qcow2'", err) < 0)
        goto out;
    int version = 3;
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2")))
        version = 2;
    else if (compat && strcmp(compat, "1.1") && strcmp(compat, "v3")) {
        /* QEMU's words: compat is its 'version' (0.10/1.1 read as v2/v3) */
        vbd_error_setf(err, EINVAL, "Parameter 'version' does not accept value '%s'", compat);
        goto out;
    }
    /* QEMU reads the enumerations first, in its schema's order (version,
     * preallocation, compression-type), then checks the values together */
    int pmode = VBD_PREALLOC_OFF;
    for (int i = 0; prealloc && vbd_prealloc_names[i]; i++)
        if (!strcmp(prealloc, vbd_prealloc_names[i]))
            pmode = i;
    if (prealloc && strcmp(prealloc, vbd_prealloc_names[pmode])) {
        vbd_error_setf(err, EINVAL, "Parameter 'preallocation' does not accept value '%s'", prealloc);
        goto out;
    }
    int comp = 0;
    if (ctype && !strcmp(ctype, "zstd"))
        comp = 1;
    else if (ctype && strcmp(ctype, "zlib")) {
        vbd_error_setf(err, EINVAL, "Parameter 'compression-type' does not accept value '%s'", ctype);
        goto out;
    }
    /* QEMU 7.2's qcow2_co_create: its words, in its order: extended L2
     * entries against the version, the cluster size (and extended L2
     * entries against it), lazy refcounts against the version, the
     * refcount width, then against the version, the compression type */
    const char *v3_only = NULL;
    uint32_t order;
    if (version == 2 && extl2)
        v3_only = "Extended L2 entries are only supported with compatibility level 1.1 and above";
    else if (qcow2_check_geometry(cluster_size, 16, &order, err) < 0)
        goto out;
    else if (extl2 && cluster_size < 16384) {
        vbd_error_setf(err, EINVAL, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        goto out;
    } else if (version == 2 && lazy)
        v3_only = "Lazy refcounts only supported with compatibility level 1.1 and above";
    else if (qcow2_check_geometry(cluster_size, refcount_bits, &order, err) < 0)
        goto out;
    else if (version == 2 && refcount_bits != 16)
        v3_only = "Different refcount widths than 16 bits require compatibility level 1.1 or above";
    else if (version == 2 && ctype && strcmp(ctype, "zlib"))
        v3_only = "Non-zlib compression type is only supported with compatibility level 1.1 and above";
    if (v3_only) {
        vbd_error_setf(err, EINVAL, "%s (use version=v3 or greater)", v3_only);
        goto out;
    }
    if (data_file && version < 3) {
        vbd_error_setf(err, EINVAL, "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)");
        goto out;
    }
    if (data_raw && !data_file) {
        vbd_error_setf(err, EINVAL, "data-file-raw requires data-file");
        goto out;
    }
    if (data_raw && backing) {
        vbd_error_setf(err, EINVAL, "Backing file and data-file-raw cannot be used at the same time");
        goto out;
    }
    if (data_file && strlen(data_file) > 1023) {
        vbd_error_setf(err, EINVAL, "Data file name too long");
        goto out;
    }
    if (data_raw && pmode == VBD_PREALLOC_OFF)
        pmode = VBD_PREALLOC_METADATA; /* a raw data file is mapped 1:1 from the start */
    if (pmode != VBD_PREALLOC_OFF && backing && !extl2) {
        vbd_error_setf(err, EINVAL, "Backing file and preallocation can only be used at the same time if extended_l2 is on");
        goto out;
    }
    if (backing_fmt && !backing) {
        vbd_error_setf(err, EINVAL, "Backing format cannot be used without backing file");
        goto out;
    }
    if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME) {
        vbd_error_setf(err, EINVAL, "Backing file name too long");
        goto out;
    }
    uint32_t cbits = 0;
    while ((1ull << cbits) < cluster_size)
        cbits++;
    uint32_t l2_bits = cbits - (extl2 ? 4 : 3);
    uint64_t per_l1 = 1ull << (l2_bits + cbits);
    uint64_t l1_entries = (size + per_l1 - 1) / per_l1;
    if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
        vbd_error_setf(err, EFBIG, "Image size is too large for this cluster size");
        goto out;
    }
    char data_path[4096] = "";
    if (data_file) { /* relative to the image, as it will be resolved at open */
        const char *slash = strrchr(filename, '/');
        if (data_file[0] == '/' || !slash)
            snprintf(data_path, sizeof(data_path), "%s", data_file);
        else
            snprintf(data_path, sizeof(data_path), "%.*s/%s", (int)(slash - filename), filename, data_file);
    }
    /* the header cluster (its offsets once the layout is made) */
    h = calloc(1, cluster_size);
    if (!h) {
        rc = -ENOMEM;
        goto out;
    }
    put_be32p(h, QCOW2_MAGIC);
    put_be32p(h + 4, (uint32_t)version);
    put_be32p(h + 20, cbits);
    put_be64p(h + 24, size);
    put_be32p(h + 36, (uint32_t)l1_entries);
    uint64_t pos = 72;
    if (version == 3) {
        uint64_t incompat = (comp ? QCOW2_INCOMPAT_COMPRESSION : 0) | (extl2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
                            (data_file ? QCOW2_INCOMPAT_DATA_FILE : 0);
        put_be64p(h + 72, incompat);
        put_be64p(h + 88, data_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0);
        put_be64p(h + 80, lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
        put_be32p(h + 96, (uint32_t)order);
        put_be32p(h + 100, 112);
        h[104] = (uint8_t)comp;
        pos = 112;
    }
    /* the same extensions (and bounds) as every later header rewrite: the
     * feature name table in version 3 only, as QEMU 7.2's
     * qcow2_update_header writes it (a v2 image from qemu-img has none) */
    struct qcow2_ext dext = {QCOW2_EXT_DATA_FILE, data_file ? (uint32_t)strlen(data_file) : 0, (uint8_t *)data_file};
    if (qcow2_put_extensions(h, cluster_size, pos, backing, backing_fmt, &dext, data_file ? 1 : 0, 0, version >= 3) < 0) {
        vbd_error_setf(err, EINVAL, "Backing file name, backing format and data file name too long for the %llu-byte header cluster",
                       (unsigned long long)cluster_size);
        rc = -EINVAL;
        goto out;
    }
    if (data_file) {
        /* on a node, the data file is a node the caller opened */
        rc = target ? 0 : vbd_create_protocol(data_path, size, VBD_PREALLOC_OFF, file_hints, err);
        if (rc < 0)
            goto out;
    }
    f = vbd_create_protocol_node(filename, target, 0, file_hints, err);
    if (!f) {
        rc = -EIO;
        goto out;
    }
    /* the refcount structure and the L1 table where qemu-img puts them
     * (create-layout.c), written as they are made; an empty image has no
     * L1 table (offset 0), as qemu-img makes it: a cluster for it would be
     * counted by nothing. preallocation=metadata too, in the image itself:
     * its L2 tables and clusters as qemu-img interleaves them with the
     * refcount blocks. The clusters qemu-img never writes stay holes of
     * the new file, so that the image takes the space qemu-img's takes */
    bool planned_metadata = pmode == VBD_PREALLOC_METADATA && !data_file;
    struct qcow2_plan_writer pw = {f, plan_pwrite, plan_pread};
    rc = qcow2_plan_create(cluster_size, order, l1_entries, planned_metadata ? size : 0, extl2 ? 16 : 8, &pw, &plan);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not lay out the qcow2 image: %s", strerror(-rc));
        goto out;
    }
    put_be64p(h + 40, plan.l1_offset);
    put_be64p(h + 48, plan.reftable_offset);
    put_be32p(h + 56, plan.reftable_clusters);
    rc = vbd_node_co_pwrite(f, 0, h, cluster_size < plan.length ? cluster_size : plan.length, 0);
    /* the file as long as qemu-img's (the last cluster written may pass it) */
    if (rc == 0 && vbd_node_size(f) != plan.length) {
        rc = vbd_node_co_truncate(f, plan.length, true, VBD_PREALLOC_OFF, NULL);
        if (rc == -ENOTSUP && vbd_node_size(f) > plan.length)
            rc = 0; /* a device keeps its size */
    }
    if (rc == 0)
        rc = vbd_node_co_flush(f);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not write the qcow2 image '%s': %s", filename, strerror(-rc));
    if (rc == 0 && pmode != VBD_PREALLOC_OFF && !planned_metadata) {
        vbd_node_unref(f);
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "driver", json_object_new_string("qcow2"));
        if (target)
            json_object_object_add(o, "file", json_object_new_string(target->node_name));
        f = vbd_open(target ? NULL : filename, o, VBD_OPEN_RDWR | VBD_OPEN_NO_BACKING, err);
        if (!f) {
            rc = -EIO;
            goto out;
        }
        struct qcow2_state *s = f->opaque;
        vbd_co_mutex_lock(&s->lock);
        rc = qcow2_preallocate(s, 0, size, (enum vbd_prealloc)pmode, err);
        vbd_co_mutex_unlock(&s->lock);
    }
out:
    if (f)
        vbd_node_unref(f);
    free(h);
    free(compat);
    free(backing);
    free(backing_fmt);
    free(prealloc);
    free(ctype);
    free(data_file);
    return rc < 0 ? rc : 0;
}

/* blockdev-reopen (libvirt around a commit). Going read-only: as a close,
 * metadata and the bitmaps reach the disk and the image is marked clean,
 * so other programs may read it; going read-write: as an open for writing
 * (repair a dirty image, take the bitmaps in use again). */
static int qcow2_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    if (rw) {
        s->read_only = false;
        int rc = s->corrupt ? -EIO : open_for_writing(n, s, true, err);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "qcow2 '%s' cannot be made read-write: %s", n->filename,
                           s->corrupt ? "the image is corrupt" : strerror(-rc));
            s->read_only = true;
        }
        return rc;
    }
    vbd_co_mutex_lock(&s->lock);
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    bool stored = false;
    if (rc == 0)
        rc = store_bitmaps(s, &stored);
    if (rc == 0 && stored && (rc = qcow2_writeback(s)) == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0 && (s->incompat & QCOW2_INCOMPAT_DIRTY))
        rc = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
    if (rc == 0) {
        qcow2_bitmaps_free(s);
        s->read_only = true;
    }
    vbd_co_mutex_unlock(&s->lock);
    if (rc < 0)
        vbd_error_setf(err, -rc, "qcow2 '%s': could not write its metadata back: %s", n->filename, strerror(-rc));
    return rc;
}

/* blockdev-reopen of the runtime options (QEMU 7.2's qcow2 mutable_opts),
 * checked as QEMU checks them (its words), applied as its
 * qcow2_update_options_commit. lazy-refcounts: turning lazy refcounts off
 * first puts the refcounts on the disk and marks the image clean, as
 * QEMU's qcow2_mark_clean. overlap-check: the kinds of metadata a data
 * write may not hit from the next request on. The cache sizes: a cache
 * whose size changes is written back (dirty L2 tables after the refcounts
 * they depend on, dirty refcount blocks) and made anew at its new size;
 * the prepare writes back already (QEMU: "Failed to flush the L2 table
 * cache" refuses the reopen), the commit again, drained, what was written
 * between the two. Left out, an option goes back to its default (lazy
 * refcounts: the header's). Everything runs on the node's home loop under
 * s->lock, so no request (all are drained) and no cache-clean timer sees a
 * cache half made. */
struct qcow2_reopen {
    uint64_t clean_interval;
    uint8_t lazy_opt;
    uint16_t overlap_mask;
    uint8_t discard_request_opt;
    bool discard_snapshot, discard_other;
    int l2_slots, rc_slots;
};

/* Dirty L2 tables and refcount blocks to the disk (lock held). */
static int write_back_caches(struct qcow2_state *s)
{
    int rc = qcow2_writeback(s);
    return rc < 0 ? rc : qcow2_flush_refcounts(s);
}

static bool caches_resized(struct qcow2_state *s, const struct qcow2_reopen *r)
{
    return r->l2_slots != s->l2_cache_slots || r->rc_slots != s->rc_nslots;
}

static int qcow2_reopen_prepare(struct vbd_node *n, struct json_object *opts, void **staged, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    struct runtime_opts ro;
    if (take_runtime_opts(opts, &ro, err) < 0 || check_runtime_opts(s, &ro, err) < 0)
        return -EINVAL;
    struct qcow2_reopen *r = vbd_xcalloc(1, sizeof(*r));
    r->clean_interval = ro.clean_interval;
    r->lazy_opt = ro.has_lazy ? (ro.lazy ? 2 : 1) : 0;
    r->overlap_mask = ro.overlap_mask;
    r->discard_request_opt = ro.discard_request_opt;
    r->discard_snapshot = ro.discard_snapshot;
    r->discard_other = ro.discard_other;
    r->l2_slots = l2_cache_slots(s, ro.l2_cache);
    r->rc_slots = refcount_cache_slots(s, ro.rc_cache);
    if (caches_resized(s, r) && !s->read_only) {
        struct vbd_loop *origin = vbd_node_co_enter_home(n);
        vbd_co_mutex_lock(&s->lock);
        int rc = write_back_caches(s);
        vbd_co_mutex_unlock(&s->lock);
        vbd_node_co_leave_home(origin);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Failed to flush the %s cache: %s",
                           r->l2_slots != s->l2_cache_slots ? "L2 table" : "refcount block", strerror(-rc));
            free(r);
            return rc;
        }
    }
    *staged = r;
    return 0;
}

/* Lock held, home loop, every request drained: the caches at their new
 * sizes, empty; nothing changes unless all they hold is on the disk. */
static void resize_caches(struct vbd_node *n, struct qcow2_state *s, const struct qcow2_reopen *r)
{
    int rc = s->read_only ? 0 : write_back_caches(s);
    for (int i = 0; rc == 0 && i < s->l2_cache_slots; i++)
        if (s->l2_cache[i].dirty)
            rc = -EIO;
    for (int i = 0; rc == 0 && i < s->rc_nslots; i++)
        if (s->rc_slots[i].dirty)
            rc = -EIO;
    if (rc < 0) {
        vbd_warn("qcow2 '%s': the cache sizes stay as they were: their tables could not be written back: %s",
                 n->filename, strerror(-rc));
        return;
    }
    if (r->l2_slots != s->l2_cache_slots) {
        struct qcow2_l2_slot *l2 = vbd_xcalloc((size_t)r->l2_slots, sizeof(*l2));
        for (int i = 0; i < s->l2_cache_slots; i++)
            free(s->l2_cache[i].table);
        free(s->l2_cache);
        s->l2_cache = l2;
        s->l2_cache_slots = r->l2_slots;
    }
    if (r->rc_slots != s->rc_nslots) {
        struct qcow2_rc_slot *rcs = vbd_xcalloc((size_t)r->rc_slots, sizeof(*rcs));
        qcow2_free_refcount_cache(s);
        s->rc_slots = rcs;
        s->rc_nslots = r->rc_slots;
    }
}

static void qcow2_reopen_commit(struct vbd_node *n, void *staged)
{
    struct qcow2_state *s = n->opaque;
    struct qcow2_reopen *r = staged;
    struct vbd_loop *origin = vbd_node_co_enter_home(n);
    vbd_co_mutex_lock(&s->lock);
    if (caches_resized(s, r))
        resize_caches(n, s, r);
    s->overlap_mask = r->overlap_mask;
    s->discard_request_opt = r->discard_request_opt;
    s->pass_discard_snapshot = r->discard_snapshot;
    s->pass_discard_other = r->discard_other;
    bool was_lazy = qcow2_lazy(s);
    s->lazy_opt = r->lazy_opt;
    if (was_lazy && !qcow2_lazy(s) && !s->read_only) {
        /* from here on refcounts reach the disk before what uses them:
         * the ones held back go now, then the dirty flag (a failure
         * leaves it set: the image is repaired at its next open) */
        int rc = qcow2_writeback(s);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        if (rc == 0 && (s->incompat & QCOW2_INCOMPAT_DIRTY))
            rc = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
        if (rc < 0)
            vbd_warn("qcow2 '%s': Failed to disable lazy refcounts: %s (the image stays marked dirty)", n->filename,
                     strerror(-rc));
    }
    vbd_co_mutex_unlock(&s->lock);
    if (r->clean_interval != s->cache_clean_interval) {
        /* the timer lives on the home loop, where this runs */
        if (s->clean_timer.armed)
            vbd_timer_cancel(&s->clean_timer);
        s->cache_clean_interval = r->clean_interval;
        s->clean_timer.fn = clean_caches;
        s->clean_timer.arg = s;
        if (s->cache_clean_interval)
            vbd_timer_arm(&s->clean_timer, vbd_clock_ns() + s->cache_clean_interval * 1000000000ull);
    }
    vbd_node_co_leave_home(origin);
    free(r);
}

static void qcow2_reopen_abort(struct vbd_node *n, void *staged)
{
    (void)n;
    free(staged);
}

/* The cache-clean timer is armed on the home loop (timers are per loop):
 * it follows the node when it moves (vbd_node_co_set_home). */
static void qcow2_detach_loop(struct vbd_node *n)
{
    struct qcow2_state *s = n->opaque;
    if (s->clean_timer.armed)
        vbd_timer_cancel(&s->clean_timer);
}

static void qcow2_attach_loop(struct vbd_node *n)
{
    struct qcow2_state *s = n->opaque;
    if (s->cache_clean_interval && s->clean_timer.fn)
        vbd_timer_arm(&s->clean_timer, vbd_clock_ns() + s->cache_clean_interval * 1000000000ull);
}

static const struct vbd_driver qcow2_driver = {
    .name = "qcow2",
    .kind = VBD_DRV_FORMAT,
    .caps = VBD_DRV_CAP_COMPRESSED_WRITES,
    .state_size = sizeof(struct qcow2_state),
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .co_preadv = qcow2_preadv,
    .co_pwritev = qcow2_pwritev,
    .co_write_prepare = qcow2_write_prepare,
    .co_write_commit = qcow2_write_commit,
    .co_flush = qcow2_flush,
    .co_pwrite_zeroes = qcow2_pwrite_zeroes,
    .co_pdiscard = qcow2_pdiscard,
    .co_block_status = qcow2_block_status,
    .co_truncate = qcow2_truncate,
    .get_allocated_size = qcow2_allocated,
    .get_info = qcow2_get_info,
    .co_vmstate = qcow2_vmstate,
    .co_check = qcow2_co_check,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_goto = qcow2_snapshot_goto,
    .snapshot_delete = qcow2_snapshot_delete,
    .create_opts = qcow2_create_opts,
    .co_create = create_image,
    .create_onto_node = true,
    .measure = qcow2_measure,
    .co_amend = qcow2_amend,
    .change_backing_file = qcow2_change_backing_file,
    .co_make_empty = qcow2_make_empty,
    .co_bitmap_status = qcow2_bitmap_status,
    .co_bitmap_change = qcow2_bitmap_change,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .reopen_rw = qcow2_reopen_rw,
    .reopen_prepare = qcow2_reopen_prepare,
    .reopen_commit = qcow2_reopen_commit,
    .reopen_abort = qcow2_reopen_abort,
    .detach_loop = qcow2_detach_loop,
    .attach_loop = qcow2_attach_loop,
};
VBD_DRIVER_REGISTER(qcow2, qcow2_driver);
