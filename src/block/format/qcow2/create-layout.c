/* SPDX-License-Identifier: MIT */
/*
 * Where a new qcow2 image's metadata goes, as qemu-img 7.2 places it, so
 * that vbd-img create makes qemu-img's image byte for byte.
 *
 * qemu-img writes a header, a one-cluster refcount table and an empty
 * refcount block (clusters 0-2), counts them, then grows the image to its
 * size: the L1 table is one allocation of its entries. While the L1 table
 * fits in what the first refcount block counts that is all; past it
 * (small clusters, large images) QEMU's allocator makes refcount blocks as
 * it goes: each at the first free cluster, counted by a block of its own
 * if need be, after which the allocation starts over (the blocks may sit
 * where it wanted to be); and when the table has no entry for a block, a
 * larger table with blocks that count it goes past everything in use, the
 * old one freed (its bytes stay in the file). With preallocation=metadata
 * qemu-img then maps the whole disk (preallocate_co) through the same
 * allocator, table by table: an L2 table, its clusters in one run, the
 * next table (which ends the run), and so on; the refcount blocks and the
 * tables they need come amid them. Those steps are replayed here, and the
 * file written as they go, for the bytes it ends with.
 *
 * Memory stays bounded whatever the size (a 16 TiB image maps 2 GiB of L2
 * tables): every refcount in a new image is 0 or 1, so the counts are
 * kept as the runs of clusters in use (a few: the allocator fills the
 * file from its start, leaving only the holes of freed tables); the
 * clusters written pass through a small write-back cache (a cluster
 * written again after it left the cache is read back from the file);
 * the refcount blocks are made at the end from the runs, one at a time.
 * Only the L1 table (32 MiB at most) and the refcount table (8 MiB) are
 * held whole. The runtime allocator (refcount.c) places its blocks
 * otherwise, at the end of the file; its hot path is left alone.
 */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_BYTES (4u << 20) /* the write-back cache: at least 4 clusters */

struct run {
    uint64_t start, end; /* clusters [start, end) have refcount 1 */
};

struct slot {
    uint64_t cluster;
    uint64_t lo, hi; /* the bytes written since it came in (QEMU writes an L1 table's entries alone) */
    bool valid;
};

struct sim {
    uint64_t cs, per_block, per_table_cluster;
    uint32_t rb_bits, refcount_order;
    struct run *runs; /* sorted, apart (adjacent ones merged) */
    size_t nruns, runs_cap;
    uint64_t *table, table_size;   /* refcount block (cluster index) of each entry, 0 if none */
    uint64_t table_off, max_index; /* table's cluster; highest entry in use */
    uint64_t free_index;           /* QEMU's free_cluster_index */
    uint64_t file_len;             /* the file's length as qemu-img leaves it */
    uint64_t written_end;          /* what the file holds so far (past it: zeroes) */
    struct slot *slots;            /* cluster c in slot c % nslots */
    uint8_t *cache;
    uint64_t nslots;
    const struct qcow2_plan_writer *w;
};

/* ---- the clusters in use ---- */

/* index of the first run ending past c */
static size_t run_after(const struct sim *m, uint64_t c)
{
    size_t lo = 0, hi = m->nruns;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->runs[mid].end > c)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static bool all_free(const struct sim *m, uint64_t a, uint64_t b)
{
    size_t i = run_after(m, a);
    return i == m->nruns || m->runs[i].start >= b;
}

static bool all_used(const struct sim *m, uint64_t a, uint64_t b)
{
    size_t i = run_after(m, a);
    return i < m->nruns && m->runs[i].start <= a && m->runs[i].end >= b;
}

/* room for one more run */
static int reserve_run(struct sim *m)
{
    if (m->nruns < m->runs_cap)
        return 0;
    size_t cap = m->runs_cap ? 2 * m->runs_cap : 64;
    struct run *r = realloc(m->runs, cap * sizeof(*r));
    if (!r)
        return -ENOMEM;
    m->runs = r;
    m->runs_cap = cap;
    return 0;
}

/* [a, b) in use (some of it may be already) */
static int mark_used(struct sim *m, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 0;
    /* the runs touching [a, b), adjacent ones too, become one: i the
     * first ending at a or later, j past the last starting at b or before */
    size_t i = run_after(m, a ? a - 1 : 0), j = i;
    while (j < m->nruns && m->runs[j].start <= b)
        j++;
    if (i == j) {
        int rc = reserve_run(m);
        if (rc < 0)
            return rc;
        memmove(m->runs + i + 1, m->runs + i, (m->nruns - i) * sizeof(*m->runs));
        m->runs[i] = (struct run){a, b};
        m->nruns++;
        return 0;
    }
    struct run merged = {m->runs[i].start < a ? m->runs[i].start : a, m->runs[j - 1].end > b ? m->runs[j - 1].end : b};
    m->runs[i] = merged;
    memmove(m->runs + i + 1, m->runs + j, (m->nruns - j) * sizeof(*m->runs));
    m->nruns -= j - i - 1;
    return 0;
}

/* [a, b), all in use (one run), freed */
static int mark_free(struct sim *m, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 0;
    size_t i = run_after(m, a);
    struct run r = m->runs[i];
    if (r.start < a && r.end > b) { /* split in two */
        int rc = reserve_run(m);
        if (rc < 0)
            return rc;
        memmove(m->runs + i + 1, m->runs + i, (m->nruns - i) * sizeof(*m->runs));
        m->nruns++;
        m->runs[i].end = a;
        m->runs[i + 1].start = b;
    } else if (r.start < a) {
        m->runs[i].end = a;
    } else if (r.end > b) {
        m->runs[i].start = b;
    } else {
        memmove(m->runs + i, m->runs + i + 1, (m->nruns - i - 1) * sizeof(*m->runs));
        m->nruns--;
    }
    return 0;
}

/* ---- the file, through the cache ---- */

static int evict(struct sim *m, struct slot *sl, uint8_t *data)
{
    if (!sl->valid || sl->lo >= sl->hi)
        return 0;
    uint64_t at = sl->cluster * m->cs;
    int rc = m->w->pwrite(m->w->opaque, at + sl->lo, data + sl->lo, sl->hi - sl->lo);
    if (rc < 0)
        return rc;
    if (m->written_end < at + sl->hi)
        m->written_end = at + sl->hi;
    sl->lo = sl->hi = 0;
    return 0;
}

/* cluster c's bytes in the cache, [from, to) of them about to be written
 * (the rest read back from the file where it was written before) */
static int cached(struct sim *m, uint64_t c, uint64_t from, uint64_t to, uint8_t **out)
{
    struct slot *sl = &m->slots[c % m->nslots];
    uint8_t *data = m->cache + (c % m->nslots) * m->cs;
    uint64_t at = c * m->cs;
    if (!sl->valid || sl->cluster != c) {
        int rc = evict(m, sl, data);
        if (rc < 0)
            return rc;
        sl->valid = false;
        if (from || to < m->cs) {
            uint64_t have = at >= m->written_end ? 0 : m->written_end - at < m->cs ? m->written_end - at : m->cs;
            if (have && (rc = m->w->pread(m->w->opaque, at, data, have)) < 0)
                return rc;
            memset(data + have, 0, m->cs - have);
        }
        *sl = (struct slot){.cluster = c, .lo = from, .hi = to, .valid = true};
    }
    if (from < sl->lo || sl->lo == sl->hi)
        sl->lo = from;
    if (to > sl->hi)
        sl->hi = to;
    *out = data;
    return 0;
}

/* bytes at off written (zeroes if data is NULL); the file at least as long */
static int put(struct sim *m, uint64_t off, const void *data, uint64_t len)
{
    for (uint64_t done = 0; done < len;) {
        uint64_t c = (off + done) / m->cs, in = (off + done) % m->cs;
        uint64_t n = m->cs - in < len - done ? m->cs - in : len - done;
        uint8_t *cl;
        int rc = cached(m, c, in, in + n, &cl);
        if (rc < 0)
            return rc;
        if (data)
            memcpy(cl + in, (const uint8_t *)data + done, n);
        else
            memset(cl + in, 0, n);
        done += n;
    }
    if (m->file_len < off + len)
        m->file_len = off + len;
    return 0;
}

static int flush_cache(struct sim *m)
{
    for (uint64_t i = 0; i < m->nslots; i++) {
        int rc = evict(m, &m->slots[i], m->cache + i * m->cs);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* the table as it is, at its place (QEMU writes it whole; entries added
 * since are in it too: it is written once it is final) */
static int put_table(struct sim *m)
{
    uint64_t per_cluster = m->per_table_cluster;
    uint8_t *cl;
    for (uint64_t k = 0; k < m->table_size / per_cluster; k++) {
        int rc = cached(m, m->table_off + k, 0, m->cs, &cl);
        if (rc < 0)
            return rc;
        for (uint64_t i = 0; i < per_cluster; i++) {
            uint64_t b = m->table[k * per_cluster + i];
            put_be64p(cl + 8 * i, b * m->cs);
        }
    }
    if (m->file_len < m->table_off * m->cs + m->table_size * 8)
        m->file_len = m->table_off * m->cs + m->table_size * 8;
    return 0;
}

/* ---- QEMU's allocator ---- */

/* alloc_clusters_noref: the first n free clusters from free_index on
 * (QEMU steps past each cluster in use; a run in use is stepped over whole) */
static uint64_t alloc_noref(struct sim *m, uint64_t n)
{
    uint64_t p = m->free_index;
    for (;;) {
        size_t i = run_after(m, p);
        if (i == m->nruns || m->runs[i].start >= p + n)
            break;
        p = m->runs[i].end;
    }
    m->free_index = p + n;
    return p;
}

static int update_rc(struct sim *m, uint64_t start, uint64_t n, int delta);

/* qcow2_refcount_metadata_size: the refcount blocks for `clusters` */
static uint64_t refblocks_for(const struct sim *m, uint64_t clusters, bool generous)
{
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = (clusters + table + blocks + m->per_block - 1) / m->per_block;
        table = (blocks + m->per_table_cluster - 1) / m->per_table_cluster;
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += (table + 1) / 2;
            n = 0;
            generous = false;
        }
    } while (n != last);
    return blocks;
}

/* qcow2_refcount_area (not exact: the table half as large again), with
 * new_block entered at new_index */
static int refcount_area(struct sim *m, uint64_t start, uint64_t new_index, uint64_t new_block)
{
    uint64_t total = refblocks_for(m, start, true);
    uint64_t area_index = start >> m->rb_bits;
    uint64_t size = total + (total + 1) / 2;
    size = (size + m->per_table_cluster - 1) / m->per_table_cluster * m->per_table_cluster;
    if (size * 8 > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t *table = calloc(size, sizeof(uint64_t));
    if (!table)
        return -ENOMEM;
    uint64_t keep = size > m->max_index ? m->max_index + 1 : size;
    memcpy(table, m->table, (keep < m->table_size ? keep : m->table_size) * sizeof(uint64_t));
    table[new_index] = new_block;
    uint64_t missing = 0;
    for (uint64_t i = area_index; i < total; i++)
        missing += !table[i];
    uint64_t table_off = start + missing, end = table_off + size / m->per_table_cluster, at = start;
    for (uint64_t i = area_index; i < total; i++)
        if (!table[i])
            table[i] = at++;
    uint64_t counted_end = end < total * m->per_block ? end : total * m->per_block;
    int rc = mark_used(m, start, counted_end);
    /* the old table is final: its bytes stay in the file */
    if (rc == 0)
        rc = put_table(m);
    if (rc < 0) {
        free(table);
        return rc;
    }
    uint64_t old_off = m->table_off, old_clusters = m->table_size / m->per_table_cluster;
    free(m->table);
    m->table = table;
    m->table_size = size;
    m->table_off = table_off;
    m->max_index = 0;
    for (uint64_t i = 0; i < size; i++)
        if (table[i])
            m->max_index = i;
    if (m->file_len < table_off * m->cs + size * 8)
        m->file_len = table_off * m->cs + size * 8;
    return update_rc(m, old_off, old_clusters, -1);
}

/* alloc_refcount_block: 0 if the block counting c exists, -EAGAIN once
 * it was made (the caller starts over) */
static int alloc_block(struct sim *m, uint64_t c)
{
    uint64_t idx = c >> m->rb_bits;
    if (idx < m->table_size && m->table[idx])
        return 0;
    uint64_t block = alloc_noref(m, 1);
    int rc;
    if (block >> m->rb_bits == idx)
        rc = mark_used(m, block, block + 1); /* it counts itself */
    else
        rc = update_rc(m, block, 1, 1);
    if (rc < 0)
        return rc;
    if (idx < m->table_size) {
        m->table[idx] = block;
        if (idx > m->max_index)
            m->max_index = idx;
        return -EAGAIN;
    }
    uint64_t used = (c + 1 > block + 1 ? c + 1 : block + 1);
    used = (used + m->per_block - 1) / m->per_block;
    rc = refcount_area(m, used * m->per_block, idx, block);
    return rc < 0 ? rc : -EAGAIN;
}

/* update_refcount by delta (+1: clusters free before, -1: in use) */
static int update_rc(struct sim *m, uint64_t start, uint64_t n, int delta)
{
    for (uint64_t c = start; c < start + n;) {
        uint64_t seg_end = ((c >> m->rb_bits) + 1) << m->rb_bits;
        if (seg_end > start + n)
            seg_end = start + n;
        int rc = alloc_block(m, c);
        if (rc == -EAGAIN && m->free_index > start)
            m->free_index = start;
        if (rc < 0) {
            (void)update_rc(m, start, c - start, -delta);
            return rc;
        }
        if (delta > 0) {
            /* a count of 2 is no new image's: never replayed */
            if (!all_free(m, c, seg_end))
                return -EIO;
            rc = mark_used(m, c, seg_end);
        } else {
            if (!all_used(m, c, seg_end))
                return -EIO;
            rc = mark_free(m, c, seg_end);
            if (c < m->free_index)
                m->free_index = c;
        }
        if (rc < 0)
            return rc;
        c = seg_end;
    }
    return 0;
}

static void put_refcount(uint8_t *block, uint32_t order, uint64_t i, uint64_t v)
{
    uint32_t bits = 1u << order;
    if (bits >= 8) {
        for (uint32_t b = 0; b < bits / 8; b++)
            block[i * (bits / 8) + b] = (uint8_t)(v >> (bits - 8 - 8 * b));
    } else {
        uint64_t bit = i * bits;
        block[bit / 8] |= (uint8_t)(v << (bit % 8));
    }
}

/* qcow2_alloc_clusters: n clusters at the first free run, again when the
 * refcount update made a block (it may sit where the run was to be) */
static int alloc_clusters(struct sim *m, uint64_t n, uint64_t *at)
{
    int rc;
    do {
        *at = alloc_noref(m, n);
        rc = update_rc(m, *at, n, 1);
    } while (rc == -EAGAIN);
    return rc;
}

/* qcow2_alloc_clusters_at: as many of the n clusters from `at` on as are
 * free, *got of them (0: the first is in use) */
static int alloc_clusters_at(struct sim *m, uint64_t at, uint64_t n, uint64_t *got)
{
    int rc;
    do {
        size_t i = run_after(m, at);
        uint64_t free_to = i == m->nruns ? UINT64_MAX : m->runs[i].start;
        *got = free_to <= at ? 0 : free_to - at < n ? free_to - at : n;
        rc = update_rc(m, at, *got, 1);
    } while (rc == -EAGAIN);
    return rc;
}

/* get_cluster_table: the L2 table of L1 entry l1i, made if missing
 * (l2_allocate: a cluster at the first free one, written empty); its
 * cluster index in l1[l1i] */
static int l2_table(struct sim *m, uint64_t *l1, uint64_t l1i)
{
    if (l1[l1i])
        return 0;
    uint64_t t;
    int rc = alloc_clusters(m, 1, &t);
    if (rc == 0)
        rc = put(m, t * m->cs, NULL, m->cs);
    if (rc == 0)
        l1[l1i] = t;
    return rc;
}

/* entries l2i.. of L2 table t: n clusters from host cluster run on (COPIED) */
static int put_entries(struct sim *m, uint64_t t, uint64_t l2i, uint32_t entry_bytes, uint64_t run, uint64_t n)
{
    uint8_t *cl;
    int rc = cached(m, t, l2i * entry_bytes, (l2i + n) * entry_bytes, &cl);
    for (uint64_t k = 0; rc == 0 && k < n; k++)
        put_be64p(cl + (l2i + k) * entry_bytes, ((run + k) * m->cs) | QCOW_OFLAG_COPIED);
    return rc;
}

/* preallocate_co(0, size) with preallocation=metadata: qcow2_alloc_host_offset
 * request by request. A request maps from a table's first free entry on:
 * the table (handle_copied makes it), then the entries' clusters in one
 * run (handle_alloc); it goes on into the next table only while that one's
 * clusters can follow the run (qcow2_alloc_clusters_at), which the next
 * table's own cluster, taken first, usually prevents. Each entry points to
 * its cluster (COPIED); the file is made as long as the last request's end. */
static int prealloc_metadata(struct sim *m, uint64_t size, uint32_t entry_bytes, uint64_t *l1)
{
    const uint64_t inv = UINT64_MAX, cs = m->cs, per_table = cs / entry_bytes;
    const uint64_t max_request = 0x7fffffffull & ~511ull; /* BDRV_REQUEST_MAX_BYTES */
    uint64_t offset = 0, bytes = size, host = inv, cur = 0;
    int rc = 0;
    while (rc == 0 && bytes) {
        cur = bytes < (0x7fffffffull / cs) * cs ? bytes : (0x7fffffffull / cs) * cs;
        uint64_t start = offset, remaining = cur, cluster_off = inv, step = 0;
        host = inv;
        for (;;) {
            if (host == inv && cluster_off != inv)
                host = cluster_off;
            start += step;
            remaining -= step;
            if (cluster_off != inv)
                cluster_off += step;
            if (!remaining)
                break;
            step = remaining;
            uint64_t gc = start / cs, l1i = gc / per_table, l2i = gc % per_table, in = start % cs;
            if ((rc = l2_table(m, l1, l1i)) < 0)
                return rc;
            uint64_t n = (in + step + cs - 1) / cs, run;
            if (n > per_table - l2i)
                n = per_table - l2i;
            if (n > max_request / cs)
                n = max_request / cs;
            if (cluster_off == inv) {
                rc = alloc_clusters(m, n, &run);
            } else {
                run = cluster_off / cs;
                rc = alloc_clusters_at(m, run, n, &n);
            }
            if (rc < 0)
                return rc;
            if (!n)
                break; /* the run cannot go on: the request ends here */
            if ((rc = put_entries(m, l1[l1i], l2i, entry_bytes, run, n)) < 0)
                return rc;
            if (step > n * cs - in)
                step = n * cs - in;
            cluster_off = run * cs + in;
        }
        cur -= remaining;
        offset += cur;
        bytes -= cur;
    }
    if (host != inv && m->file_len < host + cur)
        m->file_len = host + cur;
    return rc;
}

/* every refcount block as it ends up: 1 for each cluster of the runs */
static int put_blocks(struct sim *m)
{
    for (uint64_t i = 0; i < m->table_size; i++) {
        if (!m->table[i])
            continue;
        uint8_t *cl;
        int rc = cached(m, m->table[i], 0, m->cs, &cl);
        if (rc < 0)
            return rc;
        memset(cl, 0, m->cs);
        uint64_t first = i * m->per_block, last = first + m->per_block;
        for (size_t r = run_after(m, first); r < m->nruns && m->runs[r].start < last; r++)
            for (uint64_t c = m->runs[r].start > first ? m->runs[r].start : first; c < m->runs[r].end && c < last; c++)
                put_refcount(cl, m->refcount_order, c - first, 1);
        if (m->file_len < (m->table[i] + 1) * m->cs)
            m->file_len = (m->table[i] + 1) * m->cs;
    }
    return 0;
}

/* the L1 table: each L2 table's offset (COPIED) */
static int put_l1(struct sim *m, uint64_t l1_at, const uint64_t *l1, uint64_t l1_entries)
{
    uint8_t e[8 * 64];
    for (uint64_t i = 0; i < l1_entries;) {
        uint64_t n = l1_entries - i < 64 ? l1_entries - i : 64;
        for (uint64_t k = 0; k < n; k++)
            put_be64p(e + 8 * k, l1[i + k] ? (l1[i + k] * m->cs) | QCOW_OFLAG_COPIED : 0);
        int rc = put(m, l1_at * m->cs + 8 * i, e, 8 * n);
        if (rc < 0)
            return rc;
        i += n;
    }
    return 0;
}

int qcow2_plan_create(uint64_t cluster_size, uint32_t refcount_order, uint64_t l1_entries, uint64_t metadata_size,
                      uint32_t l2_entry_bytes, const struct qcow2_plan_writer *w, struct qcow2_create_plan *out)
{
    struct sim m = {.cs = cluster_size, .per_table_cluster = cluster_size / 8, .refcount_order = refcount_order, .w = w};
    uint32_t cbits = 0;
    while ((1ull << cbits) < cluster_size)
        cbits++;
    m.rb_bits = cbits + 3 - refcount_order;
    m.per_block = 1ull << m.rb_bits;
    m.table_size = m.per_table_cluster;
    m.table = calloc(m.table_size, sizeof(uint64_t));
    m.nslots = CACHE_BYTES / cluster_size < 4 ? 4 : CACHE_BYTES / cluster_size;
    m.slots = calloc(m.nslots, sizeof(*m.slots));
    m.cache = malloc(m.nslots * cluster_size);
    uint64_t *l1 = calloc(l1_entries + 1, sizeof(uint64_t)); /* each entry's L2 table (cluster index), 0 if none */
    int rc = m.table && m.slots && m.cache && l1 ? 0 : -ENOMEM;
    /* header, table (entry 0: the block at cluster 2), the block empty;
     * then the three counted (qemu-img's first allocation) */
    if (rc == 0) {
        m.table_off = 1;
        m.table[0] = 2;
        rc = put(&m, 0, NULL, 3 * cluster_size);
    }
    uint64_t got, l1_clusters = (l1_entries * 8 + cluster_size - 1) / cluster_size, l1_at = 0;
    if (rc == 0)
        rc = alloc_clusters(&m, 3, &got);
    if (rc == 0 && l1_clusters)
        rc = alloc_clusters(&m, l1_clusters, &l1_at);
    /* the L1 table's entries as written at its growth */
    if (rc == 0 && l1_clusters)
        rc = put(&m, l1_at * cluster_size, NULL, l1_entries * 8);
    if (rc == 0 && metadata_size)
        rc = prealloc_metadata(&m, metadata_size, l2_entry_bytes, l1);
    if (rc == 0 && l1_clusters)
        rc = put_l1(&m, l1_at, l1, l1_entries);
    if (rc == 0)
        rc = put_blocks(&m);
    if (rc == 0)
        rc = put_table(&m);
    if (rc == 0)
        rc = flush_cache(&m);
    if (rc == 0) {
        out->length = m.file_len;
        out->l1_offset = l1_at * cluster_size;
        out->reftable_offset = m.table_off * cluster_size;
        out->reftable_clusters = (uint32_t)(m.table_size / m.per_table_cluster);
    }
    free(l1);
    free(m.runs);
    free(m.table);
    free(m.slots);
    free(m.cache);
    return rc;
}
