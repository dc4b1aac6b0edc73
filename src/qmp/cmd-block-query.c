/* SPDX-License-Identifier: MIT */
/*
 * query-named-block-nodes and query-blockstats: the keys and value types
 * qemu-storage-daemon 7.2 returns (BlockDeviceInfo, ImageInfo, BlockStats
 * in qapi/block-core.json). Throttling and encryption do not exist in vbd:
 * their keys are there, as zero / false.
 */
#include "qmp/cmd-block.h"

#include "daemon/objects.h"
#include "vbd/backend.h"
#include "vbd/backup.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/nbd.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static void add_str(struct json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v));
}
static void add_int(struct json_object *o, const char *k, int64_t v)
{
    json_object_object_add(o, k, json_object_new_int64(v));
}
static void add_bool(struct json_object *o, const char *k, bool v)
{
    json_object_object_add(o, k, json_object_new_boolean(v));
}

static struct json_object *snapshot_list(struct vbd_node *n)
{
    struct vbd_snapshot_info *sn = NULL;
    int count = 0;
    if (n->drv->snapshot_list) {
        struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver state: its home loop's */
        count = n->drv->snapshot_list(n, &sn);
        vbd_node_co_leave_home(origin);
    }
    if (count <= 0) {
        free(sn);
        return NULL;
    }
    struct json_object *arr = json_object_new_array();
    for (int i = 0; i < count; i++) {
        struct json_object *s = json_object_new_object();
        add_str(s, "id", sn[i].id);
        add_str(s, "name", sn[i].name);
        add_int(s, "vm-state-size", (int64_t)sn[i].vm_state_size);
        add_int(s, "date-sec", sn[i].date_sec);
        add_int(s, "date-nsec", sn[i].date_nsec);
        add_int(s, "vm-clock-sec", (int64_t)(sn[i].vm_clock_nsec / 1000000000ull));
        add_int(s, "vm-clock-nsec", (int64_t)(sn[i].vm_clock_nsec % 1000000000ull));
        if (sn[i].icount_valid)
            add_int(s, "icount", (int64_t)sn[i].icount);
        json_object_array_add(arr, s);
    }
    free(sn);
    return arr;
}

/* QEMU's bdrv_filter_or_cow_bs: a filter's filtered child (throttle,
 * copy-on-read, blkdebug, a job's filter), else the backing. */
static struct vbd_node *filtered_or_cow(struct vbd_node *n)
{
    if (n->drv->kind == VBD_DRV_FILTER)
        return n->file && n->file != n ? n->file : n->backing;
    return n->backing;
}

/* The node QEMU's bdrv_get_info answers for: a filter's and raw's
 * (raw_get_info) come from the child below. */
static struct vbd_node *info_source(struct vbd_node *n)
{
    while ((n->drv->kind == VBD_DRV_FILTER || (n->drv->caps & VBD_DRV_CAP_FILE_WINDOW)) && n->file && n->file != n)
        n = n->file;
    return n;
}

/* ImageInfo; *bitmaps gets the qcow2 bitmaps' list (a reference) when asked. */
static struct json_object *image_info(struct vbd_node *n, bool with_backing, struct json_object **bitmaps)
{
    struct json_object *o = json_object_new_object();
    struct vbd_image_info info;
    struct vbd_error *e = NULL;
    if (vbd_node_get_info(n, &info, &e) < 0) {
        vbd_error_free(e);
        memset(&info, 0, sizeof(info));
        info.virtual_size = vbd_node_size(n);
        info.actual_size = -1;
    }
    add_str(o, "filename", n->filename);
    add_str(o, "format", n->drv->name);
    /* as QEMU: only drivers that answer get_info there have it: formats and
     * host files (resizable protocols), not null-co or an nbd client; a
     * filter or raw answers with its child's, cluster size included */
    struct vbd_node *src = info_source(n);
    if (src != n) {
        struct vbd_image_info below;
        struct vbd_error *be = NULL;
        if (vbd_node_get_info(src, &below, &be) == 0) {
            info.cluster_size = below.cluster_size;
            info.dirty_flag = below.dirty_flag;
            json_object_put(below.format_specific);
        }
        vbd_error_free(be);
    }
    if (!(src->drv->caps & VBD_DRV_CAP_REMOTE) && (src->drv->kind != VBD_DRV_PROTOCOL || src->drv->co_truncate))
        add_bool(o, "dirty-flag", info.dirty_flag);
    if (info.actual_size >= 0)
        add_int(o, "actual-size", info.actual_size);
    add_int(o, "virtual-size", (int64_t)info.virtual_size);
    if (info.cluster_size)
        add_int(o, "cluster-size", info.cluster_size);
    if (n->backing_file[0]) {
        add_str(o, "backing-filename", n->backing_file);
        add_str(o, "full-backing-filename",
                n->full_backing_filename[0] ? n->full_backing_filename
                                            : (n->backing ? n->backing->filename : n->backing_file));
        if (n->backing_format[0])
            add_str(o, "backing-filename-format", n->backing_format);
    }
    struct json_object *snaps = snapshot_list(n);
    if (snaps)
        json_object_object_add(o, "snapshots", snaps);
    if (info.format_specific) {
        struct json_object *data, *bm;
        if (bitmaps && json_object_object_get_ex(info.format_specific, "data", &data) &&
            json_object_object_get_ex(data, "bitmaps", &bm))
            *bitmaps = json_object_get(bm);
        json_object_object_add(o, "format-specific", info.format_specific);
    }
    struct vbd_node *below = filtered_or_cow(n);
    if (with_backing && below) /* QEMU's query-named-block-nodes: a filter's child too */
        json_object_object_add(o, "backing-image", image_info(below, true, NULL));
    return o;
}

/* BlockDirtyInfo for each bitmap: the in-memory ones (newest first, as
 * QEMU's list), then the persistent ones. */
static struct json_object *dirty_bitmaps(struct vbd_node *n, struct json_object *list)
{
    struct json_object *arr = json_object_new_array();
    for (struct vbd_dirty_bitmap *m = vbd_dirty_bitmap_next(n, NULL); m; m = vbd_dirty_bitmap_next(n, m)) {
        struct json_object *d = json_object_new_object();
        add_str(d, "name", vbd_dirty_bitmap_name(m));
        add_bool(d, "recording", vbd_dirty_bitmap_enabled(m));
        add_bool(d, "persistent", false);
        add_bool(d, "busy", vbd_dirty_bitmap_busy(m));
        add_int(d, "count", (int64_t)vbd_dirty_bitmap_count(m));
        add_int(d, "granularity", vbd_dirty_bitmap_granularity(m));
        json_object_array_add(arr, d);
    }
    size_t len = list ? json_object_array_length(list) : 0;
    for (size_t i = 0; i < len; i++) {
        struct json_object *b = json_object_array_get_idx(list, i), *v;
        const char *name = json_object_object_get_ex(b, "name", &v) ? json_object_get_string(v) : "";
        bool recording = false;
        if (json_object_object_get_ex(b, "flags", &v))
            for (size_t k = 0; k < json_object_array_length(v); k++)
                recording |= !strcmp(json_object_get_string(json_object_array_get_idx(v, k)), "auto");
        uint64_t count;
        bool inconsistent = vbd_node_co_bitmap_count(n, name, &count) == -EINVAL;
        struct json_object *d = json_object_new_object();
        add_str(d, "name", name);
        add_bool(d, "recording", recording);
        add_bool(d, "persistent", true);
        /* as QEMU's, busy while an NBD export serves it or a backup job uses it */
        add_bool(d, "busy", vbd_nbd_bitmap_exported(n, name) || vbd_backup_uses_persistent_bitmap(n, name));
        add_int(d, "count", (int64_t)count);
        add_int(d, "granularity", json_object_object_get_ex(b, "granularity", &v) ? json_object_get_int64(v) : 0);
        if (inconsistent)
            add_bool(d, "inconsistent", true);
        json_object_array_add(arr, d);
    }
    return arr;
}

static int backing_depth(struct vbd_node *n)
{
    int d = 0;
    for (struct vbd_node *b = filtered_or_cow(n); b && d < 4096; b = filtered_or_cow(b))
        d++;
    return d;
}

static struct json_object *node_info(struct vbd_node *n, bool flat)
{
    struct json_object *o = json_object_new_object(), *bitmaps = NULL;
    add_str(o, "file", n->filename);
    add_str(o, "node-name", n->node_name);
    add_bool(o, "ro", n->read_only);
    add_str(o, "drv", n->drv->name);
    if (n->backing)
        add_str(o, "backing_file", n->backing->filename);
    add_int(o, "backing_file_depth", flat ? 0 : backing_depth(n)); /* as qsd: 0 in the flat form */
    add_bool(o, "encrypted", false);
    add_str(o, "detect_zeroes", vbd_detect_zeroes_names[n->detect_zeroes]);
    static const char *const throttles[] = {"bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"};
    for (size_t i = 0; i < sizeof(throttles) / sizeof(throttles[0]); i++)
        add_int(o, throttles[i], 0);
    struct json_object *cache = json_object_new_object();
    add_bool(cache, "writeback", true); /* nodes write back; a backend's writethrough is above them */
    add_bool(cache, "direct", (n->open_flags & VBD_OPEN_NOCACHE) != 0);
    add_bool(cache, "no-flush", (n->open_flags & VBD_OPEN_NO_FLUSH) != 0);
    json_object_object_add(o, "cache", cache);
    add_int(o, "write_threshold", (int64_t)__atomic_load_n(&n->write_threshold, __ATOMIC_RELAXED));
    json_object_object_add(o, "image", image_info(n, !flat, &bitmaps));
    if ((bitmaps && json_object_array_length(bitmaps)) || vbd_dirty_bitmap_next(n, NULL))
        json_object_object_add(o, "dirty-bitmaps", dirty_bitmaps(n, bitmaps));
    json_object_put(bitmaps);
    return o;
}

static int by_name_seq(const void *a, const void *b)
{
    uint64_t x = (*(struct vbd_node *const *)a)->name_seq, y = (*(struct vbd_node *const *)b)->name_seq;
    return x < y ? -1 : x > y;
}

/* Every named node, in the order QEMU named them (vbd_node.name_seq:
 * a format's file before it, its backing after); NULL without memory. */
static struct vbd_node **nodes_in_name_order(size_t *count)
{
    size_t c = 0;
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        c++;
    struct vbd_node **all = calloc(c ? c : 1, sizeof(*all));
    if (!all)
        return NULL;
    size_t i = 0;
    for (struct vbd_node *n = vbd_node_next(NULL); n; n = vbd_node_next(n))
        all[i++] = n;
    qsort(all, c, sizeof(*all), by_name_seq);
    *count = c;
    return all;
}

struct json_object *vbd_qmp_query_named_block_nodes(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *v;
    bool flat = json_object_object_get_ex(args, "flat", &v) && json_object_get_boolean(v);
    size_t count = 0;
    struct vbd_node **all = nodes_in_name_order(&count);
    if (!all) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    /* newest first, as qsd (bdrv_named_nodes_list prepends each node) */
    struct json_object *arr = json_object_new_array();
    for (size_t i = count; i-- > 0;)
        json_object_array_add(arr, node_info(all[i], flat));
    free(all);
    return arr;
}

/* ---------- query-blockstats ---------- */

static struct vbd_backend *export_backend(struct vbd_daemon_export *e)
{
    return e->type->backend ? e->type->backend(e->exp) : NULL;
}

static void stats_add(struct vbd_backend_stats *sum, const struct vbd_backend_stats *s)
{
    for (int op = 0; op < VBD_STAT_NR; op++) {
        sum->ops[op] += s->ops[op];
        sum->bytes[op] += s->bytes[op];
        sum->errors[op] += s->errors[op];
        sum->total_ns[op] += s->total_ns[op];
    }
}

/* BlockDeviceStats from a backend's counters (zeroing counts as writing, as in QEMU). */
static struct json_object *device_stats(const struct vbd_backend_stats *s)
{
    struct json_object *o = json_object_new_object();
    uint64_t wr_ops = s->ops[VBD_STAT_WRITE] + s->ops[VBD_STAT_ZEROES];
    add_int(o, "rd_bytes", (int64_t)s->bytes[VBD_STAT_READ]);
    add_int(o, "wr_bytes", (int64_t)(s->bytes[VBD_STAT_WRITE] + s->bytes[VBD_STAT_ZEROES]));
    add_int(o, "unmap_bytes", (int64_t)s->bytes[VBD_STAT_DISCARD]);
    add_int(o, "rd_operations", (int64_t)s->ops[VBD_STAT_READ]);
    add_int(o, "wr_operations", (int64_t)wr_ops);
    add_int(o, "flush_operations", (int64_t)s->ops[VBD_STAT_FLUSH]);
    add_int(o, "unmap_operations", (int64_t)s->ops[VBD_STAT_DISCARD]);
    add_int(o, "rd_total_time_ns", (int64_t)s->total_ns[VBD_STAT_READ]);
    add_int(o, "wr_total_time_ns", (int64_t)(s->total_ns[VBD_STAT_WRITE] + s->total_ns[VBD_STAT_ZEROES]));
    add_int(o, "flush_total_time_ns", (int64_t)s->total_ns[VBD_STAT_FLUSH]);
    add_int(o, "unmap_total_time_ns", (int64_t)s->total_ns[VBD_STAT_DISCARD]);
    add_int(o, "wr_highest_offset", 0); /* not tracked */
    add_int(o, "rd_merged", (int64_t)s->merged[VBD_STAT_READ]);
    add_int(o, "wr_merged", (int64_t)s->merged[VBD_STAT_WRITE]);
    add_int(o, "unmap_merged", 0);
    add_int(o, "failed_rd_operations", (int64_t)s->errors[VBD_STAT_READ]);
    add_int(o, "failed_wr_operations", (int64_t)(s->errors[VBD_STAT_WRITE] + s->errors[VBD_STAT_ZEROES]));
    add_int(o, "failed_flush_operations", (int64_t)s->errors[VBD_STAT_FLUSH]);
    add_int(o, "failed_unmap_operations", (int64_t)s->errors[VBD_STAT_DISCARD]);
    add_int(o, "invalid_rd_operations", 0);
    add_int(o, "invalid_wr_operations", 0);
    add_int(o, "invalid_flush_operations", 0);
    add_int(o, "invalid_unmap_operations", 0);
    add_bool(o, "account_invalid", false);
    add_bool(o, "account_failed", true);
    json_object_object_add(o, "timed_stats", json_object_new_array());
    return o;
}

/* A node's requests as the exports on it counted them (nodes below an
 * export's root count nothing of their own: zeroes, as qsd's nodes). */
static struct json_object *node_stats(struct vbd_node *n, int depth)
{
    struct vbd_backend_stats sum;
    memset(&sum, 0, sizeof(sum));
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (be && vbd_backend_node(be) == n) {
            struct vbd_backend_stats s;
            vbd_backend_get_stats(be, &s);
            stats_add(&sum, &s);
        }
    }
    struct json_object *o = json_object_new_object();
    add_str(o, "node-name", n->node_name);
    json_object_object_add(o, "stats", device_stats(&sum));
    if (!strcmp(n->drv->name, "file")) {
        struct json_object *ds = json_object_new_object();
        add_str(ds, "driver", "file");
        add_int(ds, "discard-nb-ok", 0);
        add_int(ds, "discard-nb-failed", 0);
        add_int(ds, "discard-bytes-ok", 0);
        json_object_object_add(o, "driver-specific", ds);
    }
    if (depth < 64 && n->file && n->file != n)
        json_object_object_add(o, "parent", node_stats(n->file, depth + 1));
    return o; /* the backing only at the top of an export's entry, as QEMU */
}

struct json_object *vbd_qmp_query_blockstats(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)err;
    struct json_object *v, *arr = json_object_new_array();
    if (json_object_object_get_ex(args, "query-nodes", &v) && json_object_get_boolean(v)) {
        /* oldest first, as qsd (bdrv_next_node) */
        size_t count = 0;
        struct vbd_node **all = nodes_in_name_order(&count);
        for (size_t i = 0; all && i < count; i++)
            json_object_array_add(arr, node_stats(all[i], 0));
        free(all);
        return arr;
    }
    /* One entry per export (qsd lists no anonymous backends at all: a
     * deliberate difference, the exports are what is worth counting). */
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next) {
        struct vbd_backend *be = export_backend(e);
        if (!be)
            continue;
        struct vbd_backend_stats s;
        vbd_backend_get_stats(be, &s);
        struct vbd_node *root = vbd_backend_node(be);
        struct json_object *o = json_object_new_object();
        add_str(o, "device", "");
        add_str(o, "qdev", e->id);
        add_str(o, "node-name", root->node_name);
        json_object_object_add(o, "stats", device_stats(&s));
        if (root->file && root->file != root)
            json_object_object_add(o, "parent", node_stats(root->file, 1));
        if (root->backing)
            json_object_object_add(o, "backing", node_stats(root->backing, 1));
        json_object_array_add(arr, o);
    }
    return arr;
}
