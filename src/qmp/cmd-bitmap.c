/* SPDX-License-Identifier: MIT */
/*
 * QMP dirty bitmaps: block-dirty-bitmap-add/remove/clear/enable/disable/
 * merge, on the persistent bitmaps of a qcow2 node (the driver's
 * co_bitmap_change, as vbd-img bitmap uses it): each change is on disk
 * when the command returns, and the enabled ones track the exports'
 * writes. With persistent=false (QEMU's default) the bitmap lives only in
 * memory (vbd/dirty-bitmap.h) and goes away with the node; the same
 * commands and transaction actions work on both kinds.
 *
 * As transaction actions each change is made in prepare, with what abort
 * needs to restore it (the bits, the flags), while the node's exports are
 * drained so that nothing changes a bitmap in between, and the block jobs
 * using it paused without a status change (QEMU has no drain there, so no
 * event either). The qcow2 driver also keeps the ranges written while it
 * stores and reloads its bitmaps and marks them once they are back.
 */
#include "qmp/commands.h"
#include "qmp/snapshot.h"

#include "vbd/alloc.h"
#include "vbd/backup.h"
#include "vbd/block.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/error.h"
#include "vbd/nbd.h"
#include "vbd/sha256.h"

#include <endian.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *arg_str(struct json_object *args, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : NULL;
}

/* Bitmap `name` of node n itself, in memory or persistent: QEMU's
 * bdrv_find_dirty_bitmap looks at that one node. A bitmap of the same name
 * on its backing file or its file node is another node's, fed by other
 * writes (none since a snapshot, or at host offsets): a command naming n
 * must not act on it, nor a merge read it. -ENOENT: n has none. */
static int own_bitmap_status(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
    struct vbd_dirty_bitmap *mem = vbd_dirty_bitmap_find(n, name);
    if (mem)
        return vbd_dirty_bitmap_status(mem, off, bytes, pnum);
    return vbd_node_co_persistent_bitmap_status(n, name, off, bytes, pnum);
}

/* Appends bitmap `name` of n's dirty ranges; -ENOENT: no such bitmap,
 * -EINVAL: inconsistent. */
static int read_ranges(struct vbd_node *n, const char *name, struct vbd_bitmap_ranges *rs)
{
    uint64_t size = vbd_node_size(n), pnum = 0;
    int st = own_bitmap_status(n, name, 0, size ? size : 1, &pnum);
    if (st < 0)
        return st;
    for (uint64_t off = 0; off < size; off += pnum) {
        st = own_bitmap_status(n, name, off, size - off, &pnum);
        if (st < 0)
            return st;
        if (!pnum)
            break;
        if (st)
            vbd_bitmap_ranges_add(rs, off, pnum);
    }
    return 0;
}

/* What qemu-img info lists for the bitmap: granularity and flags. */
static bool bitmap_info(struct vbd_node *n, const char *name, uint32_t *granularity, bool *enabled, bool *in_use)
{
    struct vbd_dirty_bitmap *mem = vbd_dirty_bitmap_find(n, name);
    if (mem) {
        *granularity = vbd_dirty_bitmap_granularity(mem);
        *enabled = vbd_dirty_bitmap_enabled(mem);
        *in_use = false;
        return true;
    }
    struct vbd_image_info info = {0};
    struct vbd_error *e = NULL;
    bool found = false;
    if (vbd_node_get_info(n, &info, &e) < 0) {
        vbd_error_free(e);
        return false;
    }
    struct json_object *data, *list;
    if (info.format_specific && json_object_object_get_ex(info.format_specific, "data", &data) &&
        json_object_object_get_ex(data, "bitmaps", &list)) {
        for (size_t i = 0; !found && i < json_object_array_length(list); i++) {
            struct json_object *b = json_object_array_get_idx(list, i), *f;
            if (strcmp(arg_str(b, "name"), name))
                continue;
            found = true;
            *granularity = (uint32_t)json_object_get_int64(json_object_object_get(b, "granularity"));
            *enabled = *in_use = false;
            if (json_object_object_get_ex(b, "flags", &f))
                for (size_t k = 0; k < json_object_array_length(f); k++) {
                    const char *flag = json_object_get_string(json_object_array_get_idx(f, k));
                    *enabled |= !strcmp(flag, "auto");
                    *in_use |= !strcmp(flag, "in-use");
                }
        }
    }
    json_object_put(info.format_specific);
    return found;
}

/* One change through the driver, its error in QMP's form. */
static int change(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_qmp_error *err)
{
    struct vbd_error *e = NULL;
    if (vbd_dirty_bitmap_find(n, op->name)) {
        int rc = vbd_dirty_bitmap_change(n, op, &e);
        if (rc < 0 && err)
            vbd_qmp_error_take(err, e);
        else
            vbd_error_free(e);
        return rc;
    }
    if (!n->drv->co_bitmap_change) {
        if (err)
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't store persistent bitmaps to %s: Operation not supported",
                               n->node_name);
        return -ENOTSUP;
    }
    struct vbd_loop *origin = vbd_node_co_enter_home(n); /* driver state: its home loop's */
    int rc = n->drv->co_bitmap_change(n, op, &e);
    vbd_node_co_leave_home(origin);
    if (rc < 0) {
        if (err)
            vbd_qmp_error_take(err, e);
        else {
            vbd_error_report("transaction abort: bitmap '%s' of '%s': %s", op->name, n->node_name, e ? e->msg : "failed");
            vbd_error_free(e);
        }
    }
    return rc;
}

static void not_found(const char *name, int st, struct vbd_qmp_error *err)
{
    if (st == -EINVAL)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s' is inconsistent and cannot be used", name);
    else
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Dirty bitmap '%s' not found", name);
}

struct bitmap_state {
    struct vbd_node *n;
    char *name;
    struct vbd_bitmap_ranges saved; /* the bits before the change */
    uint32_t granularity;
    bool was_enabled;
    bool remove_in_commit; /* an inconsistent bitmap: no bits to restore, so removed only at commit */
    bool in_memory;
};

static struct bitmap_state *state_new(struct tx_action *a, struct vbd_node *n, const char *name)
{
    struct bitmap_state *st = vbd_xcalloc(1, sizeof(*st));
    st->n = n;
    st->name = vbd_xstrdup(name);
    a->state = st;
    return st;
}

static void bitmap_clean(struct tx_action *a)
{
    struct bitmap_state *st = a->state;
    if (!st)
        return;
    free(st->name);
    free(st->saved.r);
    free(st);
    a->state = NULL;
}

/* Sets the saved bits back into the (cleared or new) bitmap. */
static void restore_bits(struct bitmap_state *st)
{
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_CLEAR, .name = st->name};
    if (change(st->n, &op, NULL) < 0 || !st->saved.n)
        return;
    op = (struct vbd_bitmap_op){.action = VBD_BITMAP_MERGE, .name = st->name, .ranges = (const uint64_t(*)[2])st->saved.r,
                                .nranges = st->saved.n};
    change(st->n, &op, NULL);
}

/* QEMU's BDRV_BITMAP_BUSY: an in-memory bitmap flagged (exported, frozen
 * by a backup), a persistent one in an export's list or a backup's use. */
static bool bitmap_busy(struct vbd_node *n, const char *name)
{
    struct vbd_dirty_bitmap *mem = vbd_dirty_bitmap_find(n, name);
    if (mem)
        return vbd_dirty_bitmap_busy(mem);
    return vbd_nbd_bitmap_exported(n, name) || vbd_backup_uses_persistent_bitmap(n, name);
}

static void busy_error(const char *name, struct vbd_qmp_error *err)
{
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                       "Bitmap '%s' is currently in use by another operation and cannot be used", name);
}

/* The node of an existing bitmap (QEMU's block_dirty_bitmap_lookup). */
static struct vbd_node *find_bitmap(struct tx_action *a, const char *node, const char *name, struct vbd_qmp_error *err)
{
    struct vbd_node *n = vbd_node_find(node);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' not found", node);
        return NULL;
    }
    tx_drain_quiet(a, n);
    if (vbd_dirty_bitmap_find(n, name))
        return n;
    uint64_t pnum;
    int st = own_bitmap_status(n, name, 0, 1, &pnum);
    if (st == -ENOENT || (st < 0 && st != -EINVAL) || !n->drv->co_bitmap_change) {
        not_found(name, -ENOENT, err);
        return NULL;
    }
    return n;
}

/* QEMU's bdrv_dirty_bitmap_check: busy (exported, or frozen by a backup)
 * before read-only (a persistent bitmap of a node below an overlay, or
 * opened so); in-memory bitmaps are never read-only. */
static bool modifiable(struct vbd_node *n, const char *name, struct vbd_qmp_error *err)
{
    if (bitmap_busy(n, name)) {
        busy_error(name, err);
        return false;
    }
    if (!vbd_dirty_bitmap_find(n, name) && n->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap '%s' is readonly and cannot be modified", name);
        return false;
    }
    return true;
}

/* The node and the existing bitmap of a remove/clear/enable/disable. */
static struct vbd_node *lookup_bitmap(struct tx_action *a, const char *node, const char *name, struct vbd_qmp_error *err)
{
    struct vbd_node *n = find_bitmap(a, node, name, err);
    return n && modifiable(n, name, err) ? n : NULL;
}

/* ---------- add ---------- */

static int add_check(struct json_object *data, const char *prefix, struct vbd_qmp_error *err)
{
    struct json_object *g;
    if (json_object_object_get_ex(data, "granularity", &g)) {
        int64_t v = json_object_get_int64(g);
        if (v < 0 || v > (int64_t)UINT32_MAX) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sgranularity' expects uint32_t", prefix);
            return -1;
        }
    }
    return 0;
}

static int add_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *node = arg_str(a->data, "node"), *name = arg_str(a->data, "name");
    struct json_object *v;
    if (!*name) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap name cannot be empty");
        return -1;
    }
    struct vbd_node *n = qmp_lookup_node(node, err);
    if (!n)
        return -1;
    uint32_t granularity = 0;
    if (json_object_object_get_ex(a->data, "granularity", &v)) {
        granularity = (uint32_t)json_object_get_int64(v);
        if (granularity < 512 || (granularity & (granularity - 1))) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Granularity must be power of 2 and at least 512");
            return -1;
        }
    }
    bool persistent = json_object_object_get_ex(a->data, "persistent", &v) && json_object_get_boolean(v);
    bool disabled = json_object_object_get_ex(a->data, "disabled", &v) && json_object_get_boolean(v);
    if (!persistent) {
        uint64_t pnum;
        if (vbd_dirty_bitmap_find(n, name) || own_bitmap_status(n, name, 0, 1, &pnum) != -ENOENT) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap already exists: %s", name);
            return -1;
        }
        if (strlen(name) > 1023) { /* QEMU's BDRV_BITMAP_MAX_NAME_SIZE, for every bitmap */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Bitmap name too long: %s", name);
            return -1;
        }
        tx_drain_quiet(a, n);
        vbd_dirty_bitmap_create(n, name, granularity, disabled);
        struct bitmap_state *st = state_new(a, n, name);
        st->in_memory = true;
        return 0;
    }
    if (n->read_only && n->drv->co_bitmap_change) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't make bitmap '%s' persistent in '%s': the node is read-only", name,
                           node);
        return -1;
    }
    tx_drain_quiet(a, n);
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_ADD, .name = name, .granularity = granularity, .disabled = disabled};
    if (change(n, &op, err) < 0)
        return -1;
    state_new(a, n, name);
    return 0;
}

static void add_abort(struct tx_action *a)
{
    struct bitmap_state *st = a->state;
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_REMOVE, .name = st->name};
    change(st->n, &op, NULL);
}

const struct tx_action_type tx_bitmap_add = {
    .name = "block-dirty-bitmap-add",
    .arg_spec = "node:str name:str ?granularity:u32 ?persistent:bool ?disabled:bool",
    .check = add_check,
    .prepare = add_prepare,
    .abort = add_abort,
    .clean = bitmap_clean,
};

/* ---------- remove ---------- */

static int remove_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *name = arg_str(a->data, "name");
    struct vbd_node *n = lookup_bitmap(a, arg_str(a->data, "node"), name, err);
    if (!n)
        return -1;
    struct bitmap_state *st = state_new(a, n, name);
    bool in_use = false;
    st->in_memory = vbd_dirty_bitmap_find(n, name) != NULL;
    if (!bitmap_info(n, name, &st->granularity, &st->was_enabled, &in_use) || read_ranges(n, name, &st->saved) < 0) {
        st->remove_in_commit = true; /* inconsistent: nothing to restore, so nothing to undo until commit */
        return 0;
    }
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_REMOVE, .name = name};
    if (change(n, &op, err) < 0) {
        bitmap_clean(a);
        return -1;
    }
    return 0;
}

static void remove_commit(struct tx_action *a)
{
    struct bitmap_state *st = a->state;
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_REMOVE, .name = st->name};
    if (st->remove_in_commit)
        change(st->n, &op, NULL);
}

static void remove_abort(struct tx_action *a)
{
    struct bitmap_state *st = a->state;
    if (st->remove_in_commit)
        return;
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_ADD, .name = st->name, .granularity = st->granularity,
                               .disabled = !st->was_enabled};
    if (st->in_memory) {
        vbd_dirty_bitmap_create(st->n, st->name, st->granularity, !st->was_enabled);
        restore_bits(st);
    } else if (change(st->n, &op, NULL) == 0) {
        restore_bits(st);
    }
}

const struct tx_action_type tx_bitmap_remove = {
    .name = "block-dirty-bitmap-remove",
    .arg_spec = "node:str name:str",
    .prepare = remove_prepare,
    .commit = remove_commit,
    .abort = remove_abort,
    .clean = bitmap_clean,
};

/* ---------- clear ---------- */

static int clear_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *name = arg_str(a->data, "name");
    struct vbd_node *n = lookup_bitmap(a, arg_str(a->data, "node"), name, err);
    if (!n)
        return -1;
    struct bitmap_state *st = state_new(a, n, name);
    int rc = read_ranges(n, name, &st->saved);
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_CLEAR, .name = name};
    if (rc < 0)
        not_found(name, rc, err);
    if (rc < 0 || change(n, &op, err) < 0) {
        bitmap_clean(a);
        return -1;
    }
    return 0;
}

static void restore_abort(struct tx_action *a)
{
    restore_bits(a->state);
}

const struct tx_action_type tx_bitmap_clear = {
    .name = "block-dirty-bitmap-clear",
    .arg_spec = "node:str name:str",
    .prepare = clear_prepare,
    .abort = restore_abort,
    .clean = bitmap_clean,
};

/* ---------- enable, disable ---------- */

static int toggle_prepare(struct tx_action *a, bool enable, struct vbd_qmp_error *err)
{
    const char *name = arg_str(a->data, "name");
    struct vbd_node *n = lookup_bitmap(a, arg_str(a->data, "node"), name, err);
    if (!n)
        return -1;
    struct bitmap_state *st = state_new(a, n, name);
    bool in_use = false;
    bitmap_info(n, name, &st->granularity, &st->was_enabled, &in_use);
    struct vbd_bitmap_op op = {.action = enable ? VBD_BITMAP_ENABLE : VBD_BITMAP_DISABLE, .name = name};
    if (change(n, &op, err) < 0) {
        bitmap_clean(a);
        return -1;
    }
    return 0;
}

static int enable_prepare(struct tx_action *a, struct vbd_qmp_error *err) { return toggle_prepare(a, true, err); }
static int disable_prepare(struct tx_action *a, struct vbd_qmp_error *err) { return toggle_prepare(a, false, err); }

static void toggle_abort(struct tx_action *a)
{
    struct bitmap_state *st = a->state;
    struct vbd_bitmap_op op = {.action = st->was_enabled ? VBD_BITMAP_ENABLE : VBD_BITMAP_DISABLE, .name = st->name};
    change(st->n, &op, NULL);
}

const struct tx_action_type tx_bitmap_enable = {
    .name = "block-dirty-bitmap-enable",
    .arg_spec = "node:str name:str",
    .prepare = enable_prepare,
    .abort = toggle_abort,
    .clean = bitmap_clean,
};

const struct tx_action_type tx_bitmap_disable = {
    .name = "block-dirty-bitmap-disable",
    .arg_spec = "node:str name:str",
    .prepare = disable_prepare,
    .abort = toggle_abort,
    .clean = bitmap_clean,
};

/* ---------- merge ---------- */

/* bitmaps: [ "name" | {"node": str, "name": str} ] (BlockDirtyBitmapOrStr). */
static int merge_check(struct json_object *data, const char *prefix, struct vbd_qmp_error *err)
{
    struct json_object *list = json_object_object_get(data, "bitmaps");
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        struct json_object *b = json_object_array_get_idx(list, i), *v;
        if (json_object_is_type(b, json_type_string))
            continue;
        if (!json_object_is_type(b, json_type_object)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%sbitmaps[%zu]', expected: BlockDirtyBitmapOrStr",
                               prefix, i);
            return -1;
        }
        static const char *const keys[] = {"node", "name"};
        for (int k = 0; k < 2; k++) {
            if (!json_object_object_get_ex(b, keys[k], &v)) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sbitmaps[%zu].%s' is missing", prefix, i, keys[k]);
                return -1;
            }
            if (!json_object_is_type(v, json_type_string)) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for '%sbitmaps[%zu].%s', expected: string",
                                   prefix, i, keys[k]);
                return -1;
            }
        }
        json_object_object_foreach(b, key, val)
        {
            (void)val;
            if (strcmp(key, "node") && strcmp(key, "name")) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%sbitmaps[%zu].%s' is unexpected", prefix, i, key);
                return -1;
            }
        }
    }
    return 0;
}

/* Does bitmap `name` exist on n (in memory or in the image, consistent or
 * not)? QEMU's bdrv_find_dirty_bitmap. */
static bool bitmap_exists(struct vbd_node *n, const char *name)
{
    uint64_t pnum;
    if (vbd_dirty_bitmap_find(n, name))
        return true;
    int st = own_bitmap_status(n, name, 0, 1, &pnum);
    return st >= 0 || st == -EINVAL;
}

/* QEMU 7.2's order (block_dirty_bitmap_merge, bdrv_merge_dirty_bitmap):
 * the target found; then for each source in turn: found, then (at the
 * first) the target checked as any bitmap that changes (busy, read-only,
 * inconsistent), then the source (busy, inconsistent) and its size. */
static int merge_prepare(struct tx_action *a, struct vbd_qmp_error *err)
{
    const char *target = arg_str(a->data, "target");
    struct vbd_node *n = find_bitmap(a, arg_str(a->data, "node"), target, err);
    if (!n)
        return -1;
    struct bitmap_state *st = state_new(a, n, target);
    struct vbd_bitmap_ranges sources = {0};
    int rc = 0;
    bool target_checked = false;
    struct json_object *list = json_object_object_get(a->data, "bitmaps");
    for (size_t i = 0; rc == 0 && i <= json_object_array_length(list); i++) {
        struct json_object *b = i < json_object_array_length(list) ? json_object_array_get_idx(list, i) : NULL;
        struct vbd_node *src = n;
        const char *name = b ? json_object_get_string(b) : NULL;
        if (b && json_object_is_type(b, json_type_object)) {
            const char *node = arg_str(b, "node");
            name = arg_str(b, "name");
            if (!(src = vbd_node_find(node))) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' not found", node);
                rc = -ENOENT;
                break;
            }
        }
        if (b && !bitmap_exists(src, name)) {
            not_found(name, -ENOENT, err);
            rc = -ENOENT;
            break;
        }
        if (!target_checked) { /* also with no source at all */
            target_checked = true;
            if (!modifiable(n, target, err)) {
                rc = -EBUSY;
                break;
            }
            if ((rc = read_ranges(n, target, &st->saved)) < 0) {
                not_found(target, rc, err);
                break;
            }
        }
        if (!b)
            break;
        /* QEMU's bdrv_merge_dirty_bitmap: a busy source (exported, used by
         * a backup) is refused too, before it is read and sized */
        if (bitmap_busy(src, name)) {
            busy_error(name, err);
            rc = -EBUSY;
            break;
        }
        /* a source on another node is read as it is now: only its own
         * exports could change it, and a merge is a snapshot of it anyway */
        if ((rc = read_ranges(src, name, &sources)) < 0) {
            not_found(name, rc, err);
            break;
        }
        if (vbd_node_size(src) != vbd_node_size(n)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Bitmaps are of different sizes (destination size is %llu, source size is %llu) and "
                               "can't be merged",
                               (unsigned long long)vbd_node_size(n), (unsigned long long)vbd_node_size(src));
            rc = -EINVAL;
            break;
        }
    }
    struct vbd_bitmap_op op = {.action = VBD_BITMAP_MERGE, .name = target, .ranges = (const uint64_t(*)[2])sources.r,
                               .nranges = sources.n};
    if (rc == 0 && change(n, &op, err) < 0)
        rc = -1;
    free(sources.r);
    if (rc < 0) {
        bitmap_clean(a);
        return -1;
    }
    return 0;
}

const struct tx_action_type tx_bitmap_merge = {
    .name = "block-dirty-bitmap-merge",
    .arg_spec = "node:str target:str bitmaps:array",
    .check = merge_check,
    .prepare = merge_prepare,
    .abort = restore_abort,
    .clean = bitmap_clean,
};

/* ---------- the commands: transactions of one ---------- */

struct json_object *qmp_bitmap_add(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_add, args, err);
}
struct json_object *qmp_bitmap_remove(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_remove, args, err);
}
struct json_object *qmp_bitmap_clear(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_clear, args, err);
}
struct json_object *qmp_bitmap_enable(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_enable, args, err);
}
struct json_object *qmp_bitmap_disable(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_disable, args, err);
}
struct json_object *qmp_bitmap_merge(struct json_object *args, struct vbd_qmp_error *err)
{
    return tx_run_one(&tx_bitmap_merge, args, err);
}

/* x-debug-block-dirty-bitmap-sha256 (QEMU's hbitmap_sha256): the SHA-256
 * of the bitmap's bits as QEMU keeps them in memory, one bit per
 * granularity bytes of the node, in 64-bit little-endian words (at least
 * one). Equal hashes mean equal bits: tests compare a bitmap with
 * QEMU's after the same writes. */
struct json_object *qmp_bitmap_sha256(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *node = arg_str(args, "node"), *name = arg_str(args, "name");
    struct vbd_node *n = vbd_node_find(node);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' not found", node);
        return NULL;
    }
    uint32_t granularity = 0;
    bool enabled, in_use;
    if (!bitmap_info(n, name, &granularity, &enabled, &in_use) || !granularity) {
        not_found(name, -ENOENT, err);
        return NULL;
    }
    struct vbd_bitmap_ranges rs = {0};
    int rc = read_ranges(n, name, &rs);
    if (rc < 0) {
        free(rs.r);
        not_found(name, rc, err);
        return NULL;
    }
    uint64_t nbits = (vbd_node_size(n) + granularity - 1) / granularity;
    size_t nwords = nbits > 64 ? (size_t)((nbits + 63) / 64) : 1;
    uint64_t *words = vbd_xcalloc(nwords, sizeof(*words));
    for (size_t i = 0; i < rs.n; i++) {
        uint64_t first = rs.r[i][0] / granularity, last = (rs.r[i][0] + rs.r[i][1] - 1) / granularity;
        for (uint64_t k = first; k <= last && k < nbits; k++)
            words[k / 64] |= 1ull << (k % 64);
    }
    for (size_t i = 0; i < nwords; i++)
        words[i] = htole64(words[i]);
    char hex[65];
    vbd_sha256_hex(words, nwords * sizeof(*words), hex);
    free(words);
    free(rs.r);
    struct json_object *r = json_object_new_object();
    json_object_object_add(r, "sha256", json_object_new_string(hex));
    return r;
}
