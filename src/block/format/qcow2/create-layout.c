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
 * tables they need come amid them. Those steps are replayed here on an
 * image held in memory (only the clusters QEMU writes), for the bytes the
 * file ends with. The runtime allocator (refcount.c) places its blocks
 * otherwise, at the end of the file; its hot path is left alone.
 */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* more clusters than this in the file (a pointer each) and
 * preallocation=metadata is not replayed (qcow2_plan_create: -E2BIG) */
#define SIM_MAX_CLUSTERS (1ull << 22)

struct sim {
    uint64_t cs, per_block, per_table_cluster;
    uint32_t rb_bits, refcount_order;
    uint64_t *rc, rc_len;          /* refcount of each cluster, where a block counts it */
    uint64_t *table, table_size;   /* refcount block (cluster index) of each entry, 0 if none */
    uint64_t table_off, max_index; /* table's cluster; highest entry in use */
    uint64_t free_index;           /* QEMU's free_cluster_index */
    uint8_t **cl;                  /* the file: each cluster's bytes, NULL where QEMU never writes (a hole) */
    uint64_t cl_len, file_len;
    uint64_t cl_limit; /* 0: none */
};

static int grow(void **p, uint64_t *len, uint64_t need, size_t unit)
{
    if (need <= *len)
        return 0;
    uint64_t n = *len ? *len : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * unit);
    if (!q)
        return -ENOMEM;
    memset((uint8_t *)q + *len * unit, 0, (n - *len) * unit);
    *p = q;
    *len = n;
    return 0;
}

/* bytes at off written (zeroes if data is NULL); the file at least as long */
static int put(struct sim *m, uint64_t off, const void *data, uint64_t len)
{
    uint64_t first = off / m->cs, last = len ? (off + len - 1) / m->cs : first;
    if (m->cl_limit && last >= m->cl_limit)
        return -E2BIG;
    int rc = grow((void **)&m->cl, &m->cl_len, last + 1, sizeof(uint8_t *));
    if (rc < 0)
        return rc;
    for (uint64_t c = first; c <= last; c++) {
        if (!m->cl[c] && !(m->cl[c] = calloc(1, m->cs)))
            return -ENOMEM;
        uint64_t from = c == first ? off % m->cs : 0;
        uint64_t to = c == last && len ? (off + len - 1) % m->cs + 1 : m->cs;
        if (!len)
            to = from;
        if (data)
            memcpy(m->cl[c] + from, (const uint8_t *)data + (c * m->cs + from - off), to - from);
        else
            memset(m->cl[c] + from, 0, to - from);
    }
    if (m->file_len < off + len)
        m->file_len = off + len;
    return 0;
}

static int put_u64(struct sim *m, uint64_t off, uint64_t v)
{
    uint8_t e[8];
    put_be64p(e, v);
    return put(m, off, e, 8);
}

static uint64_t get_rc(const struct sim *m, uint64_t c)
{
    uint64_t idx = c >> m->rb_bits;
    if (idx >= m->table_size || !m->table[idx] || c >= m->rc_len)
        return 0;
    return m->rc[c];
}

static int set_rc(struct sim *m, uint64_t c, uint64_t v)
{
    int rc = grow((void **)&m->rc, &m->rc_len, c + 1, sizeof(uint64_t));
    if (rc == 0)
        m->rc[c] = v;
    return rc;
}

/* the table as it is, at its place (QEMU writes it whole) */
static int put_table(struct sim *m)
{
    int rc = put(m, m->table_off * m->cs, NULL, m->table_size * 8);
    for (uint64_t i = 0; rc == 0 && i < m->table_size; i++)
        if (m->table[i])
            rc = put_u64(m, m->table_off * m->cs + 8 * i, m->table[i] * m->cs);
    return rc;
}

/* alloc_clusters_noref */
static uint64_t alloc_noref(struct sim *m, uint64_t n)
{
retry:
    for (uint64_t i = 0; i < n; i++)
        if (get_rc(m, m->free_index++))
            goto retry;
    return m->free_index - n;
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
    int rc = 0;
    for (uint64_t i = area_index; rc == 0 && i < total; i++) {
        if (!table[i])
            table[i] = at++;
        uint64_t first = i * m->per_block;
        for (uint64_t c = first > start ? first : start; rc == 0 && c < end && c < first + m->per_block; c++)
            rc = set_rc(m, c, 1);
    }
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
    rc = put_table(m);
    return rc < 0 ? rc : update_rc(m, old_off, old_clusters, -1);
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
        rc = set_rc(m, block, 1); /* it counts itself */
    else
        rc = update_rc(m, block, 1, 1);
    if (rc < 0)
        return rc;
    if (idx < m->table_size) {
        m->table[idx] = block;
        if (idx > m->max_index)
            m->max_index = idx;
        rc = put_u64(m, m->table_off * m->cs + idx * 8, block * m->cs);
        return rc < 0 ? rc : -EAGAIN;
    }
    uint64_t used = (c + 1 > block + 1 ? c + 1 : block + 1);
    used = (used + m->per_block - 1) / m->per_block;
    rc = refcount_area(m, used * m->per_block, idx, block);
    return rc < 0 ? rc : -EAGAIN;
}

/* update_refcount */
static int update_rc(struct sim *m, uint64_t start, uint64_t n, int delta)
{
    uint64_t old_idx = UINT64_MAX;
    for (uint64_t c = start; c < start + n; c++) {
        if (c >> m->rb_bits != old_idx) {
            int rc = alloc_block(m, c);
            if (rc == -EAGAIN && m->free_index > start)
                m->free_index = start;
            if (rc < 0) {
                (void)update_rc(m, start, c - start, -delta);
                return rc;
            }
        }
        old_idx = c >> m->rb_bits;
        int rc = grow((void **)&m->rc, &m->rc_len, c + 1, sizeof(uint64_t));
        if (rc < 0)
            return rc;
        uint64_t v = m->rc[c] + (uint64_t)(int64_t)delta;
        if (v == 0 && c < m->free_index)
            m->free_index = c;
        m->rc[c] = v;
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
        uint64_t i = 0;
        while (i < n && !get_rc(m, at + i))
            i++;
        *got = i;
        rc = update_rc(m, at, i, 1);
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
            for (uint64_t k = 0; rc == 0 && k < n; k++)
                rc = put_u64(m, l1[l1i] * cs + (l2i + k) * entry_bytes, ((run + k) * cs) | QCOW_OFLAG_COPIED);
            if (rc < 0)
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


void qcow2_plan_free(struct qcow2_create_plan *plan)
{
    for (uint64_t c = 0; plan->clusters && c < plan->nclusters; c++)
        free(plan->clusters[c]);
    free(plan->clusters);
    plan->clusters = NULL;
    plan->nclusters = 0;
}

int qcow2_plan_create(uint64_t cluster_size, uint32_t refcount_order, uint64_t l1_entries, uint64_t metadata_size,
                      uint32_t l2_entry_bytes, struct qcow2_create_plan *out)
{
    struct sim m = {.cs = cluster_size, .per_table_cluster = cluster_size / 8, .refcount_order = refcount_order};
    uint32_t cbits = 0;
    while ((1ull << cbits) < cluster_size)
        cbits++;
    m.rb_bits = cbits + 3 - refcount_order;
    m.per_block = 1ull << m.rb_bits;
    m.table_size = m.per_table_cluster;
    m.table = calloc(m.table_size, sizeof(uint64_t));
    if (metadata_size)
        m.cl_limit = SIM_MAX_CLUSTERS;
    uint64_t *l1 = calloc(l1_entries + 1, sizeof(uint64_t)); /* each entry's L2 table (cluster index), 0 if none */
    int rc = m.table && l1 ? 0 : -ENOMEM;
    /* header, table (entry 0: the block at cluster 2), the block empty;
     * then the three counted (qemu-img's first allocation) */
    if (rc == 0) {
        m.table_off = 1;
        m.table[0] = 2;
        rc = put(&m, 0, NULL, 3 * cluster_size);
    }
    if (rc == 0)
        rc = put_table(&m);
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
    for (uint64_t i = 0; rc == 0 && i < l1_entries; i++)
        if (l1[i])
            rc = put_u64(&m, l1_at * cluster_size + 8 * i, (l1[i] * cluster_size) | QCOW_OFLAG_COPIED);
    /* every block as it ends up */
    for (uint64_t i = 0; rc == 0 && i < m.table_size; i++) {
        if (!m.table[i])
            continue;
        uint64_t at = m.table[i] * cluster_size;
        if ((rc = put(&m, at, NULL, cluster_size)) < 0)
            break;
        for (uint64_t k = 0; k < m.per_block; k++) {
            uint64_t c = i * m.per_block + k;
            if (c < m.rc_len && m.rc[c])
                put_refcount(m.cl[m.table[i]], refcount_order, k, m.rc[c]);
        }
    }
    free(l1);
    free(m.rc);
    free(m.table);
    out->clusters = m.cl;
    out->nclusters = m.cl_len;
    if (rc < 0) {
        qcow2_plan_free(out);
        return rc;
    }
    out->length = m.file_len;
    out->l1_offset = l1_at * cluster_size;
    out->reftable_offset = m.table_off * cluster_size;
    out->reftable_clusters = (uint32_t)(m.table_size / m.per_table_cluster);
    return 0;
}
