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
 * old one freed (its bytes stay in the file). Those steps are replayed
 * here on an image held in memory, for the bytes the file ends with.
 */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct sim {
    uint64_t cs, per_block, per_table_cluster;
    uint32_t rb_bits, refcount_order;
    uint64_t *rc, rc_len;          /* refcount of each cluster, where a block counts it */
    uint64_t *table, table_size;   /* refcount block (cluster index) of each entry, 0 if none */
    uint64_t table_off, max_index; /* table's cluster; highest entry in use */
    uint64_t free_index;           /* QEMU's free_cluster_index */
    uint8_t *buf;                  /* the file's bytes */
    uint64_t buf_len, file_len;
    uint8_t *written; /* per cluster: QEMU wrote in it (else a hole) */
    uint64_t written_len;
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

static int put(struct sim *m, uint64_t off, const void *data, uint64_t len)
{
    int rc = grow((void **)&m->buf, &m->buf_len, off + len, 1);
    if (rc < 0)
        return rc;
    if (data)
        memcpy(m->buf + off, data, len);
    else
        memset(m->buf + off, 0, len);
    if (m->file_len < off + len)
        m->file_len = off + len;
    uint64_t last = len ? (off + len - 1) / m->cs : off / m->cs;
    if ((rc = grow((void **)&m->written, &m->written_len, last + 1, 1)) < 0)
        return rc;
    memset(m->written + off / m->cs, 1, last + 1 - off / m->cs);
    return 0;
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
    uint64_t bytes = m->table_size * 8;
    int rc = put(m, m->table_off * m->cs, NULL, bytes);
    for (uint64_t i = 0; rc == 0 && i < m->table_size; i++)
        put_be64p(m->buf + m->table_off * m->cs + 8 * i, m->table[i] * m->cs);
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
        uint8_t e[8];
        put_be64p(e, block * m->cs);
        rc = put(m, m->table_off * m->cs + idx * 8, e, 8);
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

int qcow2_plan_create(uint64_t cluster_size, uint32_t refcount_order, uint64_t l1_entries, struct qcow2_create_plan *out)
{
    struct sim m = {.cs = cluster_size, .per_table_cluster = cluster_size / 8, .refcount_order = refcount_order};
    uint32_t cbits = 0;
    while ((1ull << cbits) < cluster_size)
        cbits++;
    m.rb_bits = cbits + 3 - refcount_order;
    m.per_block = 1ull << m.rb_bits;
    m.table_size = m.per_table_cluster;
    m.table = calloc(m.table_size, sizeof(uint64_t));
    int rc = m.table ? 0 : -ENOMEM;
    /* header, table (entry 0: the block at cluster 2), the block empty;
     * then the three counted (qemu-img's first allocation) */
    if (rc == 0) {
        m.table_off = 1;
        m.table[0] = 2;
        rc = put(&m, 0, NULL, 3 * cluster_size);
    }
    if (rc == 0)
        rc = put_table(&m);
    uint64_t got;
    while (rc == 0) {
        got = alloc_noref(&m, 3);
        if ((rc = update_rc(&m, got, 3, 1)) != -EAGAIN)
            break;
    }
    uint64_t l1_clusters = (l1_entries * 8 + cluster_size - 1) / cluster_size, l1 = 0;
    while (rc == 0 && l1_clusters) {
        l1 = alloc_noref(&m, l1_clusters);
        if ((rc = update_rc(&m, l1, l1_clusters, 1)) != -EAGAIN)
            break;
        rc = 0;
    }
    /* the L1 table's entries, then every block as it ends up */
    if (rc == 0 && l1_clusters)
        rc = put(&m, l1 * cluster_size, NULL, l1_entries * 8);
    for (uint64_t i = 0; rc == 0 && i < m.table_size; i++) {
        if (!m.table[i])
            continue;
        uint64_t at = m.table[i] * cluster_size;
        if ((rc = put(&m, at, NULL, cluster_size)) < 0)
            break;
        for (uint64_t k = 0; k < m.per_block; k++) {
            uint64_t c = i * m.per_block + k;
            if (c < m.rc_len && m.rc[c])
                put_refcount(m.buf + at, refcount_order, k, m.rc[c]);
        }
    }
    free(m.rc);
    free(m.table);
    if (rc < 0) {
        free(m.buf);
        free(m.written);
        return rc;
    }
    out->buf = m.buf;
    out->written = m.written;
    out->length = m.file_len;
    out->l1_offset = l1 * cluster_size;
    out->reftable_offset = m.table_off * cluster_size;
    out->reftable_clusters = (uint32_t)(m.table_size / m.per_table_cluster);
    return 0;
}
