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
    uint64_t nclusters;
    struct vbd_check_result *res;
    uint64_t end; /* highest referenced byte */
};

/* check's findings go to stderr, as qemu-img prints them; the repair done
 * at open of a dirty lazy-refcounts image is silent */
#define report(c, ...) ((c)->s->quiet_check ? (void)0 : (void)fprintf(stderr, __VA_ARGS__))

static void add(struct ctx *c, uint64_t off, uint64_t len, const char *what)
{
    struct qcow2_state *s = c->s;
    if (!len)
        return;
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if (k >= c->nclusters) {
            report(c, "ERROR %s at offset 0x%llx is beyond the end of the image file\n", what,
                    (unsigned long long)(k << s->cluster_bits));
            c->res->corruptions++;
            continue;
        }
        c->ref[k]++;
    }
    if (off + len > c->end)
        c->end = off + len;
}

static int walk_l2(struct ctx *c, uint64_t l2_off, uint8_t *table, uint64_t *prev_host,
                   bool active)
{
    struct qcow2_state *s = c->s;
    if (vbd_node_co_pread(s->n->file, l2_off, table, s->cluster_size) < 0) {
        report(c, "ERROR could not read L2 table at 0x%llx\n", (unsigned long long)l2_off);
        c->res->check_errors++;
        return 0;
    }
    uint32_t entries = 1u << s->l2_bits;
    for (uint32_t i = 0; i < entries; i++) {
        /* entries past the disk size count too: a snapshot's VM state lives there */
        uint64_t e = get_be64p(table + (uint64_t)i * s->l2_entry_size);
        enum qcow2_cluster_type t = qcow2_entry_type(s, e);
        if (t == QCOW2_COMPRESSED) {
            uint64_t coff = e & s->coffset_mask;
            uint64_t nsect = ((e >> s->csize_shift) & s->csize_mask) + 1;
            add(c, coff & ~511ull, nsect * 512, "compressed cluster");
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
            }
            continue;
        }
        uint64_t host = e & L2E_OFFSET_MASK;
        if (!host)
            continue;
        if (host & (s->cluster_size - 1)) {
            report(c, "ERROR offset=%llx: Cluster is not properly aligned; L2 entry corrupted.\n",
                    (unsigned long long)host);
            c->res->corruptions++;
            continue;
        }
        if (!s->external) /* clusters in a data file are not refcounted */
            add(c, host, s->cluster_size, "data cluster");
        if (!active)
            continue;
        c->res->allocated_clusters++;
        if (*prev_host && host != *prev_host + s->cluster_size)
            c->res->fragmented_clusters++;
        *prev_host = host;
    }
    return 0;
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
        add(c, dir_off, dir_size, "bitmap directory");
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
            add(c, toff, (uint64_t)tsize * 8, "bitmap table");
            uint64_t *t = malloc((uint64_t)tsize * 8 + 8);
            if (tsize && vbd_node_co_pread(s->n->file, toff, t, (uint64_t)tsize * 8) == 0)
                for (uint32_t j = 0; j < tsize; j++) {
                    uint64_t o = be64(t[j]) & 0x00fffffffffffe00ull;
                    if (o)
                        add(c, o, s->cluster_size, "bitmap data");
                }
            free(t);
        }
        free(dir);
    }
}

int qcow2_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    if (!s->read_only)
        qcow2_writeback(s);
    struct ctx c = {.s = s, .res = res};
    c.nclusters = (n->file->size + s->cluster_size - 1) >> s->cluster_bits;
    c.ref = calloc(c.nclusters ? c.nclusters : 1, sizeof(uint64_t));
    uint8_t *table = vbd_alloc_aligned(4096, s->cluster_size);
    res->total_clusters = (n->size + s->cluster_size - 1) >> s->cluster_bits;
    add(&c, 0, s->cluster_size, "header");
    add(&c, s->l1_table_offset, (uint64_t)s->l1_size * 8, "L1 table");
    add(&c, s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size, "refcount table");
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i])
            add(&c, s->reftable[i], s->cluster_size, "refcount block");
    add_bitmaps(&c);
    /* every snapshot: its table entry, its L1 table and what that reaches */
    if (s->nb_snapshots) {
        uint8_t *tab = NULL;
        uint64_t tlen = 0, *offs = NULL;
        if (qcow2_snapshot_table(s, &tab, &tlen, &offs) < 0) {
            report(&c, "ERROR the snapshot table cannot be read\n");
            res->corruptions++;
        } else {
            add(&c, s->snapshots_offset, tlen, "snapshot table");
            for (uint32_t k = 0; k < s->nb_snapshots; k++) {
                uint64_t l1o = get_be64p(tab + offs[k]);
                uint32_t l1n = get_be32p(tab + offs[k] + 8);
                if ((uint64_t)l1n * 8 > QCOW2_MAX_L1_BYTES || (l1o & (s->cluster_size - 1))) {
                    report(&c, "ERROR snapshot %u has an invalid L1 table\n", k);
                    res->corruptions++;
                    continue;
                }
                add(&c, l1o, (uint64_t)l1n * 8, "snapshot L1 table");
                uint64_t *sl1 = malloc((uint64_t)l1n * 8 + 8), dummy = 0;
                if (l1n && vbd_node_co_pread(n->file, l1o, sl1, (uint64_t)l1n * 8) < 0) {
                    res->check_errors++;
                    free(sl1);
                    continue;
                }
                for (uint32_t i = 0; i < l1n; i++) {
                    uint64_t l2 = be64(sl1[i]) & L1E_OFFSET_MASK;
                    if (!l2 || (l2 & (s->cluster_size - 1)))
                        continue;
                    add(&c, l2, s->cluster_size, "L2 table");
                    if ((l2 >> s->cluster_bits) < c.nclusters)
                        walk_l2(&c, l2, table, &dummy, false);
                }
                free(sl1);
            }
            free(tab);
            free(offs);
        }
    }
    uint64_t prev_host = 0;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & L1E_OFFSET_MASK;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1)) {
            report(&c, "ERROR L2 table offset 0x%llx (L1 index %u) is not cluster aligned\n",
                    (unsigned long long)l2, i);
            res->corruptions++;
            continue;
        }
        add(&c, l2, s->cluster_size, "L2 table");
        if ((l2 >> s->cluster_bits) < c.nclusters)
            walk_l2(&c, l2, table, &prev_host, true);
    }
    /* the end as found, before any repair (qemu-img reports it so) */
    for (uint64_t k = c.nclusters; k-- > 0;) {
        uint64_t stored;
        if (qcow2_get_refcount(s, k, &stored) == 0 && (stored || c.ref[k])) {
            if (((k + 1) << s->cluster_bits) > c.end)
                c.end = (k + 1) << s->cluster_bits;
            break;
        }
    }
    for (uint64_t k = 0; k < c.nclusters; k++) {
        uint64_t stored;
        if (qcow2_get_refcount(s, k, &stored) < 0) {
            res->check_errors++;
            continue;
        }
        if (stored == c.ref[k])
            continue;
        bool leak = stored > c.ref[k];
        bool repair = leak ? (fix & VBD_CHECK_FIX_LEAKS) : (fix & VBD_CHECK_FIX_ERRORS);
        report(&c, "%s cluster %llu refcount=%llu reference=%llu\n",
                repair ? "Repairing" : leak ? "Leaked" : "ERROR", (unsigned long long)k,
                (unsigned long long)stored, (unsigned long long)c.ref[k]);
        if (repair && qcow2_update_refcount(s, k << s->cluster_bits, (int64_t)(c.ref[k] - stored)) == 0) {
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
    /* refcounts past the end of the file are not looked at, as qemu-img does */
    /* the COPIED flag must say "refcount is 1" exactly when it is */
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & L1E_OFFSET_MASK, rc = 0;
        if (!l2 || (l2 & (s->cluster_size - 1)) || (l2 >> s->cluster_bits) >= c.nclusters)
            continue;
        qcow2_get_refcount(s, l2 >> s->cluster_bits, &rc);
        if ((rc == 1) != !!(s->l1[i] & QCOW_OFLAG_COPIED)) {
            report(&c, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu\n", i,
                    (unsigned long long)s->l1[i], (unsigned long long)rc);
            res->corruptions++;
        }
        if (vbd_node_co_pread(n->file, l2, table, s->cluster_size) < 0)
            continue;
        for (uint32_t j = 0; j < (1u << s->l2_bits); j++) {
            uint64_t e = get_be64p(table + (uint64_t)j * s->l2_entry_size), h = e & L2E_OFFSET_MASK, hr = 0;
            if (qcow2_entry_type(s, e) == QCOW2_COMPRESSED || !h || (h & (s->cluster_size - 1)) ||
                (h >> s->cluster_bits) >= c.nclusters)
                continue;
            qcow2_get_refcount(s, h >> s->cluster_bits, &hr);
            if ((hr == 1) != !!(e & QCOW_OFLAG_COPIED)) {
                report(&c, "ERROR OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu\n",
                        (unsigned long long)e, (unsigned long long)hr);
                res->corruptions++;
            }
        }
    }
    res->image_end_offset = (int64_t)c.end;
    if ((res->leaks_fixed || res->corruptions_fixed) && qcow2_flush_refcounts(s) < 0)
        res->check_errors++;
    free(table);
    free(c.ref);
    vbd_co_mutex_unlock(&s->lock);
    return 0;
}
