/* SPDX-License-Identifier: MIT */
/*
 * qcow2 resize: growing (the L1 table first, then the size in the
 * header), preallocation of a range (metadata, falloc, full: L2 tables
 * and host clusters mapped in advance, as QEMU's preallocation=), and
 * shrinking when nothing is allocated past the new end.
 */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_header_u64(struct qcow2_state *s, uint64_t at, uint64_t v)
{
    uint8_t b[8];
    put_be64p(b, v);
    return vbd_node_co_pwrite(s->n->file, at, b, 8, 0);
}

/* A larger active L1 table, written and flushed before the header points to it. Lock held. */
int qcow2_grow_l1(struct qcow2_state *s, uint64_t need)
{
    struct vbd_node *n = s->n;
    if (need * 8 > QCOW2_MAX_L1_BYTES)
        return -EFBIG;
    uint64_t bytes = (need * 8 + s->cluster_size - 1) & ~(s->cluster_size - 1);
    int rc = qcow2_writeback(s);
    if (rc < 0)
        return rc;
    int64_t at = qcow2_alloc_clusters(s, bytes / s->cluster_size);
    if (at < 0)
        return (int)at;
    uint64_t *l1 = calloc(1, bytes), *disk = calloc(1, bytes);
    if (!l1 || !disk) {
        free(l1);
        free(disk);
        return -ENOMEM;
    }
    if (s->l1_size) /* an empty image has no L1 table (s->l1 NULL) */
        memcpy(l1, s->l1, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < bytes / 8; i++)
        disk[i] = be64(l1[i]);
    /* the entries, not the rest of their last cluster (nothing reads
     * past l1_size): as QEMU's qcow2_grow_l1_table writes it, so that a
     * table at the end leaves the file as long as qemu-img's */
    rc = vbd_node_co_pwrite(n->file, (uint64_t)at, disk, need * 8, 0);
    free(disk);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    uint8_t h[12];
    put_be32p(h, (uint32_t)need);
    put_be64p(h + 4, (uint64_t)at);
    if (rc == 0)
        rc = vbd_node_co_pwrite(n->file, 36, h, 12, 0);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0) {
        free(l1);
        return rc;
    }
    uint64_t old = s->l1_table_offset,
             old_bytes = ((uint64_t)s->l1_size * 8 + s->cluster_size - 1) & ~(s->cluster_size - 1);
    free(s->l1);
    s->l1 = l1;
    qcow2_metadata_moved(s);
    s->l1_size = (uint32_t)need;
    s->l1_table_offset = (uint64_t)at;
    for (uint64_t c = 0; old && c < old_bytes; c += s->cluster_size)
        qcow2_update_refcount(s, old + c, -1);
    return 0;
}

/* falloc: space reserved (unwritten extents read as zeroes); full: zeroes written. */
static int cover_clusters(struct qcow2_state *s, uint64_t host, uint64_t len, enum vbd_prealloc mode)
{
    if (s->data->size < host + len) {
        int rc = vbd_node_co_truncate(s->data, host + len, false, VBD_PREALLOC_OFF, NULL);
        if (rc < 0)
            return rc;
    }
    if (mode == VBD_PREALLOC_FALLOC)
        return vbd_node_co_pwrite_zeroes(s->data, host, len, 0);
    if (mode != VBD_PREALLOC_FULL)
        return 0;
    uint64_t chunk = len < (1u << 20) ? len : (1u << 20);
    uint8_t *z = vbd_alloc_aligned(4096, chunk);
    if (!z)
        return -ENOMEM;
    memset(z, 0, chunk);
    int rc = 0;
    for (uint64_t done = 0; rc == 0 && done < len; done += chunk)
        rc = vbd_node_co_pwrite(s->data, host + done, z, len - done < chunk ? len - done : chunk, 0);
    free(z);
    return rc;
}

/* The end of a preallocation, either way: tables and refcounts written
 * back, a failure named once. */
static int preallocation_done(struct qcow2_state *s, int rc, struct vbd_error **err)
{
    if (rc == 0)
        rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0 && err && !*err)
        vbd_error_setf(err, -rc, "qcow2: preallocation failed: %s", strerror(-rc));
    return rc;
}

/* preallocation=falloc/full as QEMU's qcow2_co_truncate lays it out, so
 * that the image is qemu-img's byte for byte: from the end of the last
 * cluster in use, the refcount blocks and a new refcount table that count
 * the new data clusters and their L2 tables too (qcow2_refcount_area),
 * then every new data cluster in one run after them, the file grown over
 * the run with `mode`; the L2 tables come last, from the first free
 * cluster on (the old refcount table's, then the file's end), each entry
 * pointing into the run. Only for [start, end) with nothing to copy into
 * its first cluster (start on a cluster, or that cluster unmapped and no
 * backing file): QEMU copies that cluster's head, the caller's other way
 * keeps it in place. Lock held. */
static int preallocate_as_qemu(struct qcow2_state *s, uint64_t start, uint64_t end, enum vbd_prealloc mode,
                               struct vbd_error **err)
{
    uint64_t cs = s->cluster_size, per_table = 1ull << s->l2_bits;
    int rc = qcow2_writeback(s);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc < 0)
        return rc;
    /* QEMU's old file size: past the last cluster with a refcount */
    uint64_t c = s->file_end >> s->cluster_bits, refs = 0;
    while (c > 0) {
        if ((rc = qcow2_get_refcount(s, c - 1, &refs)) < 0)
            return rc;
        if (refs)
            break;
        c--;
    }
    uint64_t first = start & ~(cs - 1);
    uint64_t data = (((end + cs - 1) & ~(cs - 1)) - first) / cs;
    /* QEMU's overestimate: one table more for a head or tail */
    uint64_t tables = (data + per_table - 1) / per_table + 1;
    int64_t at = qcow2_refcount_area(s, c * cs, data + tables);
    if (at < 0)
        return (int)at;
    for (uint64_t i = 0; rc == 0 && i < data; i++)
        rc = qcow2_update_refcount(s, (uint64_t)at + i * cs, 1);
    uint64_t data_end = (uint64_t)at + data * cs;
    if (s->file_end < data_end)
        s->file_end = data_end;
    if (rc == 0)
        rc = qcow2_flush_refcounts(s); /* counted before any table points there */
    /* The table of the old end (the only one that can exist past it) is
     * read before the file grows, as QEMU has it cached by then: read after,
     * the page cache's readahead pulls the new run's unwritten pages in and
     * SEEK_DATA then calls them data (qemu-img map: not "zero"). */
    uint64_t *first_table;
    uint32_t first_index;
    if (rc == 0)
        rc = qcow2_get_l2(s, first, false, &first_table, &first_index, NULL);
    if (rc == 0 && data_end > s->n->file->size)
        rc = vbd_node_co_truncate(s->n->file, data_end, false, mode, err);
    uint64_t host = (uint64_t)at;
    for (uint64_t off = first; rc == 0 && off < end;) {
        uint64_t *table;
        uint32_t index;
        struct qcow2_l2_slot *slot;
        if ((rc = qcow2_get_l2(s, off, true, &table, &index, &slot)) < 0)
            break;
        uint64_t count = per_table - index;
        if (count > (data_end - host) / cs)
            count = (data_end - host) / cs;
        for (uint64_t k = 0; k < count; k++) {
            uint64_t *ep = &table[(s->extended_l2 ? 2 : 1) * (index + k)];
            /* (none is mapped past the old end; one that were would keep
             * its cluster, and the run's would only leak) */
            if (*ep)
                continue;
            ep[0] = be64((host + k * cs) | QCOW_OFLAG_COPIED);
            if (s->extended_l2) /* subclusters unallocated, as QEMU: reads as zeroes */
                ep[1] = 0;
        }
        slot->dirty = true;
        off += count * cs;
        host += count * cs;
    }
    return preallocation_done(s, rc, err);
}

/* Maps every guest cluster of [start, end) that has no mapping yet to a
 * host cluster (contiguous per L2 table), then makes the file cover them
 * as `mode` asks. Lock held. */
int qcow2_preallocate(struct qcow2_state *s, uint64_t start, uint64_t end, enum vbd_prealloc mode, struct vbd_error **err)
{
    uint64_t cs = s->cluster_size;
    uint64_t first_host = UINT64_MAX, last_host = 0;
    int rc = 0;
    if ((mode == VBD_PREALLOC_FALLOC || mode == VBD_PREALLOC_FULL) && !s->external && start < end) {
        bool head_free = !(start & (cs - 1));
        if (!head_free && !s->n->backing) {
            uint64_t entry, bitmap;
            if ((rc = qcow2_get_entry(s, start, &entry, &bitmap)) < 0)
                goto out;
            head_free = entry == 0 && bitmap == 0;
        }
        if (head_free)
            return preallocate_as_qemu(s, start, end, mode, err);
    }
    /* the mapped cluster holding the old end: its part past the end is
     * space the new size promises too (QEMU maps it anew, covered) */
    if ((start & (cs - 1)) && (mode == VBD_PREALLOC_FALLOC || mode == VBD_PREALLOC_FULL) && !s->external) {
        uint64_t entry, bitmap;
        rc = qcow2_get_entry(s, start, &entry, &bitmap);
        if (rc < 0)
            goto out;
        enum qcow2_cluster_type t = qcow2_entry_type(s, entry);
        if (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) {
            uint64_t in = start & (cs - 1);
            rc = cover_clusters(s, (entry & L2E_OFFSET_MASK) + in, cs - in, mode);
            if (rc < 0)
                goto out;
        }
    }
    for (uint64_t off = start & ~(cs - 1); off < end;) {
        uint64_t *table;
        uint32_t index;
        struct qcow2_l2_slot *slot;
        rc = qcow2_get_l2(s, off, true, &table, &index, &slot);
        if (rc < 0)
            break;
        uint32_t per_table = 1u << s->l2_bits;
        uint64_t count = per_table - index;
        if (count > (end - off + cs - 1) / cs)
            count = (end - off + cs - 1) / cs;
        uint64_t todo = 0;
        for (uint64_t k = 0; k < count; k++)
            todo += table[(s->extended_l2 ? 2 : 1) * (index + k)] == 0;
        if (todo && s->external) {
            /* the data file maps 1:1: each cluster at its guest offset */
            for (uint64_t k = 0; k < count; k++) {
                uint64_t *ep = &table[(s->extended_l2 ? 2 : 1) * (index + k)];
                if (*ep)
                    continue;
                ep[0] = be64((off + k * cs) | QCOW_OFLAG_COPIED);
                if (s->extended_l2) /* subclusters unallocated, as QEMU: reads as zeroes or the backing file */
                    ep[1] = 0;
            }
            slot->dirty = true;
            rc = cover_clusters(s, off, count * cs, mode);
            if (rc < 0)
                break;
        } else if (todo) {
            int64_t host = qcow2_alloc_clusters(s, todo);
            if (host < 0) {
                rc = (int)host;
                break;
            }
            if ((uint64_t)host < first_host)
                first_host = (uint64_t)host;
            if ((uint64_t)host + todo * cs > last_host)
                last_host = (uint64_t)host + todo * cs;
            for (uint64_t k = 0, h = (uint64_t)host; k < count; k++) {
                uint64_t *ep = &table[(s->extended_l2 ? 2 : 1) * (index + k)];
                if (*ep)
                    continue;
                ep[0] = be64(h | QCOW_OFLAG_COPIED);
                if (s->extended_l2) /* subclusters unallocated, as QEMU: reads as zeroes or the backing file */
                    ep[1] = 0;
                h += cs;
            }
            slot->dirty = true;
            rc = cover_clusters(s, (uint64_t)host, todo * cs, mode);
            if (rc < 0)
                break;
        }
        off += count * cs;
    }
    /* the file covers the new clusters before any table points to them */
    if (rc == 0 && last_host > vbd_node_size(s->n->file))
        rc = vbd_node_co_truncate(s->n->file, last_host, false, VBD_PREALLOC_OFF, err);
    (void)first_host;
out:
    return preallocation_done(s, rc, err);
}

/* QEMU's discard of a table wholly past the new end first makes that
 * table the active image's own where it is not (get_cluster_table: a new
 * cluster at the first free one, zeroes or a copy of the table a snapshot
 * shares, written), which its qcow2_shrink_l1_table then frees and
 * discards. The same cluster is taken and written here, to be freed with
 * the tables, so that the file ends as qemu-img leaves it (at a cluster's
 * end when that cluster was past it: a shrink to an L1 table's boundary;
 * the refcount block written whole). Nothing ever names it. */
static int64_t passing_table(struct qcow2_state *s, uint64_t shared)
{
    /* the data the tables before released goes first (written back, freed,
     * punched), as QEMU has discarded it by the time it takes the next
     * table's cluster: that cluster is then often one of them */
    int rc = s->nfrees ? qcow2_writeback(s) : 0;
    if (rc < 0)
        return rc;
    qcow2_punch_freed(s);
    uint8_t *buf = vbd_alloc_aligned(4096, s->cluster_size);
    if (!buf)
        return -ENOMEM;
    if (shared)
        rc = vbd_node_co_pread(s->n->file, shared, buf, s->cluster_size);
    else
        memset(buf, 0, s->cluster_size);
    int64_t at = rc < 0 ? rc : qcow2_alloc_clusters(s, 1);
    if (at >= 0)
        rc = qcow2_flush_refcounts(s); /* as l2_allocate: counted before written */
    if (at >= 0 && rc == 0)
        rc = vbd_node_co_pwrite(s->n->file, (uint64_t)at, buf, s->cluster_size, 0);
    free(buf);
    if (at >= 0 && rc < 0) {
        (void)qcow2_update_refcount(s, (uint64_t)at, -1);
        return rc;
    }
    return at;
}

/* A table the active L1 entry l1i names without COPIED (a snapshot shares
 * it, or one once did: refcount 1 left by an old snapshot deletion) gives
 * way to its copy at `copy` as QEMU's get_cluster_table does it: the L1
 * entry names the copy (on disk first), then the old table's reference
 * goes, and the space stays in the file (QCOW2_DISCARD_OTHER, which QEMU
 * does not pass down: vbd punched it); only the copy, dropped with the
 * mappings, is discarded. Freed at once, its cluster is the next table's
 * first choice, as in QEMU. Lock held. */
static int repoint_table(struct qcow2_state *s, uint32_t l1i, uint64_t old, uint64_t copy)
{
    uint64_t was = s->l1[l1i];
    s->l1[l1i] = copy | QCOW_OFLAG_COPIED;
    qcow2_metadata_moved(s);
    int rc = qcow2_write_l1_entry(s, l1i);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    if (rc < 0) {
        s->l1[l1i] = was;
        qcow2_metadata_moved(s);
        (void)qcow2_write_l1_entry(s, l1i);
        return rc;
    }
    /* a cached copy of the old table must never be read or written back
     * as the cluster's content once the cluster is someone else's */
    for (int i = 0; i < s->l2_cache_slots; i++)
        if (s->l2_cache[i].offset == old) {
            s->l2_cache[i].offset = 0;
            s->l2_cache[i].dirty = false;
        }
    bool punch = s->punch_freed;
    s->punch_freed = false;
    (void)qcow2_update_refcount(s, old, -1); /* a failure only leaks */
    s->punch_freed = punch;
    return 0;
}

/* Every mapping of [from, end) goes, as QEMU's shrink discards it: the
 * entries of the table holding the new end are cleared, tables wholly
 * past it are dropped from L1; each reference they held (data clusters,
 * the tables themselves) is released once the change is on disk. Data
 * shared with a snapshot keeps the snapshot's reference. What no longer
 * has a reference is punched in the file, as QEMU discards it
 * (QCOW2_DISCARD_ALWAYS): the data clusters in one go (qcow2_cluster_discard
 * collects them), then each table alone (qcow2_shrink_l1_table frees them
 * one by one), after one sync of all their counts. Lock held. */
static int drop_mappings(struct qcow2_state *s, uint64_t from, uint64_t end)
{
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint32_t per_table = 1u << s->l2_bits, step = s->extended_l2 ? 2 : 1;
    /* per L1 entry at most the table and one passing_table */
    uint64_t *tables = calloc(s->l1_size ? 2 * (size_t)s->l1_size : 1, sizeof(*tables));
    uint32_t ntables = 0;
    if (!tables)
        return -ENOMEM;
    int rc = 0;
    s->punch_freed = true;
    for (uint64_t off = from; rc == 0 && off < end;) {
        uint32_t l1i = (uint32_t)(off / per_l1);
        uint64_t table_end = (uint64_t)(l1i + 1) * per_l1;
        if (l1i >= s->l1_size)
            break;
        uint64_t l2 = s->l1[l1i] & L1E_OFFSET_MASK;
        bool whole = off % per_l1 == 0;
        if (whole && !(s->l1[l1i] & QCOW_OFLAG_COPIED)) {
            int64_t t = passing_table(s, l2);
            if (t < 0) {
                rc = (int)t;
                break;
            }
            if (!l2) {
                tables[ntables++] = (uint64_t)t;
            } else if ((rc = repoint_table(s, l1i, l2, (uint64_t)t)) < 0) {
                (void)qcow2_update_refcount(s, (uint64_t)t, -1); /* nothing names it */
                break;
            } else {
                l2 = (uint64_t)t; /* read, dropped and released below, as the table it replaced */
            }
        }
        /* the table holding the new end is made if missing (empty), as
         * QEMU's discard of the tail makes it (get_cluster_table): the
         * shrunk image is laid out as qemu-img's */
        if (!l2 && whole) {
            off = table_end;
            continue;
        }
        uint64_t *table;
        uint32_t index;
        struct qcow2_l2_slot *slot = NULL;
        /* a table kept in part becomes the active image's own (copied if a snapshot shares it) */
        rc = qcow2_get_l2(s, off, !whole, &table, &index, &slot);
        if (rc < 0 || !table)
            break;
        for (uint32_t k = index; k < per_table; k++) {
            uint64_t *ep = &table[step * k];
            if (!ep[0] && (step == 1 || !ep[1]))
                continue;
            qcow2_release_entry(s, be64(ep[0]));
            if (!whole) {
                ep[0] = 0;
                if (step == 2)
                    ep[1] = 0;
                slot->dirty = true;
            }
        }
        if (whole) {
            s->l1[l1i] = 0;
            qcow2_metadata_moved(s);
            rc = qcow2_write_l1_entry(s, l1i);
            if (slot) {
                slot->offset = 0;
                slot->dirty = false;
            }
            if (rc == 0)
                tables[ntables++] = l2;
        }
        off = table_end;
    }
    if (rc == 0)
        rc = qcow2_writeback(s); /* tables and L1 on disk, then the data's references go */
    /* the L1 entries on disk: the tables' references go. A file flush, not
     * the refcounts': the writeback's sync covered the L1 writes when it
     * made one (it writes the data's lowered counts after it, which need
     * no sync before the tables' go), and then the file skips this one */
    if (rc == 0 && ntables)
        rc = vbd_node_co_flush(s->n->file);
    size_t data_noted = s->nto_punch;
    for (uint32_t i = 0; rc == 0 && i < ntables; i++)
        (void)qcow2_update_refcount(s, tables[i], -1); /* a failure only leaks */
    /* One sync of the counts for the data and the tables (a punch per
     * table synced per table: 8 for 8 GiB -> 4 GiB, and one more for the
     * data); the data in merged runs, each table alone, as QEMU punches
     * them: the same ranges, so the same allocation (with clusters smaller
     * than the file system's block, merged neighbours free whole blocks
     * QEMU's single punches leave allocated) */
    if (rc == 0)
        qcow2_punch_freed_apart(s, data_noted);
    s->punch_freed = false;
    s->nto_punch = 0;
    free(tables);
    return rc;
}

/* Refcount blocks that count nothing but (perhaps) themselves go, as
 * QEMU's qcow2_shrink_reftable() drops them: the table on disk first, then
 * the block's own reference. Without it the blocks made for the discarded
 * tail would keep the file long. Lock held, refcounts flushed. */
static int drop_unused_refblocks(struct qcow2_state *s)
{
    uint32_t per_block_bits = s->cluster_bits + 3 - s->refcount_order;
    bool *unused = calloc(s->reftable_entries + 1, sizeof(bool));
    if (!unused)
        return -ENOMEM;
    bool any = false;
    int rc = 0;
    for (uint64_t i = 0; rc == 0 && i < s->reftable_entries; i++) {
        uint64_t block = s->reftable[i] & REFT_OFFSET_MASK;
        if (!block)
            continue;
        bool empty = true;
        for (uint64_t c = i << per_block_bits; empty && c < (i + 1) << per_block_bits; c++) {
            uint64_t refs;
            if ((rc = qcow2_get_refcount(s, c, &refs)) < 0)
                break;
            empty = !refs || c == block >> s->cluster_bits;
        }
        unused[i] = rc == 0 && empty;
        any |= unused[i];
    }
    /* written even when nothing changed, as QEMU writes it (its clusters
     * then take their space in the file as in qemu-img's) */
    uint64_t bytes = (uint64_t)s->refcount_table_clusters * s->cluster_size;
    uint64_t *disk = rc == 0 ? calloc(1, bytes) : NULL;
    if (rc == 0 && !disk)
        rc = -ENOMEM;
    if (disk) {
        for (uint64_t i = 0; i < s->reftable_entries; i++)
            disk[i] = unused[i] ? 0 : be64(s->reftable[i]);
        rc = vbd_node_co_pwrite(s->n->file, s->refcount_table_offset, disk, bytes, 0);
        /* synced only before blocks are released (below): a table that
         * drops none is the bytes the file already holds (every entry was
         * written when its block was made, and the shrink's header sync
         * made them durable), so no crash can tell the write happened */
        if (rc == 0 && any)
            rc = vbd_node_co_flush(s->n->file);
        free(disk);
    }
    /* each block goes back to the file system too, as QEMU's
     * qcow2_discard_refcount_block discards it (the table on disk no
     * longer names it: flushed above) */
    s->punch_freed = true;
    for (uint64_t i = 0; rc == 0 && any && i < s->reftable_entries; i++) {
        if (!unused[i])
            continue;
        uint64_t block = s->reftable[i] & REFT_OFFSET_MASK;
        qcow2_punch_later(s, block >> s->cluster_bits);
        s->reftable[i] = 0;
        qcow2_metadata_moved(s);
        for (int k = 0; k < s->rc_nslots; k++) /* its cached copy must never be written back */
            if (s->rc_slots[k].offset == block) {
                if (s->rc_cur == &s->rc_slots[k])
                    s->rc_cur = NULL;
                s->rc_slots[k].offset = 0;
                s->rc_slots[k].dirty = false;
            }
        if ((block >> s->cluster_bits) >> per_block_bits != i) /* counted by another block */
            rc = qcow2_update_refcount(s, block, -1);
    }
    free(unused);
    if (rc == 0 && any)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0)
        qcow2_punch_freed(s);
    s->punch_freed = false;
    s->nto_punch = 0;
    return rc;
}

/* The file ends after the last cluster still in use, as QEMU leaves it. */
static void trim_file(struct qcow2_state *s)
{
    uint64_t c = s->file_end >> s->cluster_bits, refs = 0;
    while (c > 1) {
        if (qcow2_get_refcount(s, c - 1, &refs) < 0 || refs)
            break;
        c--;
    }
    uint64_t end = c << s->cluster_bits;
    if (end >= vbd_node_size(s->n->file))
        return;
    struct vbd_error *err = NULL;
    /* exact: a regular file's truncate to a smaller size is otherwise a no-op;
     * a block device cannot be cut (-ENOTSUP), which is no news to report */
    int rc = vbd_node_co_truncate(s->n->file, end, true, VBD_PREALLOC_OFF, &err);
    if (rc == -ENOTSUP) {
        vbd_error_free(err);
        return;
    }
    if (rc < 0) {
        vbd_warn("qcow2: failed to truncate the tail of the image: %s", err ? err->msg : "error");
        vbd_error_free(err);
        return;
    }
    s->file_end = end;
    if (s->free_cluster_hint > c)
        s->free_cluster_hint = c;
}

/* Shrinking, as QEMU does it: what lies past the new end (rounded up to a
 * cluster) is discarded, then the size goes down and the file is cut. */
static int shrink(struct qcow2_state *s, uint64_t size, struct vbd_error **err)
{
    struct vbd_node *n = s->n;
    uint64_t cs = s->cluster_size;
    uint64_t from = (size + cs - 1) & ~(cs - 1);
    int rc = qcow2_writeback(s);
    if (rc == 0 && from < n->size)
        rc = drop_mappings(s, from, n->size);
    /* The refcounts written, not synced apart: the header's sync below
     * covers them. They only went down, each for a cluster that no table
     * on disk names any more (drop_mappings syncs every L2 entry and L1
     * entry it clears before the count that it held goes), so whether a
     * crash keeps them or not, no cluster in use is counted free: at worst
     * one is leaked, as a crash before them would leak it. Nor does the
     * size depend on them: the header may reach the disk before or with
     * them. (The sync here had covered nothing else but the punch of the
     * freed data clusters, which needs no order.) */
    if (rc == 0)
        rc = qcow2_write_refcounts(s);
    if (rc == 0)
        rc = write_header_u64(s, 24, size);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "qcow2: could not shrink the image: %s", strerror(-rc));
        return rc;
    }
    vbd_node_set_size(n, size);
    /* an external data file is cut at the new end too, as QEMU does */
    if (s->external && s->data->size > size && (rc = vbd_node_co_truncate(s->data, size, true, VBD_PREALLOC_OFF, err)) < 0 &&
        rc != -ENOTSUP)
        return rc;
    if (!s->external) {
        if ((rc = drop_unused_refblocks(s)) < 0) {
            vbd_error_setf(err, -rc, "qcow2: could not release the unused refcount blocks: %s", strerror(-rc));
            return rc;
        }
        trim_file(s);
    }
    /* after the header: a table larger than needed is valid; after the
     * cut: QEMU stores them anew at its close, past what it kept */
    if (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)
        rc = qcow2_bitmaps_reload(s, qcow2_bitmaps_resize(s, size, err), err);
    return rc;
}

int qcow2_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc, struct vbd_error **err)
{
    struct qcow2_state *s = n->opaque;
    (void)exact;
    if (size == n->size)
        return 0;
    if (s->nb_snapshots && s->version < 3) {
        vbd_error_setf(err, ENOTSUP, "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    if (size < n->size && prealloc != VBD_PREALLOC_OFF) {
        vbd_error_setf(err, ENOTSUP, "Preallocation can't be used for shrinking an image");
        return -ENOTSUP;
    }
    if (size % 512) {
        vbd_error_setf(err, EINVAL, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    vbd_co_mutex_lock(&s->lock);
    int rc = 0;
    bool bitmaps = s->autoclear & QCOW2_AUTOCLEAR_BITMAPS;
    if (bitmaps && (rc = qcow2_bitmaps_check_resize(s, err)) < 0) {
        vbd_co_mutex_unlock(&s->lock);
        return rc;
    }
    if (size < n->size) {
        rc = shrink(s, size, err);
        goto out;
    }
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t need = (size + per_l1 - 1) / per_l1;
    if (need > s->l1_size) {
        rc = qcow2_grow_l1(s, need);
        if (rc == -EFBIG)
            vbd_error_setf(err, EFBIG, "qcow2: an L1 table for %llu bytes would be too large", (unsigned long long)size);
        else if (rc < 0)
            vbd_error_setf(err, -rc, "qcow2: could not grow the L1 table: %s", strerror(-rc));
        if (rc < 0)
            goto out;
    }
    /* the clusters are mapped before the size says they exist */
    if (prealloc != VBD_PREALLOC_OFF && (rc = qcow2_preallocate(s, n->size, size, prealloc, err)) < 0)
        goto out;
    /* a longer backing file must not show through the new range (QEMU) */
    if (n->backing && vbd_node_size(n->backing) > n->size) {
        if (s->version < 3) {
            rc = -ENOTSUP; /* no zero flag; QEMU fails the same way */
        } else {
            vbd_co_mutex_unlock(&s->lock);
            rc = qcow2_zero_grown(n, n->size, size);
            vbd_co_mutex_lock(&s->lock);
        }
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Failed to zero out new clusters: %s", strerror(-rc));
            goto out;
        }
    }
    /* bitmaps grow before the size says they must cover more */
    if (bitmaps && (rc = qcow2_bitmaps_resize(s, size, err)) < 0)
        goto reload;
    rc = write_header_u64(s, 24, size);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0)
        vbd_node_set_size(n, size);
    else
        vbd_error_setf(err, -rc, "qcow2: could not update the image size: %s", strerror(-rc));
reload:
    if (bitmaps)
        rc = qcow2_bitmaps_reload(s, rc, err); /* tracked again, at the size the image has */
out:
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}
