/* SPDX-License-Identifier: MIT */
/*
 * qcow2 refcounts: the table, one cached block (written through), cluster
 * allocation at the first free host clusters, new refcount blocks and a
 * growing refcount table. The caller holds s->lock.
 */
#include "qcow2.h"

#include "vbd/error.h"
#include "vbd/iov.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rb_bits(const struct qcow2_state *s) /* log2 of refcounts per block */
{
    return s->cluster_bits + 3 - s->refcount_order;
}

/* check: a bad entry is kept aside (reftable_bad) for check to report, as
 * qemu-img does, and to rebuild the structure without it (-r all). */
int qcow2_load_reftable(struct qcow2_state *s, bool check, struct vbd_error **err)
{
    uint64_t bytes = (uint64_t)s->refcount_table_clusters * s->cluster_size;
    s->reftable_entries = bytes / 8;
    s->reftable = malloc(bytes);
    if (!s->reftable || vbd_node_co_pread(s->n->file, s->refcount_table_offset, s->reftable, bytes) < 0) {
        vbd_error_setf(err, EIO, "Could not read the qcow2 refcount table");
        return -EIO;
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        s->reftable[i] = be64(s->reftable[i]);
        if ((s->reftable[i] & ~REFT_OFFSET_MASK || (s->reftable[i] & (s->cluster_size - 1))) && check) {
            if (!s->reftable_bad && !(s->reftable_bad = calloc(s->reftable_entries, 8))) {
                vbd_error_setf(err, ENOMEM, "Could not allocate the qcow2 refcount table");
                return -ENOMEM;
            }
            s->reftable_bad[i] = s->reftable[i];
            s->reftable[i] = 0;
        } else if (s->reftable[i] & ~REFT_OFFSET_MASK || (s->reftable[i] & (s->cluster_size - 1))) {
            vbd_error_setf(err, EINVAL, "qcow2 refcount table entry %llu (0x%llx) is not cluster aligned",
                           (unsigned long long)i, (unsigned long long)s->reftable[i]);
            return -EINVAL;
        }
    }
    if (s->rc_nslots < 2)
        s->rc_nslots = 2;
    s->rc_slots = calloc((size_t)s->rc_nslots, sizeof(*s->rc_slots));
    if (!s->rc_slots) {
        vbd_error_setf(err, ENOMEM, "Could not allocate the qcow2 refcount cache");
        return -ENOMEM;
    }
    return 0;
}

/* With lazy refcounts the refcounts on disk may fall behind the tables
 * that use them; the header's dirty flag says so, and it must reach the
 * disk before the first refcount change it covers (a crash in between
 * would leave a refcount the repairing open never looks at). */
static int lazy_dirty_first(struct qcow2_state *s)
{
    if (!qcow2_lazy(s) || (s->incompat & QCOW2_INCOMPAT_DIRTY))
        return 0;
    return qcow2_update_incompat(s, QCOW2_INCOMPAT_DIRTY, 0);
}

/* Dirty blocks are written back lazily: when their slot is reused, and by
 * qcow2_write_refcounts()/qcow2_flush_refcounts(), which every metadata
 * write that depends on refcounts goes through. */
static int write_slot(struct qcow2_state *s, struct qcow2_rc_slot *sl)
{
    if (!sl->dirty || !sl->offset)
        return 0;
    int rc = lazy_dirty_first(s);
    if (rc < 0)
        return rc;
    rc = vbd_node_co_pwrite(s->n->file, sl->offset, sl->data, s->cluster_size, 0);
    if (rc == 0)
        sl->dirty = false;
    return rc;
}

static int write_rc_blocks(struct qcow2_state *s)
{
    for (int i = 0; i < s->rc_nslots; i++) {
        int rc = write_slot(s, &s->rc_slots[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Every cached refcount block dropped unwritten: the blocks are no longer
 * the image's (the structure was replaced; the cache was clean or is moot). */
static void forget_all_slots(struct qcow2_state *s)
{
    for (int i = 0; i < s->rc_nslots; i++) {
        s->rc_slots[i].offset = 0;
        s->rc_slots[i].dirty = false;
    }
    s->rc_cur = NULL;
}

/* A slot for a new block: a free one, or the least recently used (written back first). */
static int take_slot(struct qcow2_state *s, struct qcow2_rc_slot **out)
{
    struct qcow2_rc_slot *v = &s->rc_slots[0];
    for (int i = 0; i < s->rc_nslots; i++) {
        struct qcow2_rc_slot *sl = &s->rc_slots[i];
        if (!sl->offset) {
            v = sl;
            break;
        }
        if (sl->lru < v->lru)
            v = sl;
    }
    int rc = write_slot(s, v);
    if (rc < 0)
        return rc;
    if (!v->data && !(v->data = vbd_alloc_aligned(4096, s->cluster_size)))
        return -ENOMEM;
    v->offset = 0;
    v->dirty = false;
    v->foreign = false;
    v->lru = ++s->lru_clock;
    *out = v;
    return 0;
}

static int load_block(struct qcow2_state *s, uint64_t off)
{
    if (s->rc_cur && s->rc_cur->offset == off)
        return 0;
    for (int i = 0; i < s->rc_nslots; i++)
        if (s->rc_slots[i].offset == off) {
            s->rc_cur = &s->rc_slots[i];
            s->rc_cur->lru = ++s->lru_clock;
            return 0;
        }
    struct qcow2_rc_slot *sl;
    s->rc_cur = NULL;
    int rc = take_slot(s, &sl);
    if (rc < 0)
        return rc;
    if (off + s->cluster_size > vbd_node_size(s->n->file))
        memset(sl->data, 0, s->cluster_size); /* allocated but never written: all zero */
    else if ((rc = vbd_node_co_pread(s->n->file, off, sl->data, s->cluster_size)) < 0)
        return rc;
    sl->offset = off;
    /* see set_refcount; a read-only image writes no block */
    sl->foreign = !s->read_only && qcow2_table_on_other_metadata(s, off);
    s->rc_cur = sl;
    return 0;
}

void qcow2_free_refcount_cache(struct qcow2_state *s)
{
    for (int i = 0; s->rc_slots && i < s->rc_nslots; i++)
        free(s->rc_slots[i].data);
    free(s->rc_slots);
    s->rc_slots = s->rc_cur = NULL;
}

/* entry i of a refcount block of 2^order-bit entries */
static uint64_t get_entry(uint32_t order, const uint8_t *b, uint64_t i)
{
    switch (order) {
    case 0: return (b[i / 8] >> (i % 8)) & 1;
    case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return b[i];
    case 4: return ((uint64_t)b[2 * i] << 8) | b[2 * i + 1];
    case 5: return get_be32p(b + 4 * i);
    default: return get_be64p(b + 8 * i);
    }
}

static void set_entry(uint32_t order, uint8_t *b, uint64_t i, uint64_t v)
{
    switch (order) {
    case 0: b[i / 8] = (uint8_t)((b[i / 8] & ~(1u << (i % 8))) | (v << (i % 8))); break;
    case 1: b[i / 4] = (uint8_t)((b[i / 4] & ~(3u << (2 * (i % 4)))) | (v << (2 * (i % 4)))); break;
    case 2: b[i / 2] = (uint8_t)((b[i / 2] & ~(15u << (4 * (i % 2)))) | (v << (4 * (i % 2)))); break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: b[2 * i] = (uint8_t)(v >> 8); b[2 * i + 1] = (uint8_t)v; break;
    case 5: put_be32p(b + 4 * i, (uint32_t)v); break;
    default: put_be64p(b + 8 * i, v);
    }
}

int qcow2_get_refcount(struct qcow2_state *s, uint64_t cluster, uint64_t *rc)
{
    uint64_t idx = cluster >> rb_bits(s);
    if (idx >= s->reftable_entries || !s->reftable[idx]) {
        *rc = 0;
        return 0;
    }
    int r = load_block(s, s->reftable[idx]);
    if (r < 0)
        return r;
    *rc = get_entry(s->refcount_order, s->rc_cur->data, cluster & ((1ull << rb_bits(s)) - 1));
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void rebuild_meta_index(struct qcow2_state *s)
{
    size_t need = s->l1_size + s->reftable_entries;
    if (need > s->meta_cap) {
        uint64_t *m = realloc(s->meta_index, need * sizeof(*m));
        if (!m)
            return; /* stays invalid: the next check tries again */
        s->meta_index = m;
        s->meta_cap = need;
    }
    size_t k = 0;
    for (uint32_t i = 0; i < s->l1_size; i++)
        if (s->l1[i] & L1E_OFFSET_MASK)
            s->meta_index[k++] = (s->l1[i] & L1E_OFFSET_MASK) >> s->cluster_bits;
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i])
            s->meta_index[k++] = s->reftable[i] >> s->cluster_bits;
    qsort(s->meta_index, k, sizeof(uint64_t), cmp_u64);
    s->nmeta = k;
    s->meta_valid = true;
}

/* The first index entry at or after host cluster c (the index valid). */
static size_t meta_index_lower(const struct qcow2_state *s, uint64_t c)
{
    size_t lo = 0, hi = s->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->meta_index[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A table that took a free L1 (or refcount table) entry goes into the
 * sorted index at once: invalidating it instead would sort the whole index
 * again after every new L2 table, O(n^2 log n) over a first full write. */
void qcow2_metadata_added(struct qcow2_state *s, uint64_t off)
{
    if (!s->meta_valid)
        return; /* rebuilt from the tables at the next check */
    if (s->nmeta == s->meta_cap) {
        s->meta_valid = false;
        return;
    }
    uint64_t c = off >> s->cluster_bits;
    size_t lo = meta_index_lower(s, c);
    memmove(&s->meta_index[lo + 1], &s->meta_index[lo], (s->nmeta - lo) * sizeof(*s->meta_index));
    s->meta_index[lo] = c;
    s->nmeta++;
}

/* The structures the header places: the header cluster, the active L1
 * table, the refcount table, the snapshot table, the snapshots' L1 tables
 * and the bitmap directory. */
static bool overlaps_fixed_metadata(struct qcow2_state *s, uint64_t off, uint64_t len)
{
#define OVERLAP(a, alen) ((a) < off + len && off < (a) + (alen))
    if (OVERLAP(0, s->cluster_size))
        return true;
    /* A guest write through an L2 entry that names the bitmap directory
     * landed on it, and the close wrote the directory back over the guest
     * data (QEMU's overlap check refuses that write: "overlaps with bitmap
     * directory"; qcow2-bitmap-dir-overlap.sh). */
    uint64_t dir_start, dir_end;
    if ((s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) && qcow2_bitmap_dir_range(s, &dir_start, &dir_end) &&
        dir_start < off + len && off < dir_end)
        return true;
    if (s->l1_size && OVERLAP(s->l1_table_offset, (uint64_t)s->l1_size * 8))
        return true;
    if (OVERLAP(s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size))
        return true;
    if (s->nb_snapshots && OVERLAP(s->snapshots_offset, s->snapshots_size))
        return true;
    if (s->nsnap_l1) { /* the snapshots' L1 tables: the last one starting before the end */
        size_t lo = 0, hi = s->nsnap_l1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (s->snap_l1[mid][0] < off + len)
                lo = mid + 1;
            else
                hi = mid;
        }
        /* tables may overlap each other only in a corrupt image: check back a few */
        for (size_t k = lo; k-- > 0 && lo - k <= 8;)
            if (OVERLAP(s->snap_l1[k][0], s->snap_l1[k][1]))
                return true;
    }
#undef OVERLAP
    return false;
}

/* Would [off, off+len) hit the header, the active L1 or L2 tables, the
 * refcount table or blocks, or the snapshot table? O(log n) per call: it
 * runs before every data write whose target came from the image. */
bool qcow2_overlaps_metadata(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    if (!len)
        return false;
    if (overlaps_fixed_metadata(s, off, len))
        return true;
    if (!s->meta_valid)
        rebuild_meta_index(s);
    if (!s->meta_valid) { /* out of memory: the slow way */
        for (uint64_t i = 0; i < s->reftable_entries; i++)
            if (s->reftable[i] && s->reftable[i] < off + len && off < s->reftable[i] + s->cluster_size)
                return true;
        return false;
    }
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    size_t lo = meta_index_lower(s, first);
    return lo < s->nmeta && s->meta_index[lo] <= last;
}

unsigned qcow2_overlap_kinds(struct qcow2_state *s, uint64_t off, uint64_t len)
{
#define OVERLAP(a, alen) ((a) < off + len && off < (a) + (alen))
    unsigned kinds = 0;
    if (!len)
        return 0;
    if (OVERLAP(0, s->cluster_size))
        kinds |= QCOW2_OL_MAIN_HEADER;
    if (s->l1_size && OVERLAP(s->l1_table_offset, (uint64_t)s->l1_size * 8))
        kinds |= QCOW2_OL_ACTIVE_L1;
    if (OVERLAP(s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size))
        kinds |= QCOW2_OL_REFCOUNT_TABLE;
    if (s->nb_snapshots && OVERLAP(s->snapshots_offset, s->snapshots_size))
        kinds |= QCOW2_OL_SNAPSHOT_TABLE;
    uint64_t dir_start, dir_end;
    if ((s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) && qcow2_bitmap_dir_range(s, &dir_start, &dir_end) &&
        dir_start < off + len && off < dir_end)
        kinds |= QCOW2_OL_BITMAP_DIRECTORY;
    for (uint32_t i = 0; i < s->nsnap_l1; i++)
        if (OVERLAP(s->snap_l1[i][0], s->snap_l1[i][1]))
            kinds |= QCOW2_OL_INACTIVE_L1;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t t = s->l1[i] & L1E_OFFSET_MASK;
        if (t && OVERLAP(t, s->cluster_size))
            kinds |= QCOW2_OL_ACTIVE_L2;
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i] && OVERLAP(s->reftable[i], s->cluster_size))
            kinds |= QCOW2_OL_REFCOUNT_BLOCK;
#undef OVERLAP
    return kinds;
}

/* Whether the one-cluster table at off, an L2 table or a refcount block the
 * image names, lies on other metadata: a structure the header places, or
 * another L2 table or refcount block (its cluster twice in the index). A
 * write to it would change that other structure too, as a hostile or
 * damaged L1 or refcount table entry makes it: QEMU's overlap check refuses
 * such a write and marks the image corrupt. */
bool qcow2_table_on_other_metadata(struct qcow2_state *s, uint64_t off)
{
    if (overlaps_fixed_metadata(s, off, s->cluster_size))
        return true;
    uint64_t c = off >> s->cluster_bits, uses = 0;
    if (!s->meta_valid)
        rebuild_meta_index(s);
    if (s->meta_valid) { /* sorted: a second entry of c follows the first */
        size_t lo = meta_index_lower(s, c);
        return lo + 1 < s->nmeta && s->meta_index[lo + 1] == c;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) /* out of memory: the slow way */
        uses += (s->l1[i] & L1E_OFFSET_MASK) && (s->l1[i] & L1E_OFFSET_MASK) >> s->cluster_bits == c;
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        uses += s->reftable[i] && s->reftable[i] >> s->cluster_bits == c;
    return uses > 1;
}

static int set_refcount(struct qcow2_state *s, uint64_t cluster, uint64_t value);

/* A new refcount table, large enough for `entries`, placed at the end of
 * the file; the header is switched to it only once it is on disk. */
static int grow_reftable(struct qcow2_state *s, uint64_t entries)
{
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t nclusters = (entries + per_cluster - 1) / per_cluster;
    nclusters += nclusters / 2 + 1;
    if (nclusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t new_entries = nclusters * per_cluster;
    int rc = lazy_dirty_first(s);
    if (rc < 0)
        return rc;
    uint64_t *table = calloc(new_entries, 8);
    if (!table)
        return -ENOMEM;
    memcpy(table, s->reftable, s->reftable_entries * 8);
    uint64_t start = s->file_end;
    uint64_t old_off = s->refcount_table_offset, old_clusters = s->refcount_table_clusters;
    uint64_t *old = s->reftable;
    s->reftable = table;
    s->reftable_entries = new_entries;
    qcow2_metadata_moved(s);
    s->file_end = start + nclusters * s->cluster_size;
    /* the new table's own clusters need refcounts (may add refcount blocks after it) */
    for (uint64_t c = 0; c < nclusters && rc == 0; c++)
        rc = set_refcount(s, (start >> s->cluster_bits) + c, 1);
    if (rc == 0) {
        uint64_t *disk = malloc(new_entries * 8);
        for (uint64_t i = 0; i < new_entries; i++)
            disk[i] = be64(table[i]);
        rc = vbd_node_co_pwrite(s->n->file, start, disk, new_entries * 8, 0);
        free(disk);
    }
    if (rc == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0) {
        uint8_t h[12];
        put_be64p(h, start);
        put_be32p(h + 8, (uint32_t)nclusters);
        rc = vbd_node_co_pwrite(s->n->file, 48, h, 12, 0);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
    }
    if (rc < 0) {
        s->reftable = old;
        s->reftable_entries = old_clusters * per_cluster;
        qcow2_metadata_moved(s);
        free(table);
        return rc;
    }
    s->refcount_table_offset = start;
    s->refcount_table_clusters = (uint32_t)nclusters;
    free(old);
    for (uint64_t c = 0; c < old_clusters; c++)
        set_refcount(s, (old_off >> s->cluster_bits) + c, 0); /* a failure only leaks */
    return 0;
}

/* The refcount block covering `cluster`, created if missing. */
static int ensure_block(struct qcow2_state *s, uint64_t cluster, uint64_t *block_off)
{
    uint64_t idx = cluster >> rb_bits(s);
    if (idx >= s->reftable_entries) {
        int rc = grow_reftable(s, idx + 1);
        if (rc < 0)
            return rc;
    }
    if (s->reftable[idx]) {
        *block_off = s->reftable[idx];
        return 0;
    }
    struct qcow2_rc_slot *sl;
    int rc = lazy_dirty_first(s);
    if (rc < 0)
        return rc;
    s->rc_cur = NULL;
    rc = take_slot(s, &sl);
    if (rc < 0)
        return rc;
    uint64_t off = s->file_end;
    uint64_t self = off >> s->cluster_bits;
    s->file_end = off + s->cluster_size;
    memset(sl->data, 0, s->cluster_size);
    if (self >> rb_bits(s) == idx)
        set_entry(s->refcount_order, sl->data, self & ((1ull << rb_bits(s)) - 1), 1); /* it describes itself */
    rc = vbd_node_co_pwrite(s->n->file, off, sl->data, s->cluster_size, 0);
    if (rc == 0)
        rc = qcow2_flush_refcounts(s); /* the block before the table entry that points to it */
    if (rc < 0)
        return rc;
    sl->offset = off;
    s->rc_cur = sl;
    s->reftable[idx] = off;
    qcow2_metadata_moved(s);
    /* An entry past the table on disk exists only while grow_reftable()
     * places a larger one (this block counts the new table's clusters):
     * that table is written whole from memory, this entry with it. At the
     * old table's offset it would land on whatever follows that table
     * (guest data, an L1 or L2 table). */
    if (idx < (uint64_t)s->refcount_table_clusters * (s->cluster_size / 8)) {
        uint8_t e[8];
        put_be64p(e, off);
        rc = vbd_node_co_pwrite(s->n->file, s->refcount_table_offset + idx * 8, e, 8, 0);
        if (rc < 0)
            return rc;
    }
    if (self >> rb_bits(s) != idx) {
        rc = set_refcount(s, self, 1);
        if (rc < 0)
            return rc;
    }
    *block_off = off;
    return 0;
}

static int set_refcount(struct qcow2_state *s, uint64_t cluster, uint64_t value)
{
    uint64_t off;
    int rc = ensure_block(s, cluster, &off);
    if (rc < 0)
        return rc;
    rc = load_block(s, off);
    if (rc < 0)
        return rc;
    /* a block on other metadata (the L1 table, an L2 table, ...): the
     * change would be written over that, as QEMU's overlap check refuses */
    if (s->rc_cur->foreign)
        return qcow2_signal_corruption(s, "refcount block on other metadata", off);
    uint64_t i = cluster & ((1ull << rb_bits(s)) - 1);
    set_entry(s->refcount_order, s->rc_cur->data, i, value);
    s->rc_cur->dirty = true;
    /* a freed cluster can be handed out again as anything: compressed data
     * must never again be packed into its tail */
    if (value == 0 && s->compress_pos && (s->compress_pos >> s->cluster_bits) == cluster)
        s->compress_pos = 0;
    return 0;
}

/* Allocation starts at file_end, taking what lies past it as free; but a
 * refcount block may count clusters past the end of the file (a file cut
 * short, a hostile image whose L2 entries point there), and handing such a
 * cluster out again would give two guest clusters one host cluster: a
 * write to one silently changes the other. QEMU's allocator asks the
 * refcounts wherever it looks; here file_end moves once, at a read-write
 * open, past the last cluster with a refcount. Only the blocks covering
 * clusters from file_end on are read, the last one with a refcount first:
 * in an image that is whole, one block. */
int qcow2_skip_counted_tail(struct qcow2_state *s)
{
    uint64_t per_block = 1ull << rb_bits(s);
    uint64_t first = (s->file_end >> s->cluster_bits) >> rb_bits(s);
    /* no host offset reaches 2^56 (an L2 entry's offset field): a refcount up there counts nothing */
    uint64_t limit = (1ull << 56) >> s->cluster_bits >> rb_bits(s);
    uint64_t last = s->reftable_entries < limit ? s->reftable_entries : limit;
    for (uint64_t idx = last; idx-- > first;) {
        if (!s->reftable[idx])
            continue;
        int rc = load_block(s, s->reftable[idx]);
        if (rc < 0)
            return rc;
        for (uint64_t i = per_block; i-- > 0;)
            if (get_entry(s->refcount_order, s->rc_cur->data, i)) {
                uint64_t end = ((idx << rb_bits(s)) + i + 1) << s->cluster_bits;
                if (end > s->file_end)
                    s->file_end = end;
                return 0;
            }
    }
    return 0;
}

/* Out of memory: the cluster keeps its space, nothing else happens. */
void qcow2_punch_later(struct qcow2_state *s, uint64_t cluster)
{
    if (s->nto_punch == s->to_punch_cap) {
        size_t cap = s->to_punch_cap ? 2 * s->to_punch_cap : 64;
        uint64_t *p = realloc(s->to_punch, cap * sizeof(*p));
        if (!p)
            return;
        s->to_punch = p;
        s->to_punch_cap = cap;
    }
    s->to_punch[s->nto_punch++] = cluster;
}

int qcow2_update_refcount(struct qcow2_state *s, uint64_t host_off, int64_t delta)
{
    uint64_t cluster = host_off >> s->cluster_bits, cur;
    int rc = qcow2_get_refcount(s, cluster, &cur);
    if (rc < 0)
        return rc;
    uint64_t max = s->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << s->refcount_order)) - 1;
    if ((delta < 0 && cur < (uint64_t)-delta) || (delta > 0 && max - cur < (uint64_t)delta))
        return -ERANGE;
    rc = set_refcount(s, cluster, cur + (uint64_t)delta);
    if (rc == 0 && cur + (uint64_t)delta == 0 && cluster < s->free_cluster_hint)
        s->free_cluster_hint = cluster;
    if (rc == 0 && cur + (uint64_t)delta == 0 && delta < 0 && s->punch_freed)
        qcow2_punch_later(s, cluster);
    return rc;
}

static int cmp_cluster(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Punches the noted clusters c[0, n) that are still free: runs of
 * neighbours as one range when merge, else each cluster alone. */
static void punch_clusters(struct qcow2_state *s, const uint64_t *c, size_t n, bool merge)
{
    for (size_t i = 0; i < n;) {
        /* only what is still free: a cluster handed out again since it was
         * noted is someone's data or metadata now */
        uint64_t refs = 1;
        if (qcow2_get_refcount(s, c[i], &refs) < 0 || refs ||
            qcow2_overlaps_metadata(s, c[i] << s->cluster_bits, s->cluster_size)) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (merge && j < n && c[j] == c[j - 1] + 1 && qcow2_get_refcount(s, c[j], &refs) == 0 && !refs &&
               !qcow2_overlaps_metadata(s, c[j] << s->cluster_bits, s->cluster_size))
            j++;
        uint64_t off = c[i] << s->cluster_bits, end = (c[j - 1] + 1) << s->cluster_bits;
        uint64_t size = vbd_node_size(s->n->file);
        if (end > size)
            end = size;
        if (off < end)
            (void)vbd_node_co_pdiscard(s->n->file, off, end - off);
        i = j;
    }
}

void qcow2_punch_freed_apart(struct qcow2_state *s, size_t alone)
{
    size_t n = s->nto_punch;
    s->nto_punch = 0;
    if (!n)
        return;
    if (alone > n)
        alone = n;
    uint64_t *c = s->to_punch;
    qsort(c, alone, sizeof(*c), cmp_cluster);
    size_t u = 0; /* a cluster noted twice (a block freed, then dropped) is punched once */
    for (size_t i = 0; i < alone; i++)
        if (!u || c[i] != c[u - 1])
            c[u++] = c[i];
    /* no L2 entry on disk names these clusters any more (the caller's
     * order); their refcounts of 0 reach the disk first, so that a crash
     * leaves no cluster counted in use that reads as zeroes: one sync for
     * all of them */
    if (qcow2_flush_refcounts(s) < 0)
        return;
    punch_clusters(s, c, u, true);
    punch_clusters(s, c + alone, n - alone, false);
}

void qcow2_punch_freed(struct qcow2_state *s)
{
    qcow2_punch_freed_apart(s, SIZE_MAX);
}

int64_t qcow2_alloc_clusters(struct qcow2_state *s, uint64_t count)
{
    uint64_t c = s->free_cluster_hint, run = 0, start = 0;
    uint64_t end_cluster = s->file_end >> s->cluster_bits;
    bool seen_free = false;
    /* look for a hole below the end of the file first, then append */
    while (run < count && c < end_cluster) {
        uint64_t rc;
        if (qcow2_get_refcount(s, c, &rc) < 0)
            return -EIO;
        if (rc == 0 && !qcow2_overlaps_metadata(s, c << s->cluster_bits, s->cluster_size)) {
            if (run++ == 0)
                start = c;
            seen_free = true;
        } else {
            run = 0;
            if (!seen_free) /* everything up to here is in use: the next search starts after it */
                s->free_cluster_hint = c + 1;
        }
        c++;
    }
    if (run < count) {
        if (!run)
            start = end_cluster;
        s->file_end = (start + count) << s->cluster_bits;
    }
    for (uint64_t i = 0; i < count; i++) {
        int r = set_refcount(s, start + i, 1);
        if (r < 0)
            return r;
    }
    if (s->free_cluster_hint == start)
        s->free_cluster_hint = start + count;
    if (((start + count) << s->cluster_bits) > s->file_end)
        s->file_end = (start + count) << s->cluster_bits;
    return (int64_t)(start << s->cluster_bits);
}

int qcow2_write_refcounts(struct qcow2_state *s)
{
    return write_rc_blocks(s);
}

int qcow2_flush_refcounts(struct qcow2_state *s)
{
    int rc = write_rc_blocks(s);
    return rc < 0 ? rc : vbd_node_co_flush(s->n->file);
}

/* The header's refcount table offset and size (bytes 48-59), made
 * stable: the switch to a new table, once it is written and flushed. */
static int write_reftable_pointer(struct qcow2_state *s, uint64_t table_off, uint64_t table_clusters)
{
    uint8_t h[12];
    put_be64p(h, table_off);
    put_be32p(h + 8, (uint32_t)table_clusters);
    int rc = vbd_node_co_pwrite(s->n->file, 48, h, 12, 0);
    return rc == 0 ? vbd_node_co_flush(s->n->file) : rc;
}

/* Replaces the refcount structure with one that holds count[k] for each
 * host cluster k < n, and 1 for its own clusters: the refcount blocks and
 * the table go from host cluster n on (past every cluster in use and the
 * end of the file: n counts them all), written and flushed before the header names them, so
 * that a crash leaves the old structure in effect. check -r all takes this
 * way where the old structure cannot be repaired in place (a block that is
 * also other metadata), as qemu-img check rebuilds it. Nothing in the
 * refcount cache may be dirty (check wrote it back first). */
int qcow2_rebuild_refcounts(struct qcow2_state *s, const uint64_t *count, uint64_t n)
{
    uint64_t cs = s->cluster_size, per_block = 1ull << rb_bits(s);
    uint64_t max = s->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << s->refcount_order)) - 1;
    for (uint64_t k = 0; k < n; k++)
        if (count[k] > max)
            return -ERANGE;
    uint64_t at = n;
    /* blocks for every cluster up to the structure's own end: it counts itself */
    uint64_t blocks = 0, tclusters = 0;
    for (;;) {
        uint64_t b = (at + blocks + tclusters + per_block - 1) / per_block, t = (b * 8 + cs - 1) / cs;
        if (b == blocks && t == tclusters)
            break;
        blocks = b;
        tclusters = t;
    }
    if (tclusters * cs > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t end = at + blocks + tclusters, entries = tclusters * cs / 8;
    uint8_t *blk = NULL;
    if (posix_memalign((void **)&blk, 4096, blocks * cs))
        blk = NULL;
    uint64_t *table = calloc(entries, 8), *disk = calloc(entries, 8);
    int rc = blk && table && disk ? 0 : -ENOMEM;
    if (rc == 0) {
        memset(blk, 0, blocks * cs);
        for (uint64_t k = 0; k < end; k++) {
            uint64_t v = k >= at ? 1 : k < n ? count[k] : 0;
            if (v)
                set_entry(s->refcount_order, blk + k / per_block * cs, k % per_block, v);
        }
        for (uint64_t i = 0; i < blocks; i++) {
            table[i] = (at + i) * cs;
            disk[i] = be64(table[i]);
        }
        rc = vbd_node_co_pwrite(s->n->file, at * cs, blk, blocks * cs, 0);
    }
    if (rc == 0)
        rc = vbd_node_co_pwrite(s->n->file, (at + blocks) * cs, disk, entries * 8, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    if (rc == 0)
        rc = write_reftable_pointer(s, (at + blocks) * cs, tclusters);
    free(blk);
    free(disk);
    if (rc < 0) {
        free(table);
        return rc;
    }
    /* the old blocks are no longer the image's: the cache forgets them */
    forget_all_slots(s);
    free(s->reftable);
    free(s->reftable_bad);
    s->reftable_bad = NULL;
    s->reftable = table;
    s->reftable_entries = entries;
    s->refcount_table_offset = (at + blocks) * cs;
    s->refcount_table_clusters = (uint32_t)tclusters;
    if (end * cs > s->file_end)
        s->file_end = end * cs;
    s->free_cluster_hint = 0;
    qcow2_metadata_moved(s);
    return 0;
}

/* The refcount blocks a file of `clusters` clusters needs, counting the
 * blocks and the table themselves (QEMU's qcow2_refcount_metadata_size:
 * its fixed point, so that the layouts agree); generous: once more with
 * half the table's clusters added, as QEMU sizes a table that grows. */
static uint64_t refblocks_for(const struct qcow2_state *s, uint64_t clusters, bool generous)
{
    uint64_t per_table_cluster = s->cluster_size / 8, per_block = 1ull << rb_bits(s);
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = (clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table_cluster - 1) / per_table_cluster;
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += (table + 1) / 2;
            n = 0;
            generous = false;
        }
    } while (n != last);
    return blocks;
}

/* QEMU's qcow2_refcount_area with an exact size, as its truncate with
 * preallocation=falloc/full calls it: from start_off (past every cluster
 * in use) the refcount blocks still missing to count the file up to its
 * own end plus `additional` clusters, then a new refcount table holding
 * them all, each of these clusters with refcount 1; the header switched
 * to the table once blocks and table are on disk (a crash before leaves
 * the old structure in effect, the new clusters leaked at most), then the
 * old table's clusters freed (the next allocations reuse them, as in
 * QEMU). Returns where the `additional` clusters go. Lock held. */
static void lower_fci(struct qcow2_state *s, uint64_t *fci, uint64_t off);

/* exact: as the function below; else (QEMU's alloc_refcount_block, the
 * table out of entries) the table half as large again; new_block, if not
 * 0, a block already made and counted that goes in at new_index; *fci
 * (QEMU's free_cluster_index, if not NULL) lowered by the old table's
 * release */
static int64_t refcount_area(struct qcow2_state *s, uint64_t start_off, uint64_t additional, bool exact,
                             uint64_t new_index, uint64_t new_block, uint64_t *fci)
{
    uint64_t cs = s->cluster_size, per_table_cluster = cs / 8;
    uint64_t total = refblocks_for(s, start_off / cs + additional, !exact);
    uint64_t area_index = (start_off / cs) >> rb_bits(s);
    uint64_t table_entries = exact ? total : total + (total + 1) / 2;
    table_entries = (table_entries + per_table_cluster - 1) / per_table_cluster * per_table_cluster;
    /* a block the old table names further on stays named (QEMU's caller
     * guarantees there is none; dropping one would lose its counts) */
    for (uint64_t i = table_entries; i < s->reftable_entries; i++)
        if (s->reftable[i])
            table_entries = (i + per_table_cluster) / per_table_cluster * per_table_cluster;
    if (table_entries * 8 > QCOW2_MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t table_clusters = table_entries / per_table_cluster;
    int rc = lazy_dirty_first(s);
    if (rc < 0)
        return rc;
    rc = write_rc_blocks(s);
    if (rc < 0)
        return rc;
    uint64_t *table = calloc(table_entries, 8), *disk = calloc(table_entries, 8);
    uint8_t *zero = calloc(1, cs);
    if (!table || !disk || !zero) {
        free(table);
        free(disk);
        free(zero);
        return -ENOMEM;
    }
    memcpy(table, s->reftable, (s->reftable_entries < table_entries ? s->reftable_entries : table_entries) * 8);
    if (new_block)
        table[new_index] = new_block;
    uint64_t new_blocks = 0;
    for (uint64_t i = area_index; i < total; i++)
        new_blocks += !table[i];
    uint64_t table_off = start_off + new_blocks * cs, end_off = table_off + table_clusters * cs;
    /* the new blocks, empty, on disk before anything names them */
    for (uint64_t i = area_index, at = start_off; rc == 0 && i < total; i++)
        if (!table[i]) {
            rc = vbd_node_co_pwrite(s->n->file, at, zero, cs, 0);
            table[i] = at;
            at += cs;
        }
    uint64_t *old = s->reftable, old_entries = s->reftable_entries, old_off = s->refcount_table_offset,
             old_clusters = s->refcount_table_clusters, old_end = s->file_end;
    if (rc == 0) {
        /* counted through the new table (in memory until the switch) */
        s->reftable = table;
        s->reftable_entries = table_entries;
        qcow2_metadata_moved(s);
        if (s->file_end < end_off)
            s->file_end = end_off;
        for (uint64_t c = start_off / cs; rc == 0 && c < end_off / cs; c++)
            rc = set_refcount(s, c, 1);
        if (rc == 0)
            rc = qcow2_flush_refcounts(s);
    }
    if (rc == 0) {
        for (uint64_t i = 0; i < table_entries; i++)
            disk[i] = be64(table[i]);
        rc = vbd_node_co_pwrite(s->n->file, table_off, disk, table_entries * 8, 0);
        if (rc == 0)
            rc = vbd_node_co_flush(s->n->file);
    }
    if (rc == 0)
        rc = write_reftable_pointer(s, table_off, table_clusters);
    free(disk);
    free(zero);
    if (rc < 0) {
        /* the old structure stays in effect: its blocks are never written
         * with what the new one counted */
        if (s->reftable == table) {
            for (int k = 0; k < s->rc_nslots; k++)
                if (s->rc_slots[k].offset >= start_off && s->rc_slots[k].offset < end_off) {
                    s->rc_slots[k].offset = 0;
                    s->rc_slots[k].dirty = false;
                }
            s->rc_cur = NULL;
        }
        s->reftable = old;
        s->reftable_entries = old_entries;
        s->file_end = old_end;
        qcow2_metadata_moved(s);
        free(table);
        return rc;
    }
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (uint32_t)table_clusters;
    free(old);
    for (uint64_t c = 0; c < old_clusters; c++) { /* a failure only leaks */
        (void)qcow2_update_refcount(s, old_off + c * cs, -1);
        if (fci)
            lower_fci(s, fci, old_off + c * cs);
    }
    return (int64_t)end_off;
}

int64_t qcow2_refcount_area(struct qcow2_state *s, uint64_t start_off, uint64_t additional)
{
    return refcount_area(s, start_off, additional, true, 0, 0, NULL);
}

/* ------------------------------------------------------------------ */
/* amend -o refcount_bits=N: QEMU's qcow2_change_refcount_order, its steps
 * and its allocations in its order, so that the file ends as qemu-img's.
 * The new structure is allocated through the old one, its blocks and table
 * written and everything flushed before the header names it: a crash
 * before leaves the old structure in effect (the new clusters leaked at
 * most), a crash after leaves the new one in effect (the old clusters
 * leaked at most).
 *
 * The allocations go through QEMU's allocator, written again here (qa_*):
 * a run of clusters at the first free ones from *fci (QEMU's
 * free_cluster_index) on; a missing refcount block made at the first free
 * cluster, counting itself if it falls in its own range, after which the
 * allocation starts over; a block the table has no entry for comes with a
 * larger table (refcount_area, not exact). The runtime allocator
 * (qcow2_alloc_clusters) puts blocks at the end of the file instead, which
 * with small clusters would give another layout than qemu-img's. */

static void lower_fci(struct qcow2_state *s, uint64_t *fci, uint64_t off)
{
    uint64_t c = off >> s->cluster_bits, refs = 1;
    if (c < *fci && qcow2_get_refcount(s, c, &refs) == 0 && !refs)
        *fci = c;
}

/* QEMU's qcow2_free_clusters: n clusters from off on released */
static void qa_free(struct qcow2_state *s, uint64_t *fci, uint64_t off, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++) { /* a failure only leaks */
        (void)qcow2_update_refcount(s, off + (k << s->cluster_bits), -1);
        lower_fci(s, fci, off + (k << s->cluster_bits));
    }
}

/* QEMU's alloc_clusters_noref: the first run of n clusters with refcount 0
 * from *fci on, *fci past it; nothing counted yet */
static int qa_noref(struct qcow2_state *s, uint64_t *fci, uint64_t n, uint64_t *first)
{
    for (uint64_t run = 0; run < n;) {
        uint64_t refs;
        int rc = qcow2_get_refcount(s, (*fci)++, &refs);
        if (rc < 0)
            return rc;
        run = refs ? 0 : run + 1;
    }
    *first = *fci - n;
    return 0;
}

/* a cached copy of the cluster at off (a block freed before) is stale now */
static void forget_slot(struct qcow2_state *s, uint64_t off)
{
    for (int i = 0; i < s->rc_nslots; i++)
        if (s->rc_slots[i].offset == off) {
            if (s->rc_cur == &s->rc_slots[i])
                s->rc_cur = NULL;
            s->rc_slots[i].offset = 0;
            s->rc_slots[i].dirty = false;
        }
}

static int qa_incref(struct qcow2_state *s, uint64_t *fci, uint64_t start, uint64_t n);

/* QEMU's alloc_refcount_block: 0 if the block counting cluster c exists,
 * else it is made and -EAGAIN returned (the caller starts over: the block
 * may sit where it meant to allocate) */
static int qa_block(struct qcow2_state *s, uint64_t *fci, uint64_t c)
{
    uint64_t idx = c >> rb_bits(s), cs = s->cluster_size;
    if (idx < s->reftable_entries && s->reftable[idx])
        return 0;
    uint64_t block;
    int rc = qa_noref(s, fci, 1, &block);
    if (rc < 0)
        return rc;
    uint8_t *data = vbd_alloc_aligned(4096, cs);
    memset(data, 0, cs);
    if (block >> rb_bits(s) == idx)
        set_entry(s->refcount_order, data, block & ((1ull << rb_bits(s)) - 1), 1); /* it counts itself */
    else if ((rc = qa_incref(s, fci, block, 1)) == 0)
        rc = qcow2_flush_refcounts(s);
    if (rc == 0)
        rc = lazy_dirty_first(s);
    if (rc == 0) {
        forget_slot(s, block * cs);
        rc = vbd_node_co_pwrite(s->n->file, block * cs, data, cs, 0);
    }
    free(data);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file); /* the block before the table entry naming it */
    if (rc < 0)
        return rc;
    if ((block + 1) * cs > s->file_end)
        s->file_end = (block + 1) * cs;
    if (idx < s->reftable_entries) {
        uint8_t e[8];
        put_be64p(e, block * cs);
        rc = vbd_node_co_pwrite(s->n->file, s->refcount_table_offset + idx * 8, e, 8, 0);
        if (rc == 0)
            rc = vbd_node_co_flush(s->n->file);
        if (rc < 0)
            return rc;
        s->reftable[idx] = block * cs;
        qcow2_metadata_moved(s);
        return -EAGAIN;
    }
    /* past the table: blocks and a table counting themselves past
     * everything in use (QEMU's blocks_used) */
    uint64_t used = (c > block ? c : block) + 1, per_block = 1ull << rb_bits(s);
    used = (used + per_block - 1) / per_block;
    int64_t end = refcount_area(s, used * per_block * cs, 0, false, idx, block * cs, fci);
    return end < 0 ? (int)end : -EAGAIN;
}

/* QEMU's update_refcount(+1) over n clusters from cluster start on; on
 * -EAGAIN (a block was made) what it counted is undone and *fci goes
 * back to start, so that the same clusters are tried first again */
static int qa_incref(struct qcow2_state *s, uint64_t *fci, uint64_t start, uint64_t n)
{
    uint64_t old_idx = UINT64_MAX;
    for (uint64_t c = start; c < start + n; c++) {
        int rc = 0;
        if (c >> rb_bits(s) != old_idx) {
            rc = qa_block(s, fci, c);
            if (rc == -EAGAIN && *fci > start)
                *fci = start;
        }
        old_idx = c >> rb_bits(s);
        if (rc == 0)
            rc = qcow2_update_refcount(s, c << s->cluster_bits, 1);
        if (rc < 0) {
            qa_free(s, fci, start << s->cluster_bits, c - start);
            return rc;
        }
        if ((c + 1) << s->cluster_bits > s->file_end)
            s->file_end = (c + 1) << s->cluster_bits;
    }
    return 0;
}

/* QEMU's qcow2_alloc_clusters: n clusters, their host offset in *off */
static int qa_alloc(struct qcow2_state *s, uint64_t *fci, uint64_t n, uint64_t *off)
{
    int rc;
    uint64_t first;
    do {
        rc = qa_noref(s, fci, n, &first);
        if (rc < 0)
            return rc;
        rc = qa_incref(s, fci, first, n);
    } while (rc == -EAGAIN);
    *off = first << s->cluster_bits;
    return rc;
}

/* the new structure while it is made */
struct new_refcounts {
    uint32_t order;
    uint64_t per_block; /* refcounts in one of its blocks */
    uint64_t *table;    /* host offsets of its blocks, 0: none */
    uint64_t entries;   /* the table's size, whole clusters of entries */
    uint8_t *block;     /* the block being filled (the writing walk); NULL while allocating */
    bool block_used;    /* it holds a refcount (zeroed before the next block: most are empty) */
};

/* alloc_refblock: a block for new block index j if it counts anything,
 * the table made larger for it (whole clusters) */
static int alloc_new_block(struct qcow2_state *s, uint64_t *fci, struct new_refcounts *w, uint64_t j, bool empty,
                           bool *allocated, struct vbd_error **err)
{
    uint64_t per_table_cluster = s->cluster_size / 8;
    if (empty)
        return 0;
    if (j >= w->entries) {
        uint64_t entries = (j + per_table_cluster) / per_table_cluster * per_table_cluster;
        if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
            vbd_error_setf(err, ENOTSUP,
                           "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting");
            return -ENOTSUP;
        }
        uint64_t *t = realloc(w->table, entries * 8);
        if (!t) {
            vbd_error_setf(err, ENOMEM, "Failed to increase reftable buffer size");
            return -ENOMEM;
        }
        memset(t + w->entries, 0, (entries - w->entries) * 8);
        w->table = t;
        w->entries = entries;
    }
    if (w->table[j])
        return 0;
    int rc = qa_alloc(s, fci, 1, &w->table[j]);
    if (rc < 0) {
        w->table[j] = 0;
        vbd_error_setf(err, -rc, "Failed to allocate refblock: %s", strerror(-rc));
        return rc;
    }
    *allocated = true;
    return 0;
}

/* flush_refblock: new block j (w->block) written where the table says */
static int write_new_block(struct qcow2_state *s, struct new_refcounts *w, uint64_t j, struct vbd_error **err)
{
    if (j >= w->entries || !w->table[j])
        return 0; /* counts nothing: the allocating walks made none */
    if (qcow2_overlaps_metadata(s, w->table[j], s->cluster_size)) {
        vbd_error_setf(err, EIO, "Overlap check failed");
        return qcow2_signal_corruption(s, "new refcount block", w->table[j]);
    }
    int rc = vbd_node_co_pwrite(s->n->file, w->table[j], w->block, s->cluster_size, 0);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Failed to write refblock: %s", strerror(-rc));
    return rc;
}

/* QEMU's walk_over_reftable: the refcount of every cluster the old table
 * can count, new block by new block (each as large as the new width
 * makes it), each block then allocated (w->block NULL) or written. The
 * old table may grow while allocating: the walk goes on over what it
 * counts then, and ends, as QEMU's, once a block's walk reached the end
 * of the table as it was before that block's allocation. */
static int walk_refcounts(struct qcow2_state *s, uint64_t *fci, struct new_refcounts *w, bool *allocated,
                          struct vbd_error **err)
{
    uint32_t bits = rb_bits(s);
    for (uint64_t j = 0;; j++) {
        uint64_t total = s->reftable_entries << bits, first = j * w->per_block;
        uint64_t end = first + w->per_block < total ? first + w->per_block : total;
        bool empty = true;
        if (w->block && w->block_used) {
            memset(w->block, 0, s->cluster_size);
            w->block_used = false;
        }
        for (uint64_t c = first; c < end;) {
            uint64_t idx = c >> bits, block_end = (idx + 1) << bits;
            if (block_end > end)
                block_end = end;
            if (!s->reftable[idx]) { /* no block: all 0 */
                c = block_end;
                continue;
            }
            int rc = load_block(s, s->reftable[idx]);
            if (rc < 0) {
                vbd_error_setf(err, -rc, "Failed to retrieve refblock: %s", strerror(-rc));
                return rc;
            }
            for (; c < block_end; c++) {
                uint64_t v = get_entry(s->refcount_order, s->rc_cur->data, c & ((1ull << bits) - 1));
                if (!v)
                    continue;
                if (w->order < 6 && v >> (1u << w->order)) {
                    vbd_error_setf(err, EINVAL,
                                   "Cannot decrease refcount entry width to %u bits: Cluster at offset %#llx has a refcount of %llu",
                                   1u << w->order, (unsigned long long)(c << s->cluster_bits), (unsigned long long)v);
                    return -EINVAL;
                }
                empty = false;
                if (w->block) {
                    set_entry(w->order, w->block, c - first, v);
                    w->block_used = true;
                }
            }
        }
        bool last = first + w->per_block >= total;
        int rc = w->block ? write_new_block(s, w, j, err) : alloc_new_block(s, fci, w, j, empty, allocated, err);
        if (rc < 0)
            return rc;
        if (last)
            return 0;
    }
}

int qcow2_change_refcount_order(struct qcow2_state *s, uint32_t order, struct vbd_error **err)
{
    uint64_t cs = s->cluster_size, fci = s->free_cluster_hint, table_off = 0, table_clusters = 0;
    struct new_refcounts w = {.order = order, .per_block = 1ull << (s->cluster_bits + 3 - order)};
    bool allocated;
    int rc;
    /* allocate until a walk allocates nothing more: each allocation
     * changes refcounts the walk reads, and may need a block of its own;
     * the table is allocated again after each walk that added blocks */
    do {
        allocated = false;
        rc = walk_refcounts(s, &fci, &w, &allocated, err);
        if (rc < 0)
            goto fail;
        if (allocated) {
            if (table_off)
                qa_free(s, &fci, table_off, table_clusters);
            table_off = 0;
            table_clusters = w.entries * 8 / cs;
            rc = qa_alloc(s, &fci, table_clusters, &table_off);
            if (rc < 0) {
                table_off = 0;
                vbd_error_setf(err, -rc, "Failed to allocate the new reftable: %s", strerror(-rc));
                goto fail;
            }
        }
    } while (allocated);
    /* the blocks, then the table, then the old blocks counting them, all
     * flushed: only then may the header name the new table */
    w.block = vbd_alloc_aligned(4096, cs);
    memset(w.block, 0, cs);
    rc = walk_refcounts(s, &fci, &w, &allocated, err);
    if (rc < 0)
        goto fail;
    if (qcow2_overlaps_metadata(s, table_off, table_clusters * cs)) {
        vbd_error_setf(err, EIO, "Overlap check failed");
        rc = qcow2_signal_corruption(s, "new refcount table", table_off);
        goto fail;
    }
    uint64_t *disk = vbd_alloc_aligned(4096, w.entries * 8);
    for (uint64_t i = 0; i < w.entries; i++)
        disk[i] = be64(w.table[i]);
    rc = vbd_node_co_pwrite(s->n->file, table_off, disk, w.entries * 8, 0);
    free(disk);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Failed to write the new reftable: %s", strerror(-rc));
        goto fail;
    }
    rc = qcow2_flush_refcounts(s);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Failed to flush the refblock cache: %s", strerror(-rc));
        goto fail;
    }
    uint32_t old_order = s->refcount_order, old_clusters = s->refcount_table_clusters;
    uint64_t old_off = s->refcount_table_offset;
    s->refcount_order = order;
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (uint32_t)table_clusters;
    struct vbd_error *herr = NULL;
    rc = qcow2_rewrite_header(s, s->n->backing_file, s->n->backing_format, &herr);
    if (rc < 0) {
        s->refcount_order = old_order;
        s->refcount_table_offset = old_off;
        s->refcount_table_clusters = old_clusters;
        vbd_error_setf(err, -rc, "Failed to update the qcow2 header: %s", strerror(-rc));
        vbd_error_free(herr);
        goto fail;
    }
    /* the new structure in effect: the cached blocks (old ones, clean after
     * the flush) go, and the old blocks and table are released in it */
    forget_all_slots(s);
    uint64_t *old = s->reftable, old_entries = s->reftable_entries;
    s->reftable = w.table;
    s->reftable_entries = w.entries;
    qcow2_metadata_moved(s);
    for (uint64_t i = 0; i < old_entries; i++)
        if (old[i])
            qa_free(s, &fci, old[i], 1);
    qa_free(s, &fci, old_off, old_clusters);
    free(old);
    free(w.block);
    s->free_cluster_hint = fci; /* later allocations go on from where QEMU's would */
    return 0;
fail:
    /* what was allocated for the new structure goes back (old structure) */
    for (uint64_t i = 0; i < w.entries; i++)
        if (w.table[i])
            qa_free(s, &fci, w.table[i], 1);
    if (table_off)
        qa_free(s, &fci, table_off, table_clusters);
    free(w.table);
    free(w.block);
    return rc;
}
