/* SPDX-License-Identifier: MIT */
/* qcow2 cluster mapping: L1 -> L2 (cached, LRU) -> host cluster, and
 * compressed clusters. The caller holds s->lock. */
#include "qcow2.h"

#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

void qcow2_defer_free(struct qcow2_state *s, uint64_t host_off)
{
    if (s->nfrees == s->frees_cap) {
        size_t cap = s->frees_cap ? 2 * s->frees_cap : 64;
        uint64_t *f = realloc(s->frees, cap * sizeof(*f));
        if (!f)
            return; /* leaks the cluster: harmless */
        s->frees = f;
        s->frees_cap = cap;
    }
    s->frees[s->nfrees++] = host_off | (s->frees_requested ? 1 : 0); /* offsets are cluster-aligned */
}

int qcow2_writeback(struct qcow2_state *s)
{
    bool dirty = false;
    for (int i = 0; i < s->l2_cache_slots; i++)
        dirty |= s->l2_cache[i].dirty;
    if (!dirty && !s->nfrees)
        return 0;
    /* data before the tables that point to it: a data file is flushed apart */
    int rc = s->external && dirty ? vbd_node_co_flush(s->data) : 0;
    if (rc < 0)
        return rc;
    if (qcow2_lazy(s)) {
        /* lazy refcounts: the dirty bit, not a flush, covers refcounts that
         * have not reached the disk (an open repairs them) */
        rc = qcow2_update_incompat(s, QCOW2_INCOMPAT_DIRTY, 0);
        if (rc == 0)
            rc = qcow2_write_refcounts(s);
    } else {
        rc = qcow2_flush_refcounts(s); /* data and refcounts before the tables that use them */
    }
    for (int i = 0; rc == 0 && i < s->l2_cache_slots; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache[i];
        if (!sl->dirty)
            continue;
        if (sl->foreign) { /* changed by a path that did not ask qcow2_get_l2 to allocate: still not written */
            sl->dirty = false;
            rc = qcow2_signal_corruption(s, "L2 table on other metadata", sl->offset);
            break;
        }
        rc = vbd_node_co_pwrite(s->n->file, sl->offset, sl->table, s->cluster_size, 0);
        if (rc == 0)
            sl->dirty = false;
    }
    if (rc == 0 && s->nfrees) {
        rc = qcow2_flush_refcounts(s); /* the tables before the references they dropped */
        /* pass-discard-request, else discard=unmap on the node (QEMU's default) */
        bool unmap = s->discard_request_opt ? s->discard_request_opt == 2 : (s->n->open_flags & VBD_OPEN_UNMAP) != 0;
        bool punching = s->punch_freed, noted = false;
        for (size_t i = 0; rc == 0 && i < s->nfrees; i++) {
            bool requested = unmap && (s->frees[i] & 1);
            s->punch_freed = punching || requested;
            noted |= requested;
            qcow2_update_refcount(s, s->frees[i] & ~(uint64_t)1, -1); /* a failure only leaks */
        }
        s->punch_freed = punching;
        if (rc == 0)
            s->nfrees = 0;
        if (noted && !punching) /* a shrink (punching) gives its clusters back itself */
            qcow2_punch_freed(s);
    }
    return rc;
}

/* The least recently used slot, written back first if it holds changes. */
static int pick_victim(struct qcow2_state *s, struct qcow2_l2_slot **out)
{
    struct qcow2_l2_slot *victim = NULL;
    for (int i = 0; i < s->l2_cache_slots; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache[i];
        if (!victim || !sl->table || (victim->table && sl->lru < victim->lru))
            victim = sl;
    }
    if (victim->dirty) {
        int rc = qcow2_writeback(s);
        if (rc < 0)
            return rc;
    }
    *out = victim;
    return 0;
}

static int load_l2(struct qcow2_state *s, uint64_t l2_off, struct qcow2_l2_slot **out)
{
    struct qcow2_l2_slot *victim = NULL;
    for (int i = 0; i < s->l2_cache_slots; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache[i];
        if (sl->offset == l2_off && sl->table) {
            sl->lru = ++s->lru_clock;
            *out = sl;
            return 0;
        }
    }
    int prc = pick_victim(s, &victim);
    if (prc < 0)
        return prc;
    /* the writeback yielded: someone may have loaded the table meanwhile */
    for (int i = 0; i < s->l2_cache_slots; i++) {
        struct qcow2_l2_slot *sl = &s->l2_cache[i];
        if (sl->offset == l2_off && sl->table) {
            sl->lru = ++s->lru_clock;
            *out = sl;
            return 0;
        }
    }
    if (!victim->table)
        victim->table = vbd_alloc_aligned(4096, s->cluster_size);
    victim->offset = 0;
    int rc = vbd_node_co_pread(s->n->file, l2_off, victim->table, s->cluster_size);
    if (rc < 0)
        return rc;
    victim->offset = l2_off;
    /* see qcow2_get_l2; a read-only image writes no table */
    victim->foreign = !s->read_only && qcow2_table_on_other_metadata(s, l2_off);
    victim->lru = ++s->lru_clock;
    *out = victim;
    return 0;
}

int qcow2_signal_corruption(struct qcow2_state *s, const char *what, uint64_t off)
{
    vbd_error_report("qcow2 image '%s' is corrupt: %s (0x%llx); further writes refused", s->n->file->filename, what,
                     (unsigned long long)off);
    bool first = !s->corrupt;
    s->corrupt = true;
    if (!s->read_only)
        qcow2_update_incompat(s, QCOW2_INCOMPAT_CORRUPT, 0);
    if (first) { /* once, as QEMU; off is where the bad metadata points, not an access: in the message */
        char msg[256];
        snprintf(msg, sizeof(msg), "%s (0x%llx)", what, (unsigned long long)off);
        vbd_node_report_corruption(s->n, msg, -1, -1, !s->read_only); /* fatal: marked in the image */
    }
    return -EIO;
}

int qcow2_write_l1_entry(struct qcow2_state *s, uint32_t index)
{
    uint8_t e[8];
    put_be64p(e, s->l1[index]);
    return vbd_node_co_pwrite(s->n->file, s->l1_table_offset + (uint64_t)index * 8, e, 8, 0);
}

int qcow2_get_l2(struct qcow2_state *s, uint64_t guest_off, bool alloc, uint64_t **table, uint32_t *index,
                 struct qcow2_l2_slot **slot)
{
    uint64_t l1_index = guest_off >> (s->l2_bits + s->cluster_bits);
    *index = (uint32_t)((guest_off >> s->cluster_bits) & ((1u << s->l2_bits) - 1));
    *table = NULL;
    if (l1_index >= s->l1_size)
        return alloc ? -EINVAL : 0;
    uint64_t l1e = s->l1[l1_index];
    uint64_t l2_off = l1e & L1E_OFFSET_MASK;
    if (l2_off && (l2_off & (s->cluster_size - 1)))
        return qcow2_signal_corruption(s, "L2 table offset not cluster aligned", l2_off);
    if (l2_off && (l2_off < s->cluster_size || l2_off + s->cluster_size > s->file_end + s->cluster_size))
        return qcow2_signal_corruption(s, "L2 table offset outside the image", l2_off);
    if (l2_off && alloc && !(l1e & QCOW_OFLAG_COPIED)) {
        /* shared with a snapshot: the active image gets its own copy of the table
         * (the data clusters it points to already hold a reference for each) */
        struct qcow2_l2_slot *old;
        int rc = load_l2(s, l2_off, &old);
        if (rc < 0)
            return rc;
        int64_t nl2 = qcow2_alloc_clusters(s, 1);
        if (nl2 < 0)
            return (int)nl2;
        uint8_t *copy = vbd_alloc_aligned(4096, s->cluster_size);
        memcpy(copy, old->table, s->cluster_size);
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)nl2, copy, s->cluster_size, 0);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
        if (rc == 0) {
            s->l1[l1_index] = (uint64_t)nl2 | QCOW_OFLAG_COPIED;
            qcow2_metadata_moved(s);
            rc = qcow2_write_l1_entry(s, (uint32_t)l1_index);
        }
        if (rc == 0) {
            qcow2_defer_free(s, l2_off); /* once the new L1 entry is on disk */
            memcpy(old->table, copy, s->cluster_size);
            old->offset = (uint64_t)nl2;
            old->foreign = false;
            old->lru = ++s->lru_clock;
            *table = old->table;
            if (slot)
                *slot = old;
        } else {
            /* the shared table stays in place; the copy goes back (as QEMU) */
            s->l1[l1_index] = l1e;
            qcow2_metadata_moved(s);
            qcow2_update_refcount(s, (uint64_t)nl2, -1);
        }
        free(copy);
        return rc;
    }
    if (!l2_off) {
        if (!alloc)
            return 0;
        /* clusters freed since the last writeback (a discard's) are free
         * for the new table once the tables that dropped them are on disk:
         * written back first, so that the table lands where QEMU's
         * l2_allocate puts it (its refcount flush writes the L2 tables the
         * frees depend on; a whole-image discard over a backing file had
         * its second table a cluster past qemu-io's, one per table with
         * small clusters) */
        if (s->nfrees) {
            int wrc = qcow2_writeback(s);
            if (wrc < 0)
                return wrc;
        }
        int64_t nl2 = qcow2_alloc_clusters(s, 1);
        if (nl2 < 0)
            return (int)nl2;
        struct qcow2_l2_slot *victim = NULL;
        /* a fresh table: zero it in a cache slot, write it, flush, then point L1 at it */
        int rc = pick_victim(s, &victim);
        if (rc < 0)
            return rc;
        if (!victim->table)
            victim->table = vbd_alloc_aligned(4096, s->cluster_size);
        memset(victim->table, 0, s->cluster_size);
        victim->offset = 0;
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)nl2, victim->table, s->cluster_size, 0);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s); /* table and its refcount before the L1 entry */
        if (rc < 0) {
            /* nothing points at it yet: give it back, as QEMU's l2_allocate
             * does (else the failed write leaks it; a failure here only leaks) */
            qcow2_update_refcount(s, (uint64_t)nl2, -1);
            return rc;
        }
        victim->offset = (uint64_t)nl2;
        victim->foreign = false;
        victim->lru = ++s->lru_clock;
        s->l1[l1_index] = (uint64_t)nl2 | QCOW_OFLAG_COPIED;
        qcow2_metadata_added(s, (uint64_t)nl2); /* data writes aimed at it are refused from now on */
        rc = qcow2_write_l1_entry(s, (uint32_t)l1_index);
        if (rc < 0) {
            /* as QEMU: the image keeps no table here, and the next write
             * allocates one again (else that write would fill a table the
             * L1 on disk never names, and its data would be lost) */
            s->l1[l1_index] = 0;
            victim->offset = 0;
            qcow2_metadata_moved(s);
            qcow2_update_refcount(s, (uint64_t)nl2, -1);
            return rc;
        }
        *table = victim->table;
        if (slot)
            *slot = victim;
        return 0;
    }
    struct qcow2_l2_slot *sl;
    int rc = load_l2(s, l2_off, &sl);
    if (rc < 0)
        return rc;
    /* an L2 table on other metadata (the refcount table, a refcount block,
     * ...): a changed entry would be written over that, as QEMU's overlap
     * check refuses */
    if (alloc && sl->foreign)
        return qcow2_signal_corruption(s, "L2 table on other metadata", l2_off);
    *table = sl->table;
    if (slot)
        *slot = sl;
    return 0;
}

int qcow2_get_entry(struct qcow2_state *s, uint64_t guest_off, uint64_t *entry, uint64_t *bitmap)
{
    uint64_t *t;
    uint32_t i;
    int rc = qcow2_get_l2(s, guest_off, false, &t, &i, NULL);
    *entry = *bitmap = 0;
    if (rc < 0 || !t)
        return rc;
    if (s->extended_l2) {
        *entry = be64(t[2 * i]);
        *bitmap = be64(t[2 * i + 1]);
    } else {
        *entry = be64(t[i]);
    }
    return 0;
}

enum qcow2_cluster_type qcow2_entry_type(struct qcow2_state *s, uint64_t entry)
{
    if (entry & QCOW_OFLAG_COMPRESSED)
        return QCOW2_COMPRESSED;
    /* offset 0 is a real place in a data file: COPIED (always set there) tells it from "unallocated" */
    bool mapped = (entry & L2E_OFFSET_MASK) || (s->external && (entry & QCOW_OFLAG_COPIED));
    if (!s->extended_l2 && (entry & QCOW_OFLAG_ZERO) && s->version >= 3)
        return mapped ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
    return mapped ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
}

int qcow2_read_compressed(struct qcow2_state *s, uint64_t entry, uint8_t *out)
{
    uint64_t coff = entry & s->coffset_mask;
    uint64_t nsect = ((entry >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t clen = nsect * 512 - (coff & 511);
    if (clen > 2 * s->cluster_size)
        return qcow2_signal_corruption(s, "compressed cluster larger than two clusters", coff);
    uint64_t fsize = vbd_node_size(s->n->file); /* once: another loop may refresh it */
    if (coff + clen > fsize) {
        /* the last compressed cluster may end past EOF: read what exists */
        if (coff >= fsize)
            return qcow2_signal_corruption(s, "compressed cluster past the end of the file", coff);
        clen = fsize - coff;
    }
    int rc = vbd_node_co_pread(s->n->file, coff, s->cbuf, clen);
    if (rc < 0)
        return rc;
    if (s->compression_type == 0) {
        z_stream z = {0};
        if (inflateInit2(&z, -12) != Z_OK)
            return -ENOMEM;
        z.next_in = s->cbuf;
        z.avail_in = (uInt)clen;
        z.next_out = out;
        z.avail_out = (uInt)s->cluster_size;
        int zr = inflate(&z, Z_FINISH);
        uint64_t got = s->cluster_size - z.avail_out;
        inflateEnd(&z);
        if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || got != s->cluster_size)
            return qcow2_signal_corruption(s, "compressed cluster does not inflate to a cluster", coff);
        return 0;
    }
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = {s->cbuf, clen, 0};
    ZSTD_outBuffer o = {out, s->cluster_size, 0};
    size_t zr = 1;
    while (o.pos < o.size && in.pos < in.size) {
        zr = ZSTD_decompressStream(d, &o, &in);
        if (ZSTD_isError(zr))
            break;
    }
    ZSTD_freeDCtx(d);
    if (ZSTD_isError(zr) || o.pos != s->cluster_size)
        return qcow2_signal_corruption(s, "compressed cluster does not decompress to a cluster", coff);
    return 0;
}
