/* SPDX-License-Identifier: MIT */
/* qcow2 internal snapshots: the snapshot table, read and bounds-checked
 * (listing; create/apply/delete are not implemented yet). */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_TABLE_MAX (64u << 20) /* as QEMU: caps memory taken from the image */

int qcow2_snapshot_list(struct vbd_node *n, struct vbd_snapshot_info **out)
{
    struct qcow2_state *s = n->opaque;
    *out = NULL;
    if (!s->nb_snapshots)
        return 0;
    uint64_t fsize = vbd_node_size(n->file), off = s->snapshots_offset;
    struct vbd_snapshot_info *list = calloc(s->nb_snapshots, sizeof(*list));
    if (!list)
        return -ENOMEM;
    uint64_t total = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t h[40];
        if (off + 40 > fsize || vbd_node_co_pread(n->file, off, h, 40) < 0)
            goto bad;
        uint16_t id_len = (uint16_t)((h[12] << 8) | h[13]), name_len = (uint16_t)((h[14] << 8) | h[15]);
        uint32_t extra = get_be32p(h + 36);
        struct vbd_snapshot_info *sn = &list[i];
        sn->date_sec = get_be32p(h + 16);
        sn->date_nsec = get_be32p(h + 20);
        sn->vm_clock_nsec = get_be64p(h + 24);
        sn->vm_state_size = get_be32p(h + 32);
        if (extra > 1024)
            goto bad;
        uint8_t ex[1024];
        if (extra && (off + 40 + extra > fsize || vbd_node_co_pread(n->file, off + 40, ex, extra) < 0))
            goto bad;
        if (extra >= 8)
            sn->vm_state_size = get_be64p(ex);
        if (extra >= 24) {
            sn->icount = get_be64p(ex + 16);
            sn->icount_valid = sn->icount != UINT64_MAX;
        }
        uint64_t p = off + 40 + extra;
        if (id_len >= sizeof(sn->id) || name_len >= sizeof(sn->name) || p + id_len + name_len > fsize)
            goto bad;
        if ((id_len && vbd_node_co_pread(n->file, p, sn->id, id_len) < 0) ||
            (name_len && vbd_node_co_pread(n->file, p + id_len, sn->name, name_len) < 0))
            goto bad;
        uint64_t len = 40 + extra + id_len + name_len;
        len = (len + 7) & ~7ull;
        total += len;
        if (total > SNAPSHOT_TABLE_MAX)
            goto bad;
        off += len;
    }
    *out = list;
    return (int)s->nb_snapshots;
bad:
    vbd_error_report("qcow2: the snapshot table of '%s' is invalid (entry past the end of the file or too large)",
                     n->file->filename);
    free(list);
    return -EINVAL;
}

/* ------------------------------------------------------------------ */
/* create, apply, delete (QEMU's reference scheme: a snapshot's L1 shares
 * the L2 tables, and every cluster reachable from it holds one reference
 * for it; COPIED flags mark what the active image owns alone) */

#include "vbd/iov.h"

#include <stdio.h>
#include <time.h>

static int read_table(struct qcow2_state *s, uint8_t **out, uint64_t *len, uint64_t *offs);

int qcow2_snapshot_table(struct qcow2_state *s, uint8_t **tab, uint64_t *len, uint64_t **offs)
{
    *offs = calloc(s->nb_snapshots + 1, sizeof(uint64_t));
    if (!*offs)
        return -ENOMEM;
    int rc = read_table(s, tab, len, *offs);
    if (rc < 0) {
        free(*offs);
        *offs = NULL;
    }
    return rc;
}

/* The raw snapshot table and the offset of each entry. */
static int cmp_range(const void *a, const void *b)
{
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

int qcow2_snapshot_l1_ranges(struct qcow2_state *s)
{
    free(s->snap_l1);
    s->snap_l1 = NULL;
    s->nsnap_l1 = 0;
    s->snapshots_size = 0;
    if (!s->nb_snapshots)
        return 0;
    uint8_t *tab = NULL;
    uint64_t len = 0, *offs = NULL;
    int rc = qcow2_snapshot_table(s, &tab, &len, &offs);
    if (rc < 0)
        return rc;
    s->snapshots_size = len;
    s->snap_l1 = calloc(s->nb_snapshots, sizeof(*s->snap_l1));
    if (!s->snap_l1) {
        free(tab);
        free(offs);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint64_t l1o = get_be64p(tab + offs[i]);
        uint32_t l1n = get_be32p(tab + offs[i] + 8);
        if (!l1n)
            continue;
        s->snap_l1[s->nsnap_l1][0] = l1o;
        s->snap_l1[s->nsnap_l1++][1] = (uint64_t)l1n * 8;
    }
    qsort(s->snap_l1, s->nsnap_l1, sizeof(*s->snap_l1), cmp_range);
    free(tab);
    free(offs);
    return 0;
}

static int read_table(struct qcow2_state *s, uint8_t **out, uint64_t *len, uint64_t *offs)
{
    struct vbd_node *n = s->n;
    uint64_t off = s->snapshots_offset, total = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t h[40];
        if (vbd_node_co_pread(n->file, off, h, 40) < 0)
            return -EIO;
        uint64_t l = 40 + get_be32p(h + 36) + ((h[12] << 8) | h[13]) + ((h[14] << 8) | h[15]);
        l = (l + 7) & ~7ull;
        if (offs)
            offs[i] = total;
        total += l;
        off += l;
        if (total > SNAPSHOT_TABLE_MAX)
            return -EINVAL;
    }
    *out = malloc(total ? total : 1);
    if (!*out)
        return -ENOMEM;
    if (total && vbd_node_co_pread(n->file, s->snapshots_offset, *out, total) < 0) {
        free(*out);
        return -EIO;
    }
    *len = total;
    return 0;
}

static int add_refs(struct qcow2_state *s, uint64_t off, uint64_t len, int64_t delta)
{
    for (uint64_t c = off & ~(s->cluster_size - 1); c < off + len; c += s->cluster_size) {
        int rc = qcow2_update_refcount(s, c, delta);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* +1/-1 on everything an L1 table reaches (L2 tables and data clusters). */
static int l1_refs(struct qcow2_state *s, const uint64_t *l1, uint32_t l1_size, int64_t delta)
{
    uint8_t *t = vbd_alloc_aligned(4096, s->cluster_size);
    int rc = 0;
    for (uint32_t i = 0; i < l1_size && rc == 0; i++) {
        uint64_t l2 = l1[i] & L1E_OFFSET_MASK;
        if (!l2)
            continue;
        if ((rc = vbd_node_co_pread(s->n->file, l2, t, s->cluster_size)) < 0)
            break;
        for (uint32_t j = 0; j < (1u << s->l2_bits) && rc == 0; j++) {
            uint64_t e = get_be64p(t + (uint64_t)j * s->l2_entry_size);
            if (qcow2_entry_type(s, e) == QCOW2_COMPRESSED) {
                uint64_t coff = e & s->coffset_mask;
                uint64_t nsect = ((e >> s->csize_shift) & s->csize_mask) + 1;
                rc = add_refs(s, coff & ~511ull, nsect * 512 - 0, delta);
            } else if (e & L2E_OFFSET_MASK) {
                rc = qcow2_update_refcount(s, e & L2E_OFFSET_MASK, delta);
            }
        }
        if (rc == 0)
            rc = qcow2_update_refcount(s, l2, delta);
    }
    free(t);
    return rc;
}

/*
 * Create, delete and goto walk the L2 tables on disk, rewrite them there
 * (fix_copied) and then drop the cached copies: every cached change must be
 * on disk first, and if it cannot be written the operation stops before
 * anything changes. (It went on: fix_copied then wrote the stale table
 * over the change, and the cache slot, dropped with its dirty flag still
 * set, was written at its dropped offset, 0, the next writeback: the
 * header gone, "Image is not in qcow2 format".)
 */
static int writeback_first(struct qcow2_state *s, struct vbd_error **err)
{
    int rc = qcow2_writeback(s);
    if (rc < 0)
        vbd_error_setf(err, -rc, "could not write the cached metadata tables: %s", strerror(-rc));
    return rc;
}

/* COPIED on the active L1/L2 entries exactly where the refcount is 1. */
static int fix_copied(struct qcow2_state *s)
{
    uint8_t *t = vbd_alloc_aligned(4096, s->cluster_size);
    int rc = 0;
    for (uint32_t i = 0; i < s->l1_size && rc == 0; i++) {
        uint64_t l2 = s->l1[i] & L1E_OFFSET_MASK, r = 0;
        if (!l2)
            continue;
        if ((rc = vbd_node_co_pread(s->n->file, l2, t, s->cluster_size)) < 0)
            break;
        bool dirty = false;
        for (uint32_t j = 0; j < (1u << s->l2_bits) && rc == 0; j++) {
            uint8_t *p = t + (uint64_t)j * s->l2_entry_size;
            uint64_t e = get_be64p(p), h = e & L2E_OFFSET_MASK, hr = 0;
            if (qcow2_entry_type(s, e) == QCOW2_COMPRESSED || !h)
                continue;
            rc = qcow2_get_refcount(s, h >> s->cluster_bits, &hr);
            uint64_t ne = hr == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED;
            if (ne != e) {
                put_be64p(p, ne);
                dirty = true;
            }
        }
        if (rc == 0 && dirty)
            rc = vbd_node_co_pwrite(s->n->file, l2, t, s->cluster_size, 0);
        if (rc == 0)
            rc = qcow2_get_refcount(s, l2 >> s->cluster_bits, &r);
        uint64_t ne = r == 1 ? s->l1[i] | QCOW_OFLAG_COPIED : s->l1[i] & ~QCOW_OFLAG_COPIED;
        if (rc == 0 && ne != s->l1[i]) {
            s->l1[i] = ne;
            qcow2_metadata_moved(s);
            rc = qcow2_write_l1_entry(s, i);
        }
    }
    free(t);
    /* the cached L2 tables are stale now (none holds a change: writeback_first) */
    for (int i = 0; i < s->l2_cache_slots; i++)
        if (!s->l2_cache[i].dirty)
            s->l2_cache[i].offset = 0;
    return rc;
}

/* What a snapshot's create, delete or revert frees (an old snapshot table,
 * the deleted snapshot's L1 table, tables and data, the reverted image's)
 * goes back to the file system once the refcounts of 0 are on the disk, as
 * QEMU frees it with QCOW2_DISCARD_SNAPSHOT (pass-discard-snapshot, on
 * unless set off): qemu-img snapshot -d gives the space back. Lock held. */
static void snapshot_frees_begin(struct qcow2_state *s)
{
    s->nto_punch = 0;
    s->punch_freed = s->pass_discard_snapshot;
}

static void snapshot_frees_end(struct qcow2_state *s)
{
    if (s->punch_freed)
        qcow2_punch_freed(s); /* only what is still free, refcounts synced first */
    s->punch_freed = false;
    s->nto_punch = 0;
}

static int write_table(struct qcow2_state *s, const uint8_t *tab, uint64_t len, uint32_t count)
{
    uint64_t old = s->snapshots_offset, old_len = 0;
    uint8_t *oldtab = NULL;
    if (s->nb_snapshots && read_table(s, &oldtab, &old_len, NULL) == 0)
        free(oldtab);
    /* the table ends where its last entry's name ends, as QEMU writes it:
     * the entries are 8-byte aligned, the last one not padded (the file's
     * length as qemu-img snapshot -c leaves it) */
    for (uint64_t off = 0, i = 0; i < count && off + 40 <= len; i++) {
        const uint8_t *e = tab + off;
        uint64_t end = off + 40 + get_be32p(e + 36) + ((e[12] << 8) | e[13]) + ((e[14] << 8) | e[15]);
        if (i + 1 == count && end <= len)
            len = end;
        off = (end + 7) & ~7ull;
    }
    int64_t at = 0;
    int rc = 0;
    if (len) {
        at = qcow2_alloc_clusters(s, (len + s->cluster_size - 1) >> s->cluster_bits);
        if (at < 0)
            return (int)at;
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)at, tab, len, 0);
    }
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    uint8_t h[12];
    put_be32p(h, count);
    put_be64p(h + 4, (uint64_t)at);
    if (rc == 0)
        rc = vbd_node_co_pwrite(s->n->file, 60, h, 12, 0);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0)
        return rc;
    s->nb_snapshots = count;
    s->snapshots_offset = (uint64_t)at;
    s->snapshots_size = len;
    if (qcow2_snapshot_l1_ranges(s) < 0) { /* cannot happen for a table just written; stay safe */
        free(s->snap_l1);
        s->snap_l1 = NULL;
        s->nsnap_l1 = 0;
    }
    if (old && old_len) {
        /* the old table's clusters go back to the file system with the
         * rest the snapshot operation frees (snapshot_frees_end, as QEMU's
         * qcow2_write_snapshots frees them with QCOW2_DISCARD_SNAPSHOT):
         * the header naming the new table is on disk above */
        add_refs(s, old, old_len, -1); /* a failure only leaks */
    }
    return 0;
}

static int find(struct qcow2_state *s, const uint8_t *tab, const uint64_t *offs, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const uint8_t *e = tab + offs[i];
        uint32_t extra = get_be32p(e + 36);
        uint16_t il = (uint16_t)((e[12] << 8) | e[13]), nl = (uint16_t)((e[14] << 8) | e[15]);
        const char *eid = (const char *)e + 40 + extra, *ename = eid + il;
        if (id && strlen(id) == il && !memcmp(eid, id, il))
            return (int)i;
        if (name && strlen(name) == nl && !memcmp(ename, name, nl))
            return (int)i;
    }
    return -1;
}

int qcow2_snapshot_create(struct vbd_node *n, struct vbd_snapshot_info *sn, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    if (s->read_only || s->corrupt) {
        vbd_error_setf(err, EACCES, "the image is read-only or corrupt");
        return -EACCES;
    }
    if (s->external) {
        vbd_error_setf(err, ENOTSUP, "Can't create a snapshot of an image with an external data file");
        return -ENOTSUP;
    }
    vbd_co_mutex_lock(&s->lock);
    uint8_t *tab = NULL, *ntab = NULL;
    uint64_t len = 0, *offs = calloc(s->nb_snapshots + 1, sizeof(uint64_t));
    uint64_t *l1copy = NULL;
    int rc = writeback_first(s, err);
    if (rc == 0)
        rc = read_table(s, &tab, &len, offs);
    if (rc < 0)
        goto out;
    /* names may repeat (QEMU's qcow2 allows it; qemu-img snapshot -c makes
     * them); ids are unique, the next one above the highest. QMP refuses a
     * name in use itself. */
    unsigned long maxid = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const uint8_t *e = tab + offs[i];
        uint16_t il = (uint16_t)((e[12] << 8) | e[13]);
        char idb[32] = "";
        memcpy(idb, e + 40 + get_be32p(e + 36), il < 31 ? il : 31);
        unsigned long v = strtoul(idb, NULL, 10);
        if (v > maxid)
            maxid = v;
    }
    snprintf(sn->id, sizeof(sn->id), "%lu", maxid + 1);
    snapshot_frees_begin(s);
    /* 1. a copy of the active L1 for the snapshot */
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    int64_t l1_at = 0;
    if (s->l1_size) {
        l1_at = qcow2_alloc_clusters(s, (l1_bytes + s->cluster_size - 1) >> s->cluster_bits);
        if (l1_at < 0) {
            rc = (int)l1_at;
            goto out;
        }
        l1copy = malloc(l1_bytes);
        /* the active entries as they are, COPIED flags too, as QEMU's
         * qcow2_snapshot_create copies them (the bytes qemu-img writes): a
         * snapshot's flags mean nothing, every reader masks them */
        for (uint32_t i = 0; i < s->l1_size; i++)
            l1copy[i] = be64(s->l1[i]);
        if ((rc = vbd_node_co_pwrite(n->file, (uint64_t)l1_at, l1copy, l1_bytes, 0)) < 0)
            goto out;
    }
    /* 2. one more reference on everything it reaches; the active image owns nothing alone now */
    if ((rc = l1_refs(s, s->l1, s->l1_size, 1)) < 0 || (rc = qcow2_flush_refcounts(s)) < 0 ||
        (rc = fix_copied(s)) < 0 || (rc = qcow2_flush_refcounts(s)) < 0)
        goto out;
    /* 3. the new table entry */
    size_t il = strlen(sn->id), nl = strlen(sn->name);
    uint64_t elen = (40 + 24 + il + nl + 7) & ~7ull;
    ntab = calloc(1, len + elen);
    memcpy(ntab, tab, len);
    uint8_t *e = ntab + len;
    put_be64p(e, (uint64_t)l1_at);
    put_be32p(e + 8, s->l1_size);
    e[12] = (uint8_t)(il >> 8), e[13] = (uint8_t)il;
    e[14] = (uint8_t)(nl >> 8), e[15] = (uint8_t)nl;
    put_be32p(e + 16, sn->date_sec);
    put_be32p(e + 20, sn->date_nsec);
    put_be64p(e + 24, sn->vm_clock_nsec);
    put_be32p(e + 32, 0);  /* vm state: none */
    put_be32p(e + 36, 24); /* extra data: vm_state_size_large, disk_size, icount */
    put_be64p(e + 40, 0);
    put_be64p(e + 48, n->size);
    put_be64p(e + 56, sn->icount_valid ? sn->icount : UINT64_MAX); /* none: -1, as QEMU's QMP records it */
    memcpy(e + 64, sn->id, il);
    memcpy(e + 64 + il, sn->name, nl);
    rc = write_table(s, ntab, len + elen, s->nb_snapshots + 1);
out:
    snapshot_frees_end(s);
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "%s", strerror(-rc));
    vbd_co_mutex_unlock(&s->lock);
    free(tab);
    free(ntab);
    free(offs);
    free(l1copy);
    return rc;
}

static int entry_l1(struct qcow2_state *s, const uint8_t *e, uint64_t **l1, uint32_t *size)
{
    uint64_t at = get_be64p(e);
    *size = get_be32p(e + 8);
    if ((uint64_t)*size * 8 > QCOW2_MAX_L1_BYTES || (at & (s->cluster_size - 1)))
        return -EINVAL;
    *l1 = malloc((uint64_t)*size * 8 + 8);
    if (*size && vbd_node_co_pread(s->n->file, at, *l1, (uint64_t)*size * 8) < 0) {
        free(*l1);
        return -EIO;
    }
    for (uint32_t i = 0; i < *size; i++)
        (*l1)[i] = be64((*l1)[i]);
    return 0;
}

int qcow2_snapshot_delete(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    uint8_t *tab = NULL;
    uint64_t len = 0, *offs = calloc(s->nb_snapshots + 1, sizeof(uint64_t)), *l1 = NULL;
    int rc = writeback_first(s, err);
    if (rc == 0)
        rc = read_table(s, &tab, &len, offs);
    int i = rc < 0 ? -1 : find(s, tab, offs, id, name);
    if (rc == 0 && i < 0) {
        vbd_error_setf(err, ENOENT, "snapshot '%s' not found", id ? id : name);
        rc = -ENOENT;
    }
    uint32_t l1_size = 0;
    if (rc == 0)
        rc = entry_l1(s, tab + offs[i], &l1, &l1_size);
    if (rc == 0) {
        uint64_t elen = (i + 1 < (int)s->nb_snapshots ? offs[i + 1] : len) - offs[i];
        uint64_t l1_at = get_be64p(tab + offs[i]);
        memmove(tab + offs[i], tab + offs[i] + elen, len - offs[i] - elen);
        snapshot_frees_begin(s);
        /* the table first: a crash after it only leaks the snapshot's clusters */
        rc = write_table(s, tab, len - elen, s->nb_snapshots - 1);
        if (rc == 0)
            rc = l1_refs(s, l1, l1_size, -1);
        if (rc == 0 && l1_size)
            rc = add_refs(s, l1_at, (uint64_t)l1_size * 8, -1);
        if (rc == 0)
            rc = fix_copied(s);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        snapshot_frees_end(s);
    }
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "%s", strerror(-rc));
    vbd_co_mutex_unlock(&s->lock);
    free(tab);
    free(offs);
    free(l1);
    return rc;
}

int qcow2_snapshot_goto(struct vbd_node *n, const char *id_or_name, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    uint8_t *tab = NULL;
    uint64_t len = 0, *offs = calloc(s->nb_snapshots + 1, sizeof(uint64_t)), *l1 = NULL;
    int rc = writeback_first(s, err);
    if (rc == 0)
        rc = read_table(s, &tab, &len, offs);
    int i = rc < 0 ? -1 : find(s, tab, offs, id_or_name, NULL);
    if (i < 0 && rc == 0)
        i = find(s, tab, offs, NULL, id_or_name);
    if (rc == 0 && i < 0) {
        vbd_error_setf(err, ENOENT, "snapshot '%s' not found", id_or_name);
        rc = -ENOENT;
    }
    uint32_t l1_size = 0;
    if (rc == 0)
        rc = entry_l1(s, tab + offs[i], &l1, &l1_size);
    if (rc == 0 && l1_size > s->l1_size && (rc = qcow2_grow_l1(s, l1_size)) < 0)
        vbd_error_setf(err, -rc, "could not grow the L1 table to the snapshot's %u entries: %s", l1_size, strerror(-rc));
    uint64_t disk_size = n->size;
    if (rc == 0 && get_be32p(tab + offs[i] + 36) >= 16)
        disk_size = get_be64p(tab + offs[i] + 48);
    if (rc == 0) {
        snapshot_frees_begin(s);
        /* references for the snapshot's view first, then drop the current one */
        uint64_t *cur = malloc((uint64_t)s->l1_size * 8 + 8);
        if (s->l1_size) /* an empty image has no L1 table (s->l1 NULL) */
            memcpy(cur, s->l1, (uint64_t)s->l1_size * 8);
        rc = l1_refs(s, l1, l1_size, 1);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        if (rc == 0) {
            uint64_t bytes = (uint64_t)s->l1_size * 8;
            uint64_t *disk = calloc(1, bytes + 8);
            for (uint32_t k = 0; k < s->l1_size; k++) {
                s->l1[k] = k < l1_size ? l1[k] & ~QCOW_OFLAG_COPIED : 0;
                qcow2_metadata_moved(s);
                disk[k] = be64(s->l1[k]);
            }
            rc = vbd_node_co_pwrite(n->file, s->l1_table_offset, disk, bytes, 0);
            free(disk);
        }
        if (rc == 0 && disk_size != n->size) {
            uint8_t b[8];
            put_be64p(b, disk_size);
            rc = vbd_node_co_pwrite(n->file, 24, b, 8, 0);
            if (rc == 0)
                vbd_node_set_size(n, disk_size);
        }
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        if (rc == 0)
            rc = l1_refs(s, cur, s->l1_size, -1);
        if (rc == 0)
            rc = fix_copied(s);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        snapshot_frees_end(s);
        free(cur);
        /* the whole disk may have changed: every tracked dirty bitmap says so
         * (an incremental backup taken from it must not miss the revert) */
        qcow2_bitmaps_dirty(s, 0, n->size);
    }
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "%s", strerror(-rc));
    vbd_co_mutex_unlock(&s->lock);
    free(tab);
    free(offs);
    free(l1);
    return rc;
}

/* A read-only view of a snapshot (qemu-img convert -l): its L1 table
 * replaces the active one in memory only; with both id and name given,
 * both must match, as in QEMU. L2 tables cached are keyed by their host
 * offset, so they stay valid. */
int qcow2_snapshot_load_tmp(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    if (!n->read_only) {
        vbd_error_setf(err, EINVAL, "Device is not readonly");
        return -EINVAL;
    }
    vbd_co_mutex_lock(&s->lock);
    uint8_t *tab = NULL;
    uint64_t len = 0, *offs = calloc(s->nb_snapshots + 1, sizeof(uint64_t)), *l1 = NULL;
    int rc = offs ? read_table(s, &tab, &len, offs) : -ENOMEM, found = -1;
    for (uint32_t i = 0; rc == 0 && i < s->nb_snapshots && found < 0; i++) {
        const uint8_t *e = tab + offs[i];
        uint32_t extra = get_be32p(e + 36);
        uint16_t il = (uint16_t)((e[12] << 8) | e[13]), nl = (uint16_t)((e[14] << 8) | e[15]);
        const char *eid = (const char *)e + 40 + extra, *ename = eid + il;
        bool id_ok = !id || (strlen(id) == il && !memcmp(eid, id, il));
        bool name_ok = !name || (strlen(name) == nl && !memcmp(ename, name, nl));
        if (id_ok && name_ok)
            found = (int)i;
    }
    if (rc == 0 && found < 0) {
        vbd_error_setf(err, ENOENT, "Can't find snapshot");
        rc = -ENOENT;
    }
    uint32_t l1_size = 0;
    if (rc == 0 && (rc = entry_l1(s, tab + offs[found], &l1, &l1_size)) < 0)
        vbd_error_setf(err, -rc, "Failed to load snapshot's L1 table: %s", strerror(-rc));
    if (rc == 0) {
        /* the node keeps its size, as in QEMU: a snapshot taken at another size is cut or padded with zeroes */
        for (uint32_t k = 0; k < l1_size; k++)
            l1[k] &= ~QCOW_OFLAG_COPIED; /* shared with the snapshot: never written in place */
        free(s->l1);
        s->l1 = l1;
        l1 = NULL;
        s->l1_size = l1_size;
        qcow2_metadata_moved(s);
    }
    vbd_co_mutex_unlock(&s->lock);
    free(tab);
    free(offs);
    free(l1);
    return rc;
}
