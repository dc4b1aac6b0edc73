/* SPDX-License-Identifier: MIT */
/*
 * Format driver "qed" (QEMU Enhanced Disk): a two-level table (L1 in
 * memory, L2 entries read from the file on each request, which the page
 * cache keeps cheap), clusters appended at the end of the file, a backing
 * file, and QEMU's need-check flag: set in the header before the first
 * allocation, cleared on a clean close; an image opened read-write with it
 * set is checked (and invalid entries dropped) first, as QEMU does.
 *
 * Crash safety of an allocating write: the data cluster (with the
 * copy-on-write from the backing file) is written, and flushed when there
 * is a backing file, before the L2 entry that points at it; a new L2 table
 * is written before the L1 entry. A crash leaves at worst leaked clusters
 * and the need-check flag set.
 */
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/options.h"

#include <endian.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QED_MAGIC 0x00444551u /* "QED\0" little-endian */
#define QED_HEADER_BYTES 64
#define QED_F_BACKING_FILE 0x01ull
#define QED_F_NEED_CHECK 0x02ull
#define QED_F_BACKING_FORMAT_NO_PROBE 0x04ull
#define QED_FEATURE_MASK (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)
#define QED_MIN_CLUSTER (4u << 10)
#define QED_MAX_CLUSTER (64u << 20)
#define QED_MIN_TABLE 1u
#define QED_MAX_TABLE 16u
#define QED_ZERO_CLUSTER 1ull
#define QED_RUN_MAX 512 /* L2 entries looked at per step: an on-stack array, no malloc per request */
/* Bytes allocated at most per step: qemu-img convert's request (2 MiB),
 * which QEMU's qed allocates in one go, its new L2 table after the data:
 * a smaller step put vbd's table after the first part and every cluster
 * after it at other host offsets than qemu-img's (4k clusters) */
#define QED_ALLOC_BYTES (2u << 20)

struct qed_state {
    uint32_t cluster_size, table_size, header_size, cluster_bits, l2_bits;
    uint64_t features, compat_features, autoclear_features;
    uint64_t l1_offset, image_size;
    uint32_t backing_off, backing_len;
    uint64_t table_bytes, table_entries;
    uint64_t *l1;            /* host byte order */
    uint64_t file_end;       /* next cluster to allocate */
    bool overlap_reported;   /* the refused write onto the L1 table was reported (once per open) */
    struct vbd_co_mutex alloc_lock;
    uint8_t *alloc_buf;      /* under alloc_lock */
    size_t alloc_buf_bytes;
    bool read_only;
};

static int qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    uint32_t m;
    if (len < 4)
        return 0;
    memcpy(&m, buf, 4);
    return le32toh(m) == QED_MAGIC ? 100 : 0;
}

static bool pow2_in(uint64_t v, uint64_t lo, uint64_t hi) { return v >= lo && v <= hi && !(v & (v - 1)); }

static uint64_t qed_max_size(uint64_t cluster_size, uint64_t table_size)
{
    uint64_t entries = table_size * cluster_size / 8;
    /* entries^2 * cluster_size may overflow with the largest geometries */
    if (entries > UINT64_MAX / entries || entries * entries > UINT64_MAX / cluster_size)
        return UINT64_MAX;
    return entries * entries * cluster_size;
}

static void put_header(const struct qed_state *s, uint8_t *h)
{
    uint32_t v32[4] = {htole32(QED_MAGIC), htole32(s->cluster_size), htole32(s->table_size), htole32(s->header_size)};
    memcpy(h, v32, 16);
    uint64_t v64[5] = {htole64(s->features), htole64(s->compat_features), htole64(s->autoclear_features),
                       htole64(s->l1_offset), htole64(s->image_size)};
    memcpy(h + 16, v64, 40);
    uint32_t b[2] = {htole32(s->backing_off), htole32(s->backing_len)};
    memcpy(h + 56, b, 8);
}

static int write_header(struct vbd_node *n)
{
    struct qed_state *s = n->opaque;
    uint8_t h[QED_HEADER_BYTES];
    put_header(s, h);
    return vbd_node_co_pwrite(n->file, 0, h, sizeof(h), 0);
}

/* Setting the flag must be on disk before anything it protects. */
static int set_features(struct vbd_node *n, uint64_t features)
{
    struct qed_state *s = n->opaque;
    if (s->features == features)
        return 0;
    s->features = features;
    int rc = write_header(n);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    return rc;
}

/* A cluster offset an entry may hold: aligned, after the header (its
 * first cluster at least, whatever header_size says: QEMU opens an image
 * whose header_size is 0), inside the file. */
static bool offset_valid(const struct qed_state *s, uint64_t off)
{
    uint64_t header_bytes = (uint64_t)(s->header_size ? s->header_size : 1) * s->cluster_size;
    return !(off & (s->cluster_size - 1)) && off >= header_bytes && off < s->file_end;
}

static bool table_offset_valid(const struct qed_state *s, uint64_t off)
{
    return offset_valid(s, off) && s->file_end - off >= s->table_bytes;
}

/* L2 entries for clusters [ci, ci+cnt) of one L2 table into e (0 = none, as unallocated). */
static int read_entries(struct vbd_node *n, uint64_t l2_off, uint64_t l2i, uint64_t cnt, uint64_t *e)
{
    if (!l2_off) {
        memset(e, 0, cnt * 8);
        return 0;
    }
    int rc = vbd_node_co_pread(n->file, l2_off + l2i * 8, e, cnt * 8);
    for (uint64_t i = 0; rc == 0 && i < cnt; i++)
        e[i] = le64toh(e[i]);
    return rc;
}

static void report_bad_entry(struct vbd_node *n, uint64_t off)
{
    vbd_node_report_corruption(n, "qed: a table entry points outside the image", (int64_t)off, -1, false);
}

/* Whether [off, off+len) of the file overlaps the L1 table. A hostile or
 * damaged table entry may name it as an L2 table or a data cluster: a
 * write there would change L1 entries (QEMU 7.2's qed writes it, and the
 * image's map is lost). Reads from there are harmless and go ahead. */
static bool on_l1_table(const struct qed_state *s, uint64_t off, uint64_t len)
{
    return off < s->l1_offset + s->table_bytes && s->l1_offset < off + len;
}

/* A write the L1 table would take: refused, one line per open. */
static int refuse_l1_overwrite(struct vbd_node *n, const char *what, uint64_t off)
{
    struct qed_state *s = n->opaque;
    if (!s->overlap_reported) {
        s->overlap_reported = true;
        vbd_error_report("qed image '%s' is corrupt: %s at 0x%llx lies on the L1 table (0x%llx); writes there refused",
                         n->file->filename, what, (unsigned long long)off, (unsigned long long)s->l1_offset);
        vbd_node_report_corruption(n, "qed: a table entry points at the L1 table", (int64_t)off, -1, false);
    }
    return -EIO;
}

/* The run of clusters from off that share one kind of entry: *kind 0 =
 * unallocated, 1 = zero, 2 = data at contiguous file offsets (*host). */
static int lookup(struct vbd_node *n, uint64_t off, uint64_t bytes, uint64_t *run, int *kind, uint64_t *host)
{
    struct qed_state *s = n->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t ci = off >> s->cluster_bits;
    uint64_t l1i = ci >> s->l2_bits, l2i = ci & (s->table_entries - 1);
    uint64_t in = off & (cs - 1);
    uint64_t last = (off + bytes - 1) >> s->cluster_bits;
    uint64_t cnt = last - ci + 1;
    if (cnt > s->table_entries - l2i)
        cnt = s->table_entries - l2i;
    if (cnt > QED_RUN_MAX)
        cnt = QED_RUN_MAX;
    uint64_t e[QED_RUN_MAX];
    uint64_t l2 = l1i < s->table_entries ? s->l1[l1i] : 0;
    if (l2 && !table_offset_valid(s, l2)) {
        report_bad_entry(n, l2);
        return -EIO;
    }
    int rc = read_entries(n, l2, l2i, cnt, e);
    if (rc < 0)
        return rc;
    int k = e[0] == 0 ? 0 : e[0] == QED_ZERO_CLUSTER ? 1 : 2;
    if (k == 2 && !offset_valid(s, e[0])) {
        report_bad_entry(n, e[0]);
        return -EIO;
    }
    uint64_t i = 1;
    for (; i < cnt; i++) {
        int ki = e[i] == 0 ? 0 : e[i] == QED_ZERO_CLUSTER ? 1 : 2;
        /* each entry checked, not just the first: a run ends at one pointing past the file (the next lookup reports it) */
        if (ki != k || (k == 2 && (e[i] != e[0] + i * cs || !offset_valid(s, e[i]))))
            break;
    }
    uint64_t len = i * cs - in;
    *run = len < bytes ? len : bytes;
    *kind = k;
    *host = k == 2 ? e[0] + in : 0;
    return 0;
}

static int qed_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    (void)flags;
    while (bytes) {
        uint64_t run, host;
        int kind;
        int rc = lookup(n, off, bytes, &run, &kind, &host);
        if (rc < 0)
            return rc;
        if (kind == 2)
            rc = vbd_node_co_preadv(n->file, host, run, q, qoff, 0);
        else if (kind == 0)
            rc = vbd_node_co_read_backing(n, off, run, q, qoff, 0);
        else
            vbd_iov_memset(q->iov, q->niov, qoff, 0, run);
        if (rc < 0)
            return rc;
        off += run;
        qoff += run;
        bytes -= run;
    }
    return 0;
}

static int set_entries(struct vbd_node *n, uint64_t start, uint64_t ncl, const uint64_t *e);

/* Allocate the unallocated/zero clusters at [off, off+run) (one L2 table,
 * one kind), with alloc_lock held: data first, then the entries. */
static int allocate_run(struct vbd_node *n, uint64_t off, uint64_t run, int kind, struct vbd_qiov *q, size_t qoff)
{
    struct qed_state *s = n->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t start = off & ~(cs - 1);
    uint64_t end = (off + run + cs - 1) & ~(cs - 1);
    uint64_t ncl = (end - start) / cs;
    /* before anything is written: a refused write leaves the file as it was */
    uint64_t l2 = s->l1[(start >> s->cluster_bits) >> s->l2_bits];
    if (l2 && on_l1_table(s, l2, s->table_bytes))
        return refuse_l1_overwrite(n, "an L2 table", l2);
    int rc = set_features(n, s->features | QED_F_NEED_CHECK);
    if (rc < 0)
        return rc;
    size_t need = (size_t)(end - start);
    if (s->alloc_buf_bytes < need) {
        free(s->alloc_buf);
        s->alloc_buf = vbd_alloc_aligned(4096, need);
        s->alloc_buf_bytes = need;
    }
    uint8_t *buf = s->alloc_buf;
    struct iovec one;
    struct vbd_qiov bq;
    vbd_qiov_init_buf(&bq, &one, buf, need);
    if (off > start) {
        if (kind == 0)
            rc = vbd_node_co_read_backing(n, start, off - start, &bq, 0, 0);
        else
            memset(buf, 0, off - start);
    }
    if (rc == 0 && off + run < end) {
        if (kind == 0)
            rc = vbd_node_co_read_backing(n, off + run, end - off - run, &bq, off + run - start, 0);
        else
            memset(buf + (off + run - start), 0, end - off - run);
    }
    if (rc < 0)
        return rc;
    vbd_iov_to_buf(q->iov, q->niov, qoff, buf + (off - start), run);
    uint64_t host = s->file_end;
    rc = vbd_node_co_pwrite(n->file, host, buf, need, 0);
    if (rc < 0)
        return rc;
    s->file_end += need;
    if (n->backing && (rc = vbd_node_co_flush(n->file)) < 0)
        return rc;
    uint64_t e[QED_RUN_MAX];
    for (uint64_t i = 0; i < ncl; i++)
        e[i] = htole64(host + i * cs);
    return set_entries(n, start, ncl, e);
}

/* The L2 entries (little endian) of ncl clusters from start, inside one L2
 * table; a new table when it has none yet. alloc_lock held. */
static int set_entries(struct vbd_node *n, uint64_t start, uint64_t ncl, const uint64_t *e)
{
    struct qed_state *s = n->opaque;
    uint64_t ci = start >> s->cluster_bits;
    uint64_t l1i = ci >> s->l2_bits, l2i = ci & (s->table_entries - 1);
    int rc;
    if (s->l1[l1i]) {
        if (on_l1_table(s, s->l1[l1i], s->table_bytes))
            return refuse_l1_overwrite(n, "an L2 table", s->l1[l1i]);
        return vbd_node_co_pwrite(n->file, s->l1[l1i] + l2i * 8, e, ncl * 8, 0);
    }
    /* a new L2 table holding these entries, then the L1 entry */
    uint64_t table = s->file_end;
    uint8_t *t = vbd_alloc_aligned(4096, s->table_bytes);
    memset(t, 0, s->table_bytes);
    memcpy(t + l2i * 8, e, ncl * 8);
    rc = vbd_node_co_pwrite(n->file, table, t, s->table_bytes, 0);
    free(t);
    if (rc < 0)
        return rc;
    s->file_end += s->table_bytes;
    uint64_t le = htole64(table);
    rc = vbd_node_co_pwrite(n->file, s->l1_offset + l1i * 8, &le, 8, 0);
    if (rc == 0)
        s->l1[l1i] = table;
    return rc;
}

static int qed_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct qed_state *s = n->opaque;
    while (bytes) {
        uint64_t run, host;
        int kind;
        int rc = lookup(n, off, bytes, &run, &kind, &host);
        if (rc < 0)
            return rc;
        if (kind == 2) {
            if (__builtin_expect(on_l1_table(s, host, run), 0))
                return refuse_l1_overwrite(n, "a data cluster", host & ~(uint64_t)(s->cluster_size - 1));
            rc = vbd_node_co_pwritev(n->file, host, run, q, qoff, 0);
            if (rc == 0 && (flags & VBD_REQ_FUA))
                rc = vbd_node_co_flush(n->file);
        } else {
            vbd_co_mutex_lock(&s->alloc_lock);
            /* another request may have allocated it meanwhile: look again */
            uint64_t cap = QED_ALLOC_BYTES > s->cluster_size ? QED_ALLOC_BYTES : s->cluster_size;
            cap -= off & (s->cluster_size - 1);
            rc = lookup(n, off, bytes < cap ? bytes : cap, &run, &kind, &host);
            if (rc == 0) {
                if (kind == 2)
                    run = 0; /* now allocated: the next round writes in place */
                else
                    rc = allocate_run(n, off, run, kind, q, qoff);
            }
            vbd_co_mutex_unlock(&s->alloc_lock);
            if (rc == 0 && run && (flags & VBD_REQ_FUA))
                rc = vbd_node_co_flush(n->file);
        }
        if (rc < 0)
            return rc;
        off += run;
        qoff += run;
        bytes -= run;
    }
    return 0;
}

/* Zeroes as QEMU's qed: whole clusters that hold no data become zero
 * clusters (over a backing file too); data clusters and partial clusters
 * get zero data (QEMU writes them in place, or falls back to a write). */
static int qed_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct qed_state *s = n->opaque;
    uint64_t cs = s->cluster_size;
    flags &= VBD_REQ_FUA;
    while (bytes) {
        uint64_t in = off & (cs - 1);
        uint64_t len = in || bytes < cs ? (cs - in < bytes ? cs - in : bytes) : bytes & ~(cs - 1);
        uint64_t run = 0, host;
        int kind = 2, rc = 0;
        if (!in && len >= cs) {
            vbd_co_mutex_lock(&s->alloc_lock);
            rc = lookup(n, off, len, &run, &kind, &host);
            if (rc == 0 && kind != 2) {
                run &= ~(cs - 1); /* whole clusters of one kind inside one table */
                uint64_t e[QED_RUN_MAX];
                for (uint64_t i = 0; i < run / cs; i++)
                    e[i] = htole64(QED_ZERO_CLUSTER);
                uint64_t l2 = s->l1[(off >> s->cluster_bits) >> s->l2_bits];
                if (kind == 0 && l2 && on_l1_table(s, l2, s->table_bytes)) /* before the flag: nothing written */
                    rc = refuse_l1_overwrite(n, "an L2 table", l2);
                else if (kind == 0 && (rc = set_features(n, s->features | QED_F_NEED_CHECK)) == 0)
                    rc = set_entries(n, off, run / cs, e);
            }
            vbd_co_mutex_unlock(&s->alloc_lock);
            if (rc == 0 && kind != 2 && (flags & VBD_REQ_FUA))
                rc = vbd_node_co_flush(n->file);
            if (rc < 0)
                return rc;
        }
        if (kind == 2) {
            /* zero data: a data run or a partial cluster */
            if (run == 0 || run > len)
                run = len;
            if (run > (1u << 20))
                run = 1u << 20; /* the zero buffer's size */
            uint8_t *z = vbd_alloc_aligned(4096, run);
            memset(z, 0, run);
            struct iovec one;
            struct vbd_qiov q;
            vbd_qiov_init_buf(&q, &one, z, run);
            rc = qed_pwritev(n, off, run, &q, 0, flags);
            free(z);
            if (rc < 0)
                return rc;
        }
        off += run;
        bytes -= run;
    }
    return 0;
}

static int qed_flush(struct vbd_node *n) { return vbd_node_co_flush(n->file); }

static int qed_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                            uint64_t *map, struct vbd_node **file)
{
    (void)want_zero;
    uint64_t host;
    int kind;
    int rc = lookup(n, off, bytes, pnum, &kind, &host);
    if (rc < 0)
        return rc;
    if (kind == 0) /* reads go to the backing file; past its end, or without one, they are zeroes */
        return !n->backing || off >= vbd_node_size(n->backing) ? VBD_BS_ZERO : 0;
    if (kind == 1)
        return VBD_BS_ZERO | VBD_BS_ALLOCATED;
    *map = host;
    *file = n->file;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
}

/* ---------- check ---------- */

struct qed_check {
    struct qed_state *s;
    uint8_t *used; /* one bit per cluster of the file */
    uint64_t nclusters;
};

/* Mark a cluster range used; false if it is already used (referenced twice). */
static bool mark_used(struct qed_check *c, uint64_t off, uint64_t len)
{
    bool ok = true;
    for (uint64_t i = off >> c->s->cluster_bits; i < (off + len) >> c->s->cluster_bits && i < c->nclusters; i++) {
        if (c->used[i / 8] & (1u << (i % 8)))
            ok = false;
        c->used[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    return ok;
}

static int qed_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    struct qed_check c = {.s = s, .nclusters = s->file_end >> s->cluster_bits};
    c.used = calloc(c.nclusters / 8 + 1, 1);
    uint64_t *l2 = vbd_alloc_aligned(4096, s->table_bytes);
    int rc = 0;
    bool fixing = (fix & VBD_CHECK_FIX_ERRORS) && !s->read_only;
    res->total_clusters = (s->image_size + s->cluster_size - 1) >> s->cluster_bits;
    mark_used(&c, 0, (uint64_t)s->header_size * s->cluster_size);
    mark_used(&c, s->l1_offset, s->table_bytes);
    for (uint64_t i = 0; i < s->table_entries && rc == 0; i++) {
        uint64_t t = s->l1[i];
        if (!t)
            continue;
        if (!table_offset_valid(s, t) || !mark_used(&c, t, s->table_bytes)) {
            res->corruptions++;
            if (fixing) {
                uint64_t z = 0;
                if ((rc = vbd_node_co_pwrite(n->file, s->l1_offset + i * 8, &z, 8, 0)) == 0) {
                    s->l1[i] = 0;
                    res->corruptions--;
                    res->corruptions_fixed++;
                }
            }
            continue;
        }
        if ((rc = vbd_node_co_pread(n->file, t, l2, s->table_bytes)) < 0) {
            res->check_errors++;
            break;
        }
        bool dirty = false;
        uint64_t prev = 0;
        for (uint64_t j = 0; j < s->table_entries; j++) {
            uint64_t e = le64toh(l2[j]);
            if (e == 0 || e == QED_ZERO_CLUSTER)
                continue;
            /* counted as qemu-img counts them: every entry, valid or not */
            res->allocated_clusters++;
            if (prev && prev + s->cluster_size != e)
                res->fragmented_clusters++;
            prev = e;
            if (offset_valid(s, e) && mark_used(&c, e, s->cluster_size))
                continue;
            res->corruptions++;
            if (fixing) {
                l2[j] = 0;
                dirty = true;
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        if (dirty && (rc = vbd_node_co_pwrite(n->file, t, l2, s->table_bytes, 0)) < 0)
            res->check_errors++;
    }
    for (uint64_t i = 0; i < c.nclusters && rc == 0; i++)
        if (!(c.used[i / 8] & (1u << (i % 8))))
            res->leaks++;
    free(l2);
    free(c.used);
    if (rc == 0 && fixing && !res->corruptions && !res->check_errors) {
        rc = vbd_node_co_flush(n->file);
        if (rc == 0)
            rc = set_features(n, s->features & ~QED_F_NEED_CHECK);
    }
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qed: could not check '%s': %s", n->filename, strerror(-rc));
    return rc;
}

/* ---------- open/close ---------- */

static void qed_free(struct qed_state *s)
{
    free(s->l1);
    free(s->alloc_buf);
    s->l1 = NULL;
    s->alloc_buf = NULL;
}

static int bad_field(struct vbd_node *n, struct vbd_error **err, const char *field, unsigned long long v)
{
    vbd_error_setf(err, EINVAL, "qed image '%s': invalid %s (%llu)", n->filename, field, v);
    return -EINVAL;
}

static int qed_open_inner(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    uint8_t h[QED_HEADER_BYTES];
    uint64_t fsize = vbd_node_size(n->file);
    if (fsize < sizeof(h))
        return bad_field(n, err, "file size", fsize);
    int rc = vbd_node_co_pread(n->file, 0, h, sizeof(h));
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qed image '%s': cannot read the header: %s", n->filename, strerror(-rc));
        return rc;
    }
    uint32_t v32[4];
    uint64_t v64[5];
    uint32_t b[2];
    memcpy(v32, h, 16);
    memcpy(v64, h + 16, 40);
    memcpy(b, h + 56, 8);
    /* the checks and their words are QEMU's, in its order */
    if (le32toh(v32[0]) != QED_MAGIC) {
        vbd_error_setf(err, EINVAL, "Image not in QED format");
        return -EINVAL;
    }
    s->cluster_size = le32toh(v32[1]);
    s->table_size = le32toh(v32[2]);
    s->header_size = le32toh(v32[3]);
    s->features = le64toh(v64[0]);
    s->compat_features = le64toh(v64[1]);
    s->autoclear_features = le64toh(v64[2]);
    s->l1_offset = le64toh(v64[3]);
    s->image_size = le64toh(v64[4]);
    s->backing_off = le32toh(b[0]);
    s->backing_len = le32toh(b[1]);
    if (s->features & ~QED_FEATURE_MASK) {
        vbd_error_setf(err, ENOTSUP, "Unsupported QED features: %llx",
                       (unsigned long long)(s->features & ~QED_FEATURE_MASK));
        return -ENOTSUP;
    }
    if (!pow2_in(s->cluster_size, QED_MIN_CLUSTER, QED_MAX_CLUSTER)) {
        vbd_error_setf(err, EINVAL, "QED cluster size is invalid");
        return -EINVAL;
    }
    if (!pow2_in(s->table_size, QED_MIN_TABLE, QED_MAX_TABLE)) {
        vbd_error_setf(err, EINVAL, "QED table size is invalid");
        return -EINVAL;
    }
    if (s->image_size % 512 || s->image_size > qed_max_size(s->cluster_size, s->table_size) ||
        s->image_size > VBD_MAX_REQUEST_END) {
        vbd_error_setf(err, EINVAL, "QED image size is invalid");
        return -EINVAL;
    }
    if (s->header_size > UINT32_MAX / s->cluster_size)
        return bad_field(n, err, "header_size", s->header_size);
    s->cluster_bits = (uint32_t)__builtin_ctz(s->cluster_size);
    s->table_bytes = (uint64_t)s->table_size * s->cluster_size;
    s->table_entries = s->table_bytes / 8;
    s->l2_bits = (uint32_t)__builtin_ctzll(s->table_entries);
    s->file_end = fsize & ~(uint64_t)(s->cluster_size - 1);
    if (!table_offset_valid(s, s->l1_offset)) {
        vbd_error_setf(err, EINVAL, "QED table offset is invalid");
        return -EINVAL;
    }
    if (s->features & QED_F_BACKING_FILE) {
        uint64_t hbytes = (uint64_t)s->header_size * s->cluster_size;
        if ((uint64_t)s->backing_off + s->backing_len > hbytes || s->backing_off + (uint64_t)s->backing_len > fsize) {
            vbd_error_setf(err, EINVAL, "QED backing filename offset is invalid");
            return -EINVAL;
        }
        if (s->backing_len >= sizeof(n->backing_file))
            return bad_field(n, err, "backing_filename_size", s->backing_len);
        rc = vbd_node_co_pread(n->file, s->backing_off, n->backing_file, s->backing_len);
        if (rc < 0)
            return bad_field(n, err, "backing_filename_offset", s->backing_off);
        n->backing_file[s->backing_len] = 0;
        if (s->features & QED_F_BACKING_FORMAT_NO_PROBE)
            snprintf(n->backing_format, sizeof(n->backing_format), "raw");
    }
    s->l1 = vbd_alloc_aligned(4096, s->table_bytes);
    rc = vbd_node_co_pread(n->file, s->l1_offset, s->l1, s->table_bytes);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qed image '%s': cannot read the L1 table: %s", n->filename, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < s->table_entries; i++)
        s->l1[i] = le64toh(s->l1[i]);
    n->size = s->image_size;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.opt_transfer = s->cluster_size;
    n->supported_write_flags = VBD_REQ_FUA;
    s->read_only = !(flags & VBD_OPEN_RDWR);
    if (!s->read_only && !(flags & VBD_OPEN_CHECK)) {
        /* as QEMU: features it does not know stop being valid once we write */
        if (s->autoclear_features) {
            s->autoclear_features = 0;
            if ((rc = write_header(n)) < 0) {
                vbd_error_setf(err, -rc, "qed image '%s': cannot write the header: %s", n->filename, strerror(-rc));
                return rc;
            }
        }
        if (s->features & QED_F_NEED_CHECK) { /* not closed cleanly: repair before writing */
            struct vbd_check_result res = {0};
            rc = qed_co_check(n, &res, VBD_CHECK_FIX_ERRORS | VBD_CHECK_FIX_LEAKS, err);
            if (rc < 0)
                return rc;
            if (res.corruptions || res.check_errors) {
                vbd_error_setf(err, EIO, "qed image '%s' was not closed cleanly and could not be repaired; run 'vbd-img check -r all'",
                               n->filename);
                return -EIO;
            }
        }
    }
    return vbd_open_backing(n, opts, flags, err);
}

static void qed_close(struct vbd_node *n);

static int qed_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    int rc = qed_open_inner(n, opts, flags, err);
    if (rc < 0)
        qed_free(n->opaque);
    return rc;
}

static void close_co(void *arg)
{
    struct vbd_node *n = arg;
    struct qed_state *s = n->opaque;
    if (vbd_node_co_flush(n->file) == 0)
        set_features(n, s->features & ~QED_F_NEED_CHECK);
}

static void qed_close(struct vbd_node *n)
{
    struct qed_state *s = n->opaque;
    if (!s->read_only && (s->features & QED_F_NEED_CHECK) && s->l1) {
        if (vbd_in_co())
            close_co(n);
        else
            vbd_co_run_sync(close_co, n);
    }
    qed_free(s);
}

static int qed_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    (void)err;
    info->cluster_size = s->cluster_size;
    info->has_dirty_flag = true;
    info->dirty_flag = (s->features & QED_F_NEED_CHECK) != 0;
    return 0;
}

static int qed_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc, struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    (void)exact;
    if (prealloc != VBD_PREALLOC_OFF) {
        vbd_error_setf(err, ENOTSUP, "Unsupported preallocation mode '%s'", vbd_prealloc_names[prealloc]);
        return -ENOTSUP;
    }
    if (size % 512 || size > qed_max_size(s->cluster_size, s->table_size)) {
        vbd_error_setf(err, EINVAL, "Invalid image size specified");
        return -EINVAL;
    }
    if (size < s->image_size) {
        vbd_error_setf(err, ENOTSUP, "Shrinking images is currently not supported");
        return -ENOTSUP;
    }
    uint64_t old = s->image_size;
    s->image_size = size;
    int rc = write_header(n);
    if (rc < 0) {
        s->image_size = old;
        vbd_error_setf(err, -rc, "Failed to update the image size");
        return rc;
    }
    vbd_node_set_size(n, size);
    return 0;
}

static int qed_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    (void)err;
    if (!rw && !s->read_only && (s->features & QED_F_NEED_CHECK))
        close_co(n);
    s->read_only = !rw;
    return 0;
}

/* ---------- create ---------- */

static const struct vbd_opt_desc qed_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", VBD_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", VBD_OPT_STRING, "Image format of the base image", NULL},
    {"cluster_size", VBD_OPT_SIZE, "Cluster size (in bytes)", "65536"},
    {"table_size", VBD_OPT_SIZE, "L1/L2 table size (in clusters)", "4"},
    {NULL, 0, NULL, NULL},
};

/* The image at filename (made here), or on target (blockdev-create). */
static int create_image(const char *filename, struct vbd_node *target, struct json_object *opts,
                        struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0, cluster_size = 65536, table_size = 4;
    char *backing = NULL, *backing_fmt = NULL;
    int rc = -EINVAL;
    struct vbd_node *f = NULL;
    uint8_t *buf = NULL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "backing_file", &backing, err) < 0 ||
        vbd_opt_take_str(opts, "backing_fmt", &backing_fmt, err) < 0 ||
        vbd_opt_take_size(opts, "cluster_size", &cluster_size, err) < 0 ||
        vbd_opt_take_u64(opts, "table_size", &table_size, err) < 0)
        goto out;
    if (vbd_opts_check_empty(opts, "Block format 'qed'", err) < 0)
        goto out;
    /* as qemu-img: a new file is made first, then the options checked (a
     * refused cluster size, table size or image size leaves it empty);
     * blockdev-create's target is left alone until they pass */
    if (!target && !(f = vbd_create_protocol_node(filename, NULL, 0, file_hints, err))) {
        rc = -EIO;
        goto out;
    }
    /* QEMU reads the options into its schema next: a backing format no
     * driver has is refused there (its BlockdevDriver enum) */
    if (backing_fmt && !vbd_driver_find(backing_fmt)) {
        vbd_error_setf(err, EINVAL, "Parameter 'backing-fmt' does not accept value '%s'", backing_fmt);
        goto out;
    }
    if (!pow2_in(cluster_size, QED_MIN_CLUSTER, QED_MAX_CLUSTER)) {
        vbd_error_setf(err, EINVAL, "QED cluster size must be within range [%u, %u] and power of 2", QED_MIN_CLUSTER,
                       QED_MAX_CLUSTER);
        goto out;
    }
    if (!pow2_in(table_size, QED_MIN_TABLE, QED_MAX_TABLE)) {
        vbd_error_setf(err, EINVAL, "QED table size must be within range [%u, %u] and power of 2", QED_MIN_TABLE,
                       QED_MAX_TABLE);
        goto out;
    }
    uint64_t max = qed_max_size(cluster_size, table_size);
    if (size % 512 || size > max) {
        vbd_error_setf(err, EINVAL, "QED image size must be a non-zero multiple of cluster size and less than %llu bytes",
                       (unsigned long long)max);
        goto out;
    }
    /* a backing_fmt without backing_file is ignored, as QEMU's qed does */
    if (backing && strlen(backing) > cluster_size - QED_HEADER_BYTES) {
        vbd_error_setf(err, EINVAL, "Backing file name too long");
        goto out;
    }
    struct qed_state s = {
        .cluster_size = (uint32_t)cluster_size,
        .table_size = (uint32_t)table_size,
        .header_size = 1,
        .l1_offset = cluster_size,
        .image_size = size,
    };
    if (backing) {
        s.features = QED_F_BACKING_FILE | (backing_fmt && !strcmp(backing_fmt, "raw") ? QED_F_BACKING_FORMAT_NO_PROBE : 0);
        s.backing_off = QED_HEADER_BYTES;
        s.backing_len = (uint32_t)strlen(backing);
    }
    if (!f && !(f = vbd_create_protocol_node(filename, target, 0, file_hints, err))) {
        rc = -EIO;
        goto out;
    }
    size_t total = (size_t)(cluster_size + table_size * cluster_size);
    buf = calloc(1, total);
    put_header(&s, buf);
    if (backing)
        memcpy(buf + QED_HEADER_BYTES, backing, s.backing_len);
    /* the header (and the backing file's name after it), then the L1
     * table, as qemu-img writes them: the rest of the header cluster stays
     * a hole of the new (empty) file, so the image takes the space
     * qemu-img's takes (`du`), not a whole cluster more */
    rc = vbd_node_co_pwrite(f, 0, buf, QED_HEADER_BYTES + s.backing_len, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, cluster_size, buf + cluster_size, total - cluster_size, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(f);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not write the qed image '%s': %s", filename, strerror(-rc));
out:
    if (f)
        vbd_node_unref(f);
    free(buf);
    free(backing);
    free(backing_fmt);
    return rc < 0 ? rc : 0;
}

/* rebase: the header rewritten with the new name right after it, as
 * qemu's qed does (the rest of the header clusters is left as it is). A raw
 * backing file is marked so that it is not probed. */
static int qed_change_backing_file(struct vbd_node *n, const char *backing, const char *backing_fmt,
                                   struct vbd_error **err)
{
    struct qed_state *s = n->opaque;
    if (backing && !*backing)
        backing = NULL;
    size_t len = backing ? strlen(backing) : 0;
    if (QED_HEADER_BYTES + len > (uint64_t)s->header_size * s->cluster_size || len >= sizeof(n->backing_file)) {
        vbd_error_setf(err, ENOSPC, "%s", strerror(ENOSPC));
        return -ENOSPC;
    }
    struct qed_state ns = *s;
    ns.features &= ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    if (backing)
        ns.features |= QED_F_BACKING_FILE | (backing_fmt && !strcmp(backing_fmt, "raw") ? QED_F_BACKING_FORMAT_NO_PROBE : 0);
    ns.backing_off = QED_HEADER_BYTES;
    ns.backing_len = (uint32_t)len;
    uint8_t buf[QED_HEADER_BYTES + sizeof(n->backing_file)];
    put_header(&ns, buf);
    if (len)
        memcpy(buf + QED_HEADER_BYTES, backing, len);
    int rc = vbd_node_co_pwrite(n->file, 0, buf, QED_HEADER_BYTES + len, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "%s", strerror(-rc));
        return rc;
    }
    s->features = ns.features;
    s->backing_off = ns.backing_off;
    s->backing_len = ns.backing_len;
    snprintf(n->backing_file, sizeof(n->backing_file), "%s", backing ? backing : "");
    snprintf(n->backing_format, sizeof(n->backing_format), "%s", backing && backing_fmt ? backing_fmt : "");
    return 0;
}

static const struct vbd_driver qed_driver = {
    .name = "qed",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct qed_state),
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .co_preadv = qed_preadv,
    .co_pwritev = qed_pwritev,
    .co_pwrite_zeroes = qed_pwrite_zeroes,
    .co_flush = qed_flush,
    .co_block_status = qed_block_status,
    .co_truncate = qed_truncate,
    .get_info = qed_get_info,
    .co_check = qed_co_check,
    .change_backing_file = qed_change_backing_file,
    .create_opts = qed_create_opts,
    .co_create = create_image,
    .create_onto_node = true,
    .reopen_rw = qed_reopen_rw,
};
VBD_DRIVER_REGISTER(qed, qed_driver);
