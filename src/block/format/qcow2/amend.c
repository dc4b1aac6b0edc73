/* SPDX-License-Identifier: MIT */
/*
 * Changing an existing qcow2 image's metadata: the header rewrite every
 * such change goes through (backing file, compat level, feature bits),
 * amend, emptying the image after a commit, and measure.
 */
#include "qcow2.h"

#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    uint8_t type, bit;
    const char *name;
} feature_table[] = {{0, 0, "dirty bit"},         {0, 1, "corrupt bit"},     {0, 2, "external data file"},
                     {0, 3, "compression type"},  {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
                     {2, 0, "bitmaps"},           {2, 1, "raw external data"}};

/* The cluster size and refcount width a new image may have; *order = log2(refcount_bits). */
int qcow2_check_geometry(uint64_t cluster_size, uint64_t refcount_bits, uint32_t *order, struct vbd_error **err)
{
    if (cluster_size < 512 || cluster_size > (2u << 20) || (cluster_size & (cluster_size - 1))) {
        vbd_error_setf(err, EINVAL, "Cluster size must be a power of two between 512 and 2048k");
        return -EINVAL;
    }
    for (*order = 0; (1ull << *order) < refcount_bits;)
        (*order)++;
    if (refcount_bits > 64 || (1ull << *order) != refcount_bits) {
        vbd_error_setf(err, EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
        return -EINVAL;
    }
    return 0;
}

/* Into the header cluster h from pos on: the extensions (backing format,
 * then exts except skip_type with the feature name table among them if
 * asked and it fits), the end marker, then the backing file name (h's
 * offset and size fields set). Returns where the backing name starts,
 * -ENOSPC if it does not all fit. */
static uint64_t put_feature_table(uint8_t *h, uint64_t cluster_size, uint64_t pos, const char *backing,
                                  bool with_feature_table);

int64_t qcow2_put_extensions(uint8_t *h, uint64_t cluster_size, uint64_t pos, const char *backing, const char *backing_fmt,
                             const struct qcow2_ext *exts, int nexts, uint32_t skip_type, bool with_feature_table)
{
#define ROOM(bytes) (pos + (bytes) + 8 <= cluster_size)
    if (backing && *backing && backing_fmt && *backing_fmt) {
        size_t l = strlen(backing_fmt);
        if (!ROOM(8 + ((l + 7) & ~7ull)))
            return -ENOSPC;
        put_be32p(h + pos, QCOW2_EXT_BACKING_FORMAT);
        put_be32p(h + pos + 4, (uint32_t)l);
        memcpy(h + pos + 8, backing_fmt, l);
        pos += 8 + ((l + 7) & ~7ull);
    }
    /* in QEMU 7.2's order (qcow2_update_header): the data file and the
     * encryption header, the feature name table, the bitmaps, then the
     * extensions kept unread (vbd put the bitmaps before the feature name
     * table: the header of a bitmap change differed from qemu-img's) */
    for (int part = 0; part < 3; part++) {
        if (part == 1)
            pos = put_feature_table(h, cluster_size, pos, backing, with_feature_table);
        for (int i = 0; i < nexts; i++) {
            const struct qcow2_ext *x = &exts[i];
            int in = x->type == QCOW2_EXT_DATA_FILE || x->type == QCOW2_EXT_ENCRYPTION ? 0
                     : x->type == QCOW2_EXT_BITMAPS                                   ? 1
                                                                                      : 2;
            if (in != part || (skip_type && x->type == skip_type))
                continue;
            if (!ROOM(8 + ((x->len + 7ull) & ~7ull)))
                return -ENOSPC;
            put_be32p(h + pos, x->type);
            put_be32p(h + pos + 4, x->len);
            memcpy(h + pos + 8, x->data, x->len);
            pos += 8 + ((x->len + 7ull) & ~7ull);
        }
    }
#undef ROOM
    pos += 8; /* end of extensions */
    if (backing && *backing) {
        size_t l = strlen(backing);
        if (l > QCOW2_MAX_BACKING_NAME || pos + l > cluster_size)
            return -ENOSPC;
        memcpy(h + pos, backing, l);
        put_be64p(h + 8, pos);
        put_be32p(h + 16, (uint32_t)l);
    }
    return (int64_t)pos;
}

static uint64_t put_feature_table(uint8_t *h, uint64_t cluster_size, uint64_t pos, const char *backing,
                                  bool with_feature_table)
{
#define ROOM(bytes) (pos + (bytes) + 8 <= cluster_size)
    size_t nf = sizeof(feature_table) / sizeof(feature_table[0]);
    /* the feature names are only for messages: left out, as QEMU 7.2's
     * qcow2_update_header leaves them out, with clusters of 4 KiB and less
     * (room for the backing file name), and where they would not fit */
    if (with_feature_table && cluster_size > 4096 && ROOM(8 + 48 * nf + (backing ? strlen(backing) : 0))) {
        put_be32p(h + pos, QCOW2_EXT_FEATURE_TABLE);
        put_be32p(h + pos + 4, (uint32_t)(48 * nf));
        for (size_t i = 0; i < nf; i++) {
            uint8_t *e = h + pos + 8 + 48 * i;
            e[0] = feature_table[i].type;
            e[1] = feature_table[i].bit;
            strncpy((char *)e + 2, feature_table[i].name, 46);
        }
        pos += 8 + 48 * nf;
    }
#undef ROOM
    return pos;
}

/* The header cluster as the state describes it: fixed fields, extensions
 * (backing format, the ones kept verbatim, the feature name table), then
 * the backing file name. Written in one piece, as QEMU does; flushed
 * when flush (QEMU's qcow2_update_header itself does not flush: amend's
 * unconditional rewrite makes no fdatasync of its own). */
static int write_header(struct qcow2_state *s, const char *backing, const char *backing_fmt, bool flush,
                        struct vbd_error **err)
{
    struct vbd_node *n = s->n;
    uint8_t *h = calloc(1, s->cluster_size);
    if (!h)
        return -ENOMEM;
    uint32_t hlen = s->version >= 3 ? 112 : 72;
    put_be32p(h, QCOW2_MAGIC);
    put_be32p(h + 4, s->version);
    put_be32p(h + 20, s->cluster_bits);
    put_be64p(h + 24, n->size);
    put_be32p(h + 36, s->l1_size);
    put_be64p(h + 40, s->l1_table_offset);
    put_be64p(h + 48, s->refcount_table_offset);
    put_be32p(h + 56, s->refcount_table_clusters);
    put_be32p(h + 60, s->nb_snapshots);
    put_be64p(h + 64, s->snapshots_offset);
    if (s->version >= 3) {
        put_be64p(h + 72, s->incompat);
        put_be64p(h + 80, s->compat);
        put_be64p(h + 88, s->autoclear);
        put_be32p(h + 96, s->refcount_order);
        put_be32p(h + 100, hlen);
        h[104] = s->compression_type;
    }
    int64_t pos = qcow2_put_extensions(h, s->cluster_size, hlen, backing, backing_fmt, s->exts, s->nexts,
                                       (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) ? 0 : QCOW2_EXT_BITMAPS,
                                       s->version >= 3);
    bool fits = pos >= 0;
    if (!fits) {
        free(h);
        vbd_error_setf(err, ENOSPC, "qcow2: the header extensions and backing file name do not fit in one %llu-byte cluster",
                       (unsigned long long)s->cluster_size);
        return -ENOSPC;
    }
    int rc = vbd_node_co_pwrite(n->file, 0, h, s->cluster_size, 0);
    if (rc == 0 && flush)
        rc = vbd_node_co_flush(n->file);
    free(h);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow2: could not write the image header: %s", strerror(-rc));
        return rc;
    }
    s->header_length = hlen;
    if (backing != n->backing_file)
        snprintf(n->backing_file, sizeof(n->backing_file), "%s", backing ? backing : "");
    if (backing_fmt != n->backing_format)
        snprintf(n->backing_format, sizeof(n->backing_format), "%s", backing && *backing && backing_fmt ? backing_fmt : "");
    s->backing_file_offset = backing && *backing ? (uint64_t)pos : 0;
    s->backing_file_size = backing && *backing ? (uint32_t)strlen(backing) : 0;
    return 0;
}

int qcow2_rewrite_header(struct qcow2_state *s, const char *backing, const char *backing_fmt, struct vbd_error **err)
{
    return write_header(s, backing, backing_fmt, true, err);
}

int qcow2_change_backing_file(struct vbd_node *n, const char *backing, const char *backing_fmt,
                              struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    if (backing_fmt && strlen(backing_fmt) >= sizeof(n->backing_format)) {
        vbd_error_setf(err, EINVAL, "backing format name '%s' is too long", backing_fmt);
        return -EINVAL;
    }
    vbd_co_mutex_lock(&s->lock);
    int rc = qcow2_rewrite_header(s, backing, backing_fmt, err);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* compat=0.10: no zero flag. Zero clusters become ordinary clusters full
 * of zeroes (or, where nothing shows through from a backing file,
 * unallocated ones), in the active L1 and every snapshot's. */

struct zero_expansion {
    bool backed;
    uint8_t *table, *zeroes;
    uint64_t (*drops)[2]; /* (host cluster, references) released after the table is on disk */
    size_t ndrops;
};

/* A new host cluster of zeroes referenced as often as the L2 table is. */
static int64_t new_zero_cluster(struct qcow2_state *s, struct zero_expansion *z, uint64_t l2_rc)
{
    int64_t at = qcow2_alloc_clusters(s, 1);
    if (at < 0)
        return at;
    if (l2_rc > 1 && qcow2_update_refcount(s, (uint64_t)at, (int64_t)l2_rc - 1) < 0)
        return -EIO;
    int rc = vbd_node_co_pwrite(s->n->file, (uint64_t)at, z->zeroes, s->cluster_size, 0);
    return rc < 0 ? rc : at;
}

static int expand_zero_l2(struct qcow2_state *s, uint64_t l2_off, struct zero_expansion *z)
{
    uint8_t *table = z->table;
    if (vbd_node_co_pread(s->n->file, l2_off, table, s->cluster_size) < 0)
        return -EIO;
    uint64_t l2_rc = 1;
    if (qcow2_get_refcount(s, l2_off >> s->cluster_bits, &l2_rc) < 0)
        return -EIO;
    if (!l2_rc)
        return qcow2_signal_corruption(s, "L2 table with refcount 0", l2_off);
    bool changed = false;
    z->ndrops = 0;
    for (uint32_t i = 0; i < (1u << s->l2_bits); i++) {
        uint64_t e = get_be64p(table + 8 * i);
        if (!(e & QCOW_OFLAG_ZERO) || (e & QCOW_OFLAG_COMPRESSED))
            continue;
        uint64_t host = e & L2E_OFFSET_MASK, host_rc = 0, ne = 0;
        if (host) {
            if ((host & (s->cluster_size - 1)) || qcow2_overlaps_metadata(s, host, s->cluster_size))
                return qcow2_signal_corruption(s, "zero cluster", host);
            if (qcow2_get_refcount(s, host >> s->cluster_bits, &host_rc) < 0)
                return -EIO;
        }
        if (host && host_rc == l2_rc) {
            /* reached through this table only: zeroes in place */
            int rc = vbd_node_co_pwrite(s->n->file, host, z->zeroes, s->cluster_size, 0);
            if (rc < 0)
                return rc;
            ne = host | (host_rc == 1 ? QCOW_OFLAG_COPIED : 0);
        } else {
            if (host) { /* shared with another table (a snapshot): never written to */
                z->drops[z->ndrops][0] = host;
                z->drops[z->ndrops++][1] = l2_rc;
            }
            if (z->backed) {
                int64_t at = new_zero_cluster(s, z, l2_rc);
                if (at < 0)
                    return (int)at;
                ne = (uint64_t)at | (l2_rc == 1 ? QCOW_OFLAG_COPIED : 0);
            } /* else nothing shows through: unallocated reads as zeroes */
        }
        put_be64p(table + 8 * i, ne);
        changed = true;
    }
    if (!changed)
        return 0;
    int rc = qcow2_flush_refcounts(s); /* data and refcounts before the table that uses them */
    if (rc == 0)
        rc = vbd_node_co_pwrite(s->n->file, l2_off, table, s->cluster_size, 0);
    if (rc == 0 && z->ndrops)
        rc = vbd_node_co_flush(s->n->file);
    for (size_t k = 0; rc == 0 && k < z->ndrops; k++)
        qcow2_update_refcount(s, z->drops[k][0], -(int64_t)z->drops[k][1]); /* a failure only leaks */
    return rc;
}

static int expand_zero_l1(struct qcow2_state *s, const uint64_t *l1, uint32_t l1_size, struct zero_expansion *z)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & L1E_OFFSET_MASK;
        if (!l2)
            continue;
        if ((l2 & (s->cluster_size - 1)) || l2 < s->cluster_size || l2 >= vbd_node_size(s->n->file))
            return qcow2_signal_corruption(s, "L1 entry", l2);
        int rc = expand_zero_l2(s, l2, z);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void drop_cached_l2(struct qcow2_state *s)
{
    for (int i = 0; i < s->l2_cache_slots; i++) {
        s->l2_cache[i].offset = 0;
        s->l2_cache[i].dirty = false;
    }
}

static int downgrade(struct qcow2_state *s, struct vbd_error **err)
{
    if (s->refcount_order != 4) {
        vbd_error_setf(err, ENOTSUP, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    /* extended L2 entries: qemu's message for any incompatible feature below */
    if (s->compression_type && !s->extended_l2) {
        vbd_error_setf(err, ENOTSUP, "Cannot downgrade an image with a non-zlib compression type");
        return -ENOTSUP;
    }
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        vbd_error_setf(err, ENOTSUP, "Cannot downgrade an image with a data file");
        return -ENOTSUP;
    }
    if (s->incompat & ~QCOW2_INCOMPAT_DIRTY) {
        vbd_error_setf(err, ENOTSUP, "Cannot downgrade an image with incompatible features 0x%llx set",
                       (unsigned long long)(s->incompat & ~QCOW2_INCOMPAT_DIRTY));
        return -ENOTSUP;
    }
    /* v2 has no bitmaps: QEMU 7.2 accepts the downgrade and clears the
     * autoclear bit, which orphans them (leaked clusters, a warning at every
     * open); they are removed here instead, clusters released */
    int rc = qcow2_bitmaps_remove_all(s, err);
    if (rc == 0)
        rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0)
        goto io;
    drop_cached_l2(s);
    struct zero_expansion z = {.backed = s->n->backing_file[0] != 0};
    z.table = vbd_alloc_aligned(4096, s->cluster_size);
    z.zeroes = vbd_alloc_aligned(4096, s->cluster_size);
    z.drops = malloc(sizeof(*z.drops) << s->l2_bits);
    memset(z.zeroes, 0, s->cluster_size);
    rc = expand_zero_l1(s, s->l1, s->l1_size, &z);
    if (rc == 0 && s->nb_snapshots) {
        uint8_t *tab = NULL;
        uint64_t tlen = 0, *offs = NULL;
        rc = qcow2_snapshot_table(s, &tab, &tlen, &offs);
        for (uint32_t k = 0; rc == 0 && k < s->nb_snapshots; k++) {
            uint64_t l1o = get_be64p(tab + offs[k]);
            uint32_t l1n = get_be32p(tab + offs[k] + 8);
            if ((uint64_t)l1n * 8 > QCOW2_MAX_L1_BYTES) {
                rc = qcow2_signal_corruption(s, "snapshot L1 table", l1o);
                break;
            }
            uint64_t *l1 = malloc((uint64_t)l1n * 8 + 8);
            rc = l1n ? vbd_node_co_pread(s->n->file, l1o, l1, (uint64_t)l1n * 8) : 0;
            for (uint32_t i = 0; rc == 0 && i < l1n; i++)
                l1[i] = be64(l1[i]);
            if (rc == 0)
                rc = expand_zero_l1(s, l1, l1n, &z);
            free(l1);
        }
        free(tab);
        free(offs);
    }
    free(z.table);
    free(z.zeroes);
    free(z.drops);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0)
        goto io;
    s->version = 2;
    s->incompat = s->compat = s->autoclear = 0;
    s->lazy_opt = 0; /* v2 has no lazy refcounts; they are on disk now */
    rc = qcow2_rewrite_header(s, s->n->backing_file, s->n->backing_format, err);
    return rc;
io:
    if (err && !*err)
        vbd_error_setf(err, -rc, "qcow2: downgrading the image failed: %s", strerror(-rc));
    return rc;
}

static int set_lazy_refcounts(struct qcow2_state *s, bool on, struct vbd_error **err)
{
    if (on && s->version < 3) {
        vbd_error_setf(err, EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        return -EINVAL;
    }
    /* a runtime lazy-refcounts option differing from the header changes too:
     * from here on the header's bit rules, as in QEMU's amend */
    if (on == ((s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0) && on == qcow2_lazy(s))
        return 0;
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow2: could not write back metadata: %s", strerror(-rc));
        return rc;
    }
    uint64_t old = s->compat, old_inc = s->incompat;
    if (on)
        s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    else {
        s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY; /* refcounts are on disk: clean */
    }
    rc = qcow2_rewrite_header(s, s->n->backing_file, s->n->backing_format, err);
    if (rc < 0) {
        s->compat = old;
        s->incompat = old_inc;
    } else {
        s->lazy_opt = 0;
    }
    return rc;
}

int qcow2_amend(struct vbd_node *n, struct json_object *opts, bool force, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    (void)force;
    char *compat = NULL, *backing = NULL, *backing_fmt = NULL, *str = NULL;
    bool lazy = false, has_lazy = json_object_object_get_ex(opts, "lazy_refcounts", NULL);
    bool has_backing = json_object_object_get_ex(opts, "backing_file", NULL);
    bool has_size = json_object_object_get_ex(opts, "size", NULL);
    uint64_t size = 0;
    bool backing_refused = false;
    int rc = -EINVAL;
    if (vbd_opt_take_str(opts, "compat", &compat, err) < 0 || vbd_opt_take_bool(opts, "lazy_refcounts", &lazy, err) < 0 ||
        vbd_opt_take_str(opts, "backing_file", &backing, err) < 0 ||
        vbd_opt_take_str(opts, "backing_fmt", &backing_fmt, err) < 0 || vbd_opt_take_size(opts, "size", &size, err) < 0)
        goto out;
    /* qemu-img takes only its amend options (img-amend.c refuses the others
     * first); creation-time ones are still refused here for other callers */
    static const char *const fixed[] = {"cluster_size", "extended_l2", "compression_type", "preallocation", NULL};
    for (const char *const *f = fixed; *f; f++)
        if (json_object_object_get_ex(opts, *f, NULL)) {
            vbd_error_setf(err, EINVAL, "Invalid parameter '%s'", *f);
            goto out;
        }
    /* the checks qemu 7.2 makes while it reads the options, in its order */
    int version = s->version;
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
            version = 2;
        else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))
            version = 3;
        else {
            vbd_error_setf(err, EINVAL, "Unknown compatibility level %s", compat);
            goto out;
        }
    }
    bool has_data_file = s->incompat & QCOW2_INCOMPAT_DATA_FILE;
    if (json_object_object_get_ex(opts, "data_file", NULL)) {
        if (vbd_opt_take_str(opts, "data_file", &str, err) < 0)
            goto out;
        if (!has_data_file) {
            vbd_error_setf(err, EINVAL, "data-file can only be set for images that use an external data file");
            goto out;
        }
    }
    bool data_raw = s->data_raw, has_data_raw = json_object_object_get_ex(opts, "data_file_raw", NULL);
    if (has_data_raw) {
        if (vbd_opt_take_bool(opts, "data_file_raw", &data_raw, err) < 0)
            goto out;
        if (data_raw && !s->data_raw) {
            vbd_error_setf(err, EINVAL, "data-file-raw cannot be set on existing images");
            goto out;
        }
    }
    uint64_t refcount_bits = 1ull << s->refcount_order;
    if (json_object_object_get_ex(opts, "refcount_bits", NULL)) {
        if (vbd_opt_take_u64(opts, "refcount_bits", &refcount_bits, err) < 0)
            goto out;
        if (refcount_bits == 0 || refcount_bits > 64 || (refcount_bits & (refcount_bits - 1))) {
            vbd_error_setf(err, EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
            goto out;
        }
    }
    if (vbd_opts_check_empty(opts, "Block format 'qcow2'", err) < 0)
        goto out;
    if (refcount_bits != (1ull << s->refcount_order) && version < 3 && refcount_bits != 16) {
        vbd_error_setf(err, EINVAL,
                       "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
        goto out;
    }
    uint32_t dlen = 0;
    const char *dname = has_data_file ? qcow2_data_file_name(s, &dlen) : NULL;
    if ((str && (strlen(str) != dlen || (dlen && memcmp(str, dname, dlen)))) || data_raw != s->data_raw) {
        vbd_error_setf(err, ENOTSUP, "Changing the data file is not supported");
        rc = -ENOTSUP;
        goto out;
    }
    /* qemu 7.2 takes backing_file/backing_fmt only when they name what the
     * header already names (rebase changes them) */
    if (has_backing || backing_fmt) {
        const char *cur = n->backing_file[0] ? n->backing_file : NULL;
        const char *cur_fmt = n->backing_format[0] ? n->backing_format : NULL;
        if (!backing != !cur || (backing && strcmp(backing, cur)) || !backing_fmt != !cur_fmt ||
            (backing_fmt && strcmp(backing_fmt, cur_fmt))) {
            backing_refused = true; /* after the upgrade, the refcount change and the header's write, as qemu */
        }
    }
    vbd_co_mutex_lock(&s->lock);
    rc = 0;
    bool rewritten = version > (int)s->version || refcount_bits != (1ull << s->refcount_order);
    if (version > (int)s->version) {
        /* upgrade: the v3 fields, all zero (no features) */
        s->version = 3;
        s->refcount_order = 4;
        s->incompat = s->compat = s->autoclear = 0;
        rc = qcow2_rewrite_header(s, n->backing_file, n->backing_format, err);
    }
    if (rc == 0 && refcount_bits != (1ull << s->refcount_order)) {
        uint32_t order = 0;
        while ((1ull << order) < refcount_bits)
            order++;
        rc = qcow2_writeback(s);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        if (rc < 0)
            vbd_error_setf(err, -rc, "qcow2: could not write back metadata: %s", strerror(-rc));
        else
            rc = qcow2_change_refcount_order(s, order, err);
    }
    /* QEMU 7.2 writes the header (the whole cluster) here whatever
     * changed, before the backing file's check: a sparse copy's header
     * cluster is allocated after any amend that gets this far. Here only
     * when nothing else rewrites it (an upgrade, a refcount change before,
     * a lazy refcounts change or downgrade after): the same header, and no
     * write of it that would make the next sync a real one */
    bool lazy_change = has_lazy && lazy != ((s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    bool rewritten_later = !backing_refused && !(lazy_change && lazy && version < 3) && !(has_size && size % 512) &&
                           (lazy_change || version < (int)s->version);
    if (rc == 0 && !rewritten && !rewritten_later)
        rc = write_header(s, n->backing_file, n->backing_format, false, err);
    if (rc == 0 && backing_refused) {
        vbd_error_setf(err, EINVAL, "Cannot amend the backing file\nYou can use 'vbd-img rebase' instead.");
        rc = -EINVAL;
    }
    /* (as QEMU: only a change to lazy refcounts is checked against the version) */
    if (rc == 0 && lazy_change && lazy && version < 3) {
        vbd_error_setf(err, EINVAL, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        rc = -EINVAL;
    }
    if (rc == 0 && has_size && size % 512) {
        vbd_error_setf(err, EINVAL, "The new size must be a multiple of 512");
        rc = -EINVAL;
    }
    if (rc == 0 && has_lazy)
        rc = set_lazy_refcounts(s, lazy, err);
    if (rc == 0 && version < (int)s->version) {
        if (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS)
            rc = set_lazy_refcounts(s, false, err);
        if (rc == 0)
            rc = downgrade(s, err);
    }
    vbd_co_mutex_unlock(&s->lock);
    if (rc == 0 && has_size && size != n->size) { /* smaller: discards past the new end, as resize --shrink */
        /* (the resize stores the bitmaps anew, as qemu-img's close stores
         * them after its resize: the close only clears in-use) */
        rc = n->drv->co_truncate(n, size, false, VBD_PREALLOC_OFF, err);
    }
out:
    free(compat);
    free(backing);
    free(backing_fmt);
    free(str);
    return rc;
}

/* ------------------------------------------------------------------ */
/* commit without -d: the image gives up all its data, so reads fall
 * through to the (now updated) backing file. */

int qcow2_make_empty(struct vbd_node *n)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    int rc = qcow2_writeback(s);
    uint64_t per_table = 1ull << (s->l2_bits + s->cluster_bits);
    for (uint32_t i = 0; rc == 0 && i < s->l1_size; i++) {
        if (!(s->l1[i] & L1E_OFFSET_MASK))
            continue;
        for (uint64_t off = (uint64_t)i * per_table; rc == 0 && off < n->size && off < (uint64_t)(i + 1) * per_table;
             off += s->cluster_size) {
            uint64_t *table;
            uint32_t index;
            struct qcow2_l2_slot *slot;
            rc = qcow2_get_l2(s, off, true, &table, &index, &slot);
            if (rc == -ENOTSUP) { /* shared with a snapshot: its data equals the backing file's now */
                rc = 0;
                break;
            }
            if (rc < 0 || !table)
                break;
            uint64_t *ep = &table[s->extended_l2 ? 2 * index : index];
            uint64_t e = be64(ep[0]);
            if (!e && !(s->extended_l2 && ep[1]))
                continue;
            ep[0] = 0;
            if (s->extended_l2)
                ep[1] = 0;
            slot->dirty = true;
            qcow2_release_entry(s, e);
        }
    }
    if (rc == 0)
        rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* measure: QEMU's arithmetic, so both tools print the same numbers */

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

static uint64_t refcount_metadata_bytes(uint64_t clusters, uint64_t cluster_size, uint32_t refcount_order)
{
    uint64_t per_table_cluster = cluster_size / 8, per_block = cluster_size * 8 / (1ull << refcount_order);
    uint64_t table = 0, blocks = 0, n = 0, last;
    do { /* the fixed point where refcount metadata also counts itself */
        last = n;
        blocks = div_up(clusters + table + blocks, per_block);
        table = div_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

static uint64_t fully_allocated_bytes(uint64_t size, uint64_t cluster_size, uint32_t refcount_order, bool extl2)
{
    uint64_t aligned = div_up(size, cluster_size) * cluster_size, l2e = extl2 ? 16 : 8;
    uint64_t meta = cluster_size; /* header */
    uint64_t nl2e = div_up(aligned / cluster_size, cluster_size / l2e) * (cluster_size / l2e);
    meta += nl2e * l2e;
    uint64_t nl1e = div_up(nl2e * l2e / cluster_size, cluster_size / 8) * (cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_bytes((meta + aligned) / cluster_size, cluster_size, refcount_order);
    return meta + aligned;
}

int qcow2_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                  struct vbd_error **err)
{
    uint64_t size = 0, cluster_size = 65536, refcount_bits = 16;
    char *prealloc = NULL, *compat = NULL, *backing = NULL, *str = NULL;
    bool extl2 = false, b;
    int rc = -EINVAL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_size(opts, "cluster_size", &cluster_size, err) < 0 ||
        vbd_opt_take_u64(opts, "refcount_bits", &refcount_bits, err) < 0 ||
        vbd_opt_take_bool(opts, "extended_l2", &extl2, err) < 0 || vbd_opt_take_str(opts, "preallocation", &prealloc, err) < 0 ||
        vbd_opt_take_str(opts, "compat", &compat, err) < 0 || vbd_opt_take_str(opts, "backing_file", &backing, err) < 0 ||
        vbd_opt_take_str(opts, "backing_fmt", &str, err) < 0 || vbd_opt_take_bool(opts, "lazy_refcounts", &b, err) < 0)
        goto out;
    free(str);
    str = NULL;
    if (vbd_opt_take_str(opts, "compression_type", &str, err) < 0)
        goto out;
    free(str);
    str = NULL;
    if (vbd_opt_take_str(opts, "data_file", &str, err) < 0 || vbd_opt_take_bool(opts, "data_file_raw", &b, err) < 0)
        goto out;
    if (vbd_opts_check_empty(opts, "Block format 'qcow2'", err) < 0)
        goto out;
    /* QEMU's qcow2_measure order and words: the cluster size (extended
     * L2 entries need 16 KiB), compat (0.10 or 1.1 only), the refcount
     * width (16 bits for 0.10), the preallocation mode */
    uint32_t order;
    if (qcow2_check_geometry(cluster_size, 16, &order, err) < 0)
        goto out;
    if (extl2 && cluster_size < 16384) { /* qemu's measure validates the cluster size as its create does */
        vbd_error_setf(err, EINVAL, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        goto out;
    }
    if (compat && strcmp(compat, "0.10") && strcmp(compat, "1.1")) {
        vbd_error_setf(err, EINVAL, "Invalid compatibility level: '%s'", compat);
        goto out;
    }
    if (qcow2_check_geometry(cluster_size, refcount_bits, &order, err) < 0)
        goto out;
    if (compat && !strcmp(compat, "0.10") && refcount_bits != 16) {
        vbd_error_setf(err, EINVAL, "Different refcount widths than 16 bits require compatibility level 1.1 or above "
                                    "(use compat=1.1 or greater)");
        goto out;
    }
    bool full = prealloc && (!strcmp(prealloc, "full") || !strcmp(prealloc, "falloc"));
    if (prealloc && !full && strcmp(prealloc, "off") && strcmp(prealloc, "metadata")) {
        vbd_error_setf(err, EINVAL, "invalid parameter value: %s", prealloc);
        goto out;
    }
    uint64_t virtual_size, need = 0;
    if (in) {
        virtual_size = div_up(in->size, cluster_size) * cluster_size;
        if (backing) {
            need = virtual_size; /* the new backing file may share nothing with the input */
        } else {
            for (uint64_t off = 0; off < in->size;) {
                uint64_t pnum;
                int depth;
                int st = vbd_node_co_block_status_above(in, NULL, true, off, in->size - off, &pnum, NULL, NULL, &depth);
                if (st < 0) {
                    vbd_error_setf(err, -st, "Unable to get block status: %s", strerror(-st));
                    rc = st;
                    goto out;
                }
                if (!(st & VBD_BS_ZERO) && (st & VBD_BS_ALLOCATED) && (st & VBD_BS_DATA)) {
                    pnum = div_up(off + pnum, cluster_size) * cluster_size - off;
                    need += off % cluster_size + pnum;
                }
                off += pnum;
            }
        }
        if (full)
            need = virtual_size;
    } else {
        virtual_size = div_up(size, cluster_size) * cluster_size;
        need = full ? virtual_size : 0;
    }
    *fully_allocated = fully_allocated_bytes(virtual_size, cluster_size, order, extl2);
    *required = *fully_allocated - virtual_size + need;
    rc = 0;
out:
    free(prealloc);
    free(compat);
    free(backing);
    free(str);
    return rc;
}
