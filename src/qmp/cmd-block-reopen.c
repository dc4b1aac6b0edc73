/* SPDX-License-Identifier: MIT */
/*
 * blockdev-reopen, in the list form qemu-storage-daemon 7.2 takes:
 * {"options": [BlockdevOptions, ...]}. Each entry gives a node's options
 * in full, as blockdev-add did, and an option left out goes back to its
 * default (QEMU's keep_old_opts=false: detect-zeroes off, cache.direct and
 * cache.no-flush off; discard stays as it is; a raw node's window the
 * whole file) where the driver can; one the node was given (blockdev-add,
 * --blockdev, the last reopen: n->given_options) that it cannot is
 * refused, "Option 'X' cannot be reset to its default value" (QEMU's
 * bdrv_reset_options_allowed). What changes: read-only, cache.no-flush,
 * cache.direct (of a file node: O_DIRECT on or off and the request
 * alignment that goes with it, the driver's reopen_direct), discard,
 * detect-zeroes, backing (null drops it, a node name attaches that node)
 * and what a driver's reopen_prepare takes (a throttle node's
 * throttle-group, a raw node's offset and size). Everything else must be
 * given as the node was given it, in QEMU's words; the drivers QEMU cannot
 * reopen refuse every entry.
 *
 * All or nothing, as QEMU's reopen queue: every entry is checked and its
 * driver's change staged before any node changes; then every export over
 * the nodes is drained, the read-only and then the cache.direct switches
 * are made (those done go back if one fails), and only then the changes
 * that cannot fail, so that no request sees half of the list.
 */
#include "qmp/cmd-block.h"

#include "daemon/objects.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/job.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reopen_entry {
    struct vbd_node *n;
    bool read_only;
    unsigned flags;        /* open flags after the reopen (cache.*, discard) */
    uint8_t detect_zeroes; /* enum vbd_detect_zeroes */
    bool change_backing;   /* backing becomes new_backing (NULL: none) */
    bool change_direct;    /* a protocol node's O_DIRECT switches (reopen_direct) */
    struct vbd_node *new_backing;
    bool drv_prepared; /* drv->reopen_prepare succeeded: commit or abort it */
    void *drv_staged;
    bool was_ro;
    struct vbd_daemon_drain drain;
};

#define REOPEN_FLAGS (VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH | VBD_OPEN_UNMAP)

static bool get_flag(struct json_object *o, const char *key)
{
    struct json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && v && json_object_get_boolean(v);
}

/* Does `from` reach `target` through any child? */
static bool reaches(struct vbd_node *from, struct vbd_node *target)
{
    if (!from)
        return false;
    if (from == target)
        return true;
    if (from->file != from && reaches(from->file, target))
        return true;
    if (reaches(from->backing, target))
        return true;
    char name[64];
    struct vbd_node *c;
    for (int i = 0; from->drv->child_at && (c = from->drv->child_at(from, i, name, sizeof(name))); i++)
        if (reaches(c, target))
            return true;
    return false;
}

/* Formats that open a backing file (QEMU's supports_backing). */
static bool supports_backing(const struct vbd_node *n)
{
    return n->drv->kind == VBD_DRV_FORMAT && n->drv->change_backing_file;
}

/* "backing": null or a node name (QEMU's bdrv_reopen_parse_file_or_backing). */
static bool check_backing(struct json_object *val, struct reopen_entry *re, struct vbd_qmp_error *err)
{
    struct vbd_node *n = re->n, *nb = NULL;
    if (val) {
        const char *bname = json_object_get_string(val);
        nb = vbd_node_find(bname);
        if (!nb) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot find device='' nor node-name='%s'", bname);
            return false;
        }
        if (reaches(nb, n)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Making '%s' a backing child of '%s' would create a cycle",
                               bname, n->node_name);
            return false;
        }
    }
    /* a job's filter in between (QEMU: an implicit filter) is no change */
    if (nb == n->backing || (nb && n->backing && n->backing->drv->kind == VBD_DRV_FILTER &&
                             vbd_node_skip_filters(n->backing) == nb))
        return true;
    if (n->drv->kind == VBD_DRV_FILTER && !n->backing) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'%s' is a %s filter node that does not support a backing child",
                           n->node_name, n->drv->name);
        return false;
    }
    if (!supports_backing(n)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Driver '%s' of node '%s' does not support backing files",
                           n->drv->name, n->node_name);
        return false;
    }
    /* a job reads or writes the chain: QEMU's job freezes the link */
    struct vbd_job *j = vbd_job_using_node(n);
    if (j && n->backing) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change frozen 'backing' link from '%s' to '%s'", n->node_name,
                           n->backing->node_name);
        return false;
    }
    if (j) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' cannot take a backing file while block job '%s' uses it",
                           n->node_name, j->id);
        return false;
    }
    if (nb && vbd_node_home_loop(nb) != vbd_node_home_loop(n)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Node '%s' runs in another thread than '%s' (move it with x-blockdev-set-iothread first)",
                           nb->node_name, n->node_name);
        return false;
    }
    /* an overlay's data would change under it (QEMU: the COW child does
     * not share WRITE) */
    if (nb && vbd_qmp_node_written_by_export(nb)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' is written by an export and cannot be a backing file",
                           nb->node_name);
        return false;
    }
    re->change_backing = true;
    re->new_backing = nb;
    return true;
}

/* Is val the node-name of one of n's children? */
static bool names_child(struct vbd_node *n, struct json_object *val)
{
    if (!json_object_is_type(val, json_type_string))
        return false;
    const char *v = json_object_get_string(val);
    if ((n->file && n->file != n && !strcmp(v, n->file->node_name)) || (n->backing && !strcmp(v, n->backing->node_name)))
        return true;
    char name[64];
    struct vbd_node *c;
    for (int i = 0; n->drv->child_at && (c = n->drv->child_at(n, i, name, sizeof(name))); i++)
        if (!strcmp(v, c->node_name))
            return true;
    return false;
}

/* A value a monitor gave (given) and one an entry gives: equal as QEMU's
 * typed options compare. --blockdev's keyval gave strings ("on", "4096")
 * where QMP gives JSON types: those compare by their text. */
static bool same_value(struct json_object *given, struct json_object *val)
{
    if (json_object_equal(given, val))
        return true;
    if (!json_object_is_type(given, json_type_string) || json_object_is_type(val, json_type_string))
        return false;
    const char *s = json_object_get_string(given);
    if (json_object_is_type(val, json_type_boolean))
        return !strcmp(s, json_object_get_boolean(val) ? "on" : "off");
    return (json_object_is_type(val, json_type_int) || json_object_is_type(val, json_type_double)) &&
           !strcmp(s, json_object_get_string(val));
}

/* The generic options (QEMU's bdrv_runtime_opts); the rest goes to *rest. */
static bool check_generic(struct json_object *o, struct reopen_entry *re, struct json_object *rest,
                          struct vbd_qmp_error *err)
{
    struct vbd_node *n = re->n;
    const char *name = n->node_name;
    struct json_object *cache = NULL;
    bool has_backing = false, has_dz = false;
    unsigned flags = n->open_flags & VBD_OPEN_UNMAP;
    json_object_object_foreach(o, key, val)
    {
        if (!strcmp(key, "node-name") || !strcmp(key, "auto-read-only"))
            continue;
        if (!strcmp(key, "read-only")) {
            re->read_only = json_object_get_boolean(val);
        } else if (!strcmp(key, "driver")) {
            if (vbd_driver_find(json_object_get_string(val)) != n->drv) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change the option 'driver'");
                return false;
            }
        } else if (!strcmp(key, "file")) {
            if (!json_object_is_type(val, json_type_string) || !n->file ||
                strcmp(json_object_get_string(val), n->file->node_name)) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                                   "Cannot change the option 'file' of node '%s': give the node-name of its current file",
                                   name);
                return false;
            }
        } else if (!strcmp(key, "backing")) {
            has_backing = true;
            if (!check_backing(val, re, err))
                return false;
        } else if (!strcmp(key, "cache")) {
            cache = val;
        } else if (!strcmp(key, "discard")) {
            const char *d = json_object_get_string(val);
            flags = !strcmp(d, "unmap") || !strcmp(d, "on") ? VBD_OPEN_UNMAP : 0;
        } else if (!strcmp(key, "detect-zeroes")) {
            has_dz = true;
            int i = 0;
            while (vbd_detect_zeroes_names[i] && strcmp(vbd_detect_zeroes_names[i], json_object_get_string(val)))
                i++;
            re->detect_zeroes = (uint8_t)i; /* the schema check let only the three names through */
        } else if (!strcmp(key, "force-share")) {
            /* QEMU 7.2 puts it back among the options as text and compares
             * that with the boolean the node was given: never the same */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change the option 'force-share'");
            return false;
        } else {
            json_object_object_add(rest, key, json_object_get(val));
        }
    }
    if (!has_dz)
        re->detect_zeroes = VBD_DZ_OFF;
    if (get_flag(cache, "direct"))
        flags |= VBD_OPEN_NOCACHE;
    if (get_flag(cache, "no-flush"))
        flags |= VBD_OPEN_NO_FLUSH;
    if (re->detect_zeroes == VBD_DZ_UNMAP && !(flags & VBD_OPEN_UNMAP)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
        return false;
    }
    if (((flags ^ n->open_flags) & VBD_OPEN_NOCACHE) && n->drv->kind == VBD_DRV_PROTOCOL) {
        if (!n->drv->reopen_direct) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                               "Cannot change the option 'cache.direct' of node '%s' (driver '%s'): vbd sets it only "
                               "when it opens the node",
                               name, n->drv->name);
            return false;
        }
        re->change_direct = true;
    }
    re->flags = flags;
    /* QEMU: the option must be given if the node has a backing file or its
     * image names one */
    if (!has_backing && (n->backing || (supports_backing(n) && n->backing_file[0]))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "backing is missing for '%s'", name);
        return false;
    }
    return true;
}

/* QEMU's option names common to every driver (bdrv_reset_options_allowed):
 * an entry may leave them out, they go back to their defaults. */
static const char *const common_options[] = {"node-name",      "discard",   "cache.direct", "cache.no-flush",
                                             "read-only",      "auto-read-only", "detect-zeroes", NULL};

/* The options QEMU 7.2's drivers change on a reopen (their mutable_opts):
 * left out, they go back to their defaults too. */
static const char *const qcow2_mutable[] = {
    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "overlap-check",
    "overlap-check.template", "overlap-check.main-header", "overlap-check.active-l1", "overlap-check.active-l2",
    "overlap-check.refcount-table", "overlap-check.refcount-block", "overlap-check.snapshot-table",
    "overlap-check.inactive-l1", "overlap-check.inactive-l2", "overlap-check.bitmap-directory", "cache-size",
    "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval", NULL};
static const char *const file_mutable[] = {"x-check-cache-dropped", NULL};
/* QEMU 7.2's drivers without bdrv_reopen_prepare, of those vbd has */
static const char *const not_reopened[] = {"parallels", "quorum", "copy-before-write", "snapshot-access",
                                           "copy-on-read", NULL};
static const char *const raw_mutable[] = {"offset", "size", NULL};
static const struct {
    const char *driver;
    const char *const *keys;
} mutable_options[] = {
    {"qcow2", qcow2_mutable}, {"file", file_mutable}, {"host_device", file_mutable}, {"raw", raw_mutable},
};

static bool in_list(const char *key, const char *const *list)
{
    for (; list && *list; list++)
        if (!strcmp(key, *list))
            return true;
    return false;
}

static bool driver_mutable(const struct vbd_node *n, const char *key)
{
    for (size_t i = 0; i < sizeof(mutable_options) / sizeof(mutable_options[0]); i++)
        if (!strcmp(n->drv->name, mutable_options[i].driver))
            return in_list(key, mutable_options[i].keys);
    return false;
}

/* Options as QEMU's qdict_flatten has them: {"cache": {"direct": true}}
 * is "cache.direct", a list's elements "children.0", ... */
static void flatten(struct json_object *o, const char *prefix, struct json_object *out)
{
    char key[512];
    if (json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o); i++) {
            snprintf(key, sizeof(key), "%s.%zu", prefix, i);
            struct json_object *v = json_object_array_get_idx(o, i);
            if (json_object_is_type(v, json_type_object) || json_object_is_type(v, json_type_array))
                flatten(v, key, out);
            else
                json_object_object_add(out, key, json_object_get(v));
        }
        return;
    }
    json_object_object_foreach(o, k, v)
    {
        snprintf(key, sizeof(key), "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_object_is_type(v, json_type_object) || json_object_is_type(v, json_type_array))
            flatten(v, key, out);
        else
            json_object_object_add(out, key, json_object_get(v));
    }
}

/* Is key one of n's children ("file", "backing", a driver's child_at
 * names) or below one? QEMU drops those from a node's options once open. */
static bool under(const char *key, const char *name)
{
    size_t len = strlen(name);
    return !strncmp(key, name, len) && (key[len] == 0 || key[len] == '.');
}

static bool child_key(struct vbd_node *n, const char *key)
{
    if (under(key, "file") || under(key, "backing"))
        return true;
    char name[64];
    for (int i = 0; n->drv->child_at && n->drv->child_at(n, i, name, sizeof(name)); i++)
        if (under(key, name))
            return true;
    return false;
}

/* QEMU names the first option it finds in its QDict, whose iteration goes
 * by the bucket of each key's hash (tdb_hash modulo 512 buckets). */
static unsigned qdict_bucket(const char *key)
{
    unsigned v = 0x238F13AFu * (unsigned)strlen(key);
    for (unsigned i = 0; key[i]; i++)
        v += (unsigned)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % 512u;
}

/* An entry leaves out an option the node was given that its driver cannot
 * set back to its default (QEMU's bdrv_reset_options_allowed). */
static bool check_resets(struct json_object *o, struct reopen_entry *re, struct vbd_qmp_error *err)
{
    struct vbd_node *n = re->n;
    if (in_list(n->drv->name, not_reopened)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Block format '%s' used by node '%s' does not support reopening files",
                           n->drv->name, n->node_name);
        return false;
    }
    if (!n->given_options)
        return true; /* no monitor described the node */
    struct json_object *old = json_object_new_object(), *now = json_object_new_object();
    flatten(n->given_options, "", old);
    flatten(o, "", now);
    const char *missing = NULL;
    json_object_object_foreach(old, key, val)
    {
        (void)val;
        if (json_object_object_get_ex(now, key, NULL) || in_list(key, common_options) || child_key(n, key) ||
            driver_mutable(n, key) || !strcmp(key, "filename"))
            continue;
        if (!missing || qdict_bucket(key) < qdict_bucket(missing))
            missing = key;
    }
    if (missing)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Option '%s' cannot be reset to its default value", missing);
    json_object_put(old);
    json_object_put(now);
    return !missing;
}

/* What QEMU's qmp_blockdev_reopen checks of every entry as it queues it
 * (its type, its node): the node, or NULL. */
static struct vbd_node *entry_node(struct json_object *o, int idx, struct vbd_qmp_error *err)
{
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "options[%d].", idx);
    if (!json_object_is_type(o, json_type_object)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'options[%d]', expected: object",
                           idx);
        return NULL;
    }
    if (!vbd_qmp_check_blockdev(o, prefix, err))
        return NULL;
    struct json_object *v;
    if (!json_object_object_get_ex(o, "node-name", &v)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "node-name not specified");
        return NULL;
    }
    const char *name = json_object_get_string(v);
    struct vbd_node *n = vbd_node_find(name);
    if (!n)
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to find node with node-name='%s'", name);
    return n;
}

/* The entry's options against the node. Stages the driver's change. */
static bool check_entry(struct json_object *o, int idx, struct reopen_entry *re, struct vbd_qmp_error *err)
{
    struct vbd_node *n = entry_node(o, idx, err);
    if (!n)
        return false;
    const char *name = n->node_name;
    re->n = n;
    struct json_object *rest = json_object_new_object();
    bool ok = check_generic(o, re, rest, err) && check_resets(o, re, err);
    struct vbd_error *e = NULL;
    if (ok && n->drv->reopen_prepare) {
        if (n->drv->reopen_prepare(n, rest, &re->drv_staged, &e) < 0) {
            vbd_qmp_error_take(err, e);
            ok = false;
        } else {
            re->drv_prepared = true;
        }
    }
    /* what is left must be as the node has it (QEMU compares with the
     * node's options, flattened: what a monitor gave it; vbd knows the
     * file name) */
    struct json_object *flat = json_object_new_object(), *given = json_object_new_object();
    flatten(rest, "", flat);
    if (n->given_options)
        flatten(n->given_options, "", given);
    json_object_object_foreach(flat, key, val)
    {
        struct json_object *old = NULL;
        if (!ok)
            break;
        if (!strcmp(key, "filename") && !strcmp(json_object_get_string(val), n->filename))
            continue;
        if (json_object_object_get_ex(given, key, &old) && same_value(old, val))
            continue;
        if (names_child(n, val)) /* QEMU: a child's name for the child it is (blkdebug's image) */
            continue;
        if (n->options && json_object_object_get_ex(n->options, key, &old) && json_object_equal(old, val))
            continue;
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot change the option '%s'", key);
        ok = false;
        break;
    }
    json_object_put(flat);
    json_object_put(given);
    json_object_put(rest);
    if (!ok)
        return false;
    /* A block job using the node is no reason to refuse its other options:
     * the drain below pauses the job with none of its requests in flight
     * (as QEMU's drain). Read-only is refused for a node a job writes: its
     * writes would fail (qsd's job holds the write permission and refuses
     * the same way). */
    if (re->read_only && !n->read_only && (vbd_qmp_node_written_by_export(n) || vbd_job_writing_node(n))) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Read-only block node '%s' cannot support read-write users",
                           name);
        return false;
    }
    if (!re->read_only && !n->drv->reopen_rw && n->read_only) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Node '%s' (driver '%s') cannot be made read-write", name,
                           n->drv->name);
        return false;
    }
    return true;
}

/* Drained, after the read-only switches: what cannot fail. */
static void commit_entry(struct reopen_entry *re, struct json_object *entry)
{
    struct vbd_node *n = re->n;
    /* the entry is the node's whole set of options now (QEMU's commit) */
    struct json_object *copy = NULL;
    if (json_object_deep_copy(entry, &copy, NULL) == 0) {
        json_object_put(n->given_options);
        n->given_options = copy;
    }
    n->open_flags = (n->open_flags & ~REOPEN_FLAGS) | re->flags;
    n->detect_zeroes = re->detect_zeroes;
    if (re->change_backing) {
        struct vbd_node *old = n->backing;
        if (re->new_backing)
            vbd_node_ref(re->new_backing);
        n->backing = re->new_backing;
        if (old)
            vbd_node_unref(old);
    }
    if (re->drv_prepared)
        n->drv->reopen_commit(n, re->drv_staged);
    re->drv_prepared = false;
}

static void abort_entries(struct reopen_entry *re, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (re[i].drv_prepared) {
            re[i].n->drv->reopen_abort(re[i].n, re[i].drv_staged);
            re[i].drv_prepared = false;
        }
}

/* The entries as QEMU's reopen queue holds them: a node given twice or
 * more once, at its first place, its entries' options joined: a later
 * entry's over an earlier one's, an earlier one's where the later has
 * none (bdrv_reopen_queue_child joins a queued node's explicit options
 * with the new ones; only the joined ones are checked). */
static struct json_object *queued_entries(struct json_object *given)
{
    struct json_object *list = json_object_new_array();
    size_t len = json_object_array_length(given);
    for (size_t i = 0; i < len; i++) {
        struct json_object *o = json_object_array_get_idx(given, i);
        struct json_object *name = json_object_object_get(o, "node-name");
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = json_object_equal(json_object_object_get(json_object_array_get_idx(given, k), "node-name"), name);
        if (seen)
            continue;
        struct json_object *joined = json_object_get(o);
        for (size_t k = i + 1; k < len; k++) {
            struct json_object *later = json_object_array_get_idx(given, k);
            if (!json_object_equal(json_object_object_get(later, "node-name"), name))
                continue;
            struct json_object *next = json_object_new_object();
            json_object_object_foreach(later, key, val)
            {
                json_object_object_add(next, key, json_object_get(val));
            }
            json_object_object_foreach(joined, okey, oval)
            {
                if (!json_object_object_get_ex(next, okey, NULL))
                    json_object_object_add(next, okey, json_object_get(oval));
            }
            json_object_put(joined);
            joined = next;
        }
        json_object_array_add(list, joined);
    }
    return list;
}

static struct json_object *reopen_entries(struct json_object *list, struct vbd_qmp_error *err)
{
    size_t len = json_object_array_length(list);
    struct reopen_entry *re = calloc(len ? len : 1, sizeof(*re));
    if (!re) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    size_t i;
    bool ok = true;
    for (i = 0; i < len && ok; i++)
        ok = check_entry(json_object_array_get_idx(list, i), (int)i, &re[i], err);
    if (!ok) {
        abort_entries(re, len);
        free(re);
        return NULL;
    }
    /* drains nest: one per entry, whichever exports each reaches */
    for (i = 0; i < len; i++)
        vbd_daemon_co_drain_begin(re[i].n, &re[i].drain);
    size_t ro_done, direct_done = 0;
    for (ro_done = 0; ok && ro_done < len; ro_done++) {
        struct vbd_error *e = NULL;
        re[ro_done].was_ro = re[ro_done].n->read_only;
        if (vbd_node_co_set_read_only(re[ro_done].n, re[ro_done].read_only, &e) < 0) {
            vbd_qmp_error_take(err, e);
            ok = false;
            break;
        }
    }
    for (; ok && direct_done < len; direct_done++) {
        struct vbd_error *e = NULL;
        struct reopen_entry *r = &re[direct_done];
        if (r->change_direct && vbd_node_co_set_direct(r->n, (r->flags & VBD_OPEN_NOCACHE) != 0, &e) < 0) {
            vbd_qmp_error_take(err, e);
            ok = false;
            break;
        }
    }
    /* the image locks as the users of the reopened nodes need them now */
    struct vbd_error *le = NULL;
    if (ok && vbd_qmp_image_locks_follow(NULL, 0, 0, &le) < 0) {
        vbd_qmp_error_take(err, le);
        ok = false;
    }
    if (!ok) { /* back as they were, the last change first */
        while (direct_done-- > 0)
            if (re[direct_done].change_direct)
                vbd_node_co_set_direct(re[direct_done].n, (re[direct_done].n->open_flags & VBD_OPEN_NOCACHE) != 0,
                                       NULL);
        while (ro_done-- > 0)
            vbd_node_co_set_read_only(re[ro_done].n, re[ro_done].was_ro, NULL);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
    }
    if (ok) {
        bool resized = false;
        for (i = 0; i < len; i++) {
            uint64_t size = vbd_node_size(re[i].n);
            commit_entry(&re[i], json_object_array_get_idx(list, i));
            resized |= vbd_node_size(re[i].n) != size; /* a raw node's window */
        }
        if (resized)
            vbd_qmp_sizes_changed("blockdev-reopen");
    } else
        abort_entries(re, len);
    for (i = len; i-- > 0;)
        vbd_daemon_drain_end(&re[i].drain);
    free(re);
    return ok ? vbd_qmp_ok() : NULL;
}

struct json_object *vbd_qmp_blockdev_reopen(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *given = json_object_object_get(args, "options");
    for (size_t i = 0; i < json_object_array_length(given); i++)
        if (!entry_node(json_object_array_get_idx(given, i), (int)i, err))
            return NULL;
    struct json_object *list = queued_entries(given);
    struct json_object *ret = reopen_entries(list, err);
    json_object_put(list);
    return ret;
}

void vbd_qmp_node_given_options(struct vbd_node *n, struct json_object *given)
{
    json_object_put(n->given_options);
    n->given_options = given;
    /* a child given inline (with its options, not a node name) was given those */
    static const char *const links[] = {"file", "backing"};
    for (int i = 0; i < 2; i++) {
        struct json_object *sub;
        struct vbd_node *c = i ? n->backing : n->file;
        if (!c || c == n || !json_object_object_get_ex(given, links[i], &sub) ||
            !json_object_is_type(sub, json_type_object) || c->given_options)
            continue;
        struct json_object *copy = NULL;
        if (json_object_deep_copy(sub, &copy, NULL) == 0)
            vbd_qmp_node_given_options(c, copy);
    }
}
