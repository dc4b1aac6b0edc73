/* SPDX-License-Identifier: MIT */
/*
 * qcow2 check: rebuild every host cluster's reference count from the
 * metadata (header, L1, L2, refcount structures, data) and compare it with
 * the stored refcounts. Stored too high: a leak (harmless, -r leaks fixes
 * it). Stored too low: corruption (the cluster could be reused while in use;
 * -r all fixes it). Messages as qemu-img check prints them.
 */
#include "qcow2.h"

#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctx {
    struct qcow2_state *s;
    uint64_t *ref;
    uint64_t nclusters; /* clusters of the file, the last one partial */
    uint64_t nref;      /* clusters counted: a reference may end in the cluster after the file's last */
    struct vbd_check_result *res;
    unsigned fix;       /* VBD_CHECK_FIX_*: what the walk may repair as it goes */
};

/* check's findings go to stderr, as qemu-img prints them; the repair done
 * at open of a dirty lazy-refcounts image is silent */
#define report(c, ...) ((c)->s->quiet_check ? (void)0 : (void)fprintf(stderr, __VA_ARGS__))

/* A reference to [off, off+len). Like qemu-img, a region ending less than a
 * cluster past the end of the file counts (the file may end inside its last
 * cluster, and a compressed cluster may end past it); one reaching further
 * is a corruption (a truncated image). */
static void add(struct ctx *c, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = c->s;
    if (!len)
        return;
    /* how far a counted region may reach (written so that no sum can wrap) */
    uint64_t limit = vbd_node_size(s->n->file) + s->cluster_size - 1;
    if (off >= limit || len > limit - off) {
        report(c, "ERROR: counting reference for region exceeding the end of the file by one cluster or more: "
                  "offset 0x%llx size 0x%llx\n", (unsigned long long)off, (unsigned long long)len);
        c->res->corruptions++;
        return;
    }
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    uint64_t max = s->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << s->refcount_order)) - 1;
    for (uint64_t k = first; k <= last; k++) {
        if (c->ref[k] == max) {
            /* more references than the width can count (QEMU's
             * inc_refcounts, its words): a corruption no repair here can
             * undo; the count stays at the width's maximum */
            report(c, "ERROR: overflow cluster offset=0x%llx\n"
                      "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean "
                      "copy if the image cannot be opened for writing\n",
                   (unsigned long long)(k << s->cluster_bits));
            c->res->corruptions++;
            continue;
        }
        c->ref[k]++;
    }
    if (last + 1 > c->nref)
        c->nref = last + 1;
}

/* Bits the spec reserves in an L1 entry and in a standard (uncompressed) L2
 * entry; qemu-img check counts an entry using them as a corruption. */
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define L2_BITMAP_ALLOC_MASK 0xffffffffull

/* Entry i of the L2 table at l2_off (read into table) becomes e: in the
 * table read, on the disk (8 bytes, flushed, as qemu-img writes it) and
 * in a cached copy of the table. -EEXIST: the table lies on other
 * metadata (qemu-img's overlap check fails: nothing written). */
static int repair_l2_entry(struct ctx *c, uint64_t l2_off, uint8_t *table, uint32_t i, uint64_t e)
{
    struct qcow2_state *s = c->s;
    uint64_t at = (uint64_t)i * s->l2_entry_size;
    put_be64p(table + at, e);
    if (qcow2_table_on_other_metadata(s, l2_off)) {
        report(c, "ERROR: Overlap check failed\n");
        c->res->check_errors++;
        return -EEXIST;
    }
    int rc = vbd_node_co_pwrite(s->n->file, l2_off + at, table + at, 8, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    if (rc < 0) {
        report(c, "ERROR: Failed to overwrite L2 table entry: %s\n", strerror(-rc));
        c->res->check_errors++;
        return rc;
    }
    for (int k = 0; k < s->l2_cache_slots; k++) /* a cached copy (clean: written back before the check) */
        if (s->l2_cache[k].offset == l2_off && s->l2_cache[k].table)
            memcpy((uint8_t *)s->l2_cache[k].table + at, table + at, 8);
    return 0;
}

/*
 * One L2 table: its references, and for the active table the counters of
 * qemu-img check. "Fragmented" counts as qemu does: an allocated cluster
 * not right after the previous allocated cluster of the same L2 table (each
 * table starts afresh), and every compressed cluster (it shares sectors
 * with its neighbours, so reading it never continues a sequential read).
 */
static int walk_l2(struct ctx *c, uint64_t l2_off, uint8_t *table, bool active)
{
    struct qcow2_state *s = c->s;
    if (vbd_node_co_pread(s->n->file, l2_off, table, s->cluster_size) < 0) {
        report(c, "ERROR could not read L2 table at 0x%llx\n", (unsigned long long)l2_off);
        c->res->check_errors++;
        return 0;
    }
    uint64_t next_contiguous = 0;
    uint32_t entries = 1u << s->l2_bits;
    for (uint32_t i = 0; i < entries; i++) {
        /* entries past the disk size count too: a snapshot's VM state lives there */
        uint64_t e = get_be64p(table + (uint64_t)i * s->l2_entry_size);
        uint64_t bitmap = s->extended_l2 ? get_be64p(table + (uint64_t)i * s->l2_entry_size + 8) : 0;
        enum qcow2_cluster_type t = qcow2_entry_type(s, e);
        if (t != QCOW2_COMPRESSED && (e & L2E_STD_RESERVED_MASK)) {
            report(c, "ERROR found l2 entry with reserved bits set: %llx\n", (unsigned long long)e);
            c->res->corruptions++;
        }
        if (t == QCOW2_COMPRESSED) {
            if (e & QCOW_OFLAG_COPIED) {
                report(c, "ERROR: coffset=0x%llx: copied flag must never be set for compressed clusters\n",
                       (unsigned long long)(e & s->coffset_mask));
                c->res->corruptions++;
            }
            if (s->external) {
                report(c, "ERROR compressed cluster %u with data file, entry=0x%llx\n", i, (unsigned long long)e);
                c->res->corruptions++;
                continue;
            }
            if (bitmap) {
                report(c, "ERROR compressed cluster %u with non-zero subcluster allocation bitmap, entry=0x%llx\n",
                       i, (unsigned long long)e);
                c->res->corruptions++;
                continue;
            }
            uint64_t coff = e & s->coffset_mask;
            uint64_t nsect = ((e >> s->csize_shift) & s->csize_mask) + 1;
            add(c, coff & ~511ull, nsect * 512);
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        if (t != QCOW2_NORMAL && t != QCOW2_ZERO_ALLOC) {
            if (t == QCOW2_UNALLOCATED && (bitmap & L2_BITMAP_ALLOC_MASK)) {
                report(c, "ERROR: Unallocated cluster has non-zero subcluster allocation map\n");
                c->res->corruptions++;
            }
            continue;
        }
        uint64_t host = e & L2E_OFFSET_MASK;
        if ((bitmap >> 32) & bitmap) {
            report(c, "ERROR offset=%llx: Allocated cluster has corrupted subcluster allocation bitmap\n",
                   (unsigned long long)host);
            c->res->corruptions++;
        }
        if (host & (s->cluster_size - 1)) {
            /* As qemu-img 7.2: an unaligned entry that holds no data (a
             * preallocated zero cluster) becomes a plain zero cluster with
             * -r all; one that holds data is reported and left (which
             * cluster the data is in cannot be known), and its clusters
             * counted as qemu-img counts them, so that a repair of the
             * refcounts frees nothing it may still name. */
            c->res->corruptions++;
            bool holds_data = s->extended_l2 ? (bitmap & L2_BITMAP_ALLOC_MASK) != 0 : !(e & QCOW_OFLAG_ZERO);
            if (holds_data) {
                report(c, "ERROR offset=%llx: Data cluster is not properly aligned; L2 entry corrupted.\n",
                       (unsigned long long)host);
            } else {
                bool repair = c->fix & VBD_CHECK_FIX_ERRORS;
                report(c, "%s offset=%llx: Preallocated cluster is not properly aligned; L2 entry corrupted.\n",
                       repair ? "Repairing" : "ERROR", (unsigned long long)host);
                if (repair) {
                    int rc = repair_l2_entry(c, l2_off, table, i, s->extended_l2 ? 0 : QCOW_OFLAG_ZERO);
                    if (rc == -EEXIST)
                        return 0; /* as qemu-img: nothing more of this table (its other findings not counted) */
                    if (rc == 0) {
                        c->res->corruptions--;
                        c->res->corruptions_fixed++;
                        continue; /* the cluster is not in use any more */
                    }
                }
            }
        }
        if (active) {
            c->res->allocated_clusters++;
            if (next_contiguous && host != next_contiguous)
                c->res->fragmented_clusters++;
            next_contiguous = host + s->cluster_size;
        }
        if (!s->external) /* clusters in a data file are not refcounted */
            add(c, host, s->cluster_size);
    }
    return 0;
}

/* An L1 table (active or a snapshot's): its L2 tables and what they reach. */
static void walk_l1(struct ctx *c, const uint64_t *l1_host_order, uint32_t l1_size, uint8_t *table, bool active)
{
    struct qcow2_state *s = c->s;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = l1_host_order[i];
        if (e & L1E_RESERVED_MASK) {
            report(c, "ERROR found L1 entry with reserved bits set: %llx\n", (unsigned long long)e);
            c->res->corruptions++;
        }
        uint64_t l2 = e & L1E_OFFSET_MASK;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1)) {
            report(c, "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry corrupted\n",
                   (unsigned long long)l2);
            c->res->corruptions++;
            continue;
        }
        add(c, l2, s->cluster_size);
        if ((l2 >> s->cluster_bits) < c->nclusters)
            walk_l2(c, l2, table, active);
    }
}

/* Persistent dirty bitmaps (kept, not used): their directory, tables and
 * data clusters are references like any other. */
static void add_bitmaps(struct ctx *c)
{
    struct qcow2_state *s = c->s;
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return;
    for (int i = 0; i < s->nexts; i++) {
        struct qcow2_ext *x = &s->exts[i];
        if (x->type != QCOW2_EXT_BITMAPS || x->len < 24)
            continue;
        uint32_t nb = get_be32p(x->data);
        uint64_t dir_size = get_be64p(x->data + 8), dir_off = get_be64p(x->data + 16);
        if (!nb || !dir_size || dir_size > (64u << 20) || (dir_off & (s->cluster_size - 1))) {
            report(c, "ERROR the bitmap directory (%llu bytes at 0x%llx) is invalid\n", (unsigned long long)dir_size,
                   (unsigned long long)dir_off);
            c->res->corruptions++;
            return;
        }
        add(c, dir_off, dir_size);
        uint8_t *dir = malloc(dir_size);
        if (!dir || vbd_node_co_pread(s->n->file, dir_off, dir, dir_size) < 0) {
            free(dir);
            c->res->check_errors++;
            return;
        }
        uint64_t p = 0;
        for (uint32_t k = 0; k < nb && p + 24 <= dir_size; k++) {
            uint64_t toff = get_be64p(dir + p);
            uint32_t tsize = get_be32p(dir + p + 8);
            uint32_t name = ((uint32_t)dir[p + 18] << 8) | dir[p + 19], extra = get_be32p(dir + p + 20);
            p += (24ull + extra + name + 7) & ~7ull;
            if (!toff || (toff & (s->cluster_size - 1)) || (uint64_t)tsize * 8 > (64u << 20)) {
                c->res->corruptions++;
                continue;
            }
            add(c, toff, (uint64_t)tsize * 8);
            uint64_t *t = malloc((uint64_t)tsize * 8 + 8);
            if (tsize && vbd_node_co_pread(s->n->file, toff, t, (uint64_t)tsize * 8) == 0)
                for (uint32_t j = 0; j < tsize; j++) {
                    uint64_t o = be64(t[j]) & 0x00fffffffffffe00ull;
                    if (o)
                        add(c, o, s->cluster_size);
                }
            free(t);
        }
        free(dir);
    }
}

/* Compare each cluster's stored count with the one counted: a mismatch is
 * reported and counted as a leak (stored higher) or a corruption (stored
 * lower), or repaired when FIX allows it. *unreferenced_in_use is set for
 * a cluster in use whose stored count is 0. Returns the image's end as
 * found (the last cluster counted or stored as used), as qemu-img reports
 * it even when a repair lowers it. */
static uint64_t compare_refcounts(struct ctx *c, unsigned fix, bool *unreferenced_in_use)
{
    struct qcow2_state *s = c->s;
    struct vbd_check_result *res = c->res;
    uint64_t end = 0;
    for (uint64_t k = 0; k < c->nref; k++) {
        uint64_t stored;
        if (qcow2_get_refcount(s, k, &stored) < 0) {
            res->check_errors++;
            continue;
        }
        if (stored || c->ref[k])
            end = (k + 1) << s->cluster_bits;
        if (stored == c->ref[k])
            continue;
        bool leak = stored > c->ref[k];
        if (!stored)
            *unreferenced_in_use = true;
        bool repair = leak ? (fix & VBD_CHECK_FIX_LEAKS) : (fix & VBD_CHECK_FIX_ERRORS);
        report(c, "%s cluster %llu refcount=%llu reference=%llu\n", repair ? "Repairing" : leak ? "Leaked" : "ERROR",
               (unsigned long long)k, (unsigned long long)stored, (unsigned long long)c->ref[k]);
        if (repair && qcow2_update_refcount(s, k << s->cluster_bits, (int64_t)(c->ref[k] - stored)) == 0) {
            if (leak)
                res->leaks_fixed++;
            else
                res->corruptions_fixed++;
        } else if (leak) {
            res->leaks++;
        } else {
            res->corruptions++;
        }
    }
    return end;
}

/* The counts without the references of the refcount structure itself (its
 * table and blocks, as qcow2_co_check added them): what a rebuilt
 * structure holds. The old structure's clusters that nothing else uses
 * become free. */
static void uncount(struct ctx *c, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = c->s;
    uint64_t limit = vbd_node_size(s->n->file) + s->cluster_size - 1;
    if (!len || off >= limit || len > limit - off)
        return; /* add() did not count it */
    for (uint64_t k = off >> s->cluster_bits; k <= (off + len - 1) >> s->cluster_bits; k++)
        c->ref[k]--;
}

static void uncount_refcount_structure(struct ctx *c)
{
    struct qcow2_state *s = c->s;
    uncount(c, s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size);
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i] && (s->reftable[i] >> s->cluster_bits) < c->nclusters)
            uncount(c, s->reftable[i], s->cluster_size);
}

static int check_locked(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err);

int qcow2_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    int rc = check_locked(n, res, fix, err);
    /* check -r opened the image read-write without taking its bitmaps (a
     * damaged directory must not stop the check): once the repair leaves
     * nothing wrong they are taken in use as any read-write open takes
     * them, and the close stores them anew, as qemu-img check -r's close
     * (QEMU loads them at its open). Left alone on an image still damaged:
     * an allocation there could land on clusters in use. */
    if (rc == 0 && fix && s->check_open && !s->read_only && !s->corrupt && !res->corruptions && !res->check_errors) {
        s->check_open = false;
        if (qcow2_bitmaps_open(s, NULL) == 0)
            s->bitmaps_store_anew = true;
        else
            qcow2_bitmaps_free(s); /* kept as they are on disk */
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static int check_locked(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    /* The check reads the tables from disk: the cached changes must be
     * there first. If they cannot be written the check would count (and
     * -r repair) stale tables: it stops instead. */
    if (!s->read_only) {
        int rc = qcow2_writeback(s);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "could not write the cached metadata tables: %s", strerror(-rc));
            return rc;
        }
    }
    struct ctx c = {.s = s, .res = res, .fix = s->read_only ? 0 : fix};
    bool repair_all = fix & VBD_CHECK_FIX_ERRORS, rebuild = false;
    c.nclusters = (vbd_node_size(n->file) + s->cluster_size - 1) >> s->cluster_bits;
    c.nref = c.nclusters;
    c.ref = calloc(c.nclusters + 1, sizeof(uint64_t));
    uint8_t *table = vbd_alloc_aligned(4096, s->cluster_size);
    res->total_clusters = (n->size + s->cluster_size - 1) >> s->cluster_bits;
    add(&c, 0, s->cluster_size);
    add(&c, s->l1_table_offset, (uint64_t)s->l1_size * 8);
    add(&c, s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size);
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        if (s->reftable_bad && s->reftable_bad[i]) { /* kept aside by the check open: no block */
            if (s->reftable_bad[i] & ~REFT_OFFSET_MASK)
                report(&c, "ERROR refcount table entry %llu has reserved bits set\n", (unsigned long long)i);
            else
                report(&c, "ERROR refcount block %llu is not cluster aligned; refcount table entry corrupted\n",
                       (unsigned long long)i);
            res->corruptions++;
            rebuild = true;
            continue;
        }
        if (!s->reftable[i])
            continue;
        if ((s->reftable[i] >> s->cluster_bits) >= c.nclusters) {
            /* -r all: the rebuilt structure leaves it out (qemu-img first
             * grows the file over it, which a block far out makes huge) */
            report(&c, "%s refcount block %llu is outside image\n", repair_all ? "Repairing" : "ERROR",
                   (unsigned long long)i);
            res->corruptions++;
            rebuild |= repair_all;
            continue;
        }
        add(&c, s->reftable[i], s->cluster_size);
    }
    add_bitmaps(&c);
    /* every snapshot: its table entry, its L1 table and what that reaches */
    if (s->nb_snapshots) {
        uint8_t *tab = NULL;
        uint64_t tlen = 0, *offs = NULL;
        if (qcow2_snapshot_table(s, &tab, &tlen, &offs) < 0) {
            report(&c, "ERROR the snapshot table cannot be read\n");
            res->corruptions++;
        } else {
            add(&c, s->snapshots_offset, tlen);
            for (uint32_t k = 0; k < s->nb_snapshots; k++) {
                const uint8_t *h = tab + offs[k]; /* the entry without its padding to 8 bytes */
                uint64_t entry_end = offs[k] + 40 + get_be32p(h + 36) + (((unsigned)h[12] << 8) | h[13]) + (((unsigned)h[14] << 8) | h[15]);
                if (s->snapshots_offset + entry_end > vbd_node_size(n->file)) {
                    /* a truncated table: this entry and the ones after it are lost */
                    report(&c, "ERROR snapshot table entry %u is incomplete\n", k);
                    res->corruptions++;
                    break;
                }
                uint64_t l1o = get_be64p(tab + offs[k]);
                uint32_t l1n = get_be32p(tab + offs[k] + 8);
                if ((uint64_t)l1n * 8 > QCOW2_MAX_L1_BYTES || (l1o & (s->cluster_size - 1))) {
                    report(&c, "ERROR snapshot %u has an invalid L1 table\n", k);
                    res->corruptions++;
                    continue;
                }
                add(&c, l1o, (uint64_t)l1n * 8);
                uint64_t *sl1 = malloc((uint64_t)l1n * 8 + 8);
                if (l1n && vbd_node_co_pread(n->file, l1o, sl1, (uint64_t)l1n * 8) < 0) {
                    res->check_errors++;
                    free(sl1);
                    continue;
                }
                for (uint32_t i = 0; i < l1n; i++)
                    sl1[i] = be64(sl1[i]);
                walk_l1(&c, sl1, l1n, table, false);
                free(sl1);
            }
            free(tab);
            free(offs);
        }
    }
    walk_l1(&c, s->l1, s->l1_size, table, true);
    /* a refcount block must be referenced once: one that is also another
     * table (the reftable itself, an L1/L2 table, another block) would be
     * written over by the next refcount update it covers. qemu-img check
     * rebuilds the refcount structure then, and so does -r all here
     * (below); -r leaks repairs nothing. */
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t k = s->reftable[i] >> s->cluster_bits;
        if (s->reftable[i] && k < c.nclusters && c.ref[k] != 1) {
            report(&c, "ERROR refcount block %llu refcount=%llu\n", (unsigned long long)i, (unsigned long long)c.ref[k]);
            res->corruptions++;
            rebuild = true;
        }
    }
    /* As qemu-img: a first pass reports every mismatch as found (Leaked,
     * ERROR); a repair is a second pass over the same counts, with the
     * counters as they were before the first, that repairs what the mode
     * allows ("Repairing") and reports the rest again. */
    struct vbd_check_result before = *res;
    bool unreferenced_in_use = false;
    uint64_t end = compare_refcounts(&c, 0, &unreferenced_in_use);
    if (fix && (unreferenced_in_use || rebuild) && !(fix & VBD_CHECK_FIX_ERRORS)) {
        /* A cluster in use with a stored count of 0 could be handed out
         * again, a refcount block that is also other metadata would have
         * a repair write over that: qemu-img rebuilds the refcount
         * structure for either, which -r leaks may not do, and then
         * repairs nothing (exit 1). */
        report(&c, "ERROR need to rebuild refcount structures\n");
        res->check_errors++;
        free(table);
        free(c.ref);
        return -EIO;
    }
    if (fix && rebuild) {
        /* As qemu-img check -r all: a repair in place would write refcounts
         * over the other metadata (the L1 table, an L2 table: the guest's
         * data lost), so a new structure is built from the counts, the old
         * one's clusters left free; then everything is counted (and
         * repaired) again over it: what that leaves is what the rebuild did
         * not fix. */
        report(&c, "Rebuilding refcount structure\n");
        uncount_refcount_structure(&c);
        int rc = qcow2_rebuild_refcounts(s, c.ref, c.nref);
        free(table);
        free(c.ref);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "qcow2 image '%s': could not rebuild the refcount structure: %s", n->filename,
                           strerror(-rc));
            res->check_errors++;
            return rc;
        }
        /* (the new blocks are referenced once: no rebuild again) */
        struct vbd_check_result first = *res;
        *res = (struct vbd_check_result){0};
        rc = check_locked(n, res, fix, err);
        int64_t gone = first.corruptions - res->corruptions, leaks_gone = first.leaks - res->leaks;
        res->corruptions_fixed = first.corruptions_fixed + (gone > res->corruptions_fixed ? gone : res->corruptions_fixed);
        res->leaks_fixed = first.leaks_fixed + (leaks_gone > res->leaks_fixed ? leaks_gone : res->leaks_fixed);
        return rc;
    }
    if (fix && (res->leaks > before.leaks || res->corruptions > before.corruptions)) {
        *res = before;
        compare_refcounts(&c, fix, &unreferenced_in_use);
    }
    /* refcounts past the end of the file are not looked at, as qemu-img does */
    /* the refcounts repaired above are on the disk before flags that say what they are */
    if ((res->leaks_fixed || res->corruptions_fixed) && qcow2_flush_refcounts(s) < 0)
        res->check_errors++;
    /* the COPIED flag must say "refcount is 1" exactly when it is: -r all
     * sets or clears it, -r leaks too once the refcounts are right (no
     * error left), as qemu-img does */
    bool repair = (fix & VBD_CHECK_FIX_ERRORS) ||
                  ((fix & VBD_CHECK_FIX_LEAKS) && !res->check_errors && !res->corruptions && !res->leaks);
    bool flagged = false;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & L1E_OFFSET_MASK, rc = 0;
        /* tables past the end of a truncated file read as zeroes, refcounts there as 0, as in qemu-img */
        if (!l2 || (l2 & (s->cluster_size - 1)))
            continue;
        qcow2_get_refcount(s, l2 >> s->cluster_bits, &rc);
        if ((rc == 1) != !!(s->l1[i] & QCOW_OFLAG_COPIED)) {
            report(&c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu\n",
                   repair ? "Repairing" : "ERROR", i, (unsigned long long)s->l1[i], (unsigned long long)rc);
            uint64_t was = s->l1[i];
            s->l1[i] = rc == 1 ? was | QCOW_OFLAG_COPIED : was & ~QCOW_OFLAG_COPIED;
            if (repair && qcow2_write_l1_entry(s, i) == 0) {
                res->corruptions_fixed++;
                flagged = true;
            } else {
                s->l1[i] = was;
                res->check_errors += repair;
                res->corruptions++;
            }
        }
        if (vbd_node_co_pread(n->file, l2, table, s->cluster_size) < 0)
            continue;
        uint64_t fixed = 0;
        for (uint32_t j = 0; j < (1u << s->l2_bits); j++) {
            uint8_t *p = table + (uint64_t)j * s->l2_entry_size;
            uint64_t e = get_be64p(p), h = e & L2E_OFFSET_MASK, hr = 0;
            enum qcow2_cluster_type t = qcow2_entry_type(s, e);
            /* an unaligned entry too, by the cluster its offset is in, as qemu-img */
            if (t != QCOW2_NORMAL && t != QCOW2_ZERO_ALLOC)
                continue;
            if (s->external) /* a data file's clusters are not refcounted: each is used once */
                hr = 1;
            else
                qcow2_get_refcount(s, h >> s->cluster_bits, &hr);
            if ((hr == 1) != !!(e & QCOW_OFLAG_COPIED)) {
                report(&c, "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu\n", repair ? "Repairing" : "ERROR",
                       (unsigned long long)e, (unsigned long long)hr);
                if (repair) {
                    put_be64p(p, hr == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED);
                    fixed++;
                } else {
                    res->corruptions++;
                }
            }
        }
        if (!fixed)
            continue;
        /* the table as repaired, where no other metadata lies (as qemu-img's overlap check) */
        if (qcow2_table_on_other_metadata(s, l2) || vbd_node_co_pwrite(n->file, l2, table, s->cluster_size, 0) < 0) {
            report(&c, "ERROR: Could not write L2 table at 0x%llx\n", (unsigned long long)l2);
            res->check_errors++;
            res->corruptions += fixed;
            continue;
        }
        res->corruptions_fixed += fixed;
        flagged = true;
        for (int k = 0; k < s->l2_cache_slots; k++) /* a cached copy (clean: written back above) reads as the disk */
            if (s->l2_cache[k].offset == l2 && s->l2_cache[k].table)
                memcpy(s->l2_cache[k].table, table, s->cluster_size);
    }
    res->image_end_offset = (int64_t)end;
    if (flagged && vbd_node_co_flush(n->file) < 0)
        res->check_errors++;
    /* a repair that leaves nothing wrong clears the corrupt bit (QEMU's
     * mark_consistent): the image can be opened for writing again */
    if (c.fix && s->corrupt && !res->corruptions && !res->check_errors) {
        if (qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_CORRUPT) == 0)
            s->corrupt = false;
        else
            res->check_errors++;
    }
    free(table);
    free(c.ref);
    return 0;
}
